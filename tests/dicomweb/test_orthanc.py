"""Issue 25, acceptance 2: a real Orthanc (the project's runtime, Debian's package) feeds the
archive through `medgraph follow orthanc`.

DICOM files made with pydicom, with PHI in every header, are stored into Orthanc over its REST
API; the follower turns each into an ``:Image``; a search by one of them answers. Along the way
the follower is killed (SIGKILL) while instances arrive, the crash window between queuing a
page and saving the position is replayed, Orthanc and the API are restarted: in the end every
instance is stored exactly once, and no PHI value is in Neo4j, Redis, the logs or a response.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
import requests
from click.testing import CliRunner
from pydicom.dataset import Dataset

from services.cli import main
from services.config import REPO_ROOT, Settings
from services.graph.store import GraphStore
from services.ingest.orthanc_feed import OrthancFeed
from services.privacy import pseudonymous_uid
from services.runtime.orthanc import OrthancRuntime, authorization
from services.secrets import orthanc_password, patient_key_secret
from tests.dicomweb.conftest import ServedArchive, wait_for_instances
from tests.dicomweb.instances import ORTHANC_STUDY, Instance, make_instances
from tests.reliability.phi import all_phi_values, leaks, needles, redis_texts, texts_of

pytestmark = [pytest.mark.neo4j, pytest.mark.redis, pytest.mark.slow]

FIRST, SECOND, THIRD = 6, 6, 4  # instances stored in three rounds
TOTAL = FIRST + SECOND + THIRD


@pytest.fixture(scope="module")
def orthanc(stack: Settings) -> Iterator[OrthancRuntime]:
    runtime = OrthancRuntime(stack)
    runtime.stop()
    shutil.rmtree(runtime.home, ignore_errors=True)
    runtime.start()
    try:
        yield runtime
    finally:
        runtime.stop()


def store_into_orthanc(settings: Settings, instances: list[Instance]) -> None:
    for instance in instances:
        request = urllib.request.Request(
            f"{settings.orthanc_base_url}/instances", data=instance.data, method="POST",
            headers={"Authorization": authorization(settings),
                     "Content-Type": "application/dicom"},
        )  # fmt: skip
        with urllib.request.urlopen(request, timeout=30) as response:
            assert response.status == 200


class Follower:
    """`medgraph follow orthanc` as its own process, with the archive's settings."""

    def __init__(self, archive: ServedArchive) -> None:
        self.archive = archive
        self.log_path = archive.settings.home / "logs" / f"orthanc-follower-{os.getpid()}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "services.cli", "follow", "orthanc"],
                cwd=REPO_ROOT, env=self.archive.env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)


def archive_counts(store: GraphStore, studies: list[str]) -> tuple[int, int]:
    """(images, distinct SOP instance UIDs) of these studies in the graph."""
    record = store.run_text(
        "MATCH (i:Image) WHERE i.dicom_study_uid IN $studies "
        "RETURN count(i) AS images, count(DISTINCT i.dicom_sop_uid) AS uids",
        studies=studies,
    )[0]
    return int(record["images"]), int(record["uids"])


def test_orthanc_feeds_the_archive_through_restarts_without_loss_or_duplicates(
    orthanc: OrthancRuntime,
    served_archive: ServedArchive,
    ingest_worker: str,
    graph_store: GraphStore,
) -> None:
    settings = served_archive.settings
    instances = make_instances(TOTAL, offset=40, study_number=ORTHANC_STUDY)
    secret = patient_key_secret(settings)
    studies = sorted({pseudonymous_uid(secret, i.phi.tags["StudyInstanceUID"]) for i in instances})
    follower = Follower(served_archive)
    feed = OrthancFeed(settings)
    feed.redis.delete(feed.key)  # a fresh Orthanc starts its feed at 0
    texts: list[str] = []
    try:
        # Round 1: the follower runs; it is killed while the second round arrives.
        follower.start()
        store_into_orthanc(settings, instances[:FIRST])
        assert len(wait_for_instances(served_archive, studies, FIRST)) == FIRST
        store_into_orthanc(settings, instances[FIRST : FIRST + 2])
        follower.kill()
        store_into_orthanc(settings, instances[FIRST + 2 : FIRST + SECOND])
        # The API dies too, and Orthanc restarts: nothing is held by either.
        served_archive.kill()
        orthanc.stop()
        orthanc.start()
        # The crash window: a page queued but its position never saved is handled again.
        before = feed.position()
        first_pass = feed.step()
        feed.redis.set(feed.key, before)
        replay = feed.step()
        assert replay.job_id == first_pass.job_id
        assert replay.position == first_pass.position
        # Round 3 with the follower and the API running again.
        follower.start()
        served_archive.start()
        store_into_orthanc(settings, instances[FIRST + SECOND :])
        listed = wait_for_instances(served_archive, studies, TOTAL)
        texts.append(str(listed))
        assert len(listed) == TOTAL
        time.sleep(2 * settings.orthanc_poll_s)  # a late duplicate would show now
        assert archive_counts(graph_store, studies) == (TOTAL, TOTAL)
        kept = list((served_archive.root / "uploads" / "dicom").glob("*.dcm"))
        assert len({path.name for path in kept}) >= TOTAL

        # A search by one of them answers.
        one = Dataset.from_json(listed[0])
        response = requests.get(
            f"{served_archive.url}/dicomweb/studies/{one.StudyInstanceUID}/series/"
            f"{one.SeriesInstanceUID}/instances/{one.SOPInstanceUID}/similar",
            params={"k": 5, "strategy": "exact"}, headers=served_archive.headers(), timeout=60,
        )  # fmt: skip
        assert response.status_code == 200, response.text
        assert len(response.json()) == 5
        texts.append(response.text)
    finally:
        follower.kill()

    # No PHI value anywhere: Neo4j, Redis, the logs, the responses, the kept copies.
    search = needles(all_phi_values(instance.phi for instance in instances))
    records = graph_store.run_text("MATCH (n) RETURN properties(n) AS props")
    assert not leaks((text for r in records for text in texts_of(r["props"])), search)
    assert not leaks((text for _, text in redis_texts(settings)), search)
    logs = [follower.log_path, served_archive.log_path,
            settings.home / "logs" / "ingest-test-worker.log"]  # fmt: skip
    assert "position" in follower.log_path.read_text()
    assert not leaks((path.read_text(errors="replace") for path in logs), search)
    assert not leaks(texts, search)
    assert not leaks((path.read_bytes().decode("latin-1") for path in kept), search)


def test_stack_start_with_orthanc_prints_the_explorer_and_orthanc_wants_the_password(
    orthanc: OrthancRuntime,
) -> None:
    result = CliRunner().invoke(main, ["stack", "start", "--only", "orthanc"])
    assert result.exit_code == 0, result.output
    explorer = f"{orthanc.settings.orthanc_base_url}/app/explorer.html"
    assert f"Explorer {explorer}" in result.output
    assert "already running" in result.output
    assert orthanc_password(orthanc.settings) not in result.output
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(explorer, timeout=10)
    assert refused.value.code == 401
    with_password = {"Authorization": authorization(orthanc.settings)}
    answer = urllib.request.urlopen(urllib.request.Request(explorer, headers=with_password))
    assert answer.status == 200
    config = orthanc.home / "orthanc.json"
    assert config.stat().st_mode & 0o077 == 0  # the password's file is the owner's only

"""Fixtures of the reliability and security tests: a small real graph (bundled PNGs and DICOM
files full of patient identifiers, ingested by a real worker and clustered), the API app on it,
and API keys."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from flask import Flask
from flask.testing import FlaskClient

from services.api import create_app
from services.auth.api_keys import create_api_key
from services.communities.job import run_clustering
from services.config import REPO_ROOT, Settings
from services.graph.store import GraphStore
from services.ingest.jobs import JobTracker
from services.ingest.submit import follow, plan_ingest, submit

# The ingest tests' seeded DenseNet-121 checkpoint (made once per home, reused): deterministic
# image codes without minutes of training.
from tests.ingest.conftest import ingest_checkpoint  # noqa: F401
from tests.reliability.phi import PhiDicom, write_phi_dicoms
from tests.reliability.private_stack import WorkerProcess

BUNDLED = REPO_ROOT / "data" / "nih-cxr14-64px"
PNG_IMAGES = 40
MAX_UPLOAD_BYTES = 512 * 1024


@dataclass
class SeededGraph:
    root: Path  # the data root
    settings: Settings  # the API's settings (data root, checkpoint, upload limit)
    image_keys: list[str]
    dicoms: list[PhiDicom]  # ingested DICOM files
    upload_dicoms: list[PhiDicom]  # never ingested; for uploads
    community_ids: list[int]
    job_ids: list[str]
    read_token: str = ""
    write_token: str = ""

    def headers(self, scope: str = "read") -> dict[str, str]:
        token = self.write_token if scope == "write" else self.read_token
        return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="session")
def worker_env(stack: Settings, ingest_checkpoint: Path) -> dict[str, str]:  # noqa: F811
    env = dict(os.environ)
    env["MEDGRAPH_ENCODER_CHECKPOINT"] = str(ingest_checkpoint)
    env["PYTHONPATH"] = str(REPO_ROOT)
    return env


@pytest.fixture(scope="session")
def reliability_worker(stack: Settings, worker_env: dict[str, str]) -> Iterator[WorkerProcess]:
    """A real Celery worker on the session's Redis and Neo4j."""
    name = f"reliability-{os.environ.get('MEDGRAPH_TEST_SLOT', '0')}-{os.getpid()}"
    worker = WorkerProcess(worker_env, stack.broker_url, stack.home / "logs" / f"{name}.log", name)
    worker.start()
    try:
        yield worker
    finally:
        worker.stop()


def build_data_root(root: Path) -> tuple[list[PhiDicom], list[PhiDicom]]:
    """``root/images`` (bundled PNGs) with ``root/labels.csv``, ``root/dicom`` (PHI DICOMs)."""
    images = root / "images"
    images.mkdir(parents=True)
    with (BUNDLED / "labels.csv").open(newline="") as handle:
        reader = csv.DictReader(handle)
        header = reader.fieldnames or []
        rows = list(reader)[:PNG_IMAGES]
    for row in rows:
        shutil.copyfile(BUNDLED / "images" / row["Image Index"], images / row["Image Index"])
    with (root / "labels.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=header)
        writer.writeheader()
        writer.writerows(rows)
    sources = sorted((BUNDLED / "images").glob("*.png"))[-8:]  # not among the copied PNGs
    return write_phi_dicoms(root / "dicom", sources[:4], stored=True), write_phi_dicoms(
        root.parent / "uploads-not-ingested", sources[4:], stored=False
    )


@pytest.fixture(scope="session")
def seeded_graph(
    graph_store: GraphStore,
    settings: Settings,
    ingest_checkpoint: Path,  # noqa: F811
    worker_env: dict[str, str],
    reliability_worker: WorkerProcess,
    tmp_path_factory: pytest.TempPathFactory,
) -> SeededGraph:
    root = tmp_path_factory.mktemp("reliability-data") / "root"
    dicoms, upload_dicoms = build_data_root(root)
    api_settings = settings.model_copy(
        update={
            "data_roots": [root],
            "encoder_checkpoint": ingest_checkpoint,
            "api_max_upload_bytes": MAX_UPLOAD_BYTES,
            "api_upload_dir": root / "uploads",
            # Hundreds of requests a minute on one key; the rate limit has its own tests.
            "api_rate_limit_per_minute": 0,
            # The no-key fuzzing fails authentication hundreds of times from one address; the
            # failed-authentication limit has its own tests (test_hostile_service.py).
            "api_auth_failures_per_minute": 0,
        }
    )
    graph_store.run_autocommit(
        "MATCH (n) CALL (n) { DETACH DELETE n } IN TRANSACTIONS OF 5000 ROWS"
    )
    job_id = f"reliability-seed-{uuid.uuid4().hex[:8]}"
    plan = plan_ingest([root], api_settings, root / "labels.csv")
    submit(plan, api_settings, job_id)
    tracker = JobTracker.from_settings(api_settings)
    final = follow(tracker, job_id, lambda _: None, poll_s=0.2, timeout_s=600)
    assert (final.status, final.failed) == ("done", 0), tracker.failures(job_id)
    summary = run_clustering(graph_store, api_settings, algorithm="leiden")
    assert summary.community_count > 1
    keys = [r["key"] for r in graph_store.run_text("MATCH (i:Image) RETURN i.key AS key")]
    assert len(keys) == PNG_IMAGES + len(dicoms)
    communities = graph_store.run_text("MATCH (c:Community) RETURN c.id AS id ORDER BY id")
    seeded = SeededGraph(
        root=root,
        settings=api_settings,
        image_keys=sorted(keys),
        dicoms=dicoms,
        upload_dicoms=upload_dicoms,
        community_ids=[int(record["id"]) for record in communities],
        job_ids=[job_id],
    )
    seeded.read_token = create_api_key(graph_store, "reliability-read", ("read",)).token
    seeded.write_token = create_api_key(graph_store, "reliability-write", ("write",)).token
    return seeded


NIH_NAME = re.compile(r"(\d{8})_\d{3}")


def identifying_names(seeded: SeededGraph) -> frozenset[str]:
    """What no answer, log line or graph property may hold (issue 26): every stored or uploaded
    image file's name, its stem where that holds a number (NIH names, study names; a stem that
    is a plain word such as the bad file "truncated" is also a JSON key of the answers), and the
    patient number an NIH name starts with."""
    files = [path for path in seeded.root.rglob("*") if path.suffix in (".png", ".dcm")]
    files += [dicom.path for dicom in seeded.upload_dicoms]
    names: set[str] = set()
    for path in files:
        names.add(path.name)
        if any(character.isdigit() for character in path.stem):
            names.add(path.stem)
        match = NIH_NAME.fullmatch(path.stem)
        if match:
            names.add(match.group(1))
    return frozenset(names)


@pytest.fixture(scope="session")
def reliability_app(seeded_graph: SeededGraph) -> Flask:
    app = create_app(seeded_graph.settings)
    app.config["TESTING"] = False  # errors go through the JSON handlers, as in production
    return app


@pytest.fixture
def api(reliability_app: Flask) -> Iterator[FlaskClient]:
    with reliability_app.test_client() as client:
        yield client


@dataclass(frozen=True)
class GraphFingerprint:
    counts: dict[str, int]
    digest: str  # SHA-256 over every label, type, endpoint and property, in a stable order


def graph_fingerprint(
    store: GraphStore, *, ignore_labels: tuple[str, ...] = ()
) -> GraphFingerprint:
    """Counts and a checksum of the whole database; equal fingerprints = unchanged graph.

    ``ignore_labels``: nodes (and their relationships) left out, e.g. the ``:IngestJob`` record
    that a refused ingest job itself leaves.
    """
    import hashlib
    import json

    nodes = store.run_text(
        "MATCH (n) WHERE none(label IN labels(n) WHERE label IN $ignore) "
        "RETURN elementId(n) AS id, labels(n) AS labels, properties(n) AS props",
        ignore=list(ignore_labels),
    )
    relationships = store.run_text(
        "MATCH (a)-[r]->(b) WHERE none(label IN labels(a) + labels(b) WHERE label IN $ignore) "
        "RETURN elementId(a) AS a, type(r) AS type, elementId(b) AS b, properties(r) AS props",
        ignore=list(ignore_labels),
    )
    digest = hashlib.sha256()
    for row in sorted(
        json.dumps([r["id"], sorted(r["labels"]), r["props"]], sort_keys=True, default=str)
        for r in nodes
    ):
        digest.update(row.encode())
    for row in sorted(
        json.dumps([r["a"], r["type"], r["b"], r["props"]], sort_keys=True, default=str)
        for r in relationships
    ):
        digest.update(row.encode())
    counts: dict[str, int] = {"nodes": len(nodes), "relationships": len(relationships)}
    for r in nodes:
        for label in r["labels"]:
            counts[label] = counts.get(label, 0) + 1
    for r in relationships:
        counts[r["type"]] = counts.get(r["type"], 0) + 1
    return GraphFingerprint(counts, digest.hexdigest())


# --- the API as its own process (`medgraph serve` under waitress) ----------------------------
# The API process's peak resident memory (VmHWM) must stay under this, whatever hostile or
# concurrent uploads arrive: about 1 GiB for the process, its model and request buffers, plus
# decode_slots (2) x max_decode_mib (1024 MiB). Stated in docs/reliability.md and the README.
API_RSS_BUDGET_BYTES = 3 * 1024**3


@dataclass
class ServedApi:
    url: str
    port: int
    process: subprocess.Popen[bytes]
    settings: Settings
    log_path: Path
    env: dict[str, str]

    def peak_rss(self) -> int:
        """The process's peak resident set size in bytes (VmHWM of /proc/<pid>/status)."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmHWM in /proc status")

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, characters: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-characters:]


@pytest.fixture(scope="session")
def served_api(
    seeded_graph: SeededGraph, worker_env: dict[str, str], reliability_worker: WorkerProcess
) -> Iterator[ServedApi]:
    """`medgraph serve` (waitress, 8 threads) on the seeded graph, in its own process group."""
    port = seeded_graph.settings.api_port + 1
    env = dict(worker_env)
    env.update(
        MEDGRAPH_DATA_ROOTS=json.dumps([str(seeded_graph.root)]),
        MEDGRAPH_API_PORT=str(port),
        MEDGRAPH_API_UPLOAD_DIR=str(seeded_graph.root / "uploads"),
        MEDGRAPH_API_THREADS="8",
        # The per-key limit would throttle the hostile tests' own read key; failed
        # authentications keep their default limit (30 a minute per address).
        MEDGRAPH_API_RATE_LIMIT_PER_MINUTE="0",
        OMP_NUM_THREADS="1",
    )
    log_path = seeded_graph.settings.home / "logs" / f"served-api-{os.getpid()}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "services.cli", "serve"],
            cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    served = ServedApi(
        f"http://127.0.0.1:{port}", port, process, seeded_graph.settings, log_path, env
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if requests.get(f"{served.url}/api/v1/health", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if not served.alive() or time.monotonic() > deadline:
                raise AssertionError(f"medgraph serve did not start:\n{served.log_tail()}")
            time.sleep(0.3)
        # Load the encoder now (the first upload pays for it), so memory figures include it.
        sample = next((seeded_graph.root / "images").iterdir())
        warm = requests.post(
            f"{served.url}/api/v1/search",
            files={"file": (sample.name, sample.read_bytes())},
            data={"k": "3"},
            headers=seeded_graph.headers(),
            timeout=300,
        )
        assert warm.status_code == 200, warm.text
        yield served
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

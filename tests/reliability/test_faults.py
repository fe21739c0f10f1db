"""Acceptance 1: ingestion loses nothing and duplicates nothing when a worker is SIGKILLed,
when Neo4j is stopped, or when Redis is restarted in the middle of a 500-image ingest.

Real processes throughout: a private Neo4j and Redis (``private_stack.py``), Celery worker
subprocesses, and ``medgraph ingest`` as a subprocess. After recovery the graph must be exactly
what a clean ingest of the same files gives: one :Image per file, one :Patient per patient with
exactly one HAS_IMAGE per image, and the SIMILAR edges of the exact kNN graph of the stored
embeddings, each pair once.
"""

from __future__ import annotations

import hashlib
import hmac
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from services.config import REPO_ROOT, Settings
from services.encoder.labels import read_labels
from services.ingest.jobs import JobProgress
from services.ingest.knn import exact_knn, knn_floor, symmetric_edges
from services.secrets import patient_key_secret
from tests.reliability.private_stack import PrivateStack

pytestmark = [pytest.mark.neo4j, pytest.mark.redis, pytest.mark.slow]

BUNDLED = REPO_ROOT / "data" / "nih-cxr14-64px"
FILES = 500
FILES_PER_TASK = 10  # 50 embedding tasks, so a fault lands between many of them
# Short, so a message of a killed worker is redelivered within the test; still well above the
# longest task (an embedding task of 10 small images, the kNN edges of 500 images).
VISIBILITY_TIMEOUT_S = 12
JOB_TIMEOUT_S = 420


@dataclass(frozen=True)
class Expected:
    list_file: Path
    keys: set[str]
    patient_of: dict[str, str]  # image key -> HMAC patient key


@pytest.fixture(scope="module")
def fault_stack(settings: Settings, ingest_checkpoint: Path) -> Iterator[PrivateStack]:
    # Under the slot's home (not a temporary folder) so that its logs outlive the session.
    home = settings.home / "fault-stack"
    shutil.rmtree(home, ignore_errors=True)
    stack = PrivateStack.create(
        settings,
        home,
        encoder_checkpoint=ingest_checkpoint,
        ingest_files_per_task=FILES_PER_TASK,
        celery_visibility_timeout_s=VISIBILITY_TIMEOUT_S,
    )
    patient_key_secret(stack.settings)  # generated once, before any process races for it
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="module")
def expected(fault_stack: PrivateStack, tmp_path_factory: pytest.TempPathFactory) -> Expected:
    files = sorted((BUNDLED / "images").glob("*.png"))[:FILES]
    assert len(files) == FILES
    list_file = tmp_path_factory.mktemp("fault-files") / "files.txt"
    list_file.write_text("".join(f"{file}\n" for file in files))
    records = read_labels(BUNDLED / "labels.csv").records
    labels = {record.image_path.name: record for record in records}
    secret = patient_key_secret(fault_stack.settings)
    patient_of = {}
    for file in files:
        raw = labels[file.name].patient_id
        key = hashlib.sha256(file.read_bytes()).hexdigest()
        patient_of[key] = hmac.new(secret, raw.strip().encode(), hashlib.sha256).hexdigest()
    assert len(patient_of) == FILES, "the bundled files are distinct"
    return Expected(list_file, set(patient_of), patient_of)


@pytest.fixture
def empty_graph(fault_stack: PrivateStack) -> PrivateStack:
    store = fault_stack.store()
    store.run_autocommit("MATCH (n) CALL (n) { DETACH DELETE n } IN TRANSACTIONS OF 5000 ROWS")
    return fault_stack


def submit(stack: PrivateStack, expected: Expected, job_id: str) -> subprocess.Popen[str]:
    """``medgraph ingest`` of the 500 files, enqueued only (it starts no worker)."""
    return stack.cli_in_background(
        "ingest", expected.list_file, "--labels", BUNDLED / "labels.csv", "--job-id", job_id,
        "--no-wait", "--no-local-worker", "--no-progress",
    )  # fmt: skip


def submitted(stack: PrivateStack, command: subprocess.Popen[str]) -> str:
    returncode, output = stack.finish(command)
    assert returncode == 0, output
    return output


def start_ingest(stack: PrivateStack, expected: Expected, worker_name: str, kind: str) -> str:
    """A worker and an enqueued job, started side by side (both take seconds to start)."""
    job_id = f"fault-{kind}-{uuid.uuid4().hex[:8]}"
    command = submit(stack, expected, job_id)
    stack.worker(worker_name).start()
    submitted(stack, command)
    return job_id


def finish_or_resume(
    stack: PrivateStack, expected: Expected, job_id: str
) -> tuple[JobProgress, bool]:
    """The job's end: by itself, or, when it stalls, by resuming it (same id, same files).

    Kombu's Redis transport moves a message to its ``unacked`` hash only after the worker has
    read it from the queue, so a worker killed (or a Redis restarted) in that gap loses the
    message: the job then stalls with nothing in flight, says exactly what is left, and a
    resume sends only the batches never counted.
    """
    try:
        finished = stack.wait_for(job_id, lambda p: p.finished, timeout_s=VISIBILITY_TIMEOUT_S + 60)
        return finished, False
    except TimeoutError:
        pass
    stalled = stack.tracker().progress(job_id)
    assert stack.messages_in_flight() == 0, "stalled with messages still in flight"
    status = stack.cli("ingest-status", job_id)
    assert f"{stalled.remaining} remaining of {FILES}" in status.stdout, status.stdout
    output = submitted(stack, submit(stack, expected, job_id))
    assert f"job {job_id} resumed" in output, output
    return stack.wait_for(job_id, lambda p: p.finished, timeout_s=JOB_TIMEOUT_S), True


def assert_stored_exactly_once(stack: PrivateStack, expected: Expected, job_id: str) -> None:
    """The graph a clean ingest of the files gives, and the job's own count of it."""
    progress = stack.tracker().progress(job_id)
    failures = stack.tracker().failures(job_id)
    assert (progress.status, progress.done, progress.failed) == ("done", FILES, 0), failures
    store = stack.store()

    def count(text: str) -> int:
        return int(store.run_text(text)[0]["n"])

    assert count("MATCH (i:Image) RETURN count(i) AS n") == FILES
    assert count("MATCH (p:Patient) RETURN count(p) AS n") == len(set(expected.patient_of.values()))
    assert count("MATCH ()-[r:HAS_IMAGE]->() RETURN count(r) AS n") == FILES
    # Nothing else but the search side's change log (services/graph/changes.py).
    others = ("MATCH (n) WHERE NOT n:Image AND NOT n:Patient AND NOT n:IngestJob "
              "AND NOT n:GraphChange AND NOT n:GraphState RETURN count(n) AS n")  # fmt: skip
    assert count(others) == 0
    assert count("MATCH (j:IngestJob) RETURN count(j) AS n") == 1

    records = store.run_text(
        "MATCH (i:Image) OPTIONAL MATCH (p:Patient)-[:HAS_IMAGE]->(i) "
        "RETURN i.key AS key, i.embedding AS embedding, i.knn_floor AS floor, "
        "collect(p.key) AS patients ORDER BY key"
    )
    keys = [record["key"] for record in records]
    assert set(keys) == expected.keys, "every file once, nothing else"
    for record in records:
        assert record["patients"] == [expected.patient_of[record["key"]]], record["key"]

    # SIMILAR: exactly the symmetric exact kNN graph of the stored embeddings, each pair once.
    matrix = np.array([record["embedding"] for record in records], dtype=np.float32)
    k = stack.settings.knn_k
    indices, cosines = exact_knn(matrix, k, device="cpu")
    reference = symmetric_edges(indices, cosines)
    expected_pairs = {
        (keys[a], keys[b])
        for a, b in zip(reference.smaller.tolist(), reference.larger.tolist(), strict=True)
    }
    edges = store.run_text(
        "MATCH (a:Image)-[r:SIMILAR]->(b:Image) RETURN a.key AS a, b.key AS b, r.weight AS w"
    )
    stored_pairs = [(edge["a"], edge["b"]) for edge in edges]
    assert len(stored_pairs) == len(set(stored_pairs)), "a SIMILAR pair is stored twice"
    assert len(stored_pairs) == len(expected_pairs)
    assert set(stored_pairs) == expected_pairs
    position = {key: i for i, key in enumerate(keys)}
    weights = np.array([edge["w"] for edge in edges])
    cosine = np.array([matrix[position[e["a"]]] @ matrix[position[e["b"]]] for e in edges])
    assert np.abs(weights - cosine).max() < 1e-5
    floors = np.array([record["floor"] for record in records], dtype=np.float64)
    assert np.allclose(floors, knn_floor(cosines, k), atol=1e-6), "every image is linked"

    job = store.run_text("MATCH (j:IngestJob {id: $id}) RETURN j AS job", id=job_id)[0]["job"]
    assert (job["status"], job["done"], job["failed"], job["total"]) == ("done", FILES, 0, FILES)


def test_worker_killed_mid_ingest_and_restarted(
    empty_graph: PrivateStack, expected: Expected
) -> None:
    stack = empty_graph
    job_id = start_ingest(stack, expected, "fault-kill-1", "kill")
    first = stack.workers[-1]

    at_kill = stack.wait_for(job_id, lambda p: p.done >= 60, timeout_s=JOB_TIMEOUT_S)
    in_flight = stack.unacknowledged_messages()
    first.kill()
    killed_at = time.monotonic()
    after_kill = stack.tracker().progress(job_id)
    assert after_kill.done < FILES, "the kill landed after the ingest ended"
    assert in_flight > 0, "no task was in flight when the worker died"

    # Nothing moves while no worker runs; the dead worker's messages wait in Redis.
    time.sleep(2)
    assert stack.tracker().progress(job_id).done == after_kill.done
    assert stack.unacknowledged_messages() > 0

    # A new worker takes them back once their visibility timeout has passed.
    time.sleep(max(0.0, VISIBILITY_TIMEOUT_S + 1 - (time.monotonic() - killed_at)))
    second = stack.worker("fault-kill-2")
    second.start()
    final, resumed = finish_or_resume(stack, expected, job_id)
    second.stop()
    print(f"killed at {at_kill.done}/{FILES} images with {in_flight} messages in flight; "
          f"resumed: {resumed}; final: {final.status} {final.done} stored, "
          f"{final.failed} failed")  # fmt: skip
    assert_stored_exactly_once(stack, expected, job_id)
    assert stack.unacknowledged_messages() == 0


def test_neo4j_stopped_mid_ingest_then_started(
    empty_graph: PrivateStack, expected: Expected
) -> None:
    stack = empty_graph
    job_id = start_ingest(stack, expected, "fault-neo4j", "neo4j")
    worker = stack.workers[-1]

    at_stop = stack.wait_for(job_id, lambda p: p.done >= 60, timeout_s=JOB_TIMEOUT_S)
    stack.restart_neo4j_after(down_s=3)
    restarted = stack.tracker().progress(job_id)
    assert restarted.done + restarted.failed < FILES, "Neo4j came back after the ingest ended"

    final = stack.wait_for(job_id, lambda p: p.finished, timeout_s=JOB_TIMEOUT_S)
    log = worker.log()
    worker.stop()
    print(f"Neo4j stopped at {at_stop.done}/{FILES}; {restarted.done} when it was back; "
          f"final: {final.status} {final.done} stored, {final.failed} failed")  # fmt: skip
    # A short outage is absorbed by the driver's own transaction retries, a longer one by the
    # task's retries; either way some task met it.
    retried = ("Retry in", "Transaction failed and will be retried")
    assert any(mark in log for mark in retried), "no task met the outage"
    assert_stored_exactly_once(stack, expected, job_id)


def test_redis_restarted_mid_ingest(empty_graph: PrivateStack, expected: Expected) -> None:
    stack = empty_graph
    job_id = start_ingest(stack, expected, "fault-redis", "redis")
    worker = stack.workers[-1]

    at_restart = stack.wait_for(job_id, lambda p: p.done >= 60, timeout_s=JOB_TIMEOUT_S)
    stack.redis.stop()
    time.sleep(2)
    stack.redis.start()
    after = stack.tracker().progress(job_id)
    assert after.done + after.failed < FILES, "Redis came back after the ingest ended"
    assert after.done >= at_restart.done, "the append-only file kept the job's progress"

    final, resumed = finish_or_resume(stack, expected, job_id)
    worker.stop()
    print(f"Redis restarted at {at_restart.done}/{FILES}; resumed: {resumed}; "
          f"final: {final.status} {final.done} stored, {final.failed} failed")  # fmt: skip
    assert_stored_exactly_once(stack, expected, job_id)

"""Job counting in the real Redis, edge building on the real Neo4j (no Celery), crash isolation
through the real worker."""

from __future__ import annotations

import time

import numpy as np
import pytest

from bench.synthetic import generate
from services.config import Settings
from services.graph.store import GraphStore
from services.ingest.edges import build_edges
from services.ingest.jobs import JobTracker
from services.ingest.pipeline import write_image_rows
from services.ingest.submit import StallWatch, follow, messages_in_flight, plan_ingest, submit
from tests.ingest.conftest import BUNDLED_IMAGES, exact_top_k, stored_edges, stored_embeddings, wipe

pytestmark = [pytest.mark.neo4j, pytest.mark.redis]


def test_a_batch_counts_once_however_often_it_is_recorded(stack: Settings) -> None:
    tracker = JobTracker.from_settings(stack)
    assert tracker.create("count-once", total=5, source="test")
    assert not tracker.create("count-once", total=99), "an existing job is not overwritten"
    first = tracker.record_batch("count-once", "b0", 2, [("/x/bad.png", "truncated")])
    again = tracker.record_batch("count-once", "b0", 2, [("/x/bad.png", "truncated")])
    assert first.newly_recorded and not again.newly_recorded
    assert (again.done, again.failed, again.complete) == (2, 1, False)
    last = tracker.record_batch("count-once", "b1", 2, [])
    assert last.complete and last.newly_recorded
    progress = tracker.progress("count-once")
    assert (progress.done, progress.failed, progress.remaining, progress.status) == (
        4, 1, 0, "running",
    )  # fmt: skip
    assert tracker.failures("count-once") == [("/x/bad.png", "truncated")]
    assert tracker.recorded_batches("count-once") == {"b0", "b1"}
    assert 0 < tracker.client.ttl(tracker.key("count-once")) <= stack.ingest_job_ttl_s


def synthetic_rows(n: int, seed: int, prefix: str) -> tuple[list[dict], np.ndarray]:
    data = generate(n, n_clusters=6, spread=0.04, seed=seed)
    rows = [
        {"key": f"{prefix}-{i:05d}", "source": f"synthetic://{prefix}/{i}",
         "findings": list(data.findings[i]), "patient_key": None, "modality": "OT",
         "width": 1, "height": 1, "file_bytes": 0, "model_version": "synthetic",
         "embedding": data.embeddings[i]}
        for i in range(n)
    ]  # fmt: skip
    return rows, data.embeddings


def test_min_cosine_cuts_edges_and_incremental_follows_the_rule(
    graph_store: GraphStore, settings: Settings
) -> None:
    wipe(graph_store)
    k = settings.knn_k
    rows, _ = synthetic_rows(600, seed=1, prefix="a")
    write_image_rows(graph_store, rows, 500)
    keys, matrix = stored_embeddings(graph_store)
    similarity = matrix @ matrix.T
    np.fill_diagonal(similarity, -np.inf)
    # A cut inside the cosine range of the k nearest, so that some but not all edges go.
    cut = float(np.quantile(np.sort(similarity, axis=1)[:, -k:], 0.3))
    cut_settings = settings.model_copy(update={"min_cosine": cut})

    report = build_edges(graph_store, cut_settings)
    assert report.mode == "bulk" and report.pending == 600
    edges = stored_edges(graph_store)
    weights = np.array([edge["weight"] for edge in edges])
    assert weights.min() >= cut
    position = {key: i for i, key in enumerate(keys)}
    degree = np.zeros(len(keys), dtype=int)
    for edge in edges:
        degree[position[edge["a"]]] += 1
        degree[position[edge["b"]]] += 1
    top, _ = exact_top_k(matrix, k)
    allowed = (np.take_along_axis(similarity, top, axis=1) >= cut).sum(axis=1)
    assert (degree >= allowed).all(), "only the minimum cosine removes kNN edges"
    assert (allowed < k).any(), "the cut is effective"

    # 30 new images (5%): incremental, and with the cut still applied.
    new_rows, _ = synthetic_rows(30, seed=2, prefix="b")
    write_image_rows(graph_store, new_rows, 500)
    report = build_edges(graph_store, cut_settings)
    assert (report.mode, report.pending, report.linked_before) == ("incremental", 30, 600)
    assert min(edge["weight"] for edge in stored_edges(graph_store)) >= cut
    assert build_edges(graph_store, cut_settings).mode == "none"


def test_a_batch_that_keeps_killing_its_worker_is_split_then_reported(
    graph_store: GraphStore, ingest_worker: str, settings: Settings, tmp_path
) -> None:
    """Simulates worker deaths by pre-counting deliveries (the counter a real death leaves)."""
    wipe(graph_store)
    files = sorted(BUNDLED_IMAGES.glob("*.png"))[:3]
    plan = plan_ingest(files, settings)
    tracker = JobTracker.from_settings(settings)
    crashes = settings.ingest_max_crashes
    for _ in range(crashes):  # the whole 3-file batch died `crashes` times ...
        tracker.count_delivery("crashy", "embed:b000000:0")
    for _ in range(crashes):  # ... and so did the first file on its own
        tracker.count_delivery("crashy", "embed:b000000.0:0")
    submit(plan, settings, job_id="crashy")
    final = follow(tracker, "crashy", lambda _: None, timeout_s=300)
    assert (final.status, final.done, final.failed) == ("done", 2, 1)
    [(file, reason)] = tracker.failures("crashy")
    assert file == str(files[0]) and "worker process died" in reason
    assert tracker.recorded_batches("crashy") == {"b000000", "b000000.0", "b000000.1", "b000000.2"}


def test_a_stalled_job_with_nothing_in_flight_is_resumed_once(stack: Settings) -> None:
    """A batch whose message was lost (see StallWatch): follow() resends it, and only then."""
    tracker = JobTracker.from_settings(stack)
    job_id = f"stall-{time.time_ns()}"
    assert tracker.create(job_id, total=4, source="test")
    tracker.record_batch(job_id, "b0", 2, [])
    stalled_at: list[int] = []

    def resend_missing() -> None:  # what submit() of the same job does: the lost batch arrives
        tracker.record_batch(job_id, "b1", 2, [])
        tracker.update(job_id, status="done")

    # The broker's queues are the session's, where other tests may leave messages: an empty
    # database of the same Redis stands for "nothing in flight".
    idle_broker = stack.model_copy(update={"redis_url": f"{stack.broker_url.rsplit('/', 1)[0]}/14"})
    watch = StallWatch(
        resume=resend_missing, in_flight=lambda: messages_in_flight(idle_broker), stall_s=1.0,
        on_resume=lambda progress: stalled_at.append(progress.remaining),
    )  # fmt: skip
    final = follow(tracker, job_id, lambda progress: None, poll_s=0.1, timeout_s=30, watch=watch)

    assert (final.status, final.done, stalled_at) == ("done", 4, [2])


def test_a_job_with_work_in_flight_is_not_resumed(stack: Settings) -> None:
    tracker = JobTracker.from_settings(stack)
    job_id = f"busy-{time.time_ns()}"
    assert tracker.create(job_id, total=4, source="test")
    resumed: list[bool] = []
    watch = StallWatch(resume=lambda: resumed.append(True), in_flight=lambda: 1, stall_s=0.2)

    with pytest.raises(TimeoutError):
        follow(tracker, job_id, lambda progress: None, poll_s=0.1, timeout_s=1.5, watch=watch)
    assert resumed == []


def test_messages_in_flight_counts_queued_and_unacknowledged(stack: Settings) -> None:
    import redis

    broker = stack.model_copy(update={"redis_url": f"{stack.broker_url.rsplit('/', 1)[0]}/13"})
    client = redis.Redis.from_url(broker.broker_url)
    client.flushdb()
    assert messages_in_flight(broker) == 0
    client.lpush("embed", "m1", "m2")
    client.lpush("graph", "m3")
    client.hset("unacked", "tag-1", "m4")
    assert messages_in_flight(broker) == 4
    client.flushdb()

"""Celery tasks of an ingest job: embed a batch of files, write its nodes, link the images.

::

    client ──embed_batch×B──▶ [embed]  read, hash, decode, embed (model loaded once per process)
                               └─ write_images ──▶ [graph]  MERGE :Image/:Patient, count batch
                                                     └─ (last batch) link_images ──▶ [graph]
                                                          bulk or incremental SIMILAR edges

Every task is idempotent and acknowledged late. Transient Neo4j and Redis errors are retried
with exponential backoff; unusable files are never retried, they become (file, reason)
failures of the job. A task that still fails after its retries reports its files as failed, so
a job always ends. An embedding task whose worker process keeps dying (a file that crashes the
decoder or exhausts memory) is split into one task per file after ``ingest_max_crashes``
deaths; a single file that still kills the worker is reported as failed.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import Any

import kombu.exceptions
import redis
from celery import Task

from services.communities.freshness import assign_new_images
from services.config import Settings, get_settings
from services.encoder.imaging import ReadLimits
from services.graph.store import TRANSIENT_NEO4J_ERRORS, GraphStore
from services.ingest.edges import build_edges
from services.ingest.jobs import JobTracker
from services.ingest.pipeline import FileEntry, embed_files, stored_keys, write_image_rows
from services.jobs import EMBED_BATCH, EMBED_QUEUE, GRAPH_QUEUE, LINK_IMAGES, WRITE_IMAGES
from services.paths import NOT_UNDER_ROOTS, resolve_under_roots
from services.secrets import patient_key_secret
from workers.celery_app import app

logger = logging.getLogger(__name__)

RETRYABLE_ERRORS = (
    *TRANSIENT_NEO4J_ERRORS,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.BusyLoadingError,
    # The broker (Redis) did not take a message this task sends (kombu wraps the connection
    # error): retried like any Redis outage, never counted as failed files.
    kombu.exceptions.OperationalError,
)
EDGE_LOCK = "medgraph:ingest:edge-lock"
EDGE_LOCK_TTL_S = 60
EDGE_LOCK_RETRY_S = 5


class IngestTask(Task):
    """Retries with exponential backoff (2, 4, 8 ... s, at most 5 min, jittered)."""

    abstract = True
    autoretry_for = RETRYABLE_ERRORS
    retry_backoff = 2
    retry_backoff_max = 300
    retry_jitter = True
    max_retries = get_settings().task_max_retries
    acks_late = True
    reject_on_worker_lost = True

    def on_failure(
        self, exc: BaseException, task_id: str, args: tuple, kwargs: dict, einfo: Any
    ) -> None:
        """After the last retry (or an unexpected error): the job still ends, with the files
        of this task reported as failed and the reason."""
        handler = _FAILURE_HANDLERS.get(self.name)
        if handler is None:
            return
        reason = f"{type(exc).__name__}: {exc}"
        try:
            handler(reason, *args, **kwargs)
        except Exception:  # the handler itself needs Redis/Neo4j; say so, do not mask exc
            logger.exception("could not record the failure of %s[%s]", self.name, task_id)


@cache
def tracker() -> JobTracker:
    return JobTracker.from_settings(get_settings())


def graph_store() -> GraphStore:
    return GraphStore.from_settings(get_settings())


# --- the model, once per worker process ------------------------------------------------------
class LazyExtractor:
    """The process's image encoder: its model version is known from the checkpoint file alone,
    the network is loaded on the first image that needs embedding (after the pool forked), and
    again only when the checkpoint file changes."""

    def __init__(self, path: Path, settings: Settings) -> None:
        # defers torch: a graph-queue worker process never loads it
        from services.encoder.extractor import FeatureExtractor

        self.stamp = (str(path), path.stat().st_mtime)
        self.extractor = FeatureExtractor(
            path, settings.encoder_device, batch_size=settings.embed_batch_size
        )
        self._lock = threading.Lock()

    @property
    def model_version(self) -> str:
        return self.extractor.model_version

    def embed_with_findings(self, images: list[Any]) -> tuple[Any, Any]:
        with self._lock:
            if not self.extractor.loaded:
                import torch

                torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "0")) or
                                      torch.get_num_threads())  # fmt: skip
                logger.info("loading encoder checkpoint %s", self.extractor.checkpoint_path)
                self.extractor.load()
        return self.extractor.embed_with_findings(images)


_extractor: LazyExtractor | None = None


def checkpoint_path(settings: Settings) -> Path:
    # defers torch: a graph-queue worker process never loads it
    from services.encoder.default_checkpoint import default_checkpoint_path
    from services.encoder.training.demo_checkpoint import ensure_demo_checkpoint

    path = default_checkpoint_path(settings)
    return path if path.is_file() else ensure_demo_checkpoint(settings)


def extractor_for(settings: Settings) -> LazyExtractor:
    global _extractor
    path = checkpoint_path(settings)
    if _extractor is None or _extractor.stamp != (str(path), path.stat().st_mtime):
        _extractor = LazyExtractor(path, settings)
    return _extractor


# --- tasks -----------------------------------------------------------------------------------
@app.task(bind=True, base=IngestTask, name=EMBED_BATCH)
def embed_batch(self: Task, job_id: str, batch_id: str, entries: list[FileEntry]) -> dict:
    """Embed one batch of files and hand the rows to ``write_images`` on the graph queue."""
    settings = get_settings()
    starts = tracker().count_delivery(job_id, f"embed:{batch_id}:{self.request.retries}")
    if starts > settings.ingest_max_crashes:
        return _isolate_crashing_batch(job_id, batch_id, entries, starts - 1)

    # A task can reach Redis without passing through the API or the CLI: every path is checked
    # against this worker's own data roots, with the same words for "outside" and "missing".
    allowed, refused = split_by_roots(entries, settings.data_roots)
    extractor = extractor_for(settings)
    store = graph_store()
    outcome = embed_files(
        allowed,
        extractor,
        limits=ReadLimits.from_settings(settings),
        secret=patient_key_secret(settings),
        lookup_known=lambda keys: stored_keys(store, keys, extractor.model_version),
        batch_size=settings.embed_batch_size,
        keep_name_keys=settings.keep_original_name_keys,
    )
    failures = refused + outcome.failures
    write_images.apply_async((job_id, batch_id, outcome.rows, failures), queue=GRAPH_QUEUE)
    return {"rows": len(outcome.rows), "failed": len(failures),
            "embedded": outcome.embedded, "reused": outcome.reused}  # fmt: skip


def split_by_roots(
    entries: list[FileEntry], roots: list[Path]
) -> tuple[list[FileEntry], list[tuple[str, str]]]:
    """(entries under a data root, (path, reason) for every other one)."""
    allowed: list[FileEntry] = []
    refused: list[tuple[str, str]] = []
    for entry in entries:
        if resolve_under_roots(str(entry.get("path", "")), roots) is None:
            refused.append((str(entry.get("path", "")), NOT_UNDER_ROOTS))
            logger.warning("refused a task path outside the data roots")
        else:
            allowed.append(entry)
    return allowed, refused


def _isolate_crashing_batch(
    job_id: str, batch_id: str, entries: list[FileEntry], deaths: int
) -> dict:
    if len(entries) > 1:
        logger.warning("batch %s of job %s killed its worker %d times; splitting it",
                       batch_id, job_id, deaths)  # fmt: skip
        for position, entry in enumerate(entries):
            embed_batch.apply_async((job_id, f"{batch_id}.{position}", [entry]), queue=EMBED_QUEUE)
        # The parent batch counts nothing itself (its files count in the sub-batches); recording
        # it keeps a resumed job from sending it again.
        tracker().record_batch(job_id, batch_id, 0, [])
        return {"split": len(entries)}
    reason = (
        f"the worker process died {deaths} times while reading or embedding this file "
        "(it crashes the decoder or exhausts memory)"
    )
    write_images.apply_async(
        (job_id, batch_id, [], [(entry["path"], reason) for entry in entries]), queue=GRAPH_QUEUE
    )
    return {"failed": len(entries)}


@app.task(bind=True, base=IngestTask, name=WRITE_IMAGES)
def write_images(
    self: Task,
    job_id: str,
    batch_id: str,
    rows: list[dict[str, Any]],
    failures: list[list[str]],
) -> dict:
    """MERGE the batch's nodes, count the batch once, start linking after the last batch."""
    settings = get_settings()
    written = write_image_rows(graph_store(), rows, settings.write_batch_size) if rows else 0
    record = tracker().record_batch(
        job_id, batch_id, len(rows), [(str(file), str(reason)) for file, reason in failures]
    )
    if record.complete:
        _start_linking(job_id, record.newly_recorded)
    return {"written": written, "failed": len(failures)}


def _start_linking(job_id: str, newly_completed: bool) -> None:
    """Enqueue ``link_images`` once the job's files are all accounted for.

    The batch that completes the job enqueues it; a redelivered or retried task of a job whose
    linking was never enqueued (its first attempt died in between) enqueues it too. A duplicate
    is harmless: linking takes a lock and finds nothing left to do.
    """
    progress = tracker().progress(job_id)
    if progress.finished:
        return
    if newly_completed or not progress.get("linking_enqueued_at"):
        # Status first: a fast link_images must not have its "done" overwritten by "linking".
        tracker().update(job_id, status="linking")
        link_images.apply_async((job_id,), queue=GRAPH_QUEUE)
        tracker().update(job_id, linking_enqueued_at=f"{time.time():.3f}")


@app.task(bind=True, base=IngestTask, name=LINK_IMAGES)
def link_images(self: Task, job_id: str | None = None, mode: str | None = None) -> dict:
    """SIMILAR edges for every image still without them (this job's and any left over)."""
    settings = get_settings()
    jobs = tracker()
    if mode is None and job_id is not None:
        mode = jobs.progress(job_id).get("edge_mode_requested", "auto") or "auto"
    with edge_lock(jobs.client) as acquired:
        if not acquired:
            raise self.retry(countdown=EDGE_LOCK_RETRY_S, max_retries=None)
        store = graph_store()
        report = build_edges(store, settings, mode or "auto")
        # New images join the existing community with the best modularity gain (no-op before
        # the first clustering run); a full re-run is `medgraph cluster --if-stale`, scheduled.
        unassigned = [row["key"] for row in store.query("community_unassigned_keys")]
        communities_assigned = len(assign_new_images(store, unassigned))
    summary = {
        "status": "done",
        "edge_mode": report.mode,
        "edges_merged": report.edges_merged,
        "reciprocal_edges": report.reciprocal,
        "images_linked": report.pending,
        "edge_seconds": round(report.total_s, 3),
        "communities_assigned": communities_assigned,
        "finished_at": f"{time.time():.3f}",
    }
    if job_id is not None:
        jobs.update(job_id, **summary)
        record_job_node(store, job_id)
    logger.info("linked %d images (%s) in %.1fs", report.pending, report.mode, report.total_s)
    return report.as_dict()


def record_job_node(store: GraphStore, job_id: str) -> None:
    """Mirror the job's counts and outcome onto its ``:IngestJob`` node."""
    progress = tracker().progress(job_id)
    props: dict[str, Any] = {
        "status": progress.status,
        "total": progress.total,
        "done": progress.done,
        "failed": progress.failed,
    }
    for name in ("source", "labels", "edge_mode", "edges_merged", "error"):
        if progress.get(name):
            props[name] = progress.get(name)
    store.query("ingest_job_upsert", id=job_id, props=props)


@contextmanager
def edge_lock(client: redis.Redis) -> Iterator[bool]:
    """One edge build at a time across all workers; the lock lives while its holder does.

    A short TTL renewed by a heartbeat thread, so a worker killed mid-build frees the lock
    within ``EDGE_LOCK_TTL_S`` seconds.
    """
    lock = client.lock(EDGE_LOCK, timeout=EDGE_LOCK_TTL_S, thread_local=False)
    if not lock.acquire(blocking=False):
        yield False
        return
    stop = threading.Event()

    def heartbeat() -> None:
        while not stop.wait(EDGE_LOCK_TTL_S / 3):
            try:
                lock.extend(EDGE_LOCK_TTL_S, replace_ttl=True)
            except redis.RedisError:
                logger.warning("could not renew the edge-building lock")

    thread = threading.Thread(target=heartbeat, name="edge-lock-heartbeat", daemon=True)
    thread.start()
    try:
        yield True
    finally:
        stop.set()
        thread.join()
        try:
            lock.release()
        except redis.RedisError:
            logger.warning("the edge-building lock had already expired")


# --- when a task gives up --------------------------------------------------------------------
def _embedding_gave_up(
    reason: str, job_id: str, batch_id: str, entries: list[FileEntry], *_: Any, **__: Any
) -> None:
    failures = [(entry["path"], f"embedding task failed: {reason}") for entry in entries]
    _record_given_up(job_id, batch_id, failures)


def _writing_gave_up(
    reason: str, job_id: str, batch_id: str, rows: list[dict[str, Any]],
    failures: list[list[str]], *_: Any, **__: Any,
) -> None:  # fmt: skip
    lost = [(str(row.get("path", "")), f"could not store the image: {reason}") for row in rows]
    _record_given_up(job_id, batch_id, [(str(f), str(r)) for f, r in failures] + lost)


def _record_given_up(job_id: str, batch_id: str, failures: list[tuple[str, str]]) -> None:
    record = tracker().record_batch(job_id, batch_id, 0, failures)
    if record.complete:
        _start_linking(job_id, record.newly_recorded)


def _linking_gave_up(reason: str, job_id: str | None = None, *_: Any, **__: Any) -> None:
    if job_id is None:
        return
    tracker().update(job_id, status="failed", error=f"building SIMILAR edges failed: {reason}")
    record_job_node(graph_store(), job_id)


_FAILURE_HANDLERS = {
    EMBED_BATCH: _embedding_gave_up,
    WRITE_IMAGES: _writing_gave_up,
    LINK_IMAGES: _linking_gave_up,
}

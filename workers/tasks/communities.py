"""Celery tasks of the community job (registered by workers/celery_app.py's include list)."""

from __future__ import annotations

from typing import Any

from celery import shared_task

from services.communities.detection import ClusteringInProgress
from services.communities.freshness import staleness
from services.communities.job import run_clustering
from services.config import get_settings
from services.graph.store import TRANSIENT_NEO4J_ERRORS, GraphStore
from services.jobs import CLUSTER


@shared_task(
    name=CLUSTER,
    autoretry_for=TRANSIENT_NEO4J_ERRORS,
    retry_backoff=True,
    max_retries=3,
)
def cluster_task(
    algorithm: str | None = None, resolution: float | None = None, seed: int | None = None,
    if_stale: bool = False,
) -> dict[str, Any]:  # fmt: skip
    """A full clustering run (or none when ``if_stale`` and the clustering is fresh).

    Returns ``{"ran": bool, "staleness": {...}, **summary}`` (JSON-serialisable); ``ran`` is
    False with a ``reason`` when another run is in progress.
    """
    settings = get_settings()
    store = GraphStore.from_settings(settings)
    state = staleness(store, settings)
    report: dict[str, Any] = {"staleness": {**state.__dict__}}
    if if_stale and not state.stale:
        return {"ran": False, **report}
    try:
        summary = run_clustering(
            store, settings, algorithm=algorithm, resolution=resolution, seed=seed
        )
    except ClusteringInProgress as busy:
        # Several triggers (ingest batches, a schedule) may ask at once; one run is enough.
        return {"ran": False, "reason": str(busy), **report}
    return {"ran": True, **report, **summary.as_dict()}

"""A clustering job's status comes from one snapshot of its Celery meta (no services needed).

``cluster_status`` used to read ``AsyncResult.state`` three times and ``.result`` once, each a
separate Redis read while the task was unfinished: a task finishing between them gave ``done``
with an empty detail. The status is now a pure function of one ``get_task_meta`` snapshot.
"""

from __future__ import annotations

import pytest

from services.api.blueprints.jobs import CELERY_STATES, cluster_job_status

JOB = "cluster-00000000-0000-0000-0000-000000000000"
SUMMARY = {"ran": True, "staleness": {"stale": False}, "communities": 3}


@pytest.mark.parametrize(
    ("meta", "state", "detail"),
    [
        ({"status": "PENDING", "result": None}, "queued", {}),
        ({"status": "RETRY", "result": ConnectionError("neo4j")}, "running", {}),
        ({"status": "STARTED", "result": {"pid": 1}}, "running", {}),
        ({"status": "SUCCESS", "result": SUMMARY}, "done", SUMMARY),
        ({"status": "SUCCESS", "result": {"ran": False, "reason": "busy"}}, "done",
         {"ran": False, "reason": "busy"}),
        ({"status": "FAILURE", "result": ValueError("boom")}, "failed",
         {"error": "ValueError: boom"}),
        ({"status": "REVOKED", "result": None}, "failed", {}),
    ],
)  # fmt: skip
def test_a_snapshot_maps_to_one_status(meta: dict, state: str, detail: dict) -> None:
    status = cluster_job_status(JOB, meta)
    assert (status.id, status.kind, status.state, status.detail) == (JOB, "cluster", state, detail)


@pytest.mark.parametrize("celery_state", sorted(CELERY_STATES))
def test_done_always_carries_the_task_return_value(celery_state: str) -> None:
    status = cluster_job_status(JOB, {"status": celery_state, "result": SUMMARY})
    assert (status.state == "done") == (celery_state == "SUCCESS")
    if status.state == "done":
        assert status.detail["ran"] is True

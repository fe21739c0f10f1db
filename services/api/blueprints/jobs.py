"""Background jobs: ingest (services/ingest) and clustering (services/communities).

Ingest jobs are the ingestion package's own (``plan_ingest`` + ``submit``; progress kept in Redis
by its ``JobTracker``). A clustering job is the ``medgraph.communities.cluster`` Celery task, sent
by name through ``services.jobs`` with a task id ``cluster-<uuid>`` and its result kept, so its
state can be read back. The API never imports the workers.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from flask import Blueprint

from services import jobs
from services.api.context import ApiContext, api_context
from services.api.errors import ApiError
from services.api.routing import operation
from services.api.schemas import ClusterJobRequest, IngestJobRequest, JobStatus
from services.ingest.jobs import JobTracker, UnknownJob
from services.ingest.submit import IngestError, keep_file, plan_ingest, submit
from services.paths import NOT_UNDER_ROOTS, resolve_under_roots, upload_folder

jobs_bp = Blueprint("jobs", __name__, url_prefix="/api/v1")
CLUSTER_PREFIX = "cluster-"


def under_data_roots(context: ApiContext, raw: str, what: str) -> Path:
    """``raw`` resolved, when it exists and lies under a data root; ApiError otherwise.

    Outside the roots, a missing path and an existing one get the same answer."""
    if not Path(raw).is_absolute():
        raise ApiError(422, f"{what} must be an absolute path, got {raw!r}")
    resolved = resolve_under_roots(raw, context.settings.data_roots)
    if resolved is None:
        raise ApiError(422, f"{what} {raw!r} {NOT_UNDER_ROOTS}")
    return resolved


def start_ingest(context: ApiContext, paths: list[Path], labels: Path | None) -> str:
    try:
        plan = plan_ingest(paths, context.settings, labels_csv=labels)
        return submit(plan, context.settings).job_id
    except (IngestError, ValueError) as problem:
        raise ApiError(422, f"cannot start the ingest: {problem}") from None


def keep_upload_and_ingest(context: ApiContext, data: bytes, key: str, source_format: str) -> str:
    """Stores an uploaded query under the upload folder and ingests it; returns the job id."""
    target = keep_file(upload_folder(context.settings), data, key, source_format)
    return start_ingest(context, [under_data_roots(context, str(target), "upload folder")], None)


@operation(
    jobs_bp,
    "/jobs/ingest",
    method="POST",
    scope="write",
    summary="Ingest image files or folders that lie under a data root",
    tag="jobs",
    body=IngestJobRequest,
    response=JobStatus,
    status=202,
    errors=(400, 415, 422),
)
def submit_ingest(body: IngestJobRequest) -> JobStatus:
    context = api_context()
    paths = [under_data_roots(context, raw, "path") for raw in body.paths]
    labels = under_data_roots(context, body.labels, "labels") if body.labels else None
    job_id = start_ingest(context, paths, labels)
    return ingest_status(context, job_id)


@operation(
    jobs_bp,
    "/jobs/cluster",
    method="POST",
    scope="write",
    summary="Recompute the communities (a full clustering run)",
    tag="jobs",
    body=ClusterJobRequest,
    response=JobStatus,
    status=202,
    errors=(400, 415, 422),
)
def submit_cluster(body: ClusterJobRequest) -> JobStatus:
    options = body.model_dump(exclude_none=True)
    job_id = f"{CLUSTER_PREFIX}{uuid.uuid4()}"
    settings = api_context().settings
    jobs.remember_job(settings, job_id)
    jobs.send(settings, jobs.CLUSTER, kwargs=options, task_id=job_id, ignore_result=False)
    return JobStatus(id=job_id, kind="cluster", state="queued", detail={"parameters": options})


@operation(
    jobs_bp,
    "/jobs/<job_id>",
    scope="read",
    summary="State of an ingest or clustering job",
    tag="jobs",
    response=JobStatus,
    errors=(404,),
)
def job_status(job_id: str) -> JobStatus:
    context = api_context()
    if job_id.startswith(CLUSTER_PREFIX):
        return cluster_status(job_id)
    return ingest_status(context, job_id)


def ingest_status(context: ApiContext, job_id: str) -> JobStatus:
    try:
        progress = JobTracker.from_settings(context.settings).progress(job_id)
    except (UnknownJob, ValueError):
        raise ApiError(404, f"no job has the id {job_id!r}") from None
    detail: dict[str, Any] = {
        "total": progress.total,
        "done": progress.done,
        "failed": progress.failed,
        "remaining": progress.remaining,
        "finished": progress.finished,
    }
    for name in ("edge_mode", "edges_written", "started_at", "updated_at", "finished_at", "error"):
        if name in progress.fields:
            detail[name] = progress.fields[name]
    return JobStatus(id=job_id, kind="ingest", state=progress.status, detail=detail)


CELERY_STATES = {
    "PENDING": "queued",  # Celery cannot tell "queued" from "unknown id": both are PENDING
    "RECEIVED": "queued",
    "STARTED": "running",
    "RETRY": "running",
    "SUCCESS": "done",
    "FAILURE": "failed",
    "REVOKED": "failed",
}


def cluster_status(job_id: str) -> JobStatus:
    settings = api_context().settings
    meta = jobs.task_meta(settings, job_id)  # state and result from one read, never mixed
    if meta["status"] == "PENDING" and not jobs.job_was_sent(settings, job_id):
        raise ApiError(404, f"no job has the id {job_id!r}")
    return cluster_job_status(job_id, meta)


def cluster_job_status(job_id: str, meta: dict[str, Any]) -> JobStatus:
    """The job status of one snapshot of the task's stored meta (``status``, ``result``)."""
    state, value = meta["status"], meta.get("result")
    detail: dict[str, Any] = {}
    if state == "SUCCESS" and isinstance(value, dict):
        detail = value
    elif state == "FAILURE":
        detail = {"error": f"{type(value).__name__}: {value}"}
    return JobStatus(
        id=job_id, kind="cluster", state=CELERY_STATES.get(state, "running"), detail=detail
    )

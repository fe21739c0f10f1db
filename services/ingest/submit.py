"""The client side of an ingest: plan the files, attach labels, enqueue, follow the job."""

from __future__ import annotations

import csv
import hashlib
import secrets
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import redis

from services import jobs
from services.config import Settings
from services.encoder.labels import read_labels
from services.graph.store import GraphStore
from services.ingest.discovery import discover
from services.ingest.jobs import JobProgress, JobTracker, check_job_id
from services.ingest.pipeline import FileEntry, patient_key
from services.paths import resolve_under_roots
from services.privacy import seal_source
from services.secrets import patient_key_secret


class IngestError(ValueError):
    """The ingest cannot start (no files, a job id reused for other files...)."""


@dataclass
class IngestPlan:
    entries: list[FileEntry]
    skipped: list[Path] = field(default_factory=list)  # non-image files in the folders
    labelled: int = 0
    labels_path: Path | None = None
    source: str = ""

    def digest(self) -> str:
        """Identity of the file list, so a resumed job id must name the same files."""
        joined = "\n".join(entry["path"] for entry in self.entries)
        return hashlib.sha256(joined.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class SubmitResult:
    job_id: str
    batches_sent: int
    batches_total: int
    resumed: bool


def new_job_id() -> str:
    return f"ingest-{datetime.now(UTC):%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"


def plan_ingest(
    paths: list[Path],
    settings: Settings,
    labels_csv: Path | None = None,
    images_dir: Path | None = None,
    label_format: str = "auto",
) -> IngestPlan:
    """The job's files with their findings and patient keys (raw patient ids stop here)."""
    discovery = discover(paths)
    outside = [
        file for file in discovery.files if resolve_under_roots(file, settings.data_roots) is None
    ]
    if outside:
        roots = ", ".join(str(root) for root in settings.data_roots)
        raise IngestError(
            f"{len(outside)} of {len(discovery.files)} file(s) are not under a data root "
            f"(MEDGRAPH_DATA_ROOTS: {roots}), e.g. {outside[0]}; the workers would refuse them"
        )
    by_path: dict[Path, tuple[tuple[str, ...], str]] = {}
    by_name: dict[str, tuple[tuple[str, ...], str] | None] = {}
    if labels_csv is not None:
        table = read_labels(labels_csv, images_dir, label_format)
        for record in table.records:
            label = (record.findings, record.patient_id)
            by_path[record.image_path.resolve()] = label
            name = record.image_path.name
            by_name[name] = None if name in by_name else label  # None: ambiguous name
    secret = patient_key_secret(settings)
    entries: list[FileEntry] = []
    labelled = 0
    for file in discovery.files:
        label = by_path.get(file.resolve()) or by_name.get(file.name)
        if label is None:
            entries.append(FileEntry(path=str(file), findings=None, patient_key=None))
            continue
        findings, raw_patient_id = label
        entries.append(
            FileEntry(
                path=str(file),
                findings=list(findings),
                patient_key=patient_key(secret, raw_patient_id),
            )
        )
        labelled += 1
    source = ", ".join(str(Path(path).absolute()) for path in paths)
    return IngestPlan(entries, discovery.skipped, labelled, labels_csv, source)


UPLOAD_SUFFIXES = {"png": ".png", "jpeg": ".jpg", "dicom": ".dcm"}


def keep_file(folder: Path, data: bytes, key: str, source_format: str) -> Path:
    """``data`` stored once as ``folder/<key>.<suffix>`` (written whole, then renamed, so a
    crash never leaves a partial file under the final name); the path."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{key}{UPLOAD_SUFFIXES.get(source_format, '')}"
    if not target.exists():
        partial = target.with_name(f".{target.name}.{uuid.uuid4().hex}.partial")
        partial.write_bytes(data)
        partial.replace(target)
    return target


def batches_of(entries: list[FileEntry], size: int) -> list[tuple[str, list[FileEntry]]]:
    return [
        (f"b{start // size:06d}", entries[start : start + size])
        for start in range(0, len(entries), size)
    ]


def submit(
    plan: IngestPlan,
    settings: Settings,
    job_id: str | None = None,
    edge_mode: str = "auto",
) -> SubmitResult:
    """Create (or resume) the job and enqueue its embedding tasks.

    Resuming a job id sends only the batches not yet counted; the file list must be the same.
    """
    if not plan.entries:
        raise IngestError(f"no image files found in {plan.source}")
    job_id = check_job_id(job_id) if job_id else new_job_id()
    tracker = JobTracker.from_settings(settings)
    batches = batches_of(plan.entries, settings.ingest_files_per_task)
    # The job record keeps what was ingested only sealed: a path may name a patient.
    secret = patient_key_secret(settings)
    source = seal_source(secret, plan.source)
    labels = seal_source(secret, str(plan.labels_path)) if plan.labels_path else ""
    created = tracker.create(
        job_id,
        total=len(plan.entries),
        source=source,
        labels=labels or None,
        files_digest=plan.digest(),
        edge_mode_requested=edge_mode,
        batches=len(batches),
    )
    recorded: set[str] = set()
    if not created:
        progress = tracker.progress(job_id)
        if progress.get("files_digest") != plan.digest():
            raise IngestError(
                f"job {job_id} exists for a different set of files; choose another --job-id"
            )
        recorded = tracker.recorded_batches(job_id)
    GraphStore.from_settings(settings).query(
        "ingest_job_upsert", id=job_id,
        props={"status": "queued" if created else "resumed", "total": len(plan.entries),
               "source": source, "labels": labels},
    )  # fmt: skip
    missing = [(batch_id, entries) for batch_id, entries in batches if batch_id not in recorded]
    celery = jobs.client(settings)
    with celery.producer_or_acquire() as producer:
        for batch_id, entries in missing:
            celery.send_task(
                jobs.EMBED_BATCH, (job_id, batch_id, entries), queue=jobs.EMBED_QUEUE,
                producer=producer, ignore_result=True,
            )  # fmt: skip
        if not created and not missing and not tracker.progress(job_id).finished:
            # Every file was counted but linking never finished: start it again.
            celery.send_task(jobs.LINK_IMAGES, (job_id,), producer=producer, ignore_result=True)
    return SubmitResult(job_id, len(missing), len(batches), resumed=not created)


def messages_in_flight(settings: Settings) -> int:
    """Celery messages queued on the ingest queues or delivered and not yet acknowledged."""
    client = redis.Redis.from_url(settings.broker_url)
    try:
        queued = sum(int(client.llen(queue)) for queue in jobs.QUEUES)  # type: ignore[arg-type]
        return queued + int(client.hlen("unacked"))  # type: ignore[arg-type]
    finally:
        client.close()


@dataclass(frozen=True)
class StallWatch:
    """Resume a job that stopped moving with no Celery message left anywhere.

    Kombu's Redis transport records a message as unacknowledged only after the worker has read
    it from the queue, so a worker killed (or Redis restarted) in that gap loses the message,
    and with it a batch the job still waits for. When the job has not moved for ``stall_s``
    and nothing is queued or unacknowledged, ``resume`` (a re-submit of the same job and
    files, which sends only the batches never counted) gets it going again.
    """

    resume: Callable[[], object]
    in_flight: Callable[[], int]
    stall_s: float = 30.0
    on_resume: Callable[[JobProgress], None] = lambda progress: None


def follow(
    tracker: JobTracker,
    job_id: str,
    on_progress: Callable[[JobProgress], None],
    poll_s: float = 0.5,
    timeout_s: float | None = None,
    watch: StallWatch | None = None,
) -> JobProgress:
    """Poll the job until it is finished; ``on_progress`` sees every poll."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    last_state: tuple[str, int, int] | None = None
    last_change = time.monotonic()
    while True:
        progress = tracker.progress(job_id)
        on_progress(progress)
        if progress.finished:
            return progress
        now = time.monotonic()
        state = (progress.status, progress.done, progress.failed)
        if state != last_state:
            last_state, last_change = state, now
        elif watch is not None and now - last_change >= watch.stall_s and watch.in_flight() == 0:
            watch.on_resume(progress)
            watch.resume()
            last_change = now
        if deadline is not None and now > deadline:
            raise TimeoutError(f"job {job_id} did not finish within {timeout_s:.0f}s")
        time.sleep(poll_s)


def report_path(settings: Settings, job_id: str) -> Path:
    folder = settings.ingest_report_dir or settings.home / "ingest-reports"
    return folder / f"{job_id}-failures.csv"


def write_failure_report(path: Path, failures: list[tuple[str, str]]) -> Path:
    """CSV with columns file, reason; written even when empty, so scripts can rely on it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "reason"])
        writer.writerows(failures)
    return path

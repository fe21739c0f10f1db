"""`medgraph ingest`, `medgraph ingest-status` and `medgraph worker`.

Registered on the main CLI group with one ``main.add_command(...)`` line each.

Exit status of ``ingest --wait`` and ``ingest-status``: 0 every file stored and linked (or the
job is still running, for ``ingest-status`` without ``--wait``); 3 the job finished but some
files failed (see the failure report); 1 the job could not run or its edge building failed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import click
import kombu.exceptions
import redis
from tqdm import tqdm

from services.config import Settings, get_settings
from services.encoder.labels import LabelFileError
from services.graph.store import TRANSIENT_NEO4J_ERRORS, GraphStore
from services.ingest.discovery import DiscoveryError
from services.ingest.jobs import JobProgress, JobTracker, UnknownJob
from services.ingest.local_worker import LocalWorker, listening_queues
from services.ingest.orthanc_feed import OrthancFeed
from services.ingest.submit import (
    IngestError,
    StallWatch,
    follow,
    messages_in_flight,
    plan_ingest,
    report_path,
    submit,
    write_failure_report,
)
from services.jobs import QUEUES, worker_argv
from services.runtime.processes import RuntimeProblem
from services.runtime.redis import redact_url

EXIT_FILES_FAILED = 3
EXIT_JOB_FAILED = 1
FAILURES_SHOWN = 10


def _is_user_error(exc: BaseException) -> bool:
    """The user's input or environment is at fault: a message, not a traceback."""
    checkpoint = sys.modules.get("services.encoder.checkpoint")  # imports torch; only if loaded
    kinds: tuple[type[BaseException], ...] = (
        LabelFileError, DiscoveryError, IngestError, RuntimeProblem,
    )  # fmt: skip
    if checkpoint is not None:
        kinds += (checkpoint.CheckpointError,)
    return isinstance(exc, kinds)


def _unreachable_service(exc: BaseException, settings: Settings) -> str | None:
    """A message for Redis or Neo4j being down, the commonest operator mistake."""
    if isinstance(exc, redis.exceptions.ConnectionError | kombu.exceptions.OperationalError):
        where = f"Redis at {redact_url(settings.broker_url)}"
    elif isinstance(exc, TRANSIENT_NEO4J_ERRORS):
        where = f"Neo4j at {settings.bolt_uri}"
    else:
        return None
    return f"cannot reach {where} ({exc}); is the stack running? (medgraph stack start)"


@click.command("ingest")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--labels", "labels_csv", type=click.Path(path_type=Path, dir_okay=False),
    help="NIH ChestX-ray14 or CheXpert label CSV: findings and patient of each file.",
)  # fmt: skip
@click.option(
    "--images-dir", type=click.Path(path_type=Path, file_okay=False),
    help="Folder the CSV's image paths are relative to (default: next to the CSV).",
)  # fmt: skip
@click.option("--label-format", type=click.Choice(["auto", "nih", "chexpert"]), default="auto")
@click.option("--wait/--no-wait", default=True, show_default=True,
              help="Follow the job to its end, or enqueue it and return its id.")  # fmt: skip
@click.option("--job-id", help="Name the job (to resume one, give its id and the same files).")
@click.option(
    "--edges", "edge_mode", type=click.Choice(["auto", "bulk", "incremental"]), default="auto",
    show_default=True, help="SIMILAR edges: exact bulk rebuild, vector-index incremental, or "
    "chosen by the share of new images (incremental_max_ratio).",
)  # fmt: skip
@click.option(
    "--local-worker/--no-local-worker", default=None,
    help="Start a Celery worker for this job. Default: only when none is listening.",
)  # fmt: skip
@click.option("--concurrency", type=click.IntRange(min=1), default=2, show_default=True,
              help="Processes of the local worker.")  # fmt: skip
@click.option(
    "--report", type=click.Path(path_type=Path, dir_okay=False),
    help="Failure report CSV (file, reason). Default: <home>/ingest-reports/<job>-failures.csv.",
)  # fmt: skip
@click.option("--progress/--no-progress", default=True, help="Show the live progress bar.")
def ingest(
    paths: tuple[Path, ...],
    labels_csv: Path | None,
    images_dir: Path | None,
    label_format: str,
    wait: bool,
    job_id: str | None,
    edge_mode: str,
    local_worker: bool | None,
    concurrency: int,
    report: Path | None,
    progress: bool,
) -> None:
    """Ingest PNG/JPEG/DICOM images: a folder (recursively), a list file, or files.

    Each distinct file content becomes one :Image (key = SHA-256 of the bytes) with its
    DenseNet-121 embedding, findings and patient link; then SIMILAR kNN edges are built.
    """
    settings = get_settings()
    started = time.monotonic()
    try:
        plan = plan_ingest(list(paths), settings, labels_csv, images_dir, label_format)
        click.echo(
            f"{len(plan.entries)} image files"
            + (f", {plan.labelled} with labels from {labels_csv}" if labels_csv else "")
            + (f" ({len(plan.skipped)} other files skipped)" if plan.skipped else "")
        )
        if labels_csv and plan.labelled == 0:
            click.secho("warning: no file matched a row of the label CSV", fg="yellow", err=True)
        _ensure_checkpoint(settings)
        missing_queues = set(QUEUES) - listening_queues(settings)
        start_local = local_worker if local_worker is not None else bool(missing_queues)
        if start_local and not wait:
            raise click.UsageError("--local-worker needs --wait (it stops when the job ends)")
        worker = LocalWorker(settings, concurrency) if start_local else None
        if worker is None and missing_queues:
            click.secho(
                f"warning: no worker consumes the {', '.join(sorted(missing_queues))} queue(s); "
                "the job waits in Redis until one starts (medgraph worker)",
                fg="yellow", err=True,
            )  # fmt: skip
        if worker is not None:
            click.echo(f"starting a local worker ({concurrency} processes, log {worker.log_file})")
            worker.start()
        try:
            result = submit(plan, settings, job_id, edge_mode)
            verb = "resumed" if result.resumed else "queued"
            click.echo(
                f"job {result.job_id} {verb}: {result.batches_sent} of {result.batches_total} "
                f"batches sent"
            )
            if not wait:
                click.echo(f"follow it with: medgraph ingest-status {result.job_id} --wait")
                return
            tracker = JobTracker.from_settings(settings)
            final = _follow_with_bar(
                tracker, result.job_id, progress,
                _stall_watch(settings, lambda: submit(plan, settings, result.job_id, edge_mode)),
            )  # fmt: skip
        finally:
            if worker is not None:
                worker.stop()
    except Exception as exc:
        if _is_user_error(exc):
            raise click.ClickException(str(exc)) from None
        unreachable = _unreachable_service(exc, settings)
        if unreachable:
            raise click.ClickException(unreachable) from None
        raise
    except KeyboardInterrupt:
        click.echo("\ninterrupted; queued work stays in Redis for any running worker")
        sys.exit(130)
    sys.exit(_finish(settings, tracker, final, report, time.monotonic() - started))


def _ensure_checkpoint(settings: Settings) -> None:
    """Train the demo encoder here, once, rather than inside a worker task."""
    # defers torch (training imports it): other `medgraph` commands start without it
    from services.encoder.default_checkpoint import default_checkpoint_path
    from services.encoder.training.demo_checkpoint import ensure_demo_checkpoint
    from services.encoder.training.process import train_in_own_process

    if not settings.encoder_checkpoint and not default_checkpoint_path(settings).is_file():
        click.echo("no encoder checkpoint yet: training one on the bundled sets (once)…")
    ensure_demo_checkpoint(settings, echo=click.echo, train=train_in_own_process)


def _stall_watch(settings: Settings, resume: Callable[[], object]) -> StallWatch:
    def say(progress: JobProgress) -> None:
        click.echo(
            f"\njob {progress.job_id} stalled at {progress.remaining} remaining with no task "
            "queued or running anywhere (a lost message): resending what is missing"
        )

    return StallWatch(resume=resume, in_flight=lambda: messages_in_flight(settings), on_resume=say)


def _follow_with_bar(
    tracker: JobTracker, job_id: str, show: bool, watch: StallWatch | None = None
) -> JobProgress:
    bar = None
    linking_announced = False

    def update(progress: JobProgress) -> None:
        nonlocal bar, linking_announced
        if bar is None:
            bar = tqdm(total=progress.total, unit="img", desc="ingest", disable=not show,
                       dynamic_ncols=True, file=sys.stderr)  # fmt: skip
        bar.update(progress.done + progress.failed - bar.n)
        bar.set_postfix(done=progress.done, failed=progress.failed,
                        remaining=progress.remaining, refresh=False)  # fmt: skip
        if progress.status in ("linking", "done", "failed") and not linking_announced:
            linking_announced = True
            bar.close()
            click.echo("building SIMILAR edges…")

    try:
        return follow(tracker, job_id, update, watch=watch)
    finally:
        if bar is not None:
            bar.close()


def _finish(
    settings: Settings,
    tracker: JobTracker,
    progress: JobProgress,
    report: Path | None,
    elapsed_s: float | None = None,
) -> int:
    """Print the summary, write the failure report; returns the exit status."""
    failures = tracker.failures(progress.job_id)
    path = write_failure_report(report or report_path(settings, progress.job_id), failures)
    created = float(progress.get("created_at", "0"))
    updated = float(progress.get("updated_at", "0"))
    seconds = elapsed_s if elapsed_s is not None else max(0.0, updated - created)
    rate = progress.done / seconds if seconds > 0 else 0.0
    click.echo(
        f"job {progress.job_id} {progress.status}: {progress.done} stored, {progress.failed} "
        f"failed, of {progress.total} files in {seconds:.1f}s ({rate:.1f} images/s)"
    )
    if progress.get("edge_mode"):
        click.echo(
            f"edges: {progress.get('edge_mode')}, {progress.get('edges_merged', '0')} SIMILAR "
            f"pairs merged for {progress.get('images_linked', '0')} new images in "
            f"{float(progress.get('edge_seconds', '0')):.1f}s"
        )
    if progress.get("error"):
        click.secho(f"error: {progress.get('error')}", fg="red", err=True)
    for file, reason in failures[:FAILURES_SHOWN]:
        click.echo(f"  failed: {file}: {reason}")
    if len(failures) > FAILURES_SHOWN:
        click.echo(f"  … and {len(failures) - FAILURES_SHOWN} more")
    click.echo(f"failure report: {path}")
    if progress.status == "failed":
        return EXIT_JOB_FAILED
    return EXIT_FILES_FAILED if progress.failed else 0


@click.command("ingest-status")
@click.argument("job_id")
@click.option("--wait", is_flag=True, help="Follow the job until it ends.")
@click.option("--report", type=click.Path(path_type=Path, dir_okay=False),
              help="Where to write the failure report once the job ended.")  # fmt: skip
def ingest_status(job_id: str, wait: bool, report: Path | None) -> None:
    """Progress of an ingest job; the summary and failure report once it ended."""
    settings = get_settings()
    tracker = JobTracker.from_settings(settings)
    try:
        progress = _follow_with_bar(tracker, job_id, True) if wait else tracker.progress(job_id)
    except UnknownJob:
        records = GraphStore.from_settings(settings).query("ingest_job_get", id=job_id)
        if not records:
            raise click.ClickException(f"no ingest job {job_id!r}") from None
        job = dict(records[0]["job"])
        click.echo(f"job {job_id} (progress expired from Redis; summary from Neo4j):")
        for name in sorted(job):
            click.echo(f"  {name}: {job[name]}")
        sys.exit(EXIT_FILES_FAILED if int(job.get("failed", 0) or 0) else 0)
    if not progress.finished:
        click.echo(
            f"job {job_id} {progress.status}: {progress.done} stored, {progress.failed} failed, "
            f"{progress.remaining} remaining of {progress.total}"
        )
        return
    sys.exit(_finish(settings, tracker, progress, report))


@click.command("worker")
@click.option(
    "--queues",
    "-Q",
    default="embed,graph",
    show_default=True,
    help="Comma-separated queues: embed (images -> codes), graph (Neo4j writes).",
)
@click.option(
    "--concurrency",
    "-c",
    type=click.IntRange(min=1),
    default=None,
    help="Pool processes (default: number of CPUs).",
)
@click.option("--loglevel", "-l", default="INFO", show_default=True)
@click.option("--hostname", "-n", default=None, help="Node name (default: celery@<host>).")
def worker(queues: str, concurrency: int | None, loglevel: str, hostname: str | None) -> None:
    """Run a Celery worker (same as: celery -A workers.celery_app worker -Q embed,graph)."""
    chosen = [queue.strip() for queue in queues.split(",") if queue.strip()]
    unknown = sorted(set(chosen) - set(QUEUES))
    if unknown or not chosen:
        raise click.BadParameter(f"unknown queues {unknown}; choose from {list(QUEUES)}")
    argv = worker_argv(chosen, concurrency, hostname, loglevel)
    # The worker replaces this process (same pid, same signals): services never import the
    # Celery app itself, which lives in workers/.
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(argv[0], argv)


@click.group("follow")
def follow_feed() -> None:
    """Feed the archive from a PACS."""


@follow_feed.command("orthanc")
@click.option("--once", is_flag=True, help="Handle what is in the feed now, then exit.")
def follow_orthanc(once: bool) -> None:
    """Ingest every new instance stored in Orthanc (its /changes feed; position kept in Redis)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    feed = OrthancFeed(get_settings())
    click.echo(f"follow: {feed.url}/changes from position {feed.position()}")
    if once:
        while (result := feed.step()).changes:
            click.echo(f"follow: position {result.position}, {result.stored} queued, "
                       f"{len(result.refused)} refused")  # fmt: skip
        return
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with contextlib.suppress(KeyboardInterrupt):
        feed.run(stop)

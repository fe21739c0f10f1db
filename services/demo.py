"""The main job: the whole pipeline on the bundled NIH sets, then the API and dashboard.

Every step is idempotent, so running the demo again only does what is missing: the stack is
reused, the checkpoint is kept, re-ingesting the same files changes nothing, and clustering runs
only when there is none yet or the graph has grown past the staleness threshold.
"""

from __future__ import annotations

import click

from services.api.commands import serve_api
from services.auth.api_keys import create_api_key, list_api_keys
from services.communities.freshness import staleness
from services.communities.job import run_clustering
from services.config import Settings
from services.encoder.labels import bundled_label_files
from services.graph.store import GraphStore
from services.ingest.commands import (
    _ensure_checkpoint,
    _finish,
    _follow_with_bar,
    _stall_watch,
)
from services.ingest.jobs import JobTracker
from services.ingest.submit import IngestPlan, plan_ingest, submit
from services.runtime.stack import ORTHANC_PARTS, start_stack

DEMO_JOB_ID = "demo-nih-cxr14"


def demo_plan(settings: Settings) -> IngestPlan:
    """Every bundled set (``data_dir``'s labels.csv files) as one ingest plan."""
    plans = []
    for labels in bundled_label_files(settings.data_dir):
        images = labels.parent / "images"
        plans.append(
            plan_ingest([images if images.is_dir() else labels.parent], settings, labels, None)
        )
    return IngestPlan(
        entries=[entry for plan in plans for entry in plan.entries],
        skipped=[path for plan in plans for path in plan.skipped],
        labelled=sum(plan.labelled for plan in plans),
        labels_path=plans[0].labels_path if len(plans) == 1 else None,
        source=", ".join(plan.source for plan in plans),
    )


def ingest_demo_set(settings: Settings) -> None:
    _ensure_checkpoint(settings)
    plan = demo_plan(settings)
    # The job id names the file list, so a demo home made with other bundled sets ingests the
    # new list as a new job instead of refusing a resumed id with other files.
    job_id = f"{DEMO_JOB_ID}-{plan.digest()[:8]}"
    result = submit(plan, settings, job_id)
    click.echo(
        f"ingest: job {result.job_id} {'resumed' if result.resumed else 'queued'} "
        f"({len(plan.entries)} files, {result.batches_sent} batches sent)"
    )
    tracker = JobTracker.from_settings(settings)
    watch = _stall_watch(settings, lambda: submit(plan, settings, job_id))
    final = _follow_with_bar(tracker, result.job_id, show=True, watch=watch)
    _finish(settings, tracker, final, None)


def cluster_if_needed(settings: Settings, store: GraphStore) -> None:
    state = staleness(store, settings)
    if not state.stale:
        click.echo(f"communities: up to date ({state.describe()})")
        return
    summary = run_clustering(store, settings, progress=lambda message: click.echo(f"  {message}"))
    click.echo(summary.describe())


def issue_local_api_key(settings: Settings, store: GraphStore) -> str | None:
    """A write key for the local user, the first time only (tokens are stored hashed)."""
    if any(key["name"] == "local-demo" and not key["revoked"] for key in list_api_keys(store)):
        return None
    return create_api_key(store, "local-demo", ("read", "write")).token


def run_demo(settings: Settings, serve: bool, with_orthanc: bool = False) -> None:
    start_stack(settings)
    store = GraphStore.from_settings(settings)
    ingest_demo_set(settings)
    cluster_if_needed(settings, store)
    token = issue_local_api_key(settings, store)
    if with_orthanc:
        start_stack(settings, ORTHANC_PARTS)

    base = f"http://{settings.api_host}:{settings.api_port}"
    click.echo("")
    click.secho("medgraph is up.", fg="green", bold=True)
    click.echo(f"  Dashboard:     {base}/dashboard/")
    click.echo(f"  REST API:      {base}/api/v1   (docs: {base}/api/docs)")
    click.echo(
        f"  Neo4j Browser: http://{settings.neo4j_host}:{settings.neo4j_http_port}/browser/"
        f"  (user {settings.neo4j_user}, password in {settings.secrets_dir}/neo4j-password)"
    )
    if token:
        click.secho(f"  API key (read+write, shown once): {token}", fg="yellow")
        click.echo(f"  Open the dashboard with it:       {base}/dashboard/#key={token}")
    else:
        click.echo(
            "  API key: created on the first run; make another with "
            "`medgraph apikey create --name me --scope write`"
        )
    click.echo(f"  DICOMweb:      {base}/dicomweb   (STOW-RS, QIDO-RS, WADO-RS rendered)")
    if with_orthanc:
        orthanc = settings.orthanc_base_url
        click.echo(
            f"  Orthanc Explorer: {orthanc}/app/explorer.html  (user {settings.orthanc_user}, "
            f"password in {settings.secrets_dir}/orthanc-password); every instance stored in "
            "it becomes an :Image (medgraph follow orthanc)"
        )
    click.echo("  Stop with:     .venv/bin/medgraph stack stop")
    if serve:
        serve_api(settings)

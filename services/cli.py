"""`medgraph`: the single entry point for operators."""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any

import click
from pydantic import ValidationError
from pydantic_settings import SettingsError

from services.api.commands import serve
from services.auth.commands import apikey
from services.communities.commands import cluster
from services.config import REPO_ROOT, Settings, get_settings, settings_problem
from services.curation.commands import audit, delete, find_name, relabel
from services.demo import run_demo
from services.encoder.commands import average_encoders, embed, train
from services.evaluation.commands import evaluate
from services.graph.store import GraphStore
from services.ingest.commands import follow_feed, ingest, ingest_status, worker
from services.ingest.sealing import seal_stored_sources
from services.runtime.neo4j import Neo4jRuntime
from services.runtime.processes import RuntimeProblem
from services.runtime.redis import RedisRuntime
from services.runtime.stack import ORTHANC_PARTS, STACK_PARTS, start_stack, stop_stack
from services.runtime.worker import WorkerRuntime


def reports_runtime_problems(command: Callable[..., Any]) -> Callable[..., Any]:
    """Turns a RuntimeProblem into a one-paragraph message and exit status 1, no traceback."""

    @wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except RuntimeProblem as problem:
            click.secho(f"error: {problem}", fg="red", err=True)
            sys.exit(1)

    return wrapper


@click.group()
def main() -> None:
    """medgraph: content-based chest X-ray retrieval on a Neo4j image graph."""
    try:
        get_settings()
    except (ValidationError, SettingsError) as error:  # a bad MEDGRAPH_ variable: say which
        raise click.ClickException(settings_problem(error)) from None


# --- local stack ---------------------------------------------------------------------------
@main.group()
def stack() -> None:
    """Start, stop and inspect the local Neo4j, Redis and Celery worker."""


def _parts(only: str | None, default: tuple[str, ...] = STACK_PARTS) -> tuple[str, ...]:
    return (only,) if only else default


only_option = click.option(
    "--only", type=click.Choice(STACK_PARTS + ORTHANC_PARTS), default=None,
    help="Act on one server only.",
)  # fmt: skip


@stack.command("start")
@only_option
@click.option(
    "--with-orthanc", is_flag=True,
    help="Also start Orthanc (the local PACS) and `medgraph follow orthanc`.",
)  # fmt: skip
@reports_runtime_problems
def stack_start(only: str | None, with_orthanc: bool) -> None:
    """Start the local servers (harmless when they already run)."""
    start_stack(get_settings(), _parts(only, STACK_PARTS + (ORTHANC_PARTS if with_orthanc else ())))


@stack.command("fetch")
@reports_runtime_problems
def stack_fetch() -> None:
    """Download the Neo4j, Browser, APOC and GDS jars into the cache (once)."""
    runtime = Neo4jRuntime(get_settings())
    if not runtime.jars_present():
        click.echo("neo4j: fetching Neo4j, Browser, APOC and GDS from Maven Central (once)…")
    click.echo(f"neo4j: jars in {runtime.fetch()}")


@stack.command("stop")
@only_option
def stack_stop(only: str | None) -> None:
    """Stop the local servers."""
    stop_stack(get_settings(), _parts(only, STACK_PARTS + ORTHANC_PARTS))


@stack.command("status")
def stack_status() -> None:
    """Report whether each server runs; exit status 3 when one does not."""
    settings = get_settings()
    neo4j_status = Neo4jRuntime(settings).status()
    redis_status = RedisRuntime(settings).status()
    worker_status = WorkerRuntime(settings).status()
    click.echo(
        _status_line(
            "neo4j",
            neo4j_status.pid,
            f"Bolt {neo4j_status.bolt_uri}  Browser {neo4j_status.browser_url}",
        )
    )
    click.echo(_status_line("redis", redis_status.pid, redis_status.url))
    click.echo(_status_line("worker", worker_status.pid, worker_status.node))
    if not (neo4j_status.running and redis_status.running and worker_status.running):
        sys.exit(3)


def _status_line(part: str, pid: int | None, detail: str) -> str:
    state = f"running, pid {pid}" if pid is not None else "stopped"
    return f"{part}: {state}  {detail}"


@main.command("schema")
@reports_runtime_problems
def schema() -> None:
    """Apply cypher/schema.cypher (constraints and the vector index) to the database, and seal
    source paths stored in clear by earlier versions."""
    settings = get_settings()
    store = GraphStore.from_settings(settings)
    store.apply_schema()
    sealed = seal_stored_sources(store, settings)
    click.echo(f"schema applied; sealed the stored paths of {sealed} image(s)")


README_TABLE = re.compile(
    r"(<!-- settings-table:start -->\n).*?(<!-- settings-table:end -->)", re.S
)


@main.command("config")
@click.option("--markdown", is_flag=True, help="Print the README's configuration table.")
@click.option("--update-readme", is_flag=True, help="Rewrite the README's configuration table.")
def config(markdown: bool, update_readme: bool) -> None:
    """Show every setting with its current value."""
    settings = get_settings()
    if markdown:
        click.echo(settings_markdown_table())
        return
    if update_readme:
        readme = REPO_ROOT / "README.md"
        table = settings_markdown_table()
        readme.write_text(
            README_TABLE.sub(lambda m: m.group(1) + table + "\n" + m.group(2), readme.read_text())
        )
        click.echo(f"updated {readme}")
        return
    for name in Settings.model_fields:
        value = getattr(settings, name)
        if "password" in name or "secret" in name:
            value = "(set)" if value else "(generated)"
        click.echo(f"MEDGRAPH_{name.upper()}={value}")


def settings_markdown_table() -> str:
    rows = ["| Variable | Default | Meaning |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        default = field.get_default(call_default_factory=True)
        shown = str(default).replace(str(_repo_root()), ".") if default is not None else ""
        shown = shown.replace(str(_home()), "~")
        rows.append(f"| `MEDGRAPH_{name.upper()}` | `{shown}` | {field.description or ''} |")
    return "\n".join(rows)


def _repo_root() -> str:
    return str(REPO_ROOT)


def _home() -> str:
    return str(Path.home())


# --- the main job --------------------------------------------------------------------------
@main.command("demo")
@click.option("--serve/--no-serve", default=True, help="Serve the API and dashboard at the end.")
@click.option(
    "--with-orthanc", is_flag=True,
    help="Also start Orthanc (the local PACS) and `medgraph follow orthanc`.",
)  # fmt: skip
@reports_runtime_problems
def demo(serve: bool, with_orthanc: bool) -> None:
    """The main job: stack, demo checkpoint, ingest, clustering, then API and dashboard."""
    run_demo(get_settings(), serve, with_orthanc)


# --- commands of each part, registered with one line each ----------------------------------
main.add_command(train)  # services/encoder
main.add_command(embed)
main.add_command(average_encoders)
main.add_command(cluster)  # services/communities
main.add_command(ingest)  # services/ingest
main.add_command(ingest_status)
main.add_command(worker)
main.add_command(follow_feed)
main.add_command(serve)  # services/api
main.add_command(evaluate)  # services/evaluation
main.add_command(apikey)  # services/auth
main.add_command(delete)  # services/curation
main.add_command(relabel)
main.add_command(audit)
main.add_command(find_name)

if __name__ == "__main__":
    main()

"""`medgraph`: the single entry point for operators."""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from functools import wraps
from typing import Any

import click
from pydantic import ValidationError
from pydantic_settings import SettingsError

from services.config import Settings, get_settings, settings_problem
from services.runtime.neo4j import Neo4jRuntime
from services.runtime.processes import RuntimeProblem
from services.runtime.redis import RedisRuntime
from services.runtime.worker import WorkerRuntime

STACK_PARTS = ("neo4j", "redis", "worker")


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


def _parts(only: str | None) -> tuple[str, ...]:
    return (only,) if only else STACK_PARTS


only_option = click.option(
    "--only", type=click.Choice(STACK_PARTS), default=None, help="Act on one server only."
)


@stack.command("start")
@only_option
@reports_runtime_problems
def stack_start(only: str | None) -> None:
    """Start the local servers (harmless when they already run)."""
    start_stack(get_settings(), _parts(only))


def start_stack(settings: Settings, parts: tuple[str, ...] = STACK_PARTS) -> None:
    if "redis" in parts:
        redis_runtime = RedisRuntime(settings)
        if redis_runtime.start():
            click.echo(f"redis: started on {settings.broker_url}")
        else:
            click.echo(f"redis: already running (pid {redis_runtime.process.pid()})")
    if "neo4j" in parts:
        neo4j_runtime = Neo4jRuntime(settings)
        if not neo4j_runtime.jars_present():
            click.echo("neo4j: fetching Neo4j, Browser, APOC and GDS from Maven Central (once)…")
        started, new_password = neo4j_runtime.start()
        status = neo4j_runtime.status()
        if started:
            click.echo(f"neo4j: started, Bolt {status.bolt_uri}, Browser {status.browser_url}")
        else:
            click.echo(f"neo4j: already running (pid {status.pid}), Browser {status.browser_url}")
        if new_password:
            click.secho(
                f"neo4j: user '{settings.neo4j_user}', generated password: {new_password}\n"
                f"       (shown once; kept in {settings.secrets_dir / 'neo4j-password'})",
                fg="yellow",
            )
        from services.graph.store import GraphStore

        GraphStore.from_settings(settings).apply_schema()
    if "worker" in parts:
        worker_runtime = WorkerRuntime(settings)
        if worker_runtime.start():
            log = worker_runtime.process.log_file
            click.echo(f"worker: started ({worker_runtime.node}, log {log})")
        else:
            click.echo(f"worker: already running (pid {worker_runtime.process.pid()})")


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
    stop_stack(get_settings(), _parts(only))


def stop_stack(settings: Settings, parts: tuple[str, ...] = STACK_PARTS) -> None:
    if "worker" in parts:
        click.echo("worker: stopped" if WorkerRuntime(settings).stop() else "worker: not running")
    if "neo4j" in parts:
        click.echo("neo4j: stopped" if Neo4jRuntime(settings).stop() else "neo4j: not running")
    if "redis" in parts:
        click.echo("redis: stopped" if RedisRuntime(settings).stop() else "redis: not running")


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
    """Apply cypher/schema.cypher (constraints and the vector index) to the database."""
    from services.graph.store import GraphStore

    GraphStore.from_settings().apply_schema()
    click.echo("schema applied")


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
        from services.config import REPO_ROOT

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
    from services.config import REPO_ROOT

    return str(REPO_ROOT)


def _home() -> str:
    from pathlib import Path

    return str(Path.home())


# --- the main job --------------------------------------------------------------------------
@main.command("demo")
@click.option("--serve/--no-serve", default=True, help="Serve the API and dashboard at the end.")
@reports_runtime_problems
def demo(serve: bool) -> None:
    """The main job: stack, demo checkpoint, ingest, clustering, then API and dashboard."""
    from services.demo import run_demo

    run_demo(get_settings(), serve)


# --- image encoder (workers/encoder) -------------------------------------------------------
from workers.encoder.commands import embed, train  # noqa: E402

main.add_command(train)
main.add_command(embed)

# --- communities (workers/communities) -----------------------------------------------------
from workers.communities.commands import cluster  # noqa: E402

main.add_command(cluster)

# --- ingestion (workers/ingest) ------------------------------------------------------------
from workers.ingest.commands import ingest, ingest_status, worker  # noqa: E402

main.add_command(ingest)
main.add_command(ingest_status)
main.add_command(worker)

# --- retrieval and REST API (services/retrieval, services/api) -----------------------------
from services.api.commands import serve  # noqa: E402
from services.retrieval.commands import evaluate  # noqa: E402

main.add_command(serve)
main.add_command(evaluate)

# --- deletion, relabelling and their audit trail (services/curation) -----------------------
from services.curation.commands import audit, delete, relabel  # noqa: E402

main.add_command(delete)
main.add_command(relabel)
main.add_command(audit)

# --- access control (services/auth) --------------------------------------------------------
from services.auth.commands import apikey  # noqa: E402

main.add_command(apikey)

if __name__ == "__main__":
    main()

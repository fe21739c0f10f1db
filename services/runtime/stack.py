"""Start and stop the local stack (Neo4j, Redis, one Celery worker) with a line per server."""

from __future__ import annotations

import click

from services.config import Settings
from services.graph.store import GraphStore
from services.runtime.neo4j import Neo4jRuntime
from services.runtime.orthanc import FollowerRuntime, OrthancRuntime
from services.runtime.redis import RedisRuntime, redacted_url
from services.runtime.worker import WorkerRuntime

STACK_PARTS = ("neo4j", "redis", "worker")
# Started only on request (`stack start --with-orthanc`, `./scripts/demo --with-orthanc`).
ORTHANC_PARTS = ("orthanc", "follower")


def start_stack(settings: Settings, parts: tuple[str, ...] = STACK_PARTS) -> None:
    if "redis" in parts:
        redis_runtime = RedisRuntime(settings)
        if redis_runtime.start():
            click.echo(f"redis: started on {redacted_url(settings)}")
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
        GraphStore.from_settings(settings).apply_schema()
    if "worker" in parts:
        worker_runtime = WorkerRuntime(settings)
        if worker_runtime.start():
            log = worker_runtime.process.log_file
            click.echo(f"worker: started ({worker_runtime.node}, log {log})")
        else:
            click.echo(f"worker: already running (pid {worker_runtime.process.pid()})")

    if "orthanc" in parts:
        orthanc = OrthancRuntime(settings)
        started = orthanc.start()
        status = orthanc.status()
        state = "started" if started else f"already running (pid {status.pid})"
        click.echo(
            f"orthanc: {state}, Explorer {status.explorer_url} (user '{settings.orthanc_user}', "
            f"password in {settings.secrets_dir / 'orthanc-password'})"
        )
    if "follower" in parts:
        follower = FollowerRuntime(settings)
        state = "started" if follower.start() else "already running"
        click.echo(f"follower: {state} (medgraph follow orthanc, log {follower.process.log_file})")


def stop_stack(settings: Settings, parts: tuple[str, ...] = STACK_PARTS + ORTHANC_PARTS) -> None:
    for part, runtime in (("follower", FollowerRuntime), ("orthanc", OrthancRuntime)):
        if part in parts:
            click.echo(f"{part}: stopped" if runtime(settings).stop() else f"{part}: not running")
    if "worker" in parts:
        click.echo("worker: stopped" if WorkerRuntime(settings).stop() else "worker: not running")
    if "neo4j" in parts:
        click.echo("neo4j: stopped" if Neo4jRuntime(settings).stop() else "neo4j: not running")
    if "redis" in parts:
        click.echo("redis: stopped" if RedisRuntime(settings).stop() else "redis: not running")

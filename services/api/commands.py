"""`medgraph serve`: the REST API under waitress, a production WSGI server in pure Python,
guarded against slow and idle clients (``services/api/serving.py``)."""

from __future__ import annotations

import logging

import click

from services.api.app import create_app
from services.api.serving import serve_guarded
from services.config import Settings, get_settings
from services.graph.store import GraphStore
from services.ingest.sealing import seal_stored_sources
from services.runtime.memory import bound_heap_growth


def serve_api(
    settings: Settings, host: str | None = None, port: int | None = None, threads: int | None = None
) -> None:
    """Blocks serving the API (and whatever else create_app mounts) until interrupted."""
    host = host or settings.api_host
    port = port or settings.api_port
    # Before the read model exists: its copy-on-write arrays must not settle in the heap.
    bound_heap_growth()
    app = create_app(settings)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # Paths stored in clear before they were sealed are sealed now (idempotent, issue 26).
    sealed = seal_stored_sources(GraphStore.from_settings(settings), settings)
    if sealed:
        click.echo(f"sealed the stored paths of {sealed} image(s)")
    click.echo(
        f"medgraph API on http://{host}:{port}/api/v1  (docs: http://{host}:{port}/api/docs)"
    )
    # waitress with a connection budget and per-request deadlines (services/api/serving.py).
    serve_guarded(app, settings, host, port, threads or settings.api_threads)


@click.command("serve")
@click.option("--host", default=None, help="Listen address. Default: MEDGRAPH_API_HOST.")
@click.option("--port", type=int, default=None, help="Port. Default: MEDGRAPH_API_PORT.")
@click.option(
    "--threads", type=int, default=None, help="Worker threads. Default: MEDGRAPH_API_THREADS."
)
def serve(host: str | None, port: int | None, threads: int | None) -> None:
    """Serve the REST API (/api/v1) and its docs (/api/docs) with waitress."""
    serve_api(get_settings(), host, port, threads)

"""`medgraph cluster`: the full community detection run, from the command line."""

from __future__ import annotations

import json
import sys
import time

import click
from neo4j.exceptions import AuthError, ServiceUnavailable

from services.communities.detection import ALGORITHMS, ClusteringError
from services.communities.freshness import staleness
from services.communities.job import run_clustering
from services.config import get_settings
from services.graph.store import GraphStore


@click.command("cluster")
@click.option(
    "--algorithm",
    type=click.Choice(ALGORITHMS),
    default=None,
    help="Default: MEDGRAPH_CLUSTER_ALGORITHM (leiden).",
)
@click.option(
    "--resolution",
    type=float,
    default=None,
    help="Modularity resolution gamma. Default: MEDGRAPH_CLUSTER_RESOLUTION (1.0).",
)
@click.option(
    "--seed", type=int, default=None, help="Leiden random seed. Default: MEDGRAPH_CLUSTER_SEED."
)
@click.option(
    "--if-stale",
    is_flag=True,
    help="Run only when the images added since the last run exceed "
    "MEDGRAPH_CLUSTER_RERUN_FRACTION of the graph (or it was never clustered).",
)
@click.option(
    "--status", "status_only", is_flag=True, help="Only report how fresh the stored clustering is."
)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def cluster(
    algorithm: str | None, resolution: float | None, seed: int | None, if_stale: bool,
    status_only: bool, as_json: bool,
) -> None:  # fmt: skip
    """Detect communities in the SIMILAR graph and store them (community, :Community, run)."""
    settings = get_settings()
    store = GraphStore.from_settings(settings)
    started = time.perf_counter()

    def progress(message: str) -> None:
        if not as_json:
            click.echo(f"[{time.perf_counter() - started:7.1f} s] {message}")

    try:
        if status_only or if_stale:
            state = staleness(store, settings)
            progress(state.describe())
            if status_only:
                if as_json:
                    click.echo(json.dumps(state.__dict__, default=str))
                return
            if not state.stale:
                progress("clustering is fresh: nothing to do")
                if as_json:
                    click.echo(json.dumps({"ran": False, "staleness": state.__dict__}, default=str))
                return
        summary = run_clustering(
            store, settings, algorithm=algorithm, resolution=resolution, seed=seed,
            progress=progress,
        )  # fmt: skip
    except ClusteringError as error:
        click.secho(f"error: {error}", fg="red", err=True)
        sys.exit(1)
    except (ServiceUnavailable, AuthError) as error:
        click.secho(
            f"error: Neo4j at {settings.bolt_uri} is not usable ({error}); start the local "
            "stack with `medgraph stack start` or check MEDGRAPH_NEO4J_* settings",
            fg="red", err=True,
        )  # fmt: skip
        sys.exit(1)
    if as_json:
        click.echo(json.dumps({"ran": True, **summary.as_dict()}, default=str))
    else:
        click.echo(summary.describe())

"""`medgraph cluster` and the Celery task, against the real Neo4j."""

from __future__ import annotations

import json

import numpy as np
from click.testing import CliRunner
from community_graphs import latest_run, realistic_set, stored_assignment, write_subset

from services.cli import main
from services.config import Settings
from services.graph.store import GraphStore
from workers.celery_app import app
from workers.tasks.communities import cluster_task


def test_cluster_command_prints_progress_and_summary(clean_graph: GraphStore) -> None:
    write_subset(clean_graph, realistic_set(300, seed=9), np.arange(300))
    runner = CliRunner()

    result = runner.invoke(main, ["cluster", "--algorithm", "leiden", "--seed", "3"])

    assert result.exit_code == 0, result.output
    assert "leiden on 300 images" in result.output
    assert "detected" in result.output
    assert "sizes: min" in result.output and "median" in result.output
    assert "modularity:" in result.output and "seconds:" in result.output
    run = latest_run(clean_graph)
    assert run["seed"] == 3
    assert f"{run['community_count']} communities" in result.output
    assert all(community is not None for community in stored_assignment(clean_graph).values())

    fresh = runner.invoke(main, ["cluster", "--if-stale"])
    assert fresh.exit_code == 0, fresh.output
    assert "nothing to do" in fresh.output
    assert latest_run(clean_graph)["id"] == run["id"]

    status = runner.invoke(main, ["cluster", "--status", "--json"])
    assert status.exit_code == 0, status.output
    assert json.loads(status.output.splitlines()[-1])["run_id"] == run["id"]


def test_cluster_command_runs_when_stale_and_reports_errors(clean_graph: GraphStore) -> None:
    write_subset(clean_graph, realistic_set(200, seed=8), np.arange(200))
    runner = CliRunner()

    stale = runner.invoke(main, ["cluster", "--if-stale", "--json", "--algorithm", "louvain"])
    assert stale.exit_code == 0, stale.output
    summary = json.loads(stale.output.splitlines()[-1])
    assert summary["ran"] is True and summary["algorithm"] == "louvain"
    assert summary["community_count"] == latest_run(clean_graph)["community_count"]

    refused = runner.invoke(main, ["cluster", "--algorithm", "louvain", "--resolution", "2"])
    assert refused.exit_code == 1
    assert "error: GDS Louvain has no resolution parameter" in refused.output
    assert "Traceback" not in refused.output


def test_celery_task_runs_the_job(clean_graph: GraphStore, stack: Settings) -> None:
    assert app.tasks[cluster_task.name] is not None
    write_subset(clean_graph, realistic_set(200, seed=6), np.arange(200))

    # The task body through Celery's own execution path (apply runs it in this process).
    result = cluster_task.apply(kwargs={"if_stale": True}).get()

    assert result["ran"] is True
    assert result["staleness"]["stale"] is True
    assert result["run_id"] == latest_run(clean_graph)["id"]
    again = cluster_task.apply(kwargs={"if_stale": True}).get()
    assert again["ran"] is False

"""`medgraph evaluate`: the table for every strategy, JSON and PNG, numbers recomputed here."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from services.cli import main
from services.graph.store import GraphStore
from tests.retrieval.graphs import clustered_graph

pytestmark = pytest.mark.neo4j


def test_evaluate_prints_the_table_and_writes_json_and_plot(
    clean_graph: GraphStore, tmp_path: Path
) -> None:
    graph = clustered_graph(140, clusters=4, seed=5, patients=40)
    graph.write(clean_graph)
    result = CliRunner().invoke(
        main,
        [
            "evaluate",
            "--sample",
            "25",
            "--k",
            "10",
            "--ks",
            "1,5,10",
            "--output-dir",
            str(tmp_path),
        ],
    )
    assert result.exit_code == 0, result.output
    for name in (
        "region",
        "community_ranked",
        "exact",
        "vector",
        "random (expected)",
        "ACG@10",
        "ACG_p@10",
        "P@10",
    ):
        assert name in result.output
    report = json.loads((tmp_path / "evaluation.json").read_text())
    assert (tmp_path / "evaluation.png").read_bytes().startswith(b"\x89PNG")
    assert report["queries"] == 25 and report["images"] == 140
    rows = {row["strategy"]: row for row in report["strategies"]}
    assert set(rows) == {"region", "community_ranked", "exact", "vector", "random (expected)"}
    assert rows["exact"]["recall_vs_exact"] == 1.0
    assert rows["exact"]["fraction_examined"] == 1.0
    assert rows["region"]["fraction_examined"] < 1.0
    assert sorted(rows["region"]["curves"], key=int) == ["1", "5", "10"]

    # Precision@10 and recall of exact, recomputed independently from the graph.
    precisions = []
    for key in report["query_keys"]:
        query = graph.embeddings[key]
        allowed = [
            other for other in graph.embeddings
            if other != key and graph.patient_of[other] != graph.patient_of[key]
        ]  # fmt: skip
        ranked = sorted(allowed, key=lambda o: (-float(np.dot(graph.embeddings[o], query)), o))
        wanted = set(graph.findings[key]) or {"No Finding"}
        precisions.append(
            np.mean([(set(graph.findings[o]) or {"No Finding"}) == wanted for o in ranked[:10]])
        )
    assert rows["exact"]["precision"] == pytest.approx(float(np.mean(precisions)))
    assert rows["exact"]["latency"]["count"] == 25

    # Patient-bootstrap intervals around every figure, and the paired difference to random.
    assert "95% intervals (bootstrap over query patients)" in result.output
    for row in rows.values():
        for metric in ("precision", "acg", "acg_positive"):
            low, high = row["intervals"][metric]
            assert low <= row[metric] <= high
    random = rows["random (expected)"]
    difference = rows["exact"]["minus_random"]["precision"]
    assert difference[0] == pytest.approx(rows["exact"]["precision"] - random["precision"])
    assert difference[1] <= difference[0] <= difference[2]


def test_evaluate_without_labelled_images_fails_clearly(clean_graph: GraphStore) -> None:
    result = CliRunner().invoke(main, ["evaluate"])
    assert result.exit_code == 1
    assert "no labelled images" in result.output

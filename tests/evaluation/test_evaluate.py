"""`medgraph evaluate`: the table for every strategy, JSON and PNG, numbers recomputed here."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from services.cli import main
from services.config import Settings
from services.encoder.checkpoint import EncoderCheckpoint, save_checkpoint
from services.encoder.preprocessing import Normalisation
from services.graph.store import GraphStore
from services.retrieval.service import RetrievalService
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


def test_evaluate_rerank_rows_on_the_validation_queries(
    clean_graph: GraphStore, settings: Settings, tmp_path: Path
) -> None:
    retrieval = RetrievalService(clean_graph, settings)
    graph = clustered_graph(120, clusters=4, seed=7, patients=40)
    keys = sorted(graph.embeddings)
    generator = np.random.default_rng(1)
    graph.finding_probabilities = {key: generator.uniform(0.01, 0.99, 3) for key in keys}
    graph.write(clean_graph)
    queries = keys[::4]
    checkpoint = save_checkpoint(
        tmp_path / "encoder.pt",
        EncoderCheckpoint(
            findings=("a", "b", "c"),
            image_size=64,
            normalisation=Normalisation(0.5, 0.25),
            state_dict={},
            training={"split": {"val_image_sha256": queries}},
        ),
    )
    result = CliRunner().invoke(
        main,
        ["evaluate", "--rerank", "--validation-queries", "--checkpoint", str(checkpoint),
         "--strategies", "exact,vector", "--k", "5", "--ks", "5", "--output-dir", str(tmp_path)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "evaluation.json").read_text())
    assert report["query_keys"] == queries
    rows = {row["strategy"]: row for row in report["strategies"]}
    # vector cannot be re-ranked in memory: no row for it.
    assert set(rows) == {"exact", "vector", "exact + findings", "random (expected)"}

    def agreement(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.log(a * b + (1 - a) * (1 - b)).sum())

    precisions = []
    for key in queries:
        query = graph.embeddings[key]
        allowed = [
            other for other in keys
            if other != key and graph.patient_of[other] != graph.patient_of[key]
        ]  # fmt: skip
        ranked = sorted(allowed, key=lambda o: (-float(np.dot(graph.embeddings[o], query)), o))
        candidates = ranked[:40]
        probabilities = graph.finding_probabilities
        reranked = sorted(
            candidates, key=lambda o: -agreement(probabilities[key], probabilities[o])
        )[:5]
        hits = retrieval.search_by_key(key, k=5, strategy="exact", rerank=True)
        assert list(hits.keys) == reranked
        wanted = set(graph.findings[key]) or {"No Finding"}
        precisions.append(
            np.mean([(set(graph.findings[o]) or {"No Finding"}) == wanted for o in reranked])
        )
    assert rows["exact + findings"]["precision"] == pytest.approx(float(np.mean(precisions)))
    assert rows["exact + findings"]["precision"] != rows["exact"]["precision"]
    gain = rows["exact + findings"]["minus_strategy"]["precision"]
    assert gain[0] == pytest.approx(
        rows["exact + findings"]["precision"] - rows["exact"]["precision"]
    )
    assert gain[1] <= gain[0] <= gain[2]
    assert rows["exact"]["minus_strategy"] == {}
    assert "exact + findings " in result.output


def test_evaluate_rerank_without_stored_findings_fails_clearly(clean_graph: GraphStore) -> None:
    clustered_graph(30, clusters=2, seed=3).write(clean_graph)
    result = CliRunner().invoke(main, ["evaluate", "--rerank", "--strategies", "exact"])
    assert result.exit_code == 1
    assert "no stored predicted findings" in result.output

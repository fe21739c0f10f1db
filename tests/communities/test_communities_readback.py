"""The reusable read-back Cypher (cypher/community_*.cypher) agrees with the stored graph."""

from __future__ import annotations

import numpy as np
import pytest
from community_graphs import (
    latest_run,
    networkx_graph,
    realistic_set,
    stored_assignment,
    write_subset,
)

from services.communities import run_clustering
from services.config import Settings
from services.graph.store import GraphStore


def test_read_back_queries(clean_graph: GraphStore, community_settings: Settings) -> None:
    write_subset(clean_graph, realistic_set(400, seed=12), np.arange(400))
    summary = run_clustering(clean_graph, community_settings)
    assignment = stored_assignment(clean_graph)

    listed = [row.data() for row in clean_graph.query("community_list")]
    assert len(listed) == summary.community_count
    assert [row["size"] for row in listed] == sorted((row["size"] for row in listed), reverse=True)
    assert sum(row["size"] for row in listed) == 400
    assert "centroid" not in listed[0]

    largest = listed[0]["id"]
    detail = clean_graph.query("community_detail", id=largest)[0]
    assert detail["community"]["size"] == listed[0]["size"]
    assert len(detail["community"]["centroid"]) == 1024
    assert 0 < detail["cohesion"] <= 1

    members = clean_graph.query("community_members", id=largest, skip=0, limit=1000)
    assert sorted(row["key"] for row in members) == sorted(
        key for key, community in assignment.items() if community == largest
    )
    page = clean_graph.query("community_members", id=largest, skip=2, limit=3)
    assert [row["key"] for row in page] == [row["key"] for row in members][2:5]

    run = clean_graph.query("community_latest_run")[0]["run"]
    assert run["id"] == summary.run_id == latest_run(clean_graph)["id"]

    graph = networkx_graph(clean_graph)
    expected: dict[tuple[int, int], float] = {}
    for a, b, weight in graph.edges(data="weight"):
        ca, cb = assignment[a], assignment[b]
        if ca != cb:
            pair = (min(ca, cb), max(ca, cb))
            expected[pair] = expected.get(pair, 0.0) + weight
    links = clean_graph.query("community_links", community=None, limit=10_000)
    found = {(row["source"], row["target"]): row["weight"] for row in links}
    assert found == pytest.approx(expected, rel=1e-9)
    weights = [row["weight"] for row in links]
    assert weights == sorted(weights, reverse=True)
    one = clean_graph.query("community_links", community=largest, limit=10_000)
    assert all(largest in (row["source"], row["target"]) for row in one)
    assert len(one) == sum(1 for pair in expected if largest in pair)

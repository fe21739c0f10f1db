"""Acceptance 1 on the bundled NIH set after ingest (ingestion's own code; the image codes are a
pixel projection instead of the trained DenseNet, see tests/support.py PixelProjection)."""

from __future__ import annotations

import networkx as nx
import pytest
from community_graphs import (
    assert_stored_sums_match_graph,
    latest_run,
    networkx_graph,
    stored_assignment,
    stored_parts,
)

from services.communities import run_clustering
from services.config import Settings
from services.graph.store import GraphStore
from tests.support import ingest_bundled


def test_bundled_set_after_ingest(clean_graph: GraphStore, community_settings: Settings) -> None:
    files = ingest_bundled(clean_graph, community_settings)
    images = clean_graph.run_text("MATCH (i:Image) RETURN count(i) AS n")[0]["n"]
    assert 0 < images <= files

    summary = run_clustering(clean_graph, community_settings)

    assignment = stored_assignment(clean_graph)
    assert len(assignment) == images
    assert all(community is not None for community in assignment.values())
    assert_stored_sums_match_graph(clean_graph)
    graph = networkx_graph(clean_graph)
    parts = stored_parts(assignment)
    expected = nx.community.modularity(graph, parts.values(), weight="weight")
    assert latest_run(clean_graph)["modularity"] == pytest.approx(expected, abs=1e-6)
    assert summary.modularity == pytest.approx(expected, abs=1e-6)
    print(
        f"NIH set: {images} images, {graph.number_of_edges()} pairs, "
        f"{summary.community_count} communities, Q {summary.modularity:.4f}, "
        f"GDS reported {summary.reported_modularity:.6f}"
    )

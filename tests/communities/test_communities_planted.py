"""Planted clusters on the unit sphere are recovered from the kNN graph."""

from __future__ import annotations

import numpy as np
import pytest
from community_graphs import (
    PLANTED_SIZE,
    PLANTED_SPREAD,
    latest_run,
    stored_assignment,
    write_subset,
)
from sklearn.metrics import adjusted_rand_score

from bench.similarity_graph import synthetic_keys
from bench.synthetic import generate
from services.communities import run_clustering
from services.config import Settings
from services.graph.store import GraphStore


@pytest.mark.parametrize("algorithm", ["leiden", "louvain", "cnm"])
def test_planted_clusters_are_recovered(
    clean_graph: GraphStore, community_settings: Settings, algorithm: str
) -> None:
    data = generate(PLANTED_SIZE, spread=PLANTED_SPREAD, seed=1)
    written = write_subset(clean_graph, data, np.arange(PLANTED_SIZE))
    planted = data.cluster
    crossing = planted[written.edges.smaller] != planted[written.edges.larger]
    assert 0.05 < crossing.mean() < 0.2  # the premise of PLANTED_SPREAD

    summary = run_clustering(clean_graph, community_settings, algorithm=algorithm)

    assignment = stored_assignment(clean_graph)
    detected = [assignment[key] for key in synthetic_keys(range(PLANTED_SIZE))]
    ari = adjusted_rand_score(planted, detected)
    assert ari >= 0.9, (
        f"{algorithm}: adjusted Rand index {ari:.3f}; {len(set(detected))} communities of "
        f"modularity {summary.modularity:.4f} for {len(set(planted))} planted; run "
        f"{latest_run(clean_graph)}"
    )

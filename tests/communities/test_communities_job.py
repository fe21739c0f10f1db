"""The full clustering run stores a partition whose every figure can be recomputed."""

from __future__ import annotations

import json

import networkx as nx
import numpy as np
import pytest
from community_graphs import (
    REALISTIC_SIZE,
    assert_stored_sums_match_graph,
    latest_run,
    networkx_graph,
    realistic_set,
    stored_assignment,
    stored_communities,
    stored_parts,
    write_subset,
)

from bench.similarity_graph import knn_edges, select_edges, synthetic_keys, write_edges, write_graph
from services.communities import ClusteringError, ClusteringInProgress, run_clustering
from services.communities.statistics import NO_FINDING
from services.config import Settings
from services.graph.store import GraphStore
from workers.tasks.communities import cluster_task


@pytest.mark.parametrize("algorithm", ["leiden", "louvain", "cnm"])
def test_run_stores_a_partition_that_recomputes_exactly(
    clean_graph: GraphStore, community_settings: Settings, algorithm: str
) -> None:
    data = realistic_set()
    written = write_subset(clean_graph, data, np.arange(REALISTIC_SIZE))

    summary = run_clustering(clean_graph, community_settings, algorithm=algorithm)

    assignment = stored_assignment(clean_graph)
    assert len(assignment) == REALISTIC_SIZE
    assert all(community is not None for community in assignment.values())
    assert_stored_sums_match_graph(clean_graph)

    graph = networkx_graph(clean_graph)
    parts = stored_parts(assignment)
    expected_q = nx.community.modularity(graph, parts.values(), weight="weight")
    run = latest_run(clean_graph)
    assert run["modularity"] == pytest.approx(expected_q, abs=1e-6)
    assert summary.modularity == pytest.approx(expected_q, abs=1e-6)
    # The algorithm's own figure is recorded too; GDS's and networkx's definitions agree here.
    assert run["reported_modularity"] == pytest.approx(expected_q, abs=1e-6)
    assert run["algorithm"] == algorithm
    assert json.loads(run["parameters"])["algorithm"] == algorithm
    assert run["node_count"] == REALISTIC_SIZE
    assert run["edge_count"] == len(written.edges) == graph.number_of_edges()
    assert run["community_count"] == len(parts) == summary.community_count
    assert run["started_at"] < run["finished_at"]
    assert run["duration_s"] > 0
    sizes = sorted(len(keys) for keys in parts.values())
    assert (summary.size_min, summary.size_max) == (sizes[0], sizes[-1])
    # A real community structure, not one giant or all singletons.
    assert 0.5 < expected_q < 1.0
    assert 3 <= len(parts) <= 60


def test_centroids_and_finding_histograms(
    clean_graph: GraphStore, community_settings: Settings
) -> None:
    data = realistic_set()
    write_subset(clean_graph, data, np.arange(REALISTIC_SIZE))
    run_clustering(clean_graph, community_settings)

    assignment = stored_assignment(clean_graph)
    index_of = {key: i for i, key in enumerate(synthetic_keys(range(REALISTIC_SIZE)))}
    for community_id, community in stored_communities(clean_graph).items():
        rows = [index_of[key] for key, c in assignment.items() if c == community_id]
        mean = data.embeddings[rows].astype(np.float64).mean(axis=0)
        centroid = np.asarray(community["centroid"])
        assert centroid.shape == (1024,)
        assert np.linalg.norm(centroid) == pytest.approx(1.0, abs=1e-9)
        assert float(centroid @ mean / np.linalg.norm(mean)) == pytest.approx(1.0, abs=1e-6)
        assert community["mean_norm"] == pytest.approx(np.linalg.norm(mean), rel=1e-5)
        expected: dict[str, int] = {}
        for i in rows:
            for finding in data.findings[i] or (NO_FINDING,):
                expected[finding] = expected.get(finding, 0) + 1
        histogram = dict(zip(community["finding_names"], community["finding_counts"], strict=True))
        assert histogram == expected
        assert community["finding_counts"] == sorted(community["finding_counts"], reverse=True)


def test_rerun_on_the_same_graph_keeps_the_ids(
    clean_graph: GraphStore, community_settings: Settings
) -> None:
    write_subset(clean_graph, realistic_set(), np.arange(REALISTIC_SIZE))
    first = run_clustering(clean_graph, community_settings)
    before = stored_assignment(clean_graph)
    communities_before = stored_communities(clean_graph)

    # From scratch with the same seed, Leiden finds the same partition under new labels: the
    # matching gives every community its id back.
    unseeded = community_settings.model_copy(update={"cluster_seed_previous": False})
    second = run_clustering(clean_graph, unseeded)
    assert stored_assignment(clean_graph) == before
    assert (second.images_kept, second.images_before) == (REALISTIC_SIZE, REALISTIC_SIZE)
    assert set(stored_communities(clean_graph)) == set(communities_before)
    assert latest_run(clean_graph)["previous_run_id"] == first.run_id
    assert latest_run(clean_graph)["next_community_id"] == max(communities_before) + 1

    # Started from the stored partition (the default), Leiden may still move a few borderline
    # images, and only to raise modularity.
    third = run_clustering(clean_graph, community_settings)
    after = stored_assignment(clean_graph)
    moved = sum(before[key] != after[key] for key in before)
    print(f"seeded re-run on the same graph: {moved} of {REALISTIC_SIZE} images moved")
    assert third.images_kept == REALISTIC_SIZE - moved
    assert moved <= 0.05 * REALISTIC_SIZE
    assert third.modularity >= first.modularity - 1e-9
    assert json.loads(latest_run(clean_graph)["parameters"])["seeded_from_previous"] is True


def test_images_arriving_during_a_run_are_assigned_at_its_end(
    clean_graph: GraphStore, community_settings: Settings
) -> None:
    data = realistic_set(800, seed=11)
    write_subset(clean_graph, data, np.arange(760))
    late = np.arange(760, 800)
    keys = synthetic_keys(range(800))
    all_edges = knn_edges(data.embeddings, 10)
    late_edges = select_edges(all_edges, all_edges.larger >= 760)

    def ingest_during_the_run(message: str) -> None:
        # Reported right after detection: the projection has been read, the run goes on.
        if message.startswith("detected"):
            write_graph(clean_graph, keys[760:], data.embeddings[late],
                        [data.findings[i] for i in late], data.patient[late], None)  # fmt: skip
            write_edges(clean_graph, keys, late_edges)

    summary = run_clustering(clean_graph, community_settings, progress=ingest_during_the_run)

    assert summary.node_count == 760
    assert summary.late_images_assigned == 40
    assignment = stored_assignment(clean_graph)
    assert all(assignment[key] is not None for key in keys[760:])
    assert_stored_sums_match_graph(clean_graph)


def test_refuses_what_it_cannot_do(clean_graph: GraphStore, community_settings: Settings) -> None:
    with pytest.raises(ClusteringError, match="no :Image nodes"):
        run_clustering(clean_graph, community_settings)
    write_subset(clean_graph, realistic_set(200, seed=3), np.arange(200))
    with pytest.raises(ClusteringError, match="Louvain has no resolution"):
        run_clustering(clean_graph, community_settings, algorithm="louvain", resolution=2.0)
    with pytest.raises(ClusteringError, match="unknown clustering algorithm"):
        run_clustering(clean_graph, community_settings, algorithm="spectral")
    small_cnm = community_settings.model_copy(update={"cluster_cnm_max_nodes": 100})
    with pytest.raises(ClusteringError, match="CNM .* limited to 100 images .* has 200"):
        run_clustering(clean_graph, small_cnm, algorithm="cnm")
    failed = clean_graph.run_text(
        "MATCH (r:ClusteringRun) RETURN r.status AS status, r.error AS error"
    )
    assert [row["status"] for row in failed] == ["failed"]
    assert "CNM" in failed[0]["error"]
    assert not clean_graph.run_text("MATCH (c:Community) RETURN c")


def test_negative_weights_are_refused(
    clean_graph: GraphStore, community_settings: Settings
) -> None:
    write_subset(clean_graph, realistic_set(100, seed=5), np.arange(100))
    clean_graph.run_text("MATCH ()-[r:SIMILAR]->() WITH r LIMIT 1 SET r.weight = -0.2")
    with pytest.raises(ClusteringError, match="1 SIMILAR relationships have a missing or negative"):
        run_clustering(clean_graph, community_settings)
    assert stored_assignment(clean_graph) == dict.fromkeys(synthetic_keys(range(100)))


def test_one_run_at_a_time(clean_graph: GraphStore, community_settings: Settings) -> None:
    from datetime import UTC, datetime, timedelta

    write_subset(clean_graph, realistic_set(150, seed=13), np.arange(150))
    now = datetime.now(UTC)
    running = {"status": "running", "started_at": now - timedelta(minutes=5)}
    clean_graph.query("community_run_create", id="run-other", properties=running)
    with pytest.raises(ClusteringInProgress, match="run-other is in progress"):
        run_clustering(clean_graph, community_settings)
    busy = cluster_task.apply().get()
    assert busy["ran"] is False and "in progress" in busy["reason"]
    assert all(community is None for community in stored_assignment(clean_graph).values())

    # A run still 'running' after 2 hours crashed: it no longer blocks.
    crashed = {"started_at": now - timedelta(hours=3)}
    clean_graph.query("community_run_update", id="run-other", properties=crashed)
    summary = run_clustering(clean_graph, community_settings)
    statuses = {
        row["id"]: row["status"]
        for row in clean_graph.run_text(
            "MATCH (r:ClusteringRun) RETURN r.id AS id, r.status AS status"
        )
    }
    assert statuses["run-other"] == "failed"
    assert statuses[summary.run_id] == "finished"

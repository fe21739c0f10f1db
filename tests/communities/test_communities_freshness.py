"""New images get a community at ingest; a re-run after 5% more images keeps the ids."""

from __future__ import annotations

import threading

import networkx as nx
import numpy as np
import pytest
from community_graphs import (
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
from bench.synthetic import SyntheticSet
from services.communities import (
    UnknownImagesError,
    assign_new_images,
    needs_full_rerun,
    run_clustering,
    staleness,
)
from services.config import Settings
from services.graph.store import GraphStore
from services.ingest.knn import SymmetricEdges
from workers.tasks.ingest import link_images

TOTAL = 1200
BASE = 1140  # the 60 others are 5.3% more images


def ingest_new_images(
    store: GraphStore, data: SyntheticSet, new: np.ndarray, all_edges: SymmetricEdges
) -> list[str]:
    """What incremental ingestion adds: the new nodes and every kNN pair touching one."""
    keys = synthetic_keys(range(len(data.cluster)))
    new_keys = [keys[i] for i in new]
    write_graph(store, new_keys, data.embeddings[new], [data.findings[i] for i in new],
                data.patient[new], None)  # fmt: skip
    is_new = np.zeros(len(keys), dtype=bool)
    is_new[new] = True
    write_edges(
        store, keys, select_edges(all_edges, is_new[all_edges.smaller] | is_new[all_edges.larger])
    )
    return new_keys


def test_new_images_get_a_community_and_a_rerun_keeps_the_ids(
    clean_graph: GraphStore, community_settings: Settings
) -> None:
    data = realistic_set(TOTAL, seed=21)
    all_edges = knn_edges(data.embeddings, 10)
    write_subset(clean_graph, data, np.arange(BASE))
    first = run_clustering(clean_graph, community_settings)
    before = stored_assignment(clean_graph)
    m_before = latest_run(clean_graph)["total_weight_m"]

    new_keys = ingest_new_images(clean_graph, data, np.arange(BASE, TOTAL), all_edges)
    state = staleness(clean_graph, community_settings)
    assert (state.images_unassigned, state.images_added) == (60, 0)
    assert state.added_fraction == pytest.approx(60 / BASE)
    assert not state.stale  # 5.3% < the default 10%

    assigned = assign_new_images(clean_graph, new_keys)

    assert set(assigned) == set(new_keys)
    assignment = stored_assignment(clean_graph)
    assert all(assignment[key] == assigned[key] for key in new_keys)
    assert {assignment[key] for key in before} == set(before.values())  # old images untouched
    assert all(assignment[key] == before[key] for key in before)
    assert_stored_sums_match_graph(clean_graph)
    run = latest_run(clean_graph)
    assert run["id"] == first.run_id
    assert run["images_added"] == 60
    assert run["weight_added"] == pytest.approx(run["total_weight_m"] - m_before)
    assert run["total_weight_m_at_run"] == pytest.approx(m_before)
    graph = networkx_graph(clean_graph)
    parts = stored_parts(assignment)
    current_q = clean_graph.query("community_current_modularity")[0]["modularity"]
    assert current_q == pytest.approx(nx.community.modularity(graph, parts.values()), abs=1e-6)
    state = staleness(clean_graph, community_settings)
    assert (state.images_unassigned, state.images_added) == (0, 60)
    assert not needs_full_rerun(clean_graph, community_settings)
    assert needs_full_rerun(
        clean_graph, community_settings.model_copy(update={"cluster_rerun_fraction": 0.05})
    )

    second = run_clustering(clean_graph, community_settings)

    after = stored_assignment(clean_graph)
    kept_old = sum(after[key] == before[key] for key in before) / len(before)
    kept_new = sum(after[key] == assigned[key] for key in new_keys) / len(new_keys)
    print(f"ids kept: {kept_old:.1%} of the old images, {kept_new:.1%} of the new ones")
    assert kept_old >= 0.9
    assert second.images_before == TOTAL
    assert second.images_kept / second.images_before >= 0.9
    # Assignment at ingest mostly agrees with what the full run decides.
    assert kept_new >= 0.8
    assert staleness(clean_graph, community_settings).images_added == 0


def _two_cliques(store: GraphStore) -> dict[str, int]:
    """Two 4-cliques (weight 0.9) joined by one weak pair, clustered."""
    rng = np.random.default_rng(0)
    keys = [f"a{i}" for i in range(4)] + [f"b{i}" for i in range(4)]
    embeddings = rng.standard_normal((8, 1024)).astype(np.float32)
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    pairs = [
        (i, j, 0.9) for group in (range(4), range(4, 8)) for i in group for j in group if i < j
    ]
    pairs.append((0, 4, 0.1))
    edges = SymmetricEdges(*(np.asarray(column) for column in zip(*pairs, strict=True)))
    write_graph(store, keys, embeddings, [["Mass"]] * 4 + [[]] * 4, list(range(8)), edges)
    return {key: i for i, key in enumerate(keys)}


def test_assignment_rule(clean_graph: GraphStore, community_settings: Settings) -> None:
    _two_cliques(clean_graph)
    run_clustering(clean_graph, community_settings)
    clustered = stored_assignment(clean_graph)
    a, b = clustered["a0"], clustered["b0"]
    assert a != b
    next_id = latest_run(clean_graph)["next_community_id"]
    embeddings = np.eye(4, 1024, dtype=np.float32)
    write_graph(clean_graph, ["n1", "n2", "n3", "n4"], embeddings, [["Mass"], [], [], []],
                [10, 11, 12, 13], None)  # fmt: skip
    clean_graph.write_batches("synthetic_write_similar", [
        {"a": "a1", "b": "n1", "weight": 0.8}, {"a": "a2", "b": "n1", "weight": 0.8},
        {"a": "b1", "b": "n1", "weight": 0.3}, {"a": "n3", "b": "n4", "weight": 0.7},
    ], 100)  # fmt: skip

    assigned = assign_new_images(clean_graph, ["n1", "n2", "n3", "n4"])

    # n1: most of its weight goes to clique a, which gives the larger gain.
    assert assigned["n1"] == a
    # n2 has no edge: a community of its own, with an id never used before.
    assert assigned["n2"] == next_id
    # n3's only neighbour is n4, not clustered when n3 is placed: a new community, which n4
    # then joins (gain w/m - w*w/(2m^2) > 0).
    assert assigned["n3"] == assigned["n4"] == next_id + 1
    assert latest_run(clean_graph)["next_community_id"] == next_id + 2
    assert_stored_sums_match_graph(clean_graph)
    community_a = stored_communities(clean_graph)[a]
    assert dict(zip(community_a["finding_names"], community_a["finding_counts"], strict=True)) == {
        "Mass": 5
    }
    centroid = np.asarray(community_a["centroid"])
    assert centroid[0] > 0  # n1's embedding (e_0) moved the centroid
    # Calling again changes nothing: assigned images keep their community.
    assert assign_new_images(clean_graph, ["n1", "n3"]) == {"n1": a, "n3": next_id + 1}
    assert_stored_sums_match_graph(clean_graph)


def test_concurrent_assignments_keep_the_sums_exact(
    clean_graph: GraphStore, community_settings: Settings
) -> None:
    data = realistic_set(600, seed=4)
    all_edges = knn_edges(data.embeddings, 10)
    write_subset(clean_graph, data, np.arange(540))
    run_clustering(clean_graph, community_settings)
    new_keys = ingest_new_images(clean_graph, data, np.arange(540, 600), all_edges)
    errors: list[BaseException] = []

    def assign(keys: list[str]) -> None:
        try:
            for start in range(0, len(keys), 5):
                assign_new_images(clean_graph, keys[start : start + 5])
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    workers = [threading.Thread(target=assign, args=(new_keys[i::2],)) for i in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert not errors
    assert all(community is not None for community in stored_assignment(clean_graph).values())
    assert_stored_sums_match_graph(clean_graph)
    assert latest_run(clean_graph)["images_added"] == 60


def test_assignment_before_the_first_run_and_unknown_keys(
    clean_graph: GraphStore, community_settings: Settings
) -> None:
    write_subset(clean_graph, realistic_set(50, seed=2), np.arange(50))
    keys = synthetic_keys(range(3))
    assert assign_new_images(clean_graph, keys) == {}
    assert all(community is None for community in stored_assignment(clean_graph).values())
    state = staleness(clean_graph, community_settings)
    assert state.run_id is None and state.stale
    with pytest.raises(UnknownImagesError, match="no :Image with key not-an-image"):
        assign_new_images(clean_graph, [*keys, "not-an-image"])
    assert assign_new_images(clean_graph, []) == {}


def test_the_ingest_linking_task_assigns_communities_to_new_images(
    clean_graph: GraphStore, community_settings: Settings
) -> None:
    data = realistic_set(TOTAL, seed=22)
    all_edges = knn_edges(data.embeddings, 10)
    write_subset(clean_graph, data, np.arange(BASE))
    run_clustering(clean_graph, community_settings)
    new_keys = ingest_new_images(clean_graph, data, np.arange(BASE, TOTAL), all_edges)
    assert all(stored_assignment(clean_graph)[key] is None for key in new_keys)

    result = link_images.apply(kwargs={"mode": "incremental"}).get()

    assert result is not None
    assignment = stored_assignment(clean_graph)
    assert all(assignment[key] is not None for key in new_keys)
    assert_stored_sums_match_graph(clean_graph)
    assert staleness(clean_graph, community_settings).images_added == len(new_keys)

"""The read model's layout (services/retrieval/layout.py): communities with near centroids lie
next to each other in the rows, and a search scores touching blocks as one product."""

from __future__ import annotations

import numpy as np
import pytest

from services.config import Settings
from services.graph.store import GraphStore
from services.retrieval.cache import ReadModelCache
from services.retrieval.contract import SearchFilters, Strategy
from services.retrieval.incremental import relayout
from services.retrieval.layout import CentroidGroups, CommunityLayout, similarity_order
from services.retrieval.readmodel import GraphSnapshot
from services.retrieval.region import Probe
from services.retrieval.service import RetrievalService
from tests.retrieval.graphs import DIM, SmallGraph, unit
from tests.retrieval.reference import knn_edges, reference_region_search


def test_similarity_order_keeps_near_vectors_together() -> None:
    rng = np.random.default_rng(3)
    centres = rng.standard_normal((4, DIM))
    labels = rng.permutation(np.repeat(np.arange(4), 6))
    vectors = np.stack([unit(centres[label] + rng.standard_normal(DIM) * 0.02) for label in labels])

    order = similarity_order(vectors)

    assert sorted(order.tolist()) == list(range(len(labels)))
    in_order = labels[order]
    assert int(np.count_nonzero(in_order[1:] != in_order[:-1])) == 3, in_order
    assert np.array_equal(similarity_order(vectors), order)


def test_unknown_communities_and_unassigned_rows_go_last() -> None:
    layout = CommunityLayout(np.array([7, 3, 5]))

    keys = layout.row_keys(np.array([5, -1, 3, 7, 9]))
    starts, stops = layout.blocks(np.sort(keys), np.array([3, 5, 7, 9]))

    assert keys.tolist() == [2, 3, 1, 0, 3]
    assert list(zip(starts.tolist(), stops.tolist(), strict=True)) == [
        (1, 2),
        (2, 3),
        (0, 1),
        (0, 0),
    ]


def communities_around(
    directions: int, communities: int, members: int, *, spread: float, seed: int
) -> SmallGraph:
    """Community c around direction ``c % directions`` (its own centre ``spread`` off it),
    ``members`` images each, and their kNN edges."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((directions, DIM))
    embeddings: dict[str, np.ndarray] = {}
    community_of: dict[str, int] = {}
    for community in range(communities):
        centre = centres[community % directions] + rng.standard_normal(DIM) * spread
        for member in range(members):
            key = f"img-{community:03d}-{member}"
            embeddings[key] = unit(centre + rng.standard_normal(DIM) * spread / 3)
            community_of[key] = community
    return SmallGraph(embeddings, knn_edges(embeddings, 4), community_of, {}, {})


@pytest.mark.neo4j
def test_the_read_model_lays_near_communities_next_to_each_other(
    clean_graph: GraphStore, settings: Settings
) -> None:
    # Even ids around one direction, odd ids around another: id order alternates.
    graph = communities_around(2, 6, 5, spread=0.03, seed=11)
    graph.write(clean_graph)

    snapshot = ReadModelCache(clean_graph, settings).get()

    laid_out = blocks_in_row_order(snapshot)
    assert {c % 2 for c in laid_out[:3]} in ({0}, {1}), laid_out
    for position, community in enumerate(snapshot.community_ids.tolist()):
        members = {str(key) for key in snapshot.keys[snapshot.block(position)]}
        assert members == {k for k, c in graph.community_of.items() if c == community}
    # A compaction keeps the order it was given.
    sums = clean_graph.query("search_region_model")[0]
    assert blocks_in_row_order(relayout(snapshot, None, sums)) == laid_out

    # The three near communities touch: one product scores them, as the rows one by one would.
    query = graph.embeddings["img-000-0"]
    probe = Probe.start(snapshot, query, snapshot.eligible(SearchFilters()), 0)
    probe.score([snapshot.position_of_community[c] for c in (0, 2, 4)])
    assert len(probe.chunks) == 1
    rows, scores = probe.candidates()
    assert sorted(rows.tolist()) == sorted(
        row for c in (0, 2, 4) for row in range(*block_range(snapshot, c))
    )
    np.testing.assert_allclose(scores, snapshot.matrix[rows] @ query, atol=1e-6)

    # Answers over this layout are Algorithm 1's.
    service = RetrievalService(clean_graph, settings.model_copy(update={"region_query_edges": 4}))
    excluded = {"img-000-0"}
    hits = service.search(
        query, 12, Strategy.REGION, SearchFilters(exclude_keys=frozenset(excluded))
    )
    assert list(hits.keys) == reference_region_search(
        graph.graph, graph.community_of, graph.embeddings, query,
        query_edges=4, k=12, excluded=excluded,
    )  # fmt: skip


def blocks_in_row_order(snapshot: GraphSnapshot) -> list[int]:
    order = np.argsort(snapshot.block_start, kind="stable")
    return [int(c) for c in snapshot.community_ids[order]]


def block_range(snapshot: GraphSnapshot, community: int) -> tuple[int, int]:
    block = snapshot.block(snapshot.position_of_community[community])
    return block.start, block.stop


def test_centroid_groups_hold_the_nearest_communities() -> None:
    rng = np.random.default_rng(5)
    centres = rng.standard_normal((20, DIM))
    centroids = np.stack(
        [unit(centres[i % 20] + rng.standard_normal(DIM) * 0.05) for i in range(400)]
    )
    order = similarity_order(centroids)
    block_start = np.empty(400, dtype=np.int64)
    block_start[order] = np.arange(400) * 3
    groups = CentroidGroups.of(centroids, block_start, np.full(400, 3))
    assert groups is not None and len(groups.members) == 20

    for position in (0, 137, 399):
        chosen = groups.nearest(centroids[position], 30, 403)
        near = np.argsort(-(centroids @ centroids[position]))[:10]
        assert set(near.tolist()) <= set(chosen.tolist())
        assert len(chosen) < 400 // 2
        assert {400, 401, 402} <= set(chosen.tolist())  # communities newer than the groups
    assert CentroidGroups.of(centroids[:100], block_start[:100], np.full(100, 3)) is None


@pytest.mark.neo4j
def test_ranked_search_over_centroid_groups_answers_as_over_every_centroid(
    clean_graph: GraphStore, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    graph = communities_around(30, 300, 3, spread=0.05, seed=8)
    graph.write(clean_graph)
    embeddings = graph.embeddings
    tuned = settings.model_copy(update={"ranked_seed_candidates": 60})
    grouped = RetrievalService(clean_graph, tuned)
    snapshot = grouped.read_model.get()
    assert snapshot.centroid_groups() is not None

    keys = sorted(embeddings)[::97]
    filters = {key: SearchFilters(exclude_keys=frozenset({key})) for key in keys}
    answers = {
        key: grouped.search(embeddings[key], 20, Strategy.COMMUNITY_RANKED, filters[key])
        for key in keys
    }
    monkeypatch.setattr("services.retrieval.layout.GROUPED_FROM", 10**6)
    everything = RetrievalService(clean_graph, tuned)
    assert everything.read_model.get().centroid_groups() is None
    for key in keys:
        hits = everything.search(embeddings[key], 20, Strategy.COMMUNITY_RANKED, filters[key])
        assert hits.keys == answers[key].keys
        assert hits.diagnostics.communities_visited == answers[key].diagnostics.communities_visited
    probe = Probe.start(snapshot, embeddings[keys[0]], snapshot.eligible(SearchFilters()), 60)
    assert np.isneginf(probe.centroid_scores).sum() > len(snapshot.community_ids) // 2

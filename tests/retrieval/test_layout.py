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
from services.retrieval.layout import CommunityLayout, similarity_order
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


def interleaved_graph() -> SmallGraph:
    """Six communities: the even ids around one direction, the odd ids around another, so that
    id order alternates between the two."""
    rng = np.random.default_rng(11)
    directions = rng.standard_normal((2, DIM))
    embeddings: dict[str, np.ndarray] = {}
    community_of: dict[str, int] = {}
    for community in range(6):
        centre = directions[community % 2] + rng.standard_normal(DIM) * 0.03
        for member in range(5):
            key = f"img-{community}-{member}"
            embeddings[key] = unit(centre + rng.standard_normal(DIM) * 0.01)
            community_of[key] = community
    return SmallGraph(embeddings, knn_edges(embeddings, 4), community_of, {}, {})


@pytest.mark.neo4j
def test_the_read_model_lays_near_communities_next_to_each_other(
    clean_graph: GraphStore, settings: Settings
) -> None:
    graph = interleaved_graph()
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
    query = graph.embeddings["img-0-0"]
    probe = Probe.start(snapshot, query, snapshot.eligible(SearchFilters()))
    probe.score([snapshot.position_of_community[c] for c in (0, 2, 4)])
    assert len(probe.chunks) == 1
    rows, scores = probe.candidates()
    assert sorted(rows.tolist()) == sorted(
        row for c in (0, 2, 4) for row in range(*block_range(snapshot, c))
    )
    np.testing.assert_allclose(scores, snapshot.matrix[rows] @ query, atol=1e-6)

    # Answers over this layout are Algorithm 1's.
    service = RetrievalService(clean_graph, settings.model_copy(update={"region_query_edges": 4}))
    excluded = {"img-0-0"}
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

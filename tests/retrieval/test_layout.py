"""The read model's layout (services/retrieval/layout.py): communities with near centroids lie
next to each other in the rows, each community's block is cut into k-means scan lists, and a
search scores touching lists as one product."""

from __future__ import annotations

import numpy as np
import pytest

from services.config import Settings
from services.graph.store import GraphStore
from services.retrieval.cache import ReadModelCache
from services.retrieval.contract import SearchFilters, Strategy
from services.retrieval.incremental import relayout
from services.retrieval.layout import (
    LIST_ROWS,
    CommunityLayout,
    ScanLists,
    _take_rows_in_place,
    similarity_order,
    split_into_lists,
)
from services.retrieval.readmodel import GraphSnapshot, load_snapshot
from services.retrieval.region import Probe
from services.retrieval.service import RetrievalService
from tests.retrieval.graphs import DIM, SmallGraph, bare_snapshot, unit
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
    probe = Probe.start(snapshot, query, snapshot.eligibility(SearchFilters()), 0)
    probe.score(
        np.concatenate([probe.units_of(snapshot.position_of_community[c]) for c in (0, 2, 4)])
    )
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


def clustered_rows(
    clusters: int, rows: int, *, spread: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """``clusters`` tight clusters of ``rows`` unit vectors each, shuffled: vectors and labels."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, DIM))
    labels = rng.permutation(np.repeat(np.arange(clusters), rows))
    vectors = np.stack([unit(centres[c] + rng.standard_normal(DIM) * spread) for c in labels])
    return vectors.astype(np.float32), labels


def test_a_big_block_is_cut_into_lists_of_near_rows() -> None:
    vectors, labels = clustered_rows(4, LIST_ROWS, spread=0.05, seed=2)
    small, _ = clustered_rows(1, LIST_ROWS, spread=0.05, seed=3)  # under 2 lists' rows
    matrix = np.concatenate([small, vectors])
    starts, stops = np.array([0, LIST_ROWS]), np.array([LIST_ROWS, len(matrix)])

    within, cuts = split_into_lists(lambda a, b: matrix[a:b], starts, stops, len(matrix))

    assert np.array_equal(within[:LIST_ROWS], np.arange(LIST_ROWS))
    assert sorted(within[LIST_ROWS:].tolist()) == list(range(LIST_ROWS, len(matrix)))
    assert np.array_equal(cuts, LIST_ROWS + np.arange(1, 4) * LIST_ROWS)
    laid_out = labels[within[LIST_ROWS:] - LIST_ROWS]
    for part in np.split(laid_out, 4):
        assert len(set(part.tolist())) == 1, laid_out  # one cluster per list
    again, _ = split_into_lists(lambda a, b: matrix[a:b], starts, stops, len(matrix))
    assert np.array_equal(again, within)

    lists = ScanLists.of(matrix[within], starts, stops, cuts)
    assert lists.start.tolist() == (np.arange(5) * LIST_ROWS).tolist()
    assert lists.position.tolist() == [0, 1, 1, 1, 1]
    assert (lists.first.tolist(), lists.last.tolist()) == ([0, 1], [1, 5])
    np.testing.assert_allclose(np.linalg.norm(lists.centroids, axis=1), 1.0, atol=1e-5)
    assert np.array_equal(lists.slots, np.arange(5))
    assert lists.group_bounds is None  # under GROUPED_FROM lists: every list is scored


def test_list_groups_hold_the_lists_nearest_the_query() -> None:
    vectors, labels = clustered_rows(20, 60, spread=0.3, seed=5)
    vectors = vectors[np.argsort(labels, kind="stable")]
    blocks = np.arange(0, len(vectors), 3)  # 400 blocks of 3 rows of one cluster: 400 lists
    lists = ScanLists.of(vectors, blocks, blocks + 3, np.zeros(0, np.int64))
    assert len(lists.start) == 400 and lists.group_bounds is not None
    assert len(lists.group_bounds) == 21 and lists.group_bounds[-1] == 400
    assert sorted(lists.slots.tolist()) == list(range(400))

    for row in (0, 555, 1199):
        scores = np.full(400, -np.inf, dtype=np.float32)
        chosen = lists.score_nearest(vectors[row], 30, scores)
        assert len(chosen) < 400 // 2
        assert set(np.flatnonzero(np.isfinite(scores)).tolist()) == set(chosen.tolist())
        every = lists.centroids_of(np.arange(400)) @ vectors[row]
        np.testing.assert_allclose(scores[chosen], every[chosen], atol=1e-6)
        near = np.argsort(-every)[:5]
        assert set(near.tolist()) <= set(chosen.tolist())

    # Each list's centroid is its rows' unit mean, and each group's the unit mean of its lists'.
    centroids = lists.centroids_of(np.arange(400))
    for list_id in range(400):
        mean = vectors[lists.start[list_id] : lists.stop[list_id]].mean(axis=0)
        np.testing.assert_allclose(centroids[list_id], mean / np.linalg.norm(mean), atol=1e-6)
    bounds = lists.group_bounds
    for group in range(len(bounds) - 1):
        members = lists.slots[bounds[group] : bounds[group + 1]]
        if len(members):
            mean = centroids[members].sum(axis=0)
            np.testing.assert_allclose(
                lists.group_centroids[group], mean / np.linalg.norm(mean), atol=1e-6
            )


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rows_are_taken_in_place_in_any_order(seed: int) -> None:
    rng = np.random.default_rng(seed)
    rows = rng.standard_normal((50, 3)).astype(np.float32)
    order = rng.permutation(50)
    order[:5] = np.arange(5)  # some rows stay where they are
    order[5:] = 5 + rng.permutation(45)
    expected = rows[order]
    _take_rows_in_place(rows, order)
    assert np.array_equal(rows, expected)


def store_three_clusters_in_one_community(store: GraphStore) -> tuple[SmallGraph, np.ndarray]:
    """Community 7: three tight clusters of 2 * LIST_ROWS images (``img-NNN``, labels by NNN);
    two small communities beside it."""
    vectors, labels = clustered_rows(3, 2 * LIST_ROWS, spread=0.05, seed=9)
    embeddings = {f"img-{i:03d}": vector for i, vector in enumerate(vectors)}
    extra = communities_around(2, 2, 5, spread=0.03, seed=4)
    embeddings.update(extra.embeddings)
    community_of = {key: 7 for key in embeddings} | extra.community_of
    graph = SmallGraph(embeddings, knn_edges(embeddings, 4), community_of, {}, {})
    graph.write(store)
    return graph, labels


def assert_rows_keep_their_keys_and_lists_one_cluster(
    model: GraphSnapshot, graph: SmallGraph, labels: np.ndarray
) -> None:
    for row, key in enumerate(model.keys.tolist()):
        np.testing.assert_allclose(model.matrix[row], graph.embeddings[key], atol=1e-6)
    lists = model.scan_lists
    assert lists is not None
    big = model.position_of_community[7]
    units = range(lists.first[big], lists.last[big])
    assert len(units) >= 3
    for unit_id in units:
        keys = model.keys[lists.start[unit_id] : lists.stop[unit_id]]
        assert len({int(labels[int(str(key)[4:])]) for key in keys}) == 1


@pytest.mark.neo4j
def test_loaded_and_compacted_models_keep_each_row_with_its_key(
    clean_graph: GraphStore, settings: Settings
) -> None:
    graph, labels = store_three_clusters_in_one_community(clean_graph)

    snapshot = ReadModelCache(clean_graph, settings).get()
    sums = clean_graph.query("search_region_model")[0]
    for model in (snapshot, relayout(snapshot, None, sums)):
        assert_rows_keep_their_keys_and_lists_one_cluster(model, graph, labels)


@pytest.mark.neo4j
def test_a_load_whose_counts_went_stale_keeps_each_row_with_its_key(
    clean_graph: GraphStore, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Images that joined their communities between the load's count and its rows go to the
    overflow area, and the rows are gathered into new buffers: the other path through the load."""
    graph, labels = store_three_clusters_in_one_community(clean_graph)
    version = RetrievalService(clean_graph, settings).read_model.version()
    counted = clean_graph.query

    def counts_before_two_joined_each(name: str, /, **params: object) -> list:
        records = counted(name, **params)
        if name != "search_community_counts":
            return records
        return [{**record, "images": record["images"] - 2} for record in map(dict, records)]

    monkeypatch.setattr(clean_graph, "query", counts_before_two_joined_each)
    snapshot = load_snapshot(clean_graph, version)

    assert_rows_keep_their_keys_and_lists_one_cluster(snapshot, graph, labels)


@pytest.mark.neo4j
def test_ranked_search_over_list_groups_answers_as_over_every_list(
    clean_graph: GraphStore, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    graph = communities_around(30, 300, 3, spread=0.05, seed=8)
    graph.write(clean_graph)
    embeddings = graph.embeddings
    tuned = settings.model_copy(update={"ranked_seed_candidates": 60})
    grouped = RetrievalService(clean_graph, tuned)
    snapshot = grouped.read_model.get()
    assert snapshot.scan_lists is not None and snapshot.scan_lists.group_bounds is not None

    keys = sorted(embeddings)[::97]
    filters = {key: SearchFilters(exclude_keys=frozenset({key})) for key in keys}
    answers = {
        key: grouped.search(embeddings[key], 20, Strategy.COMMUNITY_RANKED, filters[key])
        for key in keys
    }
    monkeypatch.setattr("services.retrieval.layout.GROUPED_FROM", 10**6)
    everything = RetrievalService(clean_graph, tuned)
    every_list = everything.read_model.get().scan_lists
    assert every_list is not None and every_list.group_bounds is None
    for key in keys:
        hits = everything.search(embeddings[key], 20, Strategy.COMMUNITY_RANKED, filters[key])
        assert hits.keys == answers[key].keys
        assert hits.diagnostics.communities_visited == answers[key].diagnostics.communities_visited
    probe = Probe.start(snapshot, embeddings[keys[0]], snapshot.eligibility(SearchFilters()), 60)
    assert np.isneginf(probe.unit_scores).sum() > len(snapshot.community_ids) // 2


def test_rows_joined_to_a_community_with_no_list_are_scored() -> None:
    """Community 2 had no rows when the lists were made; two images joined it since (its
    ``extras``, as an applied change leaves them). Every search scores them."""
    vectors, _ = clustered_rows(2, 3, spread=0.05, seed=6)
    snapshot = bare_snapshot(
        vectors,
        community=np.array([1, 1, 1, 1, 2, 2], dtype=np.int32),
        community_ids=np.array([1, 2], dtype=np.int64),
        sigma_tot=np.ones(2, dtype=np.float64),
        community_size=np.array([4, 2], dtype=np.int64),
        block_start=np.array([0, 0], dtype=np.int64),
        block_stop=np.array([4, 0], dtype=np.int64),
        m=1.0,
        run="run",
    )
    snapshot.extras = {1: np.array([4, 5], dtype=np.int64)}
    snapshot.community_position[4:] = 1
    snapshot.unassigned_rows = np.zeros(0, dtype=np.int64)
    assert snapshot.scan_lists is not None and snapshot.scan_lists.listless.tolist() == [1]

    for floor in (0, 1):
        probe = Probe.start(snapshot, vectors[5], snapshot.eligibility(SearchFilters()), floor)
        probe.scan_nearest(floor)
        assert {4, 5} <= set(probe.candidates()[0].tolist())

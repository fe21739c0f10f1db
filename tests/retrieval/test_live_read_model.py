"""The read model follows the writes instead of reloading: each write path's logged change is
applied to the snapshot in place (no full load), and the answers then equal those of a model
loaded afresh from Neo4j; Cypher run outside the platform is still noticed."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from services.communities import run_clustering
from services.config import Settings
from services.curation.deletion import delete_images
from services.curation.relabel import relabel_image
from services.graph.store import GraphStore
from services.retrieval import cache as cache_module
from services.retrieval.contract import SearchFilters, Strategy
from services.retrieval.incremental import apply_rows, regroup, relayout, with_tombstones
from services.retrieval.readmodel import NO_COMMUNITY, GraphSnapshot, load_snapshot
from services.retrieval.service import RetrievalService
from tests.retrieval.live_graph import STRATEGIES, answers, ingest_logged, stored_graph

pytestmark = pytest.mark.neo4j
SALT = b"test-salt"


def fresh_answers(store: GraphStore, settings: Settings, keys: list[str]) -> dict:
    return answers(RetrievalService(store, settings), keys)


@pytest.mark.parametrize("memory_mib", [100_000, 0], ids=["copied-layout", "regrouped"])
def test_every_write_path_changes_the_snapshot_without_a_reload(
    clean_graph: GraphStore, settings: Settings, memory_mib: int
) -> None:
    # 0 MiB: no room for a second matrix, so the clustering run is adopted over the same rows.
    settings = settings.model_copy(update={"search_layout_memory_mib": memory_mib})
    graph = stored_graph(clean_graph, settings)
    service = RetrievalService(clean_graph, settings)
    probes = graph.keys[: graph.stored : 37]
    assert answers(service, probes) == fresh_answers(clean_graph, settings, probes)
    loads = service.read_model.loads

    # Ingest: nodes, edges and community assignment, each its own logged change.
    new = ingest_logged(clean_graph, graph, range(graph.stored, graph.stored + 8))
    applies = service.read_model.applies
    for key in new:
        hits = service.search(graph.embedding_of(key), 3, Strategy.COMMUNITY_RANKED,
                              SearchFilters())  # fmt: skip
        assert hits.keys[0] == key, "an ingested image is found on the next search"
    assert service.read_model.applies == applies + 1
    checked = probes + new
    assert answers(service, checked) == fresh_answers(clean_graph, settings, checked)
    assert service.read_model.loads == loads, "ingest must not reload the read model"

    # Delete (one stored image, one just ingested): never returned, neighbours re-linked.
    gone = [graph.keys[5], new[0]]
    report = delete_images(clean_graph, settings, gone, actor="test", salt=SALT)
    assert sorted(report.deleted) == sorted(gone)
    checked = [k for k in checked if k not in gone]
    after_delete = answers(service, checked)
    assert not {key for hits in after_delete.values() for key in hits} & set(gone)
    assert after_delete == fresh_answers(clean_graph, settings, checked)
    assert service.read_model.loads == loads, "a delete must not reload the read model"
    assert service.read_model.current().live == graph.stored + 8 - 2

    # Relabel: the next search's findings and filters show it.
    target = new[1]
    hernia = SearchFilters(finding="Hernia")
    query = graph.embedding_of(target)
    assert target not in service.search(query, 5, Strategy.EXACT, hernia).keys
    relabel_image(clean_graph, target, ["Hernia"], actor="test", salt=SALT)
    filtered = service.search(query, 5, Strategy.EXACT, hernia)
    assert filtered.keys[0] == target
    assert filtered.findings[0] == ("Hernia",)
    assert service.read_model.loads == loads, "a relabel must not reload the read model"

    # A new clustering run: a new layout built in memory, not read again from Neo4j; without
    # room for a copy, the same matrix regrouped.
    layouts, regroups = service.read_model.layouts, service.read_model.regroups
    before = service.read_model.current()
    run_clustering(clean_graph, settings)
    assert answers(service, checked) == fresh_answers(clean_graph, settings, checked)
    after = service.read_model.current()
    copied = memory_mib > 0
    assert service.read_model.layouts == layouts + copied
    assert service.read_model.regroups == regroups + (not copied)
    assert np.shares_memory(before.matrix, after.matrix) is not copied
    assert service.read_model.loads == loads

    # Writes after the new partition still apply in place and answer as a fresh model.
    more = ingest_logged(clean_graph, graph, range(graph.stored + 8, graph.stored + 16))
    delete_images(clean_graph, settings, [more[0], checked[3]], actor="test", salt=SALT)
    relabel_image(clean_graph, more[1], ["Hernia"], actor="test", salt=SALT)
    checked = [k for k in checked + more if k not in (more[0], checked[3])]
    assert answers(service, checked) == fresh_answers(clean_graph, settings, checked)
    assert service.read_model.loads == loads


def members_by_key(snapshot: GraphSnapshot) -> dict[int, set[str]]:
    return {
        int(community): {str(snapshot.keys[r]) for r in np.atleast_1d(
            np.arange(len(snapshot))[snapshot.members(position)]) if snapshot.alive[r]}
        for position, community in enumerate(snapshot.community_ids.tolist())
    }  # fmt: skip


def test_a_regrouped_partition_equals_a_copied_layout(
    clean_graph: GraphStore, settings: Settings
) -> None:
    """Any partition, however different from the rows' order: the same members, sums and
    unassigned images as a laid-out copy, scan lists inside the blocks, and the matrix shared,
    not copied."""
    graph = stored_graph(clean_graph, settings, n=200, extra=0)
    version = RetrievalService(clean_graph, settings).read_model.version()
    snapshot = load_snapshot(clean_graph, version)
    sums = clean_graph.read_autocommit("search_region_model")[0].data()
    ids = [int(c) for c, _, _ in sums["communities"] if c is not None]
    rng = np.random.default_rng(3)
    # Every image a random stored community, a few none: runs of rows are broken everywhere.
    chosen = {key: int(rng.choice(ids)) for key in graph.keys[:190]}
    assignment = (list(chosen), list(chosen.values()))
    # A deleted image the stored assignment still names (deleted after the run read it).
    snapshot = with_tombstones(snapshot, [(graph.keys[7], int(snapshot.row_seq.max()) + 1)])
    grouped = regroup(snapshot, assignment, sums)
    copied = relayout(snapshot, assignment, sums)
    assert copied.row_of(graph.keys[7]) is None is grouped.row_of(graph.keys[7])
    assert grouped.community[grouped.key_index[graph.keys[7]]] == NO_COMMUNITY
    assert graph.keys[7] not in set().union(*members_by_key(grouped).values())
    assert np.shares_memory(grouped.matrix, snapshot.matrix)
    assert not np.shares_memory(copied.matrix, snapshot.matrix)
    assert members_by_key(grouped) == members_by_key(copied)
    assert any(len(rows) for rows in grouped.extras.values()), "the partition was not scattered"
    for model in (grouped, copied):
        lists = model.scan_lists
        assert lists is not None
        for start, stop, position in zip(lists.start, lists.stop, lists.position, strict=True):
            assert set(model.community_position[start:stop].tolist()) == {position}
        listed = np.zeros(len(model), dtype=bool)
        for start, stop in zip(lists.start, lists.stop, strict=True):
            listed[start:stop] = True
        in_blocks = np.zeros(len(model), dtype=bool)
        for start, stop in zip(model.block_start, model.block_stop, strict=True):
            in_blocks[start:stop] = True
        assert np.array_equal(listed, in_blocks)
    np.testing.assert_array_equal(grouped.sigma_tot, copied.sigma_tot)
    unassigned = {str(grouped.keys[r]) for r in grouped.unassigned_rows}
    assert unassigned == set(graph.keys[190:200])
    assert unassigned == {str(copied.keys[r]) for r in copied.unassigned_rows}
    dead = graph.keys[7]
    for key in graph.keys[:7] + graph.keys[8:200]:
        row, other = grouped.row_of(key), copied.row_of(key)
        assert grouped.community_of(row) == copied.community_of(other)
        # The regrouped model shares the CSR, edges to the tombstone included (searches skip
        # dead rows); the copy dropped them.
        neighbours = [k for k in grouped.keys[grouped.edges_of(row)[0]] if k != dead]
        assert sorted(neighbours) == sorted(copied.keys[copied.edges_of(other)[0]])


def test_cypher_run_outside_the_platform_is_picked_up(
    clean_graph: GraphStore, settings: Settings
) -> None:
    graph = stored_graph(clean_graph, settings, n=200, extra=0)
    service = RetrievalService(clean_graph, settings)
    victim, relabelled = graph.keys[3], graph.keys[4]
    query = graph.embedding_of(victim)
    assert service.search(query, 1, Strategy.EXACT, SearchFilters()).keys == (victim,)
    loads = service.read_model.loads

    # A node deleted in the Browser: the counts no logged change explains.
    clean_graph.run_text("MATCH (i:Image {key: $key}) DETACH DELETE i", key=victim)
    assert victim not in service.search(query, 5, Strategy.EXACT, SearchFilters()).keys
    assert service.read_model.loads == loads + 1

    # A property set in the Browser with the generation bumped (as the README says to).
    clean_graph.run_text(
        "MATCH (i:Image {key: $key}) SET i.findings = ['Hernia'] WITH i "
        "MATCH (s:GraphState {id: 'graph'}) SET s.generation = s.generation + 1",
        key=relabelled,
    )
    hits = service.search(graph.embedding_of(relabelled), 3, Strategy.EXACT,
                          SearchFilters(finding="Hernia"))  # fmt: skip
    assert hits.keys[0] == relabelled
    assert hits.findings[0] == ("Hernia",)

    # A live process notices it in the background; no search waits on the rebuild.
    live = RetrievalService(clean_graph, settings, live=True)
    warm = live.search(query, 5, Strategy.COMMUNITY_RANKED, SearchFilters())
    assert "wait_for_model" in warm.diagnostics.stage_ms
    other = graph.keys[8]
    clean_graph.run_text("MATCH (i:Image {key: $key}) DETACH DELETE i", key=other)
    deadline = time.monotonic() + 30
    while True:
        for strategy in STRATEGIES:
            hits = live.search(graph.embedding_of(other), 5, strategy, SearchFilters())
            assert "wait_for_model" not in hits.diagnostics.stage_ms
        if other not in hits.keys:
            break
        assert time.monotonic() < deadline, "the outside delete was never noticed"
        time.sleep(0.1)
    assert live.read_model.loads == 2
    live.read_model.close()


def test_a_version_read_across_a_logged_change_is_not_taken_for_an_outside_write(
    clean_graph: GraphStore, settings: Settings
) -> None:
    """search_graph_version reads the generation before the counts (not one snapshot): a
    logged change committing between the two reads shows its counts under the old generation.
    That is not a write outside the platform; the change is applied, nothing reloaded."""
    graph = stored_graph(clean_graph, settings, n=200, extra=4)
    cache = RetrievalService(clean_graph, settings).read_model
    cache.get()
    before, loads = cache.version(), cache.loads
    new = ingest_logged(clean_graph, graph, range(graph.stored, graph.stored + 2))
    after = cache.version()
    assert after[0] > before[0] and after[1] == before[1] + 2

    with cache._follow_lock:
        cache.follow((before[0], *after[1:]))  # what the torn read returned

    assert cache.loads == loads
    snapshot = cache.current()
    assert snapshot is not None and snapshot.seq == after[0]
    assert all(snapshot.row_of(key) is not None for key in new)


def test_a_version_never_pairs_a_generation_with_an_older_ingestion_time(
    clean_graph: GraphStore, settings: Settings
) -> None:
    """The version's fields may be read in any order by Neo4j's planner; the generation is read
    first, in its own query, so a change committing during the read can only make the fields
    newer than the generation. Following such a version, then the true one, applies the change
    and reloads nothing (a generation newer than its ingestion time made live-load run 10 take
    the ingestion time for an outside write and rebuild the whole model)."""
    graph = stored_graph(clean_graph, settings, n=200, extra=4)
    cache = RetrievalService(clean_graph, settings).read_model
    cache.get()
    before, loads = cache.version(), cache.loads
    read = cache.store.read_autocommit
    new: list[str] = []

    def commit_after_the_generation(name: str, **params: object) -> list:
        records = read(name, **params)
        if name == "search_graph_generation" and not new:
            new.extend(ingest_logged(clean_graph, graph, range(graph.stored, graph.stored + 2)))
        return records

    cache.store.read_autocommit = commit_after_the_generation  # type: ignore[method-assign]
    try:
        torn = cache._read_version()
    finally:
        cache.store.read_autocommit = read  # type: ignore[method-assign]
    assert new, "the change committed between the generation and the fields"
    assert torn[0] == before[0] and torn[1] == before[1] + 2 and torn[3] != before[3]

    with cache._follow_lock:
        cache.follow(torn)
        cache.follow(cache._read_version())

    assert cache.loads == loads
    snapshot = cache.current()
    assert snapshot is not None and snapshot.seq > before[0]
    assert all(snapshot.row_of(key) is not None for key in new)


def test_an_image_moved_to_another_community_leaves_its_block(
    clean_graph: GraphStore, settings: Settings
) -> None:
    """A row inside a community's block (laid out, or a regrouped run) that a logged change
    puts in another community is a member of the new one only."""
    graph = stored_graph(clean_graph, settings, n=200, extra=0)
    version = RetrievalService(clean_graph, settings).read_model.version()
    snapshot = load_snapshot(clean_graph, version)
    sums = clean_graph.read_autocommit("search_region_model")[0].data()
    key = graph.keys[17]
    record = clean_graph.read_autocommit("search_rows", keys=[key])[0].data()
    old = int(record["community"])
    other = next(int(c) for c, _, _ in sums["communities"] if c is not None and int(c) != old)
    moved = apply_rows(snapshot, [key], [{**record, "community": other}], sums, version)
    members = members_by_key(moved)
    assert key in members[other]
    assert key not in members[old]


def test_the_first_predicted_findings_join_the_model_without_a_reload(
    clean_graph: GraphStore, settings: Settings
) -> None:
    """A graph stored without predicted findings, then an ingest with a checkpoint that
    predicts them: applied in place (not one full reload per ingest, as on 2026-12-05 at
    223,648 images), with the probabilities a fresh load reads."""
    graph = stored_graph(clean_graph, settings, n=200, extra=8)
    service = RetrievalService(clean_graph, settings)
    probes = graph.keys[:200:23]
    answers(service, probes)
    loads = service.read_model.loads
    new = ingest_logged(clean_graph, graph, range(200, 208), findings_width=14)
    assert answers(service, probes + new) == fresh_answers(clean_graph, settings, probes + new)
    assert service.read_model.loads == loads, "predicted findings must not reload the model"
    applied = service.read_model.current()
    fresh = load_snapshot(clean_graph, service.read_model.version())
    assert applied.finding_probabilities.shape[1] == fresh.finding_probabilities.shape[1] == 14
    for key in probes + new:
        np.testing.assert_array_equal(
            applied.finding_probabilities[applied.row_of(key)],
            fresh.finding_probabilities[fresh.row_of(key)],
        )


@pytest.mark.parametrize("memory_mib", [100_000, 0], ids=["copied-layout", "regrouped"])
def test_changes_applied_while_a_partition_builds_survive_its_swap(
    clean_graph: GraphStore, settings: Settings, monkeypatch: pytest.MonkeyPatch, memory_mib: int
) -> None:
    """A live process: images ingested while the new partition's model is being built (applied
    to the old model meanwhile, then replayed on the new one) are all found after the swap,
    and every answer equals a fresh model's (3 of 60 jobs were lost so at 223,648 images)."""
    settings = settings.model_copy(update={"search_layout_memory_mib": memory_mib})
    graph = stored_graph(clean_graph, settings)
    live = RetrievalService(clean_graph, settings, live=True)
    probes = graph.keys[: graph.stored : 41]
    answers(live, probes)
    building, resume = threading.Event(), threading.Event()
    name = "relayout" if memory_mib else "regroup"
    real = getattr(cache_module, name)

    def slow_build(*args: object, **kwargs: object) -> object:
        built = real(*args, **kwargs)
        building.set()
        assert resume.wait(60)
        return built

    monkeypatch.setattr(cache_module, name, slow_build)
    before = ingest_logged(clean_graph, graph, range(graph.stored, graph.stored + 8))
    run_clustering(clean_graph, settings)
    assert building.wait(60), "the live process never started the new partition's model"
    during = ingest_logged(clean_graph, graph, range(graph.stored + 8, graph.stored + 16))
    live.read_model.catch_up()  # applied to the old model while the new one waits
    resume.set()
    deadline = time.monotonic() + 30
    while (
        live.read_model.stats()["building"]
        or live.read_model.current().run is None
        or (live.read_model.regroups + live.read_model.layouts == 0)
    ):
        assert time.monotonic() < deadline, "the new model was never swapped in"
        time.sleep(0.05)
    live.read_model.catch_up()
    checked = probes + before + during
    assert answers(live, checked) == fresh_answers(clean_graph, settings, checked)
    live.read_model.close()


def test_a_live_process_hands_the_heap_freed_by_a_change_back(
    clean_graph: GraphStore, settings: Settings
) -> None:
    # Without it the heap of replaced snapshots stayed resident: +550 MiB at 223,648 images.
    graph = stored_graph(clean_graph, settings, n=200, extra=8)
    live = RetrievalService(clean_graph, settings, live=True)
    try:
        query = graph.embedding_of(graph.keys[0])
        live.search(query, 5, Strategy.COMMUNITY_RANKED, SearchFilters())
        released = live.read_model.heap_releases
        new = ingest_logged(clean_graph, graph, range(graph.stored, graph.stored + 4))
        deadline = time.monotonic() + 30
        while live.read_model.heap_releases == released:
            assert time.monotonic() < deadline, "the heap was never released after the change"
            time.sleep(0.1)
        assert live.read_model.applies >= 1
        hits = live.search(graph.embedding_of(new[0]), 1, Strategy.EXACT, SearchFilters())
        assert hits.keys == (new[0],)
    finally:
        live.read_model.close()


def test_a_deletion_published_before_a_search_is_never_in_its_answer(
    clean_graph: GraphStore, settings: Settings
) -> None:
    # The search sends its deleted check to Redis and reads the answer only after searching a
    # snapshot that may predate the deletion: it must then search again on one without it.
    graph = stored_graph(clean_graph, settings, n=200, extra=0)
    # No background follow during the test: only the deleted check can drop the image. No read
    # lease either: each search reads Redis (tests/retrieval/test_read_leases.py: with one).
    quiet = settings.model_copy(
        update={"search_follow_interval_s": 3600.0, "search_read_lease_s": 0.0}
    )
    live = RetrievalService(clean_graph, quiet, live=True)
    try:
        victims = graph.keys[5:7]
        for victim in victims:
            query = graph.embedding_of(victim)
            for strategy in STRATEGIES:
                assert live.search(query, 3, strategy, SearchFilters()).keys[0] == victim
            applies = live.read_model.applies
            # As another API process would: the delete stored, its key published to Redis.
            delete_images(clean_graph, settings, [victim], actor="test", salt=SALT)
            for strategy in STRATEGIES:
                hits = live.search(query, 3, strategy, SearchFilters())
                assert victim not in hits.keys, strategy
            assert live.read_model.applies == applies  # dropped by the check, not the log
    finally:
        live.read_model.close()

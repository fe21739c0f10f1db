"""When GDS's seeded Leiden cannot improve on its start, the start is kept (ids and all).

GDS 2.13's seeded Leiden now and then returns a less modular partition than its seed, or throws
inside the procedure; neither can be provoked on purpose, so these tests make the seeded call
itself misbehave the same two ways (against the real Neo4j and GDS) and check what
``detect_gds`` and the run make of it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from community_graphs import (
    REALISTIC_SIZE,
    assert_stored_sums_match_graph,
    latest_run,
    realistic_set,
    stored_assignment,
    write_subset,
)
from neo4j.exceptions import ClientError

from bench.similarity_graph import synthetic_keys
from services.communities import detection, run_clustering
from services.config import Settings
from services.graph.store import GraphStore


def worse_seeded_leiden(real_run: Any) -> Any:
    """A seeded Leiden that returns a worse partition: every image alone (modularity < 0).

    WCC with a threshold above every cosine links nothing, on any node order. (Leiden at a tiny
    resolution, used before, did not always merge the clusters: on 2 of 12 node orders it
    returned a partition more modular than the start, and the test failed for that.)
    """

    def run(store: GraphStore, parameters: Any, graph_name: str, prop: str, seeded: bool) -> Any:
        if not seeded:
            return real_run(store, parameters, graph_name, prop, seeded)
        rows = store.run_text(
            "CALL gds.wcc.mutate($graph_name, {mutateProperty: $property, "
            "relationshipWeightProperty: 'weight', threshold: 2.0}) YIELD componentCount "
            "RETURN componentCount AS communityCount",
            graph_name=graph_name, property=prop,
        )  # fmt: skip
        assert rows[0]["communityCount"] == REALISTIC_SIZE
        return {"communityCount": REALISTIC_SIZE, "modularity": None, "ranLevels": 1,
                "didConverge": True}  # fmt: skip

    return run


def failing_seeded_leiden(real_run: Any) -> Any:
    def run(store: GraphStore, parameters: Any, graph_name: str, prop: str, seeded: bool) -> Any:
        if seeded:
            raise ClientError("java.lang.NullPointerException (as GDS 2.13 once threw)")
        return real_run(store, parameters, graph_name, prop, seeded)

    return run


@pytest.mark.parametrize("misbehaviour", [worse_seeded_leiden, failing_seeded_leiden])
def test_a_seeded_run_that_cannot_improve_keeps_its_start(
    clean_graph: GraphStore, community_settings: Settings, monkeypatch: pytest.MonkeyPatch,
    misbehaviour: Any,
) -> None:  # fmt: skip
    write_subset(clean_graph, realistic_set(), np.arange(REALISTIC_SIZE))
    first = run_clustering(clean_graph, community_settings)
    before = stored_assignment(clean_graph)
    monkeypatch.setattr(detection, "_run_gds", misbehaviour(detection._run_gds))

    second = run_clustering(clean_graph, community_settings)

    assert stored_assignment(clean_graph) == before
    assert second.modularity == pytest.approx(first.modularity, abs=1e-9)
    assert (second.images_kept, second.images_before) == (REALISTIC_SIZE, REALISTIC_SIZE)
    run = latest_run(clean_graph)
    assert (run["seeded"], run["seed_kept"], run["seed_discarded"]) == (True, True, False)
    assert_stored_sums_match_graph(clean_graph)


def test_a_start_with_unassigned_images_is_not_kept(
    clean_graph: GraphStore, community_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_subset(clean_graph, realistic_set(), np.arange(REALISTIC_SIZE))
    run_clustering(clean_graph, community_settings)
    unassigned = synthetic_keys(range(40))  # < half: the run still seeds from the rest
    clean_graph.query("community_clear_assignment", keys=unassigned)
    monkeypatch.setattr(detection, "_run_gds", worse_seeded_leiden(detection._run_gds))

    run_clustering(clean_graph, community_settings)

    after = stored_assignment(clean_graph)
    assert all(after[key] is not None for key in unassigned)
    run = latest_run(clean_graph)
    assert (run["seeded"], run["seed_kept"], run["seed_discarded"]) == (False, False, True)
    assert_stored_sums_match_graph(clean_graph)


def test_a_start_whose_modularity_gds_cannot_compute_is_not_kept(
    clean_graph: GraphStore, community_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At 223,648 images GDS refused the seeded Leiden and then failed to score the start: the
    run starts over from singletons instead of failing."""
    write_subset(clean_graph, realistic_set(), np.arange(REALISTIC_SIZE))
    run_clustering(clean_graph, community_settings)
    monkeypatch.setattr(detection, "_run_gds", failing_seeded_leiden(detection._run_gds))
    real_modularity = detection._gds_modularity

    def failing_on_the_start(store: GraphStore, graph_name: str, prop: str) -> float:
        if prop == detection.SEED_PROPERTY:
            raise ClientError("java.lang.ArrayIndexOutOfBoundsException (as GDS 2.13 threw)")
        return real_modularity(store, graph_name, prop)

    monkeypatch.setattr(detection, "_gds_modularity", failing_on_the_start)

    run_clustering(clean_graph, community_settings)

    after = stored_assignment(clean_graph)
    assert len(after) == REALISTIC_SIZE and all(c is not None for c in after.values())
    run = latest_run(clean_graph)
    assert (run["seeded"], run["seed_kept"], run["seed_discarded"]) == (False, False, True)
    assert_stored_sums_match_graph(clean_graph)

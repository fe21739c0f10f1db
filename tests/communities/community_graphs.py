"""Helpers of the community tests: generated embeddings (bench.synthetic), the ingestion's
exact kNN, written into the real Neo4j as ingestion writes them (bench.similarity_graph), and
independent recomputations of what the job stores."""

from __future__ import annotations

from dataclasses import dataclass

import networkx as nx
import numpy as np
import pytest

from bench.similarity_graph import knn_edges, synthetic_keys, write_graph
from bench.synthetic import SyntheticSet, generate
from services.graph.store import GraphStore
from services.ingest.knn import SymmetricEdges

K = 10
# The size of the bundled NIH demo set; spread 0.15 makes about a quarter of the kNN pairs
# cross planted clusters, so that the partition is not just the connected components.
REALISTIC_SIZE = 733
REALISTIC_SPREAD = 0.15
# The planted-cluster graph: at this spread about 11% of the kNN pairs cross planted clusters,
# so the clusters are not the connected components and the detector has to find them.
PLANTED_SIZE = 1500
PLANTED_SPREAD = 0.13


@dataclass(frozen=True)
class WrittenGraph:
    data: SyntheticSet
    indices: np.ndarray  # rows of data written
    keys: list[str]
    edges: SymmetricEdges  # indexes into keys


def write_subset(
    store: GraphStore, data: SyntheticSet, indices: np.ndarray, k: int = K
) -> WrittenGraph:
    """Writes rows ``indices`` of ``data`` and their exact symmetric kNN graph."""
    keys = synthetic_keys(indices)
    edges = knn_edges(data.embeddings[indices], k)
    write_graph(
        store, keys, data.embeddings[indices], [data.findings[i] for i in indices],
        data.patient[indices], edges,
    )  # fmt: skip
    return WrittenGraph(data, indices, keys, edges)


def networkx_graph(store: GraphStore) -> nx.Graph:
    """The stored graph read back independently of the job's own code."""
    graph = nx.Graph()
    graph.add_nodes_from(
        row["key"] for row in store.run_text("MATCH (i:Image) RETURN i.key AS key")
    )
    for row in store.run_text(
        "MATCH (a:Image)-[r:SIMILAR]-(b:Image) WHERE a.key < b.key "
        "RETURN a.key AS a, b.key AS b, r.weight AS w"
    ):
        graph.add_edge(row["a"], row["b"], weight=row["w"])
    return graph


def stored_assignment(store: GraphStore) -> dict[str, int | None]:
    return {
        row["key"]: row["community"]
        for row in store.run_text("MATCH (i:Image) RETURN i.key AS key, i.community AS community")
    }


def stored_parts(assignment: dict[str, int | None]) -> dict[int | None, set[str]]:
    """The partition an assignment describes: community id -> its image keys."""
    parts: dict[int | None, set[str]] = {}
    for key, community in assignment.items():
        parts.setdefault(community, set()).add(key)
    return parts


def stored_communities(store: GraphStore) -> dict[int, dict]:
    return {
        row["c"]["id"]: row["c"] for row in store.run_text("MATCH (c:Community) RETURN c {.*} AS c")
    }


def latest_run(store: GraphStore) -> dict:
    rows = store.query("community_latest_run")
    assert rows, "no finished clustering run"
    return rows[0]["run"]


def assert_stored_sums_match_graph(store: GraphStore, rel: float = 1e-9) -> None:
    """Every stored figure equals its recomputation from the stored graph and assignment."""
    graph = networkx_graph(store)
    assignment = stored_assignment(store)
    assert all(community is not None for community in assignment.values())
    communities = stored_communities(store)
    members: dict[int, list[str]] = {}
    for key, community in assignment.items():
        members.setdefault(community, []).append(key)
    assert set(members) == set(communities)
    assert sum(c["size"] for c in communities.values()) == graph.number_of_nodes()
    for community, keys in members.items():
        stored = communities[community]
        assert stored["size"] == len(keys)
        sigma = sum(graph.degree(key, weight="weight") for key in keys)
        assert stored["sigma_tot"] == pytest.approx(sigma, rel=rel, abs=1e-9)
        internal = graph.subgraph(keys).size(weight="weight")
        assert stored["internal_weight"] == pytest.approx(internal, rel=rel, abs=1e-9)
    run = latest_run(store)
    assert run["total_weight_m"] == pytest.approx(graph.size(weight="weight"), rel=rel)


def realistic_set(n: int = REALISTIC_SIZE, seed: int = 7) -> SyntheticSet:
    return generate(n, spread=REALISTIC_SPREAD, seed=seed)

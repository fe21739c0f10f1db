"""Algorithm 1 (strategy `region`) against a hand-worked example and an independent reference."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from services.config import Settings
from services.graph.store import GraphStore
from services.retrieval.contract import GraphNotReady, SearchFilters, Strategy
from services.retrieval.service import RetrievalService
from tests.retrieval.graphs import DIM, SmallGraph, clustered_graph
from tests.retrieval.reference import reference_region_search

pytestmark = pytest.mark.neo4j

# The hand-worked example. Cosines (a PSD Gram matrix, so real unit vectors exist):
HAND_COSINES = {
    ("q", "A"): 0.7, ("q", "B"): 0.5, ("q", "C"): 0.3, ("q", "D"): 0.6, ("q", "E"): 0.2,
    ("A", "B"): 0.9, ("A", "C"): 0.6, ("A", "D"): 0.15, ("A", "E"): -0.2,
    ("B", "C"): 0.8, ("B", "D"): 0.1, ("B", "E"): -0.15,
    ("C", "D"): 0.3, ("C", "E"): 0.2, ("D", "E"): 0.9,
}  # fmt: skip
HAND_EDGES = [("A", "B"), ("A", "C"), ("B", "C"), ("C", "D"), ("D", "E")]
HAND_COMMUNITIES = {"A": 0, "B": 0, "C": 0, "D": 1, "E": 1}


def hand_vectors() -> dict[str, np.ndarray]:
    names = ["q", "A", "B", "C", "D", "E"]
    gram = np.eye(len(names))
    for (a, b), value in HAND_COSINES.items():
        i, j = names.index(a), names.index(b)
        gram[i, j] = gram[j, i] = value
    values, vectors = np.linalg.eigh(gram)
    assert values.min() > 0, "the example's cosines must be realisable"
    coordinates = vectors * np.sqrt(values)
    padded = np.zeros((len(names), DIM))
    padded[:, : len(names)] = coordinates
    return {name: padded[i].astype(np.float32) for i, name in enumerate(names)}


def hand_graph() -> tuple[SmallGraph, np.ndarray]:
    vectors = hand_vectors()
    query = vectors.pop("q")
    edges = {(a, b): HAND_COSINES[(a, b)] for a, b in HAND_EDGES}
    return SmallGraph(vectors, edges, dict(HAND_COMMUNITIES), {}, {}), query


def service_with(store: GraphStore, settings: Settings, query_edges: int) -> RetrievalService:
    return RetrievalService(store, settings.model_copy(update={"region_query_edges": query_edges}))


def test_hand_worked_example(clean_graph: GraphStore, settings: Settings) -> None:
    # m = 0.9 + 0.6 + 0.8 + 0.3 + 0.9 = 3.5; k_A=1.5 k_B=1.7 k_C=1.7 k_D=1.2 k_E=0.9;
    # sigma_0 = 4.9, sigma_1 = 2.1; 2m^2 = 24.5. The query's 2 edges: A (0.7) and D (0.6), k_q=1.3.
    # dQ(c0) = 0.7/3.5 - 4.9*1.3/24.5 = -0.06;  dQ(c1) = 0.6/3.5 - 2.1*1.3/24.5 = +0.06 -> c1,
    #   although A is nearer: the small community wins on modularity.
    # In c1: dq(D) = 0.6/3.5 - 1.3*1.2/24.5 = 0.1078 > dq(E) = -0.0478 -> D; sigma_R = 2.5;
    #   then E (its edge to D: 0.9/3.5 - 2.5*0.9/24.5 = 0.1653); sigma_R = 3.4; c1 exhausted.
    # c0 (k_R,c0 = 0.7 + 0.3): dq(A) = 0.2 - 3.4*1.5/24.5 = -0.0082, dq(B) = -0.2359,
    #   dq(C) = 0.3/3.5 - 3.4*1.7/24.5 = -0.1502 -> A; sigma_R = 4.9;
    #   dq(B) = 0.9/3.5 - 4.9*1.7/24.5 = dq(C) = (0.3+0.6)/3.5 - 4.9*1.7/24.5: a tie, broken by
    #   the cosine (B 0.5 > C 0.3) -> B, then C.
    graph, query = hand_graph()
    graph.write(clean_graph)
    service = service_with(clean_graph, settings, query_edges=2)

    hits = service.search(query, 5, Strategy.REGION, SearchFilters())

    assert list(hits.keys) == ["D", "E", "A", "B", "C"]
    assert hits.diagnostics.community == 1
    assert hits.diagnostics.community_size == 2
    assert hits.diagnostics.communities_visited == [1, 0]
    np.testing.assert_allclose(hits.cosines, [0.6, 0.2, 0.7, 0.5, 0.3], atol=1e-5)
    assert hits.cosines.dtype == np.float32
    assert list(service.search(query, 3, Strategy.REGION, SearchFilters()).keys) == ["D", "E", "A"]
    reference = reference_region_search(
        graph.graph, graph.community_of, graph.embeddings, query, query_edges=2, k=5
    )
    assert reference == ["D", "E", "A", "B", "C"]


@pytest.mark.parametrize(
    ("seed", "k", "query_edges"),
    [(1, 10, 6), (2, 40, 6), (3, 25, 3), (4, 120, 10)],
)
def test_matches_reference_on_random_graphs(
    clean_graph: GraphStore, settings: Settings, seed: int, k: int, query_edges: int
) -> None:
    graph = clustered_graph(160, clusters=5, seed=seed)
    graph.write(clean_graph)
    service = service_with(clean_graph, settings, query_edges)
    rng = np.random.default_rng(seed)
    keys = sorted(graph.embeddings)
    for query_key in rng.choice(keys, size=3, replace=False):
        query = graph.embeddings[str(query_key)]
        excluded = {str(query_key)}
        hits = service.search(
            query, k, Strategy.REGION, SearchFilters(exclude_keys=frozenset(excluded))
        )
        expected = reference_region_search(
            graph.graph, graph.community_of, graph.embeddings, query,
            query_edges=query_edges, k=k, excluded=excluded,
        )  # fmt: skip
        assert list(hits.keys) == expected
        cosines = [float(np.dot(graph.embeddings[key], query)) for key in hits.keys]
        np.testing.assert_allclose(hits.cosines, cosines, atol=1e-5)
    if k > max(map(list(graph.community_of.values()).count, set(graph.community_of.values()))):
        assert len(hits.diagnostics.communities_visited) > 1, "K exceeds any community"


def test_same_patient_and_finding_filters_match_reference(
    clean_graph: GraphStore, settings: Settings
) -> None:
    graph = clustered_graph(150, clusters=4, seed=7, patients=20)
    graph.write(clean_graph)
    service = service_with(clean_graph, settings, 6)
    query_key = sorted(graph.embeddings)[11]
    query = graph.embeddings[query_key]
    patient = graph.patient_of[query_key]
    same_patient = {key for key, p in graph.patient_of.items() if p == patient}
    assert len(same_patient) > 1

    hits = service.search_by_key(query_key, 30, Strategy.REGION, exclude_same_patient=True)
    expected = reference_region_search(
        graph.graph, graph.community_of, graph.embeddings, query, query_edges=6, k=30,
        excluded=same_patient,
    )  # fmt: skip
    assert list(hits.keys) == expected
    assert not same_patient & set(hits.keys)

    finding = "Effusion"
    without = {key for key, f in graph.findings.items() if finding not in f}
    hits = service.search(
        query, 20, Strategy.REGION,
        SearchFilters(exclude_keys=frozenset({query_key}), finding=finding),
    )  # fmt: skip
    expected = reference_region_search(
        graph.graph, graph.community_of, graph.embeddings, query, query_edges=6, k=20,
        excluded=without | {query_key},
    )  # fmt: skip
    assert list(hits.keys) == expected
    assert all(finding in f for f in hits.findings)

    no_finding = service.search(query, 10, Strategy.REGION, SearchFilters(finding="No Finding"))
    assert no_finding.keys and all(f == () for f in no_finding.findings)


def test_query_is_not_persisted(clean_graph: GraphStore, settings: Settings) -> None:
    graph, query = hand_graph()
    graph.write(clean_graph)
    counts = "MATCH (n) WITH count(n) AS nodes MATCH ()-[r]->() RETURN nodes, count(r) AS rels"
    before = clean_graph.run_text(counts)[0].data()
    for strategy in Strategy:
        service_with(clean_graph, settings, 2).search(query, 3, strategy, SearchFilters())
    assert clean_graph.run_text(counts)[0].data() == before


def test_region_needs_a_clustering(clean_graph: GraphStore, settings: Settings) -> None:
    graph, query = hand_graph()
    graph.write(clean_graph)
    clean_graph.run_text("MATCH (n) WHERE n:Community OR n:ClusteringRun DETACH DELETE n")
    with pytest.raises(GraphNotReady, match="clustering"):
        service_with(clean_graph, settings, 2).search(query, 3, Strategy.REGION, SearchFilters())


def test_every_result_comes_from_communities_in_visit_order(
    clean_graph: GraphStore, settings: Settings
) -> None:
    graph = clustered_graph(120, clusters=4, seed=11)
    graph.write(clean_graph)
    service = service_with(clean_graph, settings, 6)
    query = graph.embeddings[sorted(graph.embeddings)[0]]
    hits = service.search(query, 100, Strategy.REGION, SearchFilters())
    visited = hits.diagnostics.communities_visited
    # Algorithm 1 exhausts a community before it moves on: the communities of the results,
    # in rank order, are the visited ones in visit order, each in one run.
    runs = [community for community, _ in itertools.groupby(hits.communities)]
    assert runs == visited[: len(runs)]
    assert hits.communities == tuple(graph.community_of[key] for key in hits.keys)

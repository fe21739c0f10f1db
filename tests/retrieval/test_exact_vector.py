"""Strategies `exact` and `vector`, the matrix cache, and the search contract's checks."""

from __future__ import annotations

import numpy as np
import pytest

from services.config import Settings
from services.evaluation.fixtures import PreparedImage, write_graph
from services.graph.store import GraphStore
from services.retrieval.contract import (
    QueryEmbeddingError,
    SearchFilters,
    Strategy,
    check_query_embedding,
)
from services.retrieval.service import RetrievalService
from tests.retrieval.graphs import SmallGraph, clustered_graph, unit

pytestmark = pytest.mark.neo4j


def brute_force(graph: SmallGraph, query: np.ndarray, k: int, allowed: set[str]) -> list[str]:
    scores = {key: float(np.dot(graph.embeddings[key], query)) for key in allowed}
    return sorted(allowed, key=lambda key: (-scores[key], key))[:k]


@pytest.fixture
def small(clean_graph: GraphStore) -> SmallGraph:
    graph = clustered_graph(150, clusters=4, seed=21, patients=25)
    twin = sorted(graph.embeddings)[0]
    graph.embeddings["img-twin"] = graph.embeddings[twin].copy()  # an exact tie, broken by key
    graph.community_of["img-twin"] = graph.community_of[twin]
    graph.patient_of["img-twin"] = "patient-twin"
    graph.write(clean_graph)
    return graph


def test_exact_is_brute_force_with_filters(small: SmallGraph, retrieval: RetrievalService) -> None:
    keys = set(small.embeddings)
    query_key = sorted(keys)[0]
    query = small.embeddings[query_key]
    hits = retrieval.search(query, 30, Strategy.EXACT, SearchFilters())
    assert list(hits.keys) == brute_force(small, query, 30, keys)
    assert hits.keys[:2] == tuple(sorted([query_key, "img-twin"]))
    np.testing.assert_allclose(
        hits.cosines, [np.dot(small.embeddings[k], query) for k in hits.keys], atol=1e-6
    )
    assert hits.cosines.dtype == np.float32
    assert hits.communities == tuple(small.community_of[k] for k in hits.keys)

    patient = small.patient_of[query_key]
    allowed = {k for k in keys if small.patient_of.get(k) != patient and k != query_key}
    filters = SearchFilters(exclude_keys=frozenset({query_key}), exclude_patient_key=patient)
    assert list(retrieval.search(query, 25, Strategy.EXACT, filters).keys) == brute_force(
        small, query, 25, allowed
    )
    with_mass = {k for k in keys if "Mass" in small.findings.get(k, ())}
    hits = retrieval.search(query, 400, Strategy.EXACT, SearchFilters(finding="Mass"))
    assert list(hits.keys) == brute_force(small, query, 400, with_mass)
    assert retrieval.search(query, 5, Strategy.EXACT, SearchFilters(modality="CT")).keys == ()


def test_vector_index_agrees_with_exact_on_a_small_graph(
    small: SmallGraph, retrieval: RetrievalService
) -> None:
    for query_key in sorted(small.embeddings)[5:50:15]:
        query = small.embeddings[query_key]
        filters = SearchFilters(
            exclude_keys=frozenset({query_key}), exclude_patient_key=small.patient_of[query_key]
        )
        vector = retrieval.search(query, 20, Strategy.VECTOR, filters)
        exact = retrieval.search(query, 20, Strategy.EXACT, filters)
        assert len(set(vector.keys) & set(exact.keys)) >= 18
        assert not {query_key} & set(vector.keys)
        np.testing.assert_allclose(
            vector.cosines, [np.dot(small.embeddings[k], query) for k in vector.keys], atol=1e-5
        )
        assert 20 <= vector.diagnostics.images_examined <= len(small.embeddings)
    effusion = retrieval.search(query, 15, Strategy.VECTOR, SearchFilters(finding="Effusion"))
    assert len(effusion.keys) == 15 and all("Effusion" in f for f in effusion.findings)


def test_matrix_cache_reloads_only_when_the_graph_changes(
    small: SmallGraph, clean_graph: GraphStore, retrieval: RetrievalService
) -> None:
    query = small.embeddings[sorted(small.embeddings)[3]]
    retrieval.search(query, 5, Strategy.EXACT, SearchFilters())
    retrieval.search(query, 5, Strategy.EXACT, SearchFilters())
    assert retrieval.embedding_cache.loads == 1
    newcomer = unit(query.astype(np.float64) + 1e-3)
    write_graph(clean_graph, [PreparedImage(key="img-new", embedding=newcomer, community=0)], [])
    hits = retrieval.search(query, 1, Strategy.EXACT, SearchFilters())
    assert retrieval.embedding_cache.loads == 2
    assert hits.keys[0] in {"img-new", sorted(small.embeddings)[3]}
    assert "img-new" in retrieval.search(query, 3, Strategy.EXACT, SearchFilters()).keys


def test_contract_checks(clean_graph: GraphStore, settings: Settings) -> None:
    service = RetrievalService(clean_graph, settings)
    good = unit(np.ones(1024))
    with pytest.raises(QueryEmbeddingError, match="shape"):
        check_query_embedding(np.ones(512, dtype=np.float32))
    with pytest.raises(QueryEmbeddingError, match="unit"):
        check_query_embedding(np.ones(1024, dtype=np.float32))
    with pytest.raises(QueryEmbeddingError, match="NaN"):
        check_query_embedding(np.full(1024, np.nan, dtype=np.float32))
    assert check_query_embedding(good.astype(np.float64)).dtype == np.float32
    with pytest.raises(ValueError, match="k must be"):
        service.search(good, 0, Strategy.EXACT, SearchFilters())
    with pytest.raises(ValueError, match="unknown strategy"):
        service.search(good, 5, "nearest", SearchFilters())

"""The community-ranked strategy against `exact`, and the read model's freshness: an image added
by incremental ingestion and assigned to a community is found on the very next search, applied
to the read model without reloading it."""

from __future__ import annotations

import numpy as np
import pytest

from bench.similarity_graph import knn_edges, patient_key, select_edges, synthetic_keys, write_graph
from bench.synthetic import generate
from services.communities import assign_new_images, run_clustering
from services.config import Settings
from services.graph.changes import CHANGE_LOG_KEEP
from services.graph.store import GraphStore
from services.ingest.pipeline import write_image_rows
from services.retrieval.contract import SearchFilters, Strategy
from services.retrieval.service import RetrievalService
from tests.retrieval.graphs import clustered_graph

pytestmark = pytest.mark.neo4j


def test_ranked_visiting_every_community_is_exact(
    clean_graph: GraphStore, settings: Settings
) -> None:
    graph = clustered_graph(160, clusters=5, seed=3)
    graph.write(clean_graph)
    everything = settings.model_copy(
        update={"ranked_max_communities": 1000, "ranked_centroid_margin": 2.0,
                "ranked_seed_candidates": 1}
    )  # fmt: skip
    service = RetrievalService(clean_graph, everything)
    keys = sorted(graph.embeddings)
    for query_key in keys[:: len(keys) // 4]:
        query = graph.embeddings[query_key]
        filters = SearchFilters(exclude_keys=frozenset({query_key}), finding="Effusion")
        ranked = service.search(query, 30, Strategy.COMMUNITY_RANKED, filters)
        exact = service.search(query, 30, Strategy.EXACT, filters)
        assert ranked.keys == exact.keys
        assert ranked.diagnostics.images_examined == ranked.diagnostics.database_size - len(
            [k for k, f in graph.findings.items() if "Effusion" not in f or k == query_key]
        )


def test_ranked_examines_a_part_and_ranks_by_cosine(
    clean_graph: GraphStore, settings: Settings
) -> None:
    graph = clustered_graph(200, clusters=5, seed=4)
    graph.write(clean_graph)
    few = settings.model_copy(
        update={"ranked_max_communities": 1, "ranked_centroid_margin": 0.0,
                "ranked_seed_candidates": 1}
    )  # fmt: skip
    service = RetrievalService(clean_graph, few)
    query_key = sorted(graph.embeddings)[7]
    query = graph.embeddings[query_key]
    hits = service.search(query, 10, Strategy.COMMUNITY_RANKED, SearchFilters(
        exclude_keys=frozenset({query_key})))  # fmt: skip
    assert 0 < hits.diagnostics.images_examined < hits.diagnostics.database_size
    assert len(hits.diagnostics.communities_visited) == 1
    assert list(hits.cosines) == sorted(hits.cosines, reverse=True)
    expected = [float(np.dot(graph.embeddings[key], query)) for key in hits.keys]
    np.testing.assert_allclose(hits.cosines, expected, atol=1e-5)
    # Well-separated clusters: the query's own community holds its 10 nearest.
    exact = service.search(query, 10, Strategy.EXACT, SearchFilters(
        exclude_keys=frozenset({query_key})))  # fmt: skip
    assert hits.keys == exact.keys


def test_an_incrementally_ingested_image_is_found_on_the_next_search(
    clean_graph: GraphStore, settings: Settings
) -> None:
    data = generate(420, n_clusters=4, seed=5)
    total, base = 420, 400
    keys = synthetic_keys(range(total))
    old, new = np.arange(base), np.arange(base, total)
    write_graph(clean_graph, [keys[i] for i in old], data.embeddings[old],
                [data.findings[i] for i in old], data.patient[old],
                knn_edges(data.embeddings[old], 10))  # fmt: skip
    run_clustering(clean_graph, settings)
    service = RetrievalService(clean_graph, settings)
    newcomer = int(new[3])
    query = data.embeddings[newcomer]
    for strategy in (Strategy.REGION, Strategy.COMMUNITY_RANKED):
        assert keys[newcomer] not in service.search(query, 10, strategy, SearchFilters()).keys
    loads = service.read_model.loads

    # What incremental ingestion adds, through its logged statements: the new nodes and every
    # kNN pair touching one, then the ingest-time community assignment.
    all_edges = knn_edges(data.embeddings, 10)
    write_image_rows(clean_graph, [
        {"key": keys[i], "source": f"synthetic://{keys[i]}", "findings": list(data.findings[i]),
         "patient_key": patient_key(int(data.patient[i])), "file_bytes": 1,
         "model_version": "test", "modality": "PNG", "width": 8, "height": 8,
         "embedding": data.embeddings[i], "finding_probabilities": None} for i in new
    ], 100)  # fmt: skip
    is_new = np.zeros(total, dtype=bool)
    is_new[new] = True
    touching = select_edges(all_edges, is_new[all_edges.smaller] | is_new[all_edges.larger])
    clean_graph.write_batches("ingest_write_edges_logged", [
        {"a": min(keys[a], keys[b]), "b": max(keys[a], keys[b]), "weight": float(w)}
        for a, b, w in zip(touching.smaller, touching.larger, touching.cosine, strict=True)
    ], 500, keep=CHANGE_LOG_KEEP)  # fmt: skip
    assigned = assign_new_images(clean_graph, [keys[i] for i in new])
    assert assigned[keys[newcomer]] is not None

    region = service.search(query, 10, Strategy.REGION, SearchFilters())
    ranked = service.search(query, 10, Strategy.COMMUNITY_RANKED, SearchFilters())
    assert service.read_model.loads == loads, "applied incrementally, not reloaded"
    assert keys[newcomer] in region.keys
    assert region.communities[region.keys.index(keys[newcomer])] == assigned[keys[newcomer]]
    assert ranked.keys[0] == keys[newcomer]
    assert ranked.communities[0] == assigned[keys[newcomer]]

"""A generated, clustered graph and the platform's own logged write paths for the read-model
tests: ingestion's node and edge writes and community assignment, as the ingest tasks run them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from bench.similarity_graph import knn_edges, patient_key, synthetic_keys, write_graph
from bench.synthetic import generate
from services.communities import assign_new_images, run_clustering
from services.config import Settings
from services.graph.changes import CHANGE_LOG_KEEP
from services.graph.store import GraphStore
from services.ingest.pipeline import write_image_rows
from services.retrieval.contract import Strategy
from services.retrieval.service import RetrievalService

STRATEGIES = (Strategy.REGION, Strategy.COMMUNITY_RANKED, Strategy.EXACT)


@dataclass
class LiveGraph:
    keys: list[str]
    embeddings: np.ndarray  # float32 (n, 1024): every image the tests may ingest
    findings: list[tuple[str, ...]]
    patient: np.ndarray
    stored: int  # the first ``stored`` images are in the graph from the start

    def embedding_of(self, key: str) -> np.ndarray:
        return self.embeddings[self.keys.index(key)]


def stored_graph(store: GraphStore, settings: Settings, n: int = 300, extra: int = 40) -> LiveGraph:
    """``n`` images written with their kNN edges and clustered; ``extra`` more kept back for
    ingestion (each a near copy of a stored image, so a search by that image finds it first)."""
    data = generate(n, n_clusters=5, seed=11)
    rng = np.random.default_rng(5)
    originals = rng.choice(n, size=extra, replace=False)
    copies = data.embeddings[originals] + 0.02 * rng.standard_normal((extra, 1024)).astype(
        np.float32
    )
    copies /= np.linalg.norm(copies, axis=1, keepdims=True)
    embeddings = np.concatenate([data.embeddings, copies]).astype(np.float32)
    findings = list(data.findings) + [data.findings[i] for i in originals]
    patient = np.concatenate([data.patient, np.arange(extra) + 10_000])
    keys = synthetic_keys(range(n + extra))
    write_graph(store, keys[:n], embeddings[:n], findings[:n], patient[:n],
                knn_edges(embeddings[:n], 10))  # fmt: skip
    run_clustering(store, settings)
    return LiveGraph(keys, embeddings, findings, patient, n)


def ingest_logged(
    store: GraphStore, graph: LiveGraph, indices: Sequence[int], findings_width: int = 0
) -> list[str]:
    """What an ingest job writes for these images, through the same logged statements: the
    nodes, every kNN edge between them and the stored images, then community assignment.
    ``findings_width`` > 0: each image also gets that many predicted finding probabilities."""
    keys = [graph.keys[i] for i in indices]
    rng = np.random.default_rng(len(keys))
    predicted = {i: rng.random(findings_width).tolist() if findings_width else None
                 for i in indices}  # fmt: skip
    rows = [
        {"key": graph.keys[i], "source": f"synthetic://{graph.keys[i]}",
         "findings": list(graph.findings[i]), "patient_key": patient_key(int(graph.patient[i])),
         "file_bytes": 1, "model_version": "test", "modality": "PNG", "width": 8, "height": 8,
         "embedding": graph.embeddings[i], "finding_probabilities": predicted[i]}
        for i in indices
    ]  # fmt: skip
    write_image_rows(store, rows, 100)
    present = [int(r["key"].removeprefix("syn-")) for r in store.run_text(
        "MATCH (i:Image) RETURN i.key AS key")]  # fmt: skip
    present = sorted(present)
    edges = knn_edges(graph.embeddings[present], 10)
    new = set(indices)
    pairs = []
    for a, b, weight in zip(edges.smaller.tolist(), edges.larger.tolist(), edges.cosine.tolist(),
                            strict=True):  # fmt: skip
        if present[a] in new or present[b] in new:
            first, second = sorted((graph.keys[present[a]], graph.keys[present[b]]))
            pairs.append({"a": first, "b": second, "weight": float(weight)})
    store.write_batches("ingest_write_edges_logged", pairs, 500, keep=CHANGE_LOG_KEEP)
    assign_new_images(store, keys)
    return keys


def answers(service: RetrievalService, keys: Sequence[str], k: int = 10) -> dict:
    """Every strategy's answer for each key as the query (leave-one-out)."""
    return {
        (key, strategy.value): service.search_by_key(key, k, strategy).keys
        for key in keys
        for strategy in STRATEGIES
    }

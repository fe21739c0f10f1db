"""Small graphs for retrieval tests: clustered unit vectors, their kNN graph and communities."""

from __future__ import annotations

from dataclasses import dataclass, field

import networkx as nx
import numpy as np

from services.evaluation.fixtures import PreparedImage, write_graph
from services.graph.store import GraphStore
from services.retrieval.readmodel import GraphSnapshot
from tests.retrieval.reference import knn_edges

DIM = 1024
FINDING_SETS = [(), ("Effusion",), ("Atelectasis", "Effusion"), ("Cardiomegaly",), ("Mass",)]


@dataclass
class SmallGraph:
    embeddings: dict[str, np.ndarray]
    edges: dict[tuple[str, str], float]
    community_of: dict[str, int]
    findings: dict[str, tuple[str, ...]]
    patient_of: dict[str, str]
    extra: dict[str, object] = field(default_factory=dict)
    # key -> calibrated predicted findings to store (none stored for keys not in it)
    finding_probabilities: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def graph(self) -> nx.Graph:
        graph = nx.Graph()
        graph.add_nodes_from(self.embeddings)
        graph.add_weighted_edges_from((a, b, w) for (a, b), w in self.edges.items())
        return graph

    def write(self, store: GraphStore) -> None:
        images = [
            PreparedImage(
                key=key,
                embedding=self.embeddings[key],
                community=self.community_of.get(key),
                findings=self.findings.get(key, ()),
                patient_key=self.patient_of.get(key),
                finding_probabilities=(
                    tuple(self.finding_probabilities[key].tolist())
                    if key in self.finding_probabilities
                    else None
                ),
            )
            for key in sorted(self.embeddings)
        ]
        write_graph(store, images, [(a, b, w) for (a, b), w in self.edges.items()])
        store.run_text("CALL db.awaitIndexes(120)")


def unit(vector: np.ndarray) -> np.ndarray:
    vector = np.asarray(vector, dtype=np.float64)
    return (vector / np.linalg.norm(vector)).astype(np.float32)


def clustered_graph(
    n: int,
    clusters: int,
    seed: int,
    knn: int = 6,
    spread: float = 0.02,
    patients: int | None = None,
) -> SmallGraph:
    """Points around random unit centres (noise of norm ~spread*32: cosines ~0.7 within a
    cluster, ~0 across); symmetric kNN edges; Louvain communities (networkx)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, DIM))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    labels = rng.integers(0, clusters, size=n)
    embeddings = {
        f"img-{seed}-{i:04d}": unit(centres[labels[i]] + rng.standard_normal(DIM) * spread)
        for i in range(n)
    }
    keys = sorted(embeddings)
    edges = knn_edges(embeddings, knn)
    graph = nx.Graph()
    graph.add_nodes_from(keys)
    graph.add_weighted_edges_from((a, b, w) for (a, b), w in edges.items())
    communities = nx.community.louvain_communities(graph, weight="weight", seed=seed)
    community_of = {key: index for index, members in enumerate(communities) for key in members}
    findings = {key: FINDING_SETS[int(labels[i]) % len(FINDING_SETS)] for i, key in enumerate(keys)}
    patients = patients or max(1, n // 3)
    patient_of = {key: f"patient-{int(rng.integers(0, patients)):04d}" for key in keys}
    return SmallGraph(embeddings, edges, community_of, findings, patient_of)


def bare_snapshot(matrix: np.ndarray, **fields: object) -> GraphSnapshot:
    """A read model built in memory, without Neo4j: images k0, k1, ... with these embeddings,
    no patients, modalities, findings or edges, and no communities unless ``fields`` give them
    (any other field too)."""
    n = len(matrix)
    defaults: dict[str, object] = {
        "version": (n, None, None, 0),
        "keys": np.array([f"k{i}" for i in range(n)], dtype=str),
        "matrix": matrix,
        "patient_codes": np.full(n, -1, dtype=np.int32),
        "patient_code_of": {},
        "modality_codes": np.full(n, -1, dtype=np.int32),
        "modality_code_of": {},
        "findings": [()] * n,
        "community": np.full(n, -1, dtype=np.int32),
        "indptr": np.zeros(n + 1, dtype=np.int64),
        "neighbours": np.zeros(0, dtype=np.int32),
        "weights": np.zeros(0, dtype=np.float64),
        "degree": np.zeros(n, dtype=np.float64),
        "community_ids": np.zeros(0, dtype=np.int64),
        "sigma_tot": np.zeros(0, dtype=np.float64),
        "community_size": np.zeros(0, dtype=np.int64),
        "block_start": np.zeros(0, dtype=np.int64),
        "block_stop": np.zeros(0, dtype=np.int64),
        "m": None,
        "run": None,
    }
    return GraphSnapshot(**(defaults | fields))  # type: ignore[arg-type]

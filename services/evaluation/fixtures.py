"""Write a prepared graph straight into Neo4j, as cypher/README.md models it.

For tests and benchmarks that need a graph with known embeddings, edges and communities without
running ingestion and clustering: :Image nodes (with :Patient), one SIMILAR per pair (smaller
key -> larger), :Community nodes with their sums (``size``, ``sigma_tot``, ``internal_weight``,
``centroid``, ``mean_norm``) and
a finished :ClusteringRun with the total weight ``total_weight_m``, all computed here from the
edges given.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from services.communities.statistics import CommunitySums
from services.graph.store import GraphStore
from services.retrieval.contract import NO_FINDING


@dataclass(frozen=True)
class PreparedImage:
    key: str
    embedding: np.ndarray  # (1024,) unit
    community: int | None
    findings: tuple[str, ...] = ()
    patient_key: str | None = None
    modality: str = "PNG"
    source: str | None = None
    width: int = 64
    height: int = 64
    file_bytes: int = 0
    model_version: str = "fixture"
    finding_probabilities: tuple[float, ...] | None = None  # calibrated; None = not stored


@dataclass
class GraphSums:
    m: float
    size: dict[int, int] = field(default_factory=dict)
    sigma_tot: dict[int, float] = field(default_factory=dict)
    internal_weight: dict[int, float] = field(default_factory=dict)
    degree: dict[str, float] = field(default_factory=dict)
    findings: dict[int, Counter[str]] = field(default_factory=dict)
    edges: int = 0
    embedding_sum: dict[int, np.ndarray] = field(default_factory=dict)  # float64 per community

    @property
    def modularity(self) -> float:
        if self.m <= 0:
            return 0.0
        return sum(
            self.internal_weight.get(c, 0.0) / self.m - (self.sigma_tot[c] / (2 * self.m)) ** 2
            for c in self.sigma_tot
        )


def ordered_pair(a: str, b: str, weight: float) -> tuple[str, str, float]:
    if a == b:
        raise ValueError(f"a SIMILAR edge needs two different images, got {a!r} twice")
    return (a, b, weight) if a < b else (b, a, weight)


def graph_sums(
    communities: dict[str, int | None],
    edges: Sequence[tuple[str, str, float]],
    findings: dict[str, tuple[str, ...]] | None = None,
    embeddings: dict[str, np.ndarray] | None = None,
) -> GraphSums:
    """m, weighted degrees, and per community size / sigma_tot / internal weight / findings
    (and the sum of its members' embeddings, when given)."""
    degree: dict[str, float] = defaultdict(float)
    internal: dict[int, float] = defaultdict(float)
    m = 0.0
    for a, b, weight in edges:
        m += weight
        degree[a] += weight
        degree[b] += weight
        ca, cb = communities.get(a), communities.get(b)
        if ca is not None and ca == cb:
            internal[ca] += weight
    sums = GraphSums(m=m, degree=dict(degree), edges=len(edges))
    for key, community in communities.items():
        if community is None:
            continue
        sums.size[community] = sums.size.get(community, 0) + 1
        names = list((findings or {}).get(key, ())) or [NO_FINDING]
        sums.findings.setdefault(community, Counter()).update(names)
        sums.sigma_tot[community] = sums.sigma_tot.get(community, 0.0) + degree.get(key, 0.0)
        sums.internal_weight.setdefault(community, internal.get(community, 0.0))
        if embeddings is not None and key in embeddings:
            vector = np.asarray(embeddings[key], dtype=np.float64)
            total = sums.embedding_sum.get(community)
            sums.embedding_sum[community] = vector if total is None else total + vector
    return sums


def write_graph(
    store: GraphStore,
    images: Sequence[PreparedImage],
    edges: Iterable[tuple[str, str, float]],
    *,
    run_id: str = "fixture-run",
    batch_size: int = 1000,
    edge_batch_size: int = 10_000,
) -> GraphSums:
    """Writes images, edges, communities and a clustering run; returns the sums written."""
    unique: dict[tuple[str, str], float] = {}
    for a, b, weight in edges:
        first, second, w = ordered_pair(a, b, float(weight))
        unique[(first, second)] = w
    edge_list = [(a, b, w) for (a, b), w in unique.items()]
    store.write_batches("fixture_images", (_image_row(image) for image in images), batch_size)
    store.write_batches(
        "fixture_similar",
        ({"a": a, "b": b, "weight": w} for a, b, w in edge_list),
        edge_batch_size,
    )
    sums = graph_sums(
        {image.key: image.community for image in images},
        edge_list,
        {image.key: image.findings for image in images},
        {image.key: image.embedding for image in images},
    )
    write_clustering(store, sums, run_id=run_id)
    return sums


def write_clustering(store: GraphStore, sums: GraphSums, *, run_id: str) -> None:
    store.write_batches(
        "fixture_communities",
        (
            {
                "id": community,
                "size": sums.size[community],
                "sigma_tot": sums.sigma_tot[community],
                "internal_weight": sums.internal_weight.get(community, 0.0),
                "finding_names": [name for name, _ in _histogram(sums, community)],
                "finding_counts": [count for _, count in _histogram(sums, community)],
                **_centroid(sums, community),
            }
            for community in sorted(sums.size)
        ),
        1000,
        run=run_id,
    )
    store.query(
        "fixture_clustering_run",
        id=run_id,
        total_weight_m=sums.m,
        communities=len(sums.size),
        modularity=sums.modularity,
        node_count=sum(sums.size.values()),
        edge_count=sums.edges,
        next_community_id=max(sums.size, default=-1) + 1,
    )


def _centroid(sums: GraphSums, community: int) -> dict[str, object]:
    """The stored centroid and mean norm, as the clustering job writes them."""
    stored = CommunitySums(
        id=community, size=sums.size[community], embedding_sum=sums.embedding_sum.get(community)
    ).properties()
    return {"centroid": stored["centroid"], "mean_norm": stored["mean_norm"]}


def _histogram(sums: GraphSums, community: int) -> list[tuple[str, int]]:
    counts = sums.findings.get(community, Counter())
    return sorted(counts.items(), key=lambda item: (-item[1], item[0]))


def _image_row(image: PreparedImage) -> dict[str, object]:
    return {
        "key": image.key,
        "source": image.source,
        "findings": list(image.findings),
        "patient_key": image.patient_key,
        "modality": image.modality,
        "width": image.width,
        "height": image.height,
        "file_bytes": image.file_bytes,
        "embedding": np.asarray(image.embedding, dtype=np.float32).astype(float).tolist(),
        "model_version": image.model_version,
        "community": image.community,
        "finding_probabilities": (
            None
            if image.finding_probabilities is None
            else [float(value) for value in image.finding_probabilities]
        ),
    }

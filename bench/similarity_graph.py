"""Writes a generated image graph into Neo4j the way ingestion does, for tests and benchmarks.

The kNN edges come from the ingestion's own exact kNN (``services.ingest.knn``): a pair is linked
when either image is among the other's k nearest by cosine, weight = cosine, one relationship per
pair from the smaller key to the larger. ``knn_edges(..., groups=...)`` runs it inside groups
of points only (the planted clusters of ``bench.synthetic``): at CheXpert scale the all-pairs
product is ~10^14 flops (about 20 min on 2 cores), and with the generator's default spread every
point's k nearest lie in its own cluster anyway (``knn_agreement`` measures that on a sample).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator, Sequence

import numpy as np

from services.graph.store import GraphStore
from services.ingest.knn import SymmetricEdges, exact_knn, symmetric_edges


def synthetic_keys(indices: Sequence[int] | np.ndarray) -> list[str]:
    """The keys ``bench.synthetic`` uses: zero-padded, so key order equals index order."""
    return [f"syn-{int(i):07d}" for i in indices]


def patient_key(patient: int) -> str:
    return hashlib.sha256(f"synthetic-patient-{patient}".encode()).hexdigest()


def knn_edges(
    embeddings: np.ndarray, k: int, groups: np.ndarray | None = None, block_mib: int = 256
) -> SymmetricEdges:
    """The symmetric kNN graph of the rows (exact; within each group when ``groups`` is given)."""
    n = len(embeddings)
    if groups is None:
        indices, cosines = exact_knn(embeddings, k, block_mib=block_mib, device="cpu")
        return symmetric_edges(indices, cosines)
    indices = np.full((n, k), -1, dtype=np.int64)
    cosines = np.full((n, k), -np.inf, dtype=np.float32)
    for group in np.unique(groups):
        members = np.flatnonzero(groups == group)
        local_idx, local_cos = exact_knn(embeddings[members], k, block_mib=block_mib, device="cpu")
        width = local_idx.shape[1]
        indices[members, :width] = members[local_idx]
        cosines[members, :width] = local_cos
    return symmetric_edges(indices, cosines)


def knn_agreement(
    embeddings: np.ndarray, edges: SymmetricEdges, k: int, sample: int = 200, seed: int = 0
) -> float:
    """Share of sampled points whose exact all-points k nearest are all linked to them."""
    rng = np.random.default_rng(seed)
    points = rng.choice(len(embeddings), size=min(sample, len(embeddings)), replace=False)
    linked: dict[int, set[int]] = {int(p): set() for p in points}
    for a, b in zip(edges.smaller.tolist(), edges.larger.tolist(), strict=True):
        if a in linked:
            linked[a].add(b)
        if b in linked:
            linked[b].add(a)
    agree = 0
    for point in points:
        similarity = embeddings @ embeddings[point]
        similarity[point] = -np.inf
        nearest = np.argpartition(-similarity, k)[:k]
        agree += set(nearest.tolist()) <= linked[int(point)]
    return agree / len(points)


def write_graph(
    store: GraphStore,
    keys: Sequence[str],
    embeddings: np.ndarray,
    findings: Sequence[Sequence[str]],
    patients: Sequence[int] | np.ndarray,
    edges: SymmetricEdges | None,
    *,
    node_batch: int = 500,
    edge_batch: int = 10_000,
    knn_k: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> None:
    """Writes :Image nodes for ``keys`` (aligned with the other arrays) and the edges between
    them (``edges`` indexes into ``keys``); with ``knn_k``, each image's ``knn_floor`` too, so
    the graph is *linked* as ingestion leaves it (without floors the platform's next ingest
    takes every image for unlinked and rebuilds all edges in bulk: 307 s at 223,648)."""
    say = progress or (lambda _message: None)
    clock = time.perf_counter()

    def node_rows() -> Iterator[dict[str, object]]:
        for i, key in enumerate(keys):
            yield {
                "key": key,
                "source": f"synthetic://{key}",
                "findings": list(findings[i]),
                "patient_key": patient_key(int(patients[i])),
                "embedding": embeddings[i].tolist(),
            }

    written = store.write_batches("synthetic_write_images", node_rows(), node_batch)
    say(f"wrote {written} images in {time.perf_counter() - clock:.1f} s")
    if edges is not None and len(edges):
        clock = time.perf_counter()
        written = write_edges(store, keys, edges, edge_batch)
        say(f"wrote {written} SIMILAR pairs in {time.perf_counter() - clock:.1f} s")
        if knn_k is not None:
            floors = knn_floors(len(keys), edges, knn_k)
            store.write_batches(
                "ingest_set_knn_floor",
                ({"key": key, "floor": float(floor)} for key, floor in zip(keys, floors.tolist(),
                                                                           strict=True)),
                edge_batch,
            )  # fmt: skip


def knn_floors(n: int, edges: SymmetricEdges, k: int) -> np.ndarray:
    """float32 (n,): each image's k-th largest edge cosine, -1 with fewer than k edges. The
    symmetric kNN graph holds every image's k nearest among its edges, and any other edge of it
    is no nearer (else it would be among the k), so this is the k-th nearest's cosine, the
    floor ingestion stores (services/ingest/knn.py ``knn_floor``)."""
    nodes = np.concatenate([edges.smaller, edges.larger])
    cosines = np.concatenate([edges.cosine, edges.cosine])
    order = np.lexsort((-cosines, nodes))
    nodes, cosines = nodes[order], cosines[order]
    counts = np.bincount(nodes, minlength=n)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    floors = np.full(n, -1.0, dtype=np.float32)
    enough = counts >= k
    floors[enough] = cosines[starts[enough] + k - 1]
    return floors


def write_edges(
    store: GraphStore, keys: Sequence[str], edges: SymmetricEdges, batch: int = 10_000
) -> int:
    """Writes SIMILAR pairs (``edges`` indexes into ``keys``), smaller key -> larger key."""

    def rows() -> Iterator[dict[str, object]]:
        for a, b, weight in zip(
            edges.smaller.tolist(), edges.larger.tolist(), edges.cosine.tolist(), strict=True
        ):
            first, second = (keys[a], keys[b]) if keys[a] < keys[b] else (keys[b], keys[a])
            yield {"a": first, "b": second, "weight": weight}

    return store.write_batches("synthetic_write_similar", rows(), batch)


def select_edges(edges: SymmetricEdges, keep: np.ndarray) -> SymmetricEdges:
    return SymmetricEdges(edges.smaller[keep], edges.larger[keep], edges.cosine[keep])

"""SIMILAR edges for the images that do not have them yet: bulk (exact) or incremental.

An image "has its edges" once it carries ``knn_floor`` (its k-th nearest neighbour's cosine);
images written by an ingest have none until this step ran for them, so a crash anywhere leaves
them pending and the next run picks them up.

The rule (``choose_mode``), with P pending and L linked images:

- **bulk** when L == 0 or P > ``incremental_max_ratio`` * L: load every embedding, exact top-k by
  blocked matrix products (``knn.exact_knn``), MERGE every pair of the symmetrised graph, set
  every ``knn_floor``. Cost ~ n^2 d flops plus n k edge writes, independent of P.
- **incremental** otherwise: exact top-k among the P new images, plus, per new image, its
  ``knn_index_candidates`` nearest linked images from the vector index and the SIMILAR
  neighbours of its k nearest of those (two hops: hub images that count the new image among
  their k nearest often lie outside its own candidate list), all re-ranked by the exact cosine
  of the stored embeddings. The new image's top k of that union become edges, and so does every
  (new, linked) candidate pair whose cosine reaches the linked image's ``knn_floor`` (the new
  image is then among that image's k nearest: the reciprocal edge). Existing edges are left as
  they are; the touched images' floors are refreshed from their edges. Cost ~ P index queries
  plus P^2 d flops, independent of n.

Edges are only ever MERGEd, never deleted: the graph is the symmetrised kNN graph of the images
as they arrived (an old image keeps an edge to a neighbour that a newer image pushed out of its
k nearest), so every image keeps at least min(k, n - 1) edges.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from services.config import Settings
from services.graph.changes import CHANGE_LOG_KEEP, ChangeKind, record_change
from services.graph.cypher import load_cypher
from services.graph.store import GraphStore
from services.ingest.knn import exact_knn, knn_floor, pick_device, symmetric_edges

EDGE_MODES = ("auto", "bulk", "incremental")
# Pending images per vector-index query round trip.
INDEX_QUERY_CHUNK = 256


@dataclass
class EdgeReport:
    mode: str  # "bulk" | "incremental" | "none"
    pending: int
    linked_before: int
    edges_merged: int = 0
    reciprocal: int = 0
    load_s: float = 0.0
    knn_s: float = 0.0
    write_s: float = 0.0
    total_s: float = 0.0
    device: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def choose_mode(pending: int, linked: int, max_ratio: float, requested: str = "auto") -> str:
    if requested not in EDGE_MODES:
        raise ValueError(f"edge mode must be one of {EDGE_MODES}, got {requested!r}")
    if pending == 0 and requested != "bulk":
        return "none"
    if requested != "auto":
        return requested
    return "bulk" if linked == 0 or pending > max_ratio * linked else "incremental"


def edge_state(store: GraphStore) -> tuple[int, int]:
    """(images with an embedding, of which linked)."""
    record = store.query("ingest_edge_state")[0]
    return int(record["images"]), int(record["linked"])


def build_edges(store: GraphStore, settings: Settings, requested: str = "auto") -> EdgeReport:
    started = time.monotonic()
    images, linked = edge_state(store)
    pending = images - linked
    mode = choose_mode(pending, linked, settings.incremental_max_ratio, requested)
    report = EdgeReport(mode, pending, linked, device=pick_device(settings.encoder_device))
    if mode == "bulk":
        _bulk(store, settings, report)
    elif mode == "incremental":
        _incremental(store, settings, report)
    report.total_s = time.monotonic() - started
    return report


def load_embeddings(store: GraphStore, pending_only: bool) -> tuple[list[str], np.ndarray]:
    """Keys sorted ascending and their embeddings as float32 (n, d), read in one stream."""
    keys: list[str] = []
    vectors: list[np.ndarray] = []

    with store.driver.session(database=store.database, fetch_size=2000) as session:
        result = session.run(load_cypher("ingest_load_embeddings"), pending_only=pending_only)
        for record in result:
            keys.append(record["key"])
            vectors.append(np.asarray(record["embedding"], dtype=np.float32))
    if not keys:
        return [], np.zeros((0, 0), dtype=np.float32)
    order = np.argsort(np.asarray(keys, dtype=object), kind="stable")
    matrix = np.stack([vectors[i] for i in order])
    vectors.clear()
    return [keys[i] for i in order], matrix


def write_edges(
    store: GraphStore, keys: list[str], smaller: np.ndarray, larger: np.ndarray,
    weights: np.ndarray, batch_size: int,
) -> int:  # fmt: skip
    def rows() -> Iterator[dict[str, Any]]:
        for a, b, weight in zip(smaller.tolist(), larger.tolist(), weights.tolist(), strict=True):
            yield {"a": keys[a], "b": keys[b], "weight": weight}

    return store.write_batches("ingest_write_edges", rows(), batch_size)


def _bulk(store: GraphStore, settings: Settings, report: EdgeReport) -> None:
    k = settings.knn_k
    clock = time.monotonic()
    keys, matrix = load_embeddings(store, pending_only=False)
    report.load_s = time.monotonic() - clock

    clock = time.monotonic()
    indices, cosines = exact_knn(
        matrix, k, block_mib=settings.knn_block_mib, device=settings.encoder_device
    )
    del matrix
    edges = symmetric_edges(indices, cosines, settings.min_cosine)
    floors = knn_floor(cosines, k)
    report.knn_s = time.monotonic() - clock

    clock = time.monotonic()
    report.edges_merged = write_edges(
        store, keys, edges.smaller, edges.larger, edges.cosine, settings.edge_write_batch_size
    )
    # Floors last: an image counts as linked only once all its edges are stored.
    store.write_batches(
        "ingest_set_knn_floor",
        ({"key": key, "floor": float(floor)} for key, floor in zip(keys, floors, strict=True)),
        settings.edge_write_batch_size,
    )
    # Every image's edges may have changed: the search side rebuilds rather than applies.
    record_change(store.query, ChangeKind.RELOAD)
    report.write_s = time.monotonic() - clock


def _incremental(store: GraphStore, settings: Settings, report: EdgeReport) -> None:
    k = settings.knn_k
    candidates = max(settings.knn_index_candidates, k + 1)
    clock = time.monotonic()
    keys, matrix = load_embeddings(store, pending_only=True)
    report.load_s = time.monotonic() - clock

    clock = time.monotonic()
    position = {key: i for i, key in enumerate(keys)}
    # Among the new images themselves: exact.
    new_indices, new_cosines = exact_knn(
        matrix, k, block_mib=settings.knn_block_mib, device=settings.encoder_device
    )
    # pairs[(smaller key, larger key)] = cosine
    pairs: dict[tuple[str, str], float] = {}
    floors: dict[str, float] = {}
    touched: set[str] = set()
    reciprocal = 0
    for start in range(0, len(keys), INDEX_QUERY_CHUNK):
        chunk = keys[start : start + INDEX_QUERY_CHUNK]
        found: dict[str, list[tuple[float, str, float]]] = {key: [] for key in chunk}
        records = store.query(
            "ingest_vector_candidates", keys=chunk, candidates=candidates, expand=k
        )
        for record in records:
            found[record["key"]].append(
                (float(record["cosine"]), record["neighbour"], float(record["floor"]))
            )
        for key in chunk:
            i = position[key]
            union = [
                (float(cosine), keys[j])
                for j, cosine in zip(new_indices[i], new_cosines[i], strict=True)
            ]
            union.extend((cosine, neighbour) for cosine, neighbour, _ in found[key])
            union.sort(reverse=True)
            for cosine, neighbour in union[:k]:
                if cosine >= settings.min_cosine:
                    pairs[_pair(key, neighbour)] = cosine
            floors[key] = union[k - 1][0] if len(union) >= k else -1.0
            for cosine, neighbour, floor in found[key]:
                if cosine >= max(floor, settings.min_cosine):
                    pair = _pair(key, neighbour)
                    if pair not in pairs:
                        reciprocal += 1
                        pairs[pair] = cosine
                    # A new edge at or above its floor changes its k-th largest weight.
                    touched.add(neighbour)
    report.knn_s = time.monotonic() - clock
    report.reciprocal = reciprocal

    clock = time.monotonic()
    sorted_pairs = sorted(pairs.items())
    # Each batch logged with its transaction, for the search side to apply (both ends re-read).
    report.edges_merged = store.write_batches(
        "ingest_write_edges_logged",
        ({"a": a, "b": b, "weight": weight} for (a, b), weight in sorted_pairs),
        settings.edge_write_batch_size,
        keep=CHANGE_LOG_KEEP,
    )
    store.write_batches(
        "ingest_set_knn_floor",
        ({"key": key, "floor": floor} for key, floor in floors.items()),
        settings.edge_write_batch_size,
    )
    touched_keys = sorted(touched)
    for start in range(0, len(touched_keys), settings.edge_write_batch_size):
        store.query(
            "ingest_refresh_knn_floor",
            keys=touched_keys[start : start + settings.edge_write_batch_size],
            k=k,
        )
    report.write_s = time.monotonic() - clock


def _pair(a: str, b: str) -> tuple[str, str]:
    return (a, b) if a < b else (b, a)

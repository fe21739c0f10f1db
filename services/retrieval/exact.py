"""Strategy ``exact``: brute-force cosine against every stored embedding (the ground truth).

The embeddings live in the in-process read model (:mod:`services.retrieval.readmodel`): float32
(N, 1024) plus integer codes for patient keys and modalities and a boolean column per finding, so
filters are numpy masks, and each image's community, so a search needs no second round trip. The
read model follows the stored graph's change log (services/retrieval/cache.py): in an API
process in the background, with no Neo4j round trip on the search path.
"""

from __future__ import annotations

import numpy as np

from services.retrieval.cache import ReadModelCache
from services.retrieval.contract import (
    GraphNotReady,
    SearchDiagnostics,
    SearchFilters,
    SearchHits,
    Strategy,
)
from services.retrieval.readmodel import GraphSnapshot
from services.retrieval.region import SnapshotSearch, hits_of


def top_k_cosine(
    matrix: np.ndarray, keys: np.ndarray, query: np.ndarray, k: int, eligible: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Indices and float32 cosines of the k best eligible rows; ties broken by key."""
    scores = matrix @ query
    scores[~eligible] = -np.inf
    available = int(eligible.sum())
    k = min(k, available)
    if k == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
    if k < len(scores):
        candidates = np.argpartition(-scores, k - 1)[:k]
        # Rows tied with the k-th score but left out by argpartition must compete on the key.
        threshold = scores[candidates].min()
        candidates = np.flatnonzero(scores >= threshold)
    else:
        candidates = np.flatnonzero(eligible)
    order = np.lexsort((keys[candidates], -scores[candidates]))[:k]
    chosen = candidates[order]
    return chosen, scores[chosen].astype(np.float32)


class ExactSearch(SnapshotSearch):
    name = Strategy.EXACT

    def __init__(self, cache: ReadModelCache) -> None:
        self.cache = cache

    def _search(
        self,
        query: np.ndarray,
        k: int,
        filters: SearchFilters,
        snapshot: GraphSnapshot,
        diagnostics: SearchDiagnostics,
    ) -> SearchHits:
        live = snapshot.live
        if live == 0:
            raise GraphNotReady("no stored images to search; ingest some first")
        diagnostics.database_size = live
        diagnostics.images_examined = live
        with diagnostics.stage("score"):
            eligible = snapshot.eligible(filters)
            chosen, cosines = top_k_cosine(
                snapshot.matrix, snapshot.keys, query.astype(np.float32), k, eligible
            )
        hits = hits_of(snapshot, chosen, query.astype(np.float64), diagnostics)
        # The rank is the float32 score's; report the same numbers the rank came from.
        return SearchHits(hits.keys, cosines, hits.communities, hits.findings, diagnostics)

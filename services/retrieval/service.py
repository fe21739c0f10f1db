"""One entry point for searches: picks the strategy, checks the contract, resolves stored
queries."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from services.config import Settings
from services.graph.store import GraphStore
from services.retrieval.contract import (
    SearchFilters,
    SearchHits,
    SearchStrategy,
    Strategy,
    UnknownImage,
    check_k,
    check_query_embedding,
)
from services.retrieval.exact import EmbeddingCache, ExactSearch
from services.retrieval.region import RegionGrowingSearch
from services.retrieval.vector import VectorIndexSearch


@dataclass(frozen=True)
class StoredQuery:
    key: str
    embedding: np.ndarray  # float32 (1024,)
    patient_key: str | None


class RetrievalService:
    """Thread-safe; keep one per process (the ``exact`` matrix cache lives in it)."""

    def __init__(self, store: GraphStore, settings: Settings) -> None:
        self.store = store
        self.settings = settings
        self.embedding_cache = EmbeddingCache(store)
        self.strategies: dict[Strategy, SearchStrategy] = {
            Strategy.REGION: RegionGrowingSearch(
                store,
                query_edges=settings.region_query_edges or settings.knn_k,
                max_communities=settings.region_max_communities,
                max_index_candidates=settings.search_max_index_candidates,
            ),
            Strategy.EXACT: ExactSearch(store, self.embedding_cache),
            Strategy.VECTOR: VectorIndexSearch(
                store, max_index_candidates=settings.search_max_index_candidates
            ),
        }

    def search(
        self, query: object, k: int, strategy: Strategy | str, filters: SearchFilters
    ) -> SearchHits:
        vector = check_query_embedding(query)
        check_k(k, self.settings.search_max_k)
        try:
            chosen = Strategy(strategy)
        except ValueError:
            names = ", ".join(s.value for s in Strategy)
            raise ValueError(f"unknown strategy {strategy!r}; use one of: {names}") from None
        return self.strategies[chosen].search(vector, k, filters)

    def stored_query(self, key: str) -> StoredQuery:
        records = self.store.query("search_query_image", key=key)
        if not records or records[0]["embedding"] is None:
            raise UnknownImage(key)
        record = records[0]
        embedding = np.asarray(record["embedding"], dtype=np.float64)
        # Stored codes are unit vectors up to float rounding; renormalise so the contract holds.
        embedding = (embedding / np.linalg.norm(embedding)).astype(np.float32)
        return StoredQuery(key=key, embedding=embedding, patient_key=record["patient_key"])

    def search_by_key(
        self,
        key: str,
        k: int,
        strategy: Strategy | str = Strategy.REGION,
        *,
        exclude_same_patient: bool = True,
        finding: str | None = None,
        modality: str | None = None,
    ) -> SearchHits:
        """Leave-one-out: the stored image is the query and never among its own results."""
        stored = self.stored_query(key)
        filters = SearchFilters(
            exclude_keys=frozenset({key}),
            exclude_patient_key=stored.patient_key if exclude_same_patient else None,
            finding=finding,
            modality=modality,
        )
        return self.search(stored.embedding, k, strategy, filters)

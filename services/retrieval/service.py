"""One entry point for searches: picks the strategy, checks the contract, resolves stored
queries."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from services.config import Settings
from services.graph.store import GraphStore
from services.retrieval.cache import ReadModelCache
from services.retrieval.contract import (
    FindingsUnavailable,
    SearchFilters,
    SearchHits,
    SearchStrategy,
    Strategy,
    UnknownImage,
    check_k,
    check_query_embedding,
)
from services.retrieval.exact import ExactSearch
from services.retrieval.ranked import CommunityRankedSearch
from services.retrieval.readmodel import GraphSnapshot
from services.retrieval.region import RegionGrowingSearch
from services.retrieval.rerank import (
    RERANK_CANDIDATES_PER_K,
    check_query_probabilities,
    rerank_by_findings,
)
from services.retrieval.vector import VectorIndexSearch

IN_MEMORY = frozenset({Strategy.EXACT, Strategy.REGION, Strategy.COMMUNITY_RANKED})


@dataclass(frozen=True)
class StoredQuery:
    key: str
    embedding: np.ndarray  # float32 (1024,)
    patient_key: str | None
    snapshot: GraphSnapshot | None = None  # the read model it was read from, version checked
    # Its stored calibrated predicted findings (F,), None when not stored or not read (vector).
    finding_probabilities: np.ndarray | None = None


class RetrievalService:
    """Thread-safe; keep one per process (the read model lives in it). ``live``: the read model
    follows the stored graph in the background and a search makes no Neo4j round trip (the API
    processes); otherwise every search checks the graph version first
    (``services/retrieval/cache.py``)."""

    def __init__(self, store: GraphStore, settings: Settings, *, live: bool = False) -> None:
        self.store = store
        self.settings = settings
        self.read_model = ReadModelCache(store, settings, live=live)
        self.embedding_cache = self.read_model  # the name the `exact` cache had
        query_edges = settings.region_query_edges or settings.knn_k
        self.strategies: dict[Strategy, SearchStrategy] = {
            Strategy.REGION: RegionGrowingSearch(
                self.read_model,
                query_edges=query_edges,
                max_communities=settings.region_max_communities,
                seed_candidates=settings.region_seed_candidates,
            ),
            Strategy.COMMUNITY_RANKED: CommunityRankedSearch(
                self.read_model,
                query_edges=query_edges,
                seed_candidates=settings.ranked_seed_candidates,
                min_communities=settings.ranked_min_communities,
                max_communities=settings.ranked_max_communities,
                centroid_margin=settings.ranked_centroid_margin,
            ),
            Strategy.EXACT: ExactSearch(self.read_model),
            Strategy.VECTOR: VectorIndexSearch(
                store, max_index_candidates=settings.search_max_index_candidates
            ),
        }

    @staticmethod
    def strategy_of(strategy: Strategy | str) -> Strategy:
        try:
            return Strategy(strategy)
        except ValueError:
            names = ", ".join(s.value for s in Strategy)
            raise ValueError(f"unknown strategy {strategy!r}; use one of: {names}") from None

    def search(
        self,
        query: object,
        k: int,
        strategy: Strategy | str,
        filters: SearchFilters,
        snapshot: GraphSnapshot | None = None,
        findings: np.ndarray | None = None,
    ) -> SearchHits:
        """``snapshot``: a read model this request has already version-checked (saves the
        round trip); None = check now. ``findings``: the query's calibrated predicted findings
        (F,); given, the strategy's first ``RERANK_CANDIDATES_PER_K * k`` results are re-ranked
        by them (``services.retrieval.rerank``; in-memory strategies only)."""
        vector = check_query_embedding(query)
        check_k(k, self.settings.search_max_k)
        chosen = self.strategy_of(strategy)
        if findings is None:
            return self.strategies[chosen].search(vector, k, filters, snapshot)
        if chosen not in IN_MEMORY:
            names = ", ".join(sorted(s.value for s in IN_MEMORY))
            raise FindingsUnavailable(
                f"re-ranking by findings works with the in-memory strategies ({names}), not "
                f"{chosen.value!r}"
            )
        snapshot = snapshot or self.read_model.get()
        query_findings = check_query_probabilities(findings, snapshot)
        candidates = k * RERANK_CANDIDATES_PER_K
        hits = self.strategies[chosen].search(vector, candidates, filters, snapshot)
        return rerank_by_findings(hits, snapshot, query_findings, k)

    def stored_query(self, key: str, strategy: Strategy | str | None = None) -> StoredQuery:
        """The stored image as a query. For the in-memory strategies (and when no strategy is
        named) it is read from the read model after one version check, which the search then
        reuses; for ``vector`` straight from Neo4j, so a vector-only process never loads it."""
        if strategy is None or self.strategy_of(strategy) in IN_MEMORY:
            snapshot = self.read_model.get()
            row = snapshot.row_of(key)
            if row is not None:
                probabilities = snapshot.finding_probabilities[row]
                return StoredQuery(
                    key=key,
                    embedding=_unit(snapshot.matrix[row]),
                    patient_key=snapshot.patient_of(row),
                    snapshot=snapshot,
                    finding_probabilities=_usable_probabilities(probabilities),
                )
        records = self.store.query("search_query_image", key=key)
        if not records or records[0]["embedding"] is None:
            raise UnknownImage(key)
        record = records[0]
        return StoredQuery(
            key=key, embedding=_unit(record["embedding"]), patient_key=record["patient_key"]
        )

    def search_by_key(
        self,
        key: str,
        k: int,
        strategy: Strategy | str = Strategy.REGION,
        *,
        exclude_same_patient: bool = True,
        finding: str | None = None,
        modality: str | None = None,
        rerank: bool = False,
    ) -> SearchHits:
        """Leave-one-out: the stored image is the query and never among its own results.
        ``rerank``: re-rank by the stored predicted findings (FindingsUnavailable when the
        query image has none stored)."""
        stored = self.stored_query(key, strategy)
        filters = SearchFilters(
            exclude_keys=frozenset({key}),
            exclude_patient_key=stored.patient_key if exclude_same_patient else None,
            finding=finding,
            modality=modality,
        )
        findings = None
        if rerank:
            findings = self.stored_findings(stored)
        return self.search(stored.embedding, k, strategy, filters, stored.snapshot, findings)

    @staticmethod
    def stored_findings(stored: StoredQuery) -> np.ndarray:
        """The stored query's predicted findings, or FindingsUnavailable saying why not."""
        if stored.finding_probabilities is None:
            raise FindingsUnavailable(
                f"the image {stored.key!r} has no stored predicted findings (ingested before "
                "they were stored): ingest it again to re-rank by findings"
            )
        return stored.finding_probabilities


def _usable_probabilities(probabilities: np.ndarray) -> np.ndarray | None:
    """A stored row of predicted findings, or None when there is none or it is not a set of
    probabilities (a hand-edited graph): the caller then says the findings are missing."""
    values = probabilities.astype(np.float64)
    if values.size == 0 or not np.isfinite(values).all() or values.min() < 0 or values.max() > 1:
        return None
    return values


def _unit(embedding: object) -> np.ndarray:
    # Stored codes are unit vectors up to float rounding; renormalise so the contract holds.
    vector = np.asarray(embedding, dtype=np.float64)
    return (vector / np.linalg.norm(vector)).astype(np.float32)

"""The one search contract every strategy implements.

Input (FAISS-style):
    ``query``: numpy float32, shape (1024,), L2 unit norm (``check_query_embedding`` enforces it);
    ``k``: int >= 1, the number of images wanted;
    ``filters``: :class:`SearchFilters`.
Output: :class:`SearchHits`:
    ``keys``: tuple of k' <= k image keys, in the strategy's rank order (rank 1 first);
    ``cosines``: numpy float32, shape (k',), the cosine of each hit to the query, same order;
    ``communities`` and ``findings`` of each hit, same order; ``diagnostics``.

Rank order is the strategy's own: ``exact`` and ``vector`` rank by cosine (``vector`` by the
index's approximate score), ``region`` by the order in which Algorithm 1 added the image to the
region, so its cosines need not decrease. Fewer than k hits come back only when fewer images pass
the filters (or, for ``region``, when the communities it may visit run out).
``community_ranked`` ranks by cosine, like ``exact``. Any in-memory strategy's results may be
re-ranked by the images' predicted findings (``services.retrieval.rerank``): then the rank is
``agreement``'s, and ``cosines`` stay each hit's cosine.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

import numpy as np

EMBEDDING_DIM = 1024
NO_FINDING = "No Finding"  # the label of images without positive findings (findings == [])
UNIT_NORM_TOLERANCE = 1e-3


class Strategy(StrEnum):
    REGION = "region"
    COMMUNITY_RANKED = "community_ranked"
    EXACT = "exact"
    VECTOR = "vector"


class QueryEmbeddingError(ValueError):
    """The query vector breaks the contract (shape, dtype, finiteness, norm)."""


class UnknownImage(LookupError):
    def __init__(self, key: str) -> None:
        super().__init__(f"no image with key {key!r}")
        self.key = key


class GraphNotReady(RuntimeError):
    """The stored graph lacks what a strategy needs (no images, no clustering yet)."""


class FindingsUnavailable(LookupError):
    """Re-ranking by findings was asked for, but the query or the stored images have no
    predicted findings to compare (or the strategy cannot re-rank)."""


@dataclass(frozen=True)
class SearchFilters:
    """Which stored images may be returned (and, for ``region``, join the query's edges).

    ``finding`` ``"No Finding"`` selects images without positive findings.
    """

    exclude_keys: frozenset[str] = frozenset()
    exclude_patient_key: str | None = None
    finding: str | None = None
    modality: str | None = None

    @property
    def restrictive(self) -> bool:
        """True when many stored images may fail the filters (finding or modality)."""
        return self.finding is not None or self.modality is not None

    def cypher_params(self) -> dict[str, object]:
        """The filter parameters every ``cypher/search_*.cypher`` statement takes."""
        return {
            "exclude_keys": sorted(self.exclude_keys),
            "exclude_patient_key": self.exclude_patient_key,
            "finding": None if self.finding == NO_FINDING else self.finding,
            "no_finding": self.finding == NO_FINDING,
            "modality": self.modality,
        }


@dataclass
class SearchDiagnostics:
    strategy: str
    database_size: int = 0
    images_examined: int = 0
    community: int | None = None  # the first (closest) community, region only
    community_size: int | None = None
    communities_visited: list[int] = field(default_factory=list)
    stage_ms: dict[str, float] = field(default_factory=dict)
    # Re-ranked by findings (services.retrieval.rerank): how many of the strategy's results.
    rerank_candidates: int | None = None

    def for_another_run(self) -> SearchDiagnostics:
        """Fresh diagnostics for a search run again on a newer snapshot; the time already
        spent stays in ``stage_ms``."""
        return SearchDiagnostics(strategy=self.strategy, stage_ms=dict(self.stage_ms))

    @property
    def fraction_examined(self) -> float:
        return self.images_examined / self.database_size if self.database_size else 0.0

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Adds the wall time of the block to ``stage_ms[name]``."""
        start = time.perf_counter()
        try:
            yield
        finally:
            elapsed = (time.perf_counter() - start) * 1000.0
            self.stage_ms[name] = self.stage_ms.get(name, 0.0) + elapsed


@dataclass(frozen=True)
class SearchHits:
    keys: tuple[str, ...]
    cosines: np.ndarray  # float32 (len(keys),)
    communities: tuple[int | None, ...]
    findings: tuple[tuple[str, ...], ...]
    diagnostics: SearchDiagnostics
    # Re-ranked by findings only: float32 (k',), each hit's finding agreement with the query
    # (the rank's score; -inf = stored without predicted findings).
    agreement: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self.keys)
        if self.cosines.dtype != np.float32 or self.cosines.shape != (n,):
            raise ValueError(
                f"cosines must be float32 ({n},), got {self.cosines.dtype} {self.cosines.shape}"
            )
        if self.agreement is not None and (
            self.agreement.dtype != np.float32 or self.agreement.shape != (n,)
        ):
            raise ValueError(f"agreement must be float32 ({n},) or None")
        if len(self.communities) != n or len(self.findings) != n:
            raise ValueError("communities and findings must have one entry per key")


class SearchStrategy(Protocol):
    name: Strategy

    def search(
        self, query: np.ndarray, k: int, filters: SearchFilters, snapshot: object = None
    ) -> SearchHits:
        """``snapshot``: the read model this request already checked (in-memory strategies)."""
        ...


def check_query_embedding(query: object) -> np.ndarray:
    """The query as a float32 (1024,) unit vector; raises QueryEmbeddingError otherwise."""
    array = np.asarray(query)
    if array.shape != (EMBEDDING_DIM,):
        raise QueryEmbeddingError(
            f"query embedding must have shape ({EMBEDDING_DIM},), got {array.shape}"
        )
    if not np.issubdtype(array.dtype, np.floating):
        raise QueryEmbeddingError(f"query embedding must be floating point, got {array.dtype}")
    array = array.astype(np.float32, copy=False)
    if not np.all(np.isfinite(array)):
        raise QueryEmbeddingError("query embedding contains NaN or infinite values")
    norm = float(np.linalg.norm(array.astype(np.float64)))
    if abs(norm - 1.0) > UNIT_NORM_TOLERANCE:
        raise QueryEmbeddingError(f"query embedding must have unit L2 norm, got {norm:.6f}")
    return array


def check_k(k: int, max_k: int) -> int:
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= max_k:
        raise ValueError(f"k must be an integer between 1 and {max_k}, got {k!r}")
    return k

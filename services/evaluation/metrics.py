"""Retrieval metrics of the paper's Table 1, with the choices the paper leaves open made explicit.

Labels. Each image has a set of positive findings (uncertain counted positive, as the paper does
at retrieval time); an image with none is "No Finding". The label vocabulary ``V`` is the
findings of the evaluated set plus ``No Finding``, which is positive exactly when no finding is.
So every image has a non-empty positive set ``P`` and a binary vector over ``V``.

- relevance (precision): a retrieved image is relevant when ``P_retrieved == P_query`` — the
  paper counts an image relevant only when its labels "matched exactly" the query's. A No
  Finding query's relevant images are the No Finding images.
- ACG: the paper's graded relevance ``r_i`` is "the ratio of common labels between the retrieved
  image and the query"; with ACG_p defined as "the same formulation using the common positive
  labels only", the common labels of ACG are those on which both images agree, positive or
  negative: ``r_i = |{v in V : y_query[v] == y_i[v]}| / |V|``.
- ACG_p: ``r_i = |P_query & P_i| / |P_query | P_i|`` (common positive labels over the labels
  positive in either; 1 for two No Finding images, 0 for a No Finding image against one with a
  finding).
- ``ACG@K = sum_{i<=K} r_i / K'`` and ``precision@K = relevant in top K / K'``, with ``K'`` the
  number of images actually returned within the top K (= K whenever the database is big enough).
- recall@K against exact: ``|top K of the strategy & top K of exact| / K'_exact``.
- fraction of the database examined: images whose similarity to the query was computed, over
  the stored images (see each strategy's diagnostics).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from services.retrieval.contract import NO_FINDING


def positives(findings: Iterable[str] | None) -> frozenset[str]:
    found = frozenset(f for f in (findings or ()) if f != NO_FINDING)
    return found or frozenset({NO_FINDING})


@dataclass(frozen=True)
class LabelSpace:
    """The vocabulary V (findings of the evaluated set, then No Finding)."""

    labels: tuple[str, ...]

    @classmethod
    def from_findings(cls, all_findings: Iterable[Iterable[str] | None]) -> LabelSpace:
        names: set[str] = set()
        for findings in all_findings:
            names.update(f for f in (findings or ()) if f != NO_FINDING)
        return cls(tuple(sorted(names)) + (NO_FINDING,))

    def vector(self, findings: Iterable[str] | None) -> np.ndarray:
        positive = positives(findings)
        return np.array([label in positive for label in self.labels], dtype=bool)

    def matrix(self, all_findings: Sequence[Iterable[str] | None]) -> np.ndarray:
        return np.array([self.vector(f) for f in all_findings], dtype=bool).reshape(
            len(all_findings), len(self.labels)
        )


def is_relevant(query: Iterable[str] | None, retrieved: Iterable[str] | None) -> bool:
    return positives(query) == positives(retrieved)


def graded_relevance(
    space: LabelSpace, query: Iterable[str] | None, retrieved: Iterable[str] | None
) -> float:
    return float(np.mean(space.vector(query) == space.vector(retrieved)))


def positive_relevance(query: Iterable[str] | None, retrieved: Iterable[str] | None) -> float:
    a, b = positives(query), positives(retrieved)
    return len(a & b) / len(a | b)


def precision_at_k(
    query: Iterable[str] | None, retrieved: Sequence[Iterable[str] | None], k: int
) -> float:
    top = retrieved[:k]
    if not top:
        return 0.0
    query_set = positives(query)
    return sum(positives(r) == query_set for r in top) / len(top)


def acg_at_k(
    space: LabelSpace,
    query: Iterable[str] | None,
    retrieved: Sequence[Iterable[str] | None],
    k: int,
) -> float:
    top = retrieved[:k]
    if not top:
        return 0.0
    q = space.vector(query)
    return float(np.mean([np.mean(space.vector(r) == q) for r in top]))


def acg_positive_at_k(
    query: Iterable[str] | None, retrieved: Sequence[Iterable[str] | None], k: int
) -> float:
    top = retrieved[:k]
    if not top:
        return 0.0
    return float(np.mean([positive_relevance(query, r) for r in top]))


def recall_at_k(retrieved: Sequence[str], exact: Sequence[str], k: int) -> float:
    reference = set(exact[:k])
    if not reference:
        return 0.0
    return len(set(retrieved[:k]) & reference) / len(reference)


def random_retrieval_expectation(
    labels: np.ndarray, query_row: int, eligible: np.ndarray
) -> tuple[float, float, float]:
    """Expected (precision, ACG, ACG_p) of a uniformly random pick among ``eligible`` rows:
    the level a strategy must beat to have learnt anything. ``labels``: bool (n, |V|)."""
    candidates = labels[eligible]
    if len(candidates) == 0:
        return 0.0, 0.0, 0.0
    query = labels[query_row]
    exact = np.all(candidates == query, axis=1).mean()
    agreement = (candidates == query).mean()
    common = (candidates & query).sum(axis=1)
    either = (candidates | query).sum(axis=1)
    return float(exact), float(agreement), float(np.mean(common / either))


@dataclass(frozen=True)
class LatencySummary:
    mean_ms: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    count: int

    @classmethod
    def of(cls, samples_ms: Sequence[float]) -> LatencySummary:
        if not samples_ms:
            return cls(0.0, 0.0, 0.0, 0.0, 0)
        values = np.asarray(samples_ms, dtype=np.float64)
        return cls(
            mean_ms=float(values.mean()),
            p50_ms=float(np.percentile(values, 50)),
            p95_ms=float(np.percentile(values, 95)),
            p99_ms=float(np.percentile(values, 99)),
            count=len(values),
        )

"""Re-ranking a strategy's results by predicted findings (services/retrieval/rerank.py), on an
in-memory read model whose numbers the test sets by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from services.retrieval.contract import FindingsUnavailable, SearchDiagnostics, SearchHits
from services.retrieval.readmodel import GraphSnapshot
from services.retrieval.rerank import (
    check_query_probabilities,
    finding_agreement,
    rerank_by_findings,
)
from tests.retrieval.graphs import bare_snapshot


def snapshot_with(probabilities: np.ndarray) -> GraphSnapshot:
    """Images k0, k1, ... with these stored probabilities (NaN rows: none stored)."""
    matrix = np.zeros((len(probabilities), 1024), dtype=np.float32)
    matrix[:, 0] = 1.0
    return bare_snapshot(matrix, finding_probabilities=np.asarray(probabilities, dtype=np.float32))


def hits_of(keys: list[str]) -> SearchHits:
    """The strategy's answer: these keys in this order, cosines falling."""
    return SearchHits(
        keys=tuple(keys),
        cosines=np.linspace(0.9, 0.5, len(keys)).astype(np.float32),
        communities=tuple(range(len(keys))),
        findings=tuple((f"finding of {key}",) for key in keys),
        diagnostics=SearchDiagnostics(strategy="exact"),
    )


def agree(query: list[float], found: list[float]) -> float:
    return sum(math.log(q * d + (1 - q) * (1 - d)) for q, d in zip(query, found, strict=True))


def test_agreement_is_the_log_probability_that_every_finding_agrees() -> None:
    query = np.array([0.9, 0.2])
    found = np.array([[0.8, 0.1], [0.1, 0.9], [0.5, 0.5]])
    expected = [agree([0.9, 0.2], list(row)) for row in found]
    np.testing.assert_allclose(finding_agreement(query[None, :], found), expected, rtol=1e-12)
    # Certain probabilities are clipped, so total disagreement is very bad but finite.
    assert np.isfinite(finding_agreement(np.array([1.0]), np.array([0.0])))


def test_rerank_orders_by_agreement_keeps_cosines_and_cuts_to_k() -> None:
    probabilities = np.array([[0.5, 0.5], [0.9, 0.1], [0.1, 0.9], [0.8, 0.2], [0.7, 0.3]])
    snapshot = snapshot_with(probabilities)
    strategy_order = ["k0", "k1", "k2", "k3", "k4"]
    hits = hits_of(strategy_order)
    query = np.array([0.95, 0.05])

    reranked = rerank_by_findings(hits, snapshot, query, k=3)

    scores = {key: agree(list(query), list(probabilities[int(key[1:])])) for key in strategy_order}
    expected = sorted(strategy_order, key=lambda key: -scores[key])[:3]
    assert list(reranked.keys) == expected == ["k1", "k3", "k4"]
    cosine_of = dict(zip(hits.keys, hits.cosines.tolist(), strict=True))
    assert reranked.cosines.tolist() == [cosine_of[key] for key in expected]
    assert reranked.communities == tuple(int(key[1:]) for key in expected)
    assert reranked.findings == tuple((f"finding of {key}",) for key in expected)
    assert reranked.agreement is not None and reranked.agreement.dtype == np.float32
    np.testing.assert_allclose(reranked.agreement, [scores[key] for key in expected], rtol=1e-6)
    assert reranked.diagnostics.rerank_candidates == 5
    assert "rerank" in reranked.diagnostics.stage_ms


def test_ties_keep_the_strategy_order_and_images_without_findings_come_last() -> None:
    nan = float("nan")
    probabilities = np.array([[nan, nan], [0.3, 0.3], [0.3, 0.3], [0.3, 0.3], [0.9, 0.9]])
    snapshot = snapshot_with(probabilities)
    hits = hits_of(["k0", "k3", "k1", "k2", "k4", "unknown"])

    reranked = rerank_by_findings(hits, snapshot, np.array([0.1, 0.1]), k=6)

    # k3, k1, k2 tie: the strategy's order among them stands; k4 disagrees; k0 (no stored
    # findings) and a key the read model lacks follow, still in the strategy's order.
    assert list(reranked.keys) == ["k3", "k1", "k2", "k4", "k0", "unknown"]
    assert reranked.agreement is not None
    assert np.isneginf(reranked.agreement[-2:]).all()


def test_query_probabilities_are_checked_against_the_stored_ones() -> None:
    snapshot = snapshot_with(np.array([[0.2, 0.4], [0.5, 0.5]]))
    np.testing.assert_array_equal(check_query_probabilities([0.1, 0.9], snapshot), [0.1, 0.9])
    with pytest.raises(FindingsUnavailable, match="different encoder checkpoints"):
        check_query_probabilities([0.1, 0.2, 0.3], snapshot)
    with pytest.raises(ValueError, match="within \\[0, 1\\]"):
        check_query_probabilities([0.1, 1.5], snapshot)
    with pytest.raises(ValueError, match="finite"):
        check_query_probabilities([0.1, float("nan")], snapshot)
    nothing_stored = snapshot_with(np.full((2, 2), np.nan))
    with pytest.raises(FindingsUnavailable, match="no stored image has predicted findings"):
        check_query_probabilities([0.1, 0.9], nothing_stored)
    never_stored = snapshot_with(np.zeros((2, 0)))
    with pytest.raises(FindingsUnavailable, match="ingest the images again"):
        check_query_probabilities([0.1, 0.9], never_stored)

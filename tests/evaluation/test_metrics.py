"""The metric definitions on cases small enough to check by hand."""

from __future__ import annotations

import numpy as np
import pytest

from services.evaluation.metrics import (
    LabelSpace,
    LatencySummary,
    acg_at_k,
    acg_positive_at_k,
    is_relevant,
    positives,
    precision_at_k,
    random_retrieval_expectation,
    recall_at_k,
)

QUERY = ("Effusion",)
RETRIEVED = [("Effusion",), ("Effusion", "Mass"), ()]


def test_no_finding_is_a_label_of_its_own() -> None:
    assert positives(()) == {"No Finding"}
    assert positives(["No Finding"]) == {"No Finding"}
    assert positives(["Mass", "Effusion"]) == {"Mass", "Effusion"}
    assert is_relevant((), ["No Finding"])
    assert not is_relevant((), ["Mass"])
    assert not is_relevant(("Effusion",), ("Effusion", "Mass"))  # exact match only


def test_precision_acg_and_acg_positive_by_hand() -> None:
    space = LabelSpace.from_findings([QUERY, *RETRIEVED])
    assert space.labels == ("Effusion", "Mass", "No Finding")
    # Relevant (same label set): only the first.
    assert precision_at_k(QUERY, RETRIEVED, 3) == pytest.approx(1 / 3)
    assert precision_at_k(QUERY, RETRIEVED, 1) == 1.0
    # Agreement over (Effusion, Mass, No Finding): 3/3, 2/3, 1/3.
    assert acg_at_k(space, QUERY, RETRIEVED, 3) == pytest.approx(2 / 3)
    # Common positive labels over labels positive in either: 1, 1/2, 0.
    assert acg_positive_at_k(QUERY, RETRIEVED, 3) == pytest.approx(0.5)
    assert acg_positive_at_k((), [(), ("Mass",)], 2) == pytest.approx(0.5)
    assert precision_at_k(QUERY, [], 5) == 0.0


def test_recall_against_exact() -> None:
    assert recall_at_k(["a", "b", "c"], ["a", "c", "d"], 3) == pytest.approx(2 / 3)
    assert recall_at_k(["a", "b"], ["b", "a"], 2) == 1.0
    assert recall_at_k(["a", "b", "c"], ["c", "x", "y"], 1) == 0.0


def test_random_expectation_matches_enumeration() -> None:
    findings = [("Effusion",), (), ("Effusion", "Mass"), ("Mass",), ()]
    space = LabelSpace.from_findings(findings)
    labels = space.matrix(findings)
    eligible = np.array([False, True, True, True, False])
    precision, acg, acg_p = random_retrieval_expectation(labels, 0, eligible)
    others = [findings[i] for i in (1, 2, 3)]
    assert precision == pytest.approx(precision_at_k(findings[0], others, 3))
    assert acg == pytest.approx(acg_at_k(space, findings[0], others, 3))
    assert acg_p == pytest.approx(acg_positive_at_k(findings[0], others, 3))


def test_latency_summary() -> None:
    summary = LatencySummary.of([float(v) for v in range(1, 101)])
    assert summary.count == 100
    assert summary.p50_ms == pytest.approx(50.5)
    assert summary.p99_ms == pytest.approx(99.01)
    assert summary.mean_ms == pytest.approx(50.5)

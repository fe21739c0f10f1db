"""Held-out retrieval metrics, baselines and patient-bootstrap intervals, checked by hand."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from services.evaluation.heldout import (
    POOLED,
    RANDOM_ROW,
    SAME_SOURCE_ROW,
    CodeSet,
    FindingRerank,
    HeldOutSet,
    _finding_agreement,
    evaluate_held_out,
    random_expectation,
    retrieval_metrics,
)
from services.evaluation.intervals import (
    bootstrap_interval,
    mean_auroc_interval,
    patient_resample_weights,
)
from services.evaluation.metrics import (
    LabelSpace,
    acg_at_k,
    acg_positive_at_k,
    precision_at_k,
)

FINDINGS = [("Mass",), ("Effusion",), (), ("Mass", "Effusion")]


def _planted(seed: int = 0, per_label: int = 12) -> tuple[HeldOutSet, list[tuple[str, ...]]]:
    """Four label sets, two sources, two images per patient; every third patient is a query."""
    findings = [FINDINGS[i % 4] for i in range(4 * per_label)]
    space = LabelSpace.from_findings(findings)
    n = len(findings)
    data = HeldOutSet(
        labels=space.matrix(findings),
        sources=np.array(["a" if i % 8 < 4 else "b" for i in range(n)]),
        patients=np.arange(n) // 2,
        is_query=(np.arange(n) // 2) % 3 == 0,
    )
    return data, findings


def _label_codes(data: HeldOutSet, noise: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return data.labels.astype(np.float64) + noise * rng.standard_normal(data.labels.shape)


def test_metrics_match_the_reference_functions_and_exclude_the_own_patient() -> None:
    data, findings = _planted()
    codes = CodeSet("noisy", _label_codes(data, noise=0.8))
    queries = np.flatnonzero(data.is_query)
    members = np.ones(len(findings), dtype=bool)
    k = 5
    got = retrieval_metrics(data, codes, queries, members, k)
    unit = codes.codes / np.linalg.norm(codes.codes, axis=1, keepdims=True)
    space = LabelSpace.from_findings(findings)
    for position, row in enumerate(queries):
        similarity = unit @ unit[row]
        candidates = [i for i in np.argsort(-similarity) if data.patients[i] != data.patients[row]]
        top = [findings[i] for i in candidates[:k]]
        assert got["precision"][position] == pytest.approx(precision_at_k(findings[row], top, k))
        assert got["acg"][position] == pytest.approx(acg_at_k(space, findings[row], top, k))
        assert got["acg_positive"][position] == pytest.approx(
            acg_positive_at_k(findings[row], top, k)
        )


def test_random_expectation_is_the_mean_over_eligible_images() -> None:
    data, findings = _planted()
    queries = np.flatnonzero(data.is_query)
    members = np.ones(len(findings), dtype=bool)
    pooled = random_expectation(data, queries, members, same_source=False)
    same = random_expectation(data, queries, members, same_source=True)
    row = queries[0]
    others = [i for i in range(len(findings)) if data.patients[i] != data.patients[row]]
    expected = np.mean([set(findings[i]) == set(findings[row]) for i in others])
    assert pooled["precision"][0] == pytest.approx(expected)
    own_source = [i for i in others if data.sources[i] == data.sources[row]]
    expected_same = np.mean([set(findings[i]) == set(findings[row]) for i in own_source])
    assert same["precision"][0] == pytest.approx(expected_same)


def test_label_codes_beat_random_and_noise_codes_do_not() -> None:
    data, _ = _planted(per_label=40)
    rng = np.random.default_rng(1)
    report = evaluate_held_out(
        data,
        [
            CodeSet("labels", _label_codes(data, noise=0.1)),
            CodeSet("noise", rng.standard_normal((len(data.labels), 8))),
        ],
        k=5,
        resamples=500,
    )
    assert [view.view for view in report.views] == [POOLED, "a", "b"]
    pooled = report.view(POOLED)
    assert [row.name for row in pooled.rows] == ["labels", "noise", RANDOM_ROW, SAME_SOURCE_ROW]
    assert pooled.row("labels").metrics["precision"].value == pytest.approx(1.0)
    random = pooled.row(RANDOM_ROW)
    # Row minus the model: wholly below zero for random, the model wins.
    assert random.difference["precision"].high < 0
    assert pooled.row("noise").difference["precision"].high < 0
    for view in report.views[1:]:
        assert SAME_SOURCE_ROW not in [row.name for row in view.rows]
        assert view.database == int((data.sources == view.view).sum())
    assert "labels minus each row" in report.table()


def test_per_source_view_retrieves_only_from_its_source() -> None:
    data, findings = _planted()
    # Codes that only say the source: in view "a" every database image looks the same.
    codes = CodeSet("source", (data.sources == "a").astype(np.float64)[:, None] + 1.0)
    members = data.sources == "a"
    queries = np.flatnonzero(members & data.is_query)
    got = retrieval_metrics(data, codes, queries, members, k=100)
    expected = random_expectation(data, queries, members, same_source=False)
    # All of the source's other patients' images come back: the random pick's average exactly.
    np.testing.assert_allclose(got["precision"], expected["precision"])


def test_raw_pixel_centring_uses_the_view_mean() -> None:
    data, _ = _planted()
    rng = np.random.default_rng(3)
    codes = rng.random((len(data.labels), 6)) + np.linspace(5, 10, 6)  # a large shared offset
    members = data.sources == "b"
    queries = np.flatnonzero(members & data.is_query)
    centred = retrieval_metrics(data, CodeSet("c", codes, centre=True), queries, members, 3)
    by_hand = codes - codes[members].mean(axis=0)  # the view's mean, not all images'
    expected = retrieval_metrics(data, CodeSet("h", by_hand), queries, members, 3)
    for metric, values in centred.items():
        np.testing.assert_allclose(values, expected[metric])


def test_finding_rerank_orders_the_cosine_candidates_by_predicted_agreement() -> None:
    data, findings = _planted()
    queries = np.flatnonzero(data.is_query)
    everyone = np.ones(len(findings), dtype=bool)
    noise = CodeSet("noise", np.random.default_rng(4).standard_normal((len(findings), 8)))
    # Predicted findings that are right (confident): re-ranking every image finds exact matches.
    predicted = np.where(data.labels[:, :-1], 0.95, 0.05)
    k = 5
    every = FindingRerank(predicted, candidates=len(findings))
    reranked = retrieval_metrics(
        data, CodeSet("r", noise.codes, rerank=every), queries, everyone, k
    )
    np.testing.assert_allclose(reranked["precision"], 1.0)
    # With only K candidates the re-ranking can reorder, not replace, the cosine's results.
    same = FindingRerank(predicted, candidates=k)
    assert (
        retrieval_metrics(data, CodeSet("s", noise.codes, rerank=same), queries, everyone, k)[
            "precision"
        ].tolist()
        == retrieval_metrics(data, noise, queries, everyone, k)["precision"].tolist()
    )
    # The score is the log probability of agreeing on every finding; excluded stays excluded.
    similarity = np.array([[0.9, -np.inf, 0.5, 0.1]])
    probabilities = np.array([[0.9, 0.2], [0.9, 0.2], [0.1, 0.2], [0.9, 0.8], [0.5, 0.5]])
    scores = _finding_agreement(
        similarity, FindingRerank(probabilities, 2), np.array([0]), np.array([1, 2, 3, 4]), 1
    )
    agree = lambda a, b: np.log(a * b + (1 - a) * (1 - b))  # noqa: E731
    assert scores[0, 1] == -np.inf and scores[0, 3] == -np.inf  # own patient; not a candidate
    assert scores[0, 0] == pytest.approx(agree(0.9, 0.9) + agree(0.2, 0.2))
    assert scores[0, 2] == pytest.approx(agree(0.9, 0.9) + agree(0.2, 0.8))


def test_bootstrap_resamples_whole_patients() -> None:
    patients = np.array([0, 0, 0, 1, 2])
    weights = patient_resample_weights(patients, resamples=300, seed=2)
    # A patient's images are drawn together: equal weights within a patient in every resample.
    assert np.all(weights[:, 0] == weights[:, 1]) and np.all(weights[:, 1] == weights[:, 2])
    assert np.all(weights.sum(axis=1) >= 1)
    values = np.array([1.0, 1.0, 1.0, 0.0, 0.0])
    interval = bootstrap_interval(values, weights)
    assert interval.value == pytest.approx(0.6)
    assert 0.0 <= interval.low < 0.6 < interval.high <= 1.0


def test_weighted_auroc_matches_sklearn_and_its_paired_difference() -> None:
    rng = np.random.default_rng(4)
    n = 60
    targets = (rng.random((n, 3)) < 0.3).astype(np.float32)
    targets[:, 2] = 0.0  # one class only: no AUROC for this finding
    targets[0, 1] = np.nan  # unknown labels are left out
    good = targets + rng.normal(0, 0.6, targets.shape)
    good = np.nan_to_num(good)
    bad = rng.random((n, 3))
    patients = np.arange(n) // 3
    (mean_good, none), (mean_bad, difference) = mean_auroc_interval(
        targets, [good, bad], patients, resamples=400, seed=1
    )
    expected = np.mean(
        [
            roc_auc_score(targets[~np.isnan(targets[:, f]), f], good[~np.isnan(targets[:, f]), f])
            for f in (0, 1)
        ]
    )
    assert none is None
    assert mean_good.value == pytest.approx(expected)
    assert mean_good.low < mean_good.value < mean_good.high
    assert difference.value == pytest.approx(mean_bad.value - mean_good.value)
    assert difference.high < 0  # the noise scores lose, paired


def test_no_queries_is_refused() -> None:
    data, _ = _planted()
    with pytest.raises(ValueError, match="no query images"):
        HeldOutSet(data.labels, data.sources, data.patients, np.zeros(len(data.labels), bool))

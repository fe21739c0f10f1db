"""Patient-bootstrap 95% intervals, of a mean and of a paired difference, and of mean AUROC.

A patient's images are not independent queries, so every resample draws query *patients* with
replacement; a paired difference of two rows uses the same resamples for both.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

BOOTSTRAP_RESAMPLES = 2000


@dataclass
class Interval:
    value: float
    low: float
    high: float

    def shown(self, percent: bool, signed: bool = False) -> str:
        scale = 100.0 if percent else 1.0
        sign = "+" if signed else ""
        digits = 1 if percent else 3
        return (
            f"{self.value * scale:{sign}.{digits}f} "
            f"[{self.low * scale:{sign}.{digits}f}, {self.high * scale:{sign}.{digits}f}]"
        )

    def negated(self) -> Interval:
        """The same difference taken the other way round (b - a from a - b)."""
        return Interval(-self.value, -self.high, -self.low)


def patient_resample_weights(patients: np.ndarray, resamples: int, seed: int) -> np.ndarray:
    """(resamples, n) weights: how often each query's patient was drawn in each resample."""
    codes, inverse = np.unique(patients, return_inverse=True)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(codes), size=(resamples, len(codes)))
    counts = np.zeros((resamples, len(codes)))
    np.add.at(counts, (np.arange(resamples)[:, None], draws), 1.0)
    return counts[:, inverse]


def bootstrap_interval(values: np.ndarray, weights: np.ndarray) -> Interval:
    """Mean of ``values`` with the 2.5-97.5 percentile interval over the weighted resamples."""
    means = (weights @ values) / weights.sum(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return Interval(float(values.mean()), float(low), float(high))


def mean_auroc_interval(
    targets: np.ndarray,
    scores: Sequence[np.ndarray],
    patients: np.ndarray,
    *,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
) -> list[tuple[Interval, Interval | None]]:
    """Mean AUROC over the findings with both classes, for each score matrix, with its patient
    bootstrap interval, and (for every matrix after the first) the paired difference to the
    first. ``targets``: (n, findings) with 1, 0 or NaN; ``scores``: (n, findings) each."""
    weights = patient_resample_weights(patients, resamples, seed)
    ones = np.ones((1, len(patients)))
    results: list[tuple[Interval, Interval | None]] = []
    reference: tuple[float, np.ndarray] | None = None
    for matrix in scores:
        point = float(np.nanmean(_weighted_aurocs(targets, matrix, ones))[()])
        resampled = np.nanmean(_weighted_aurocs(targets, matrix, weights), axis=1)
        low, high = np.nanpercentile(resampled, [2.5, 97.5])
        interval = Interval(point, float(low), float(high))
        difference = None
        if reference is None:
            reference = (point, resampled)
        else:
            delta = resampled - reference[1]
            d_low, d_high = np.nanpercentile(delta, [2.5, 97.5])
            difference = Interval(point - reference[0], float(d_low), float(d_high))
        results.append((interval, difference))
    return results


def _weighted_aurocs(targets: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """(resamples, findings) AUROC with per-image weights (ties count one half); NaN where a
    finding lacks a class in the full set or in a resample."""
    out = np.full((len(weights), targets.shape[1]), np.nan)
    for finding in range(targets.shape[1]):
        known = ~np.isnan(targets[:, finding])
        labels = targets[known, finding]
        if labels.min(initial=1) == labels.max(initial=0):
            continue  # one class only: no AUROC, as in training's report
        score = scores[known, finding]
        order = np.argsort(score, kind="stable")
        score, labels = score[order], labels[order]
        w = weights[:, known][:, order]
        starts = np.flatnonzero(np.r_[True, score[1:] != score[:-1]])
        positive = np.add.reduceat(w * (labels == 1), starts, axis=1)
        negative = np.add.reduceat(w * (labels == 0), starts, axis=1)
        below = np.cumsum(negative, axis=1) - negative
        pairs = positive.sum(axis=1) * negative.sum(axis=1)
        wins = (positive * (below + 0.5 * negative)).sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[:, finding] = np.where(pairs > 0, wins / pairs, np.nan)
    return out

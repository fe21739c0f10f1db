"""Held-out retrieval: new patients' films against a stored archive, with baselines and intervals.

The queries are the images of the encoder's validation patients (it never trained on them); the
database is every other image; images of the query's own patient are never results. Retrieval is
exact cosine over the codes (the ``exact`` strategy's ranking, in numpy: no server needed), the
metrics are the paper's (``services.evaluation.metrics``) at K.

Views: pooled (all queries against all other images) and one per source set (queries and
database both from that set). The sets differ in resolution, reduction and prevalence, and a
network can tell them apart from the pixels, so in the pooled view a query that retrieves its own
set "wins" on labels without knowing any pathology: the pooled view adds a same-source random
row, the expected figures of a random pick among the query's own set.

Every figure has a 95% bootstrap interval that resamples query *patients* (a patient's images
are not independent queries); each row's paired difference against the first row (the model)
uses the same resamples, so the interval of the difference is the one to read.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from services.evaluation.intervals import (
    BOOTSTRAP_RESAMPLES,
    Interval,
    bootstrap_interval,
    patient_resample_weights,
)
from services.retrieval.rerank import finding_agreement

METRICS = ("precision", "acg", "acg_positive")
METRIC_TITLES = {"precision": "P@{k}", "acg": "ACG@{k}", "acg_positive": "ACG_p@{k}"}
RANDOM_ROW = "random (expected)"
SAME_SOURCE_ROW = "random, same source (expected)"
POOLED = "pooled"
# Similarity blocks of this many queries keep memory flat for large databases.
QUERY_BLOCK = 256


@dataclass(frozen=True)
class FindingRerank:
    """Re-rank the cosine's first ``candidates`` results by how likely each one's findings are
    to match the query's (``services.retrieval.rerank.finding_agreement``, the search API's
    re-ranking), from the predicted probabilities (n, F), calibrated."""

    probabilities: np.ndarray
    candidates: int


@dataclass(frozen=True)
class CodeSet:
    """One row's image codes, (n, d), in the order of the held-out set's images.

    ``centre``: subtract the view's mean code before the cosine (the raw-pixel baseline: a
    pixel vector's cosine is otherwise dominated by overall brightness). ``rerank``: re-rank
    the cosine's first results by predicted findings (``FindingRerank``).
    """

    name: str
    codes: np.ndarray
    centre: bool = False
    rerank: FindingRerank | None = None


@dataclass(frozen=True)
class HeldOutSet:
    labels: np.ndarray  # bool (n, |V|), the metrics' label vectors (No Finding included)
    sources: np.ndarray  # (n,) source set of each image
    patients: np.ndarray  # (n,) int patient codes (no identifiers)
    is_query: np.ndarray  # (n,) bool: validation images

    def __post_init__(self) -> None:
        n = len(self.labels)
        if not (len(self.sources) == len(self.patients) == len(self.is_query) == n):
            raise ValueError("labels, sources, patients and is_query must have one row per image")
        if not self.is_query.any():
            raise ValueError("no query images: none of the images is a validation image")


@dataclass
class RowReport:
    name: str
    metrics: dict[str, Interval]
    # This row minus the reference row (the model), same resamples; absent for the model.
    difference: dict[str, Interval] | None = None


@dataclass
class ViewReport:
    view: str
    queries: int
    query_patients: int
    database: int
    prevalence: dict[str, float]  # share of the view's images with each label
    rows: list[RowReport] = field(default_factory=list)

    def row(self, name: str) -> RowReport:
        return next(row for row in self.rows if row.name == name)


@dataclass
class HeldOutReport:
    k: int
    resamples: int
    seed: int
    views: list[ViewReport]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def view(self, name: str) -> ViewReport:
        return next(view for view in self.views if view.view == name)

    def table(self) -> str:
        k = self.k
        titles = [METRIC_TITLES[metric].format(k=k) for metric in METRICS]
        lines: list[str] = []
        for view in self.views:
            lines.append(
                f"\n{view.view}: {view.queries} queries ({view.query_patients} patients) against "
                f"{view.database} images"
            )
            width = max(len(row.name) for row in view.rows) + 2
            lines.append(f"{'':<{width}}" + "".join(f"{title:>24}" for title in titles))
            for row in view.rows:
                lines.append(
                    f"{row.name:<{width}}"
                    + "".join(
                        f"{row.metrics[metric].shown(metric == 'precision'):>24}"
                        for metric in METRICS
                    )
                )
            reference = view.rows[0].name
            lines.append(f"  {reference} minus each row, paired (95% interval):")
            for row in view.rows[1:]:
                assert row.difference is not None
                lines.append(
                    f"{'  vs ' + row.name:<{width}}"
                    + "".join(
                        f"{row.difference[metric].negated().shown(metric == 'precision', True):>24}"
                        for metric in METRICS
                    )
                )
        return "\n".join(lines)


def evaluate_held_out(
    data: HeldOutSet,
    code_sets: Sequence[CodeSet],
    *,
    k: int = 50,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
) -> HeldOutReport:
    """Pooled and per-source views; rows: each code set, then the random expectations.

    The first code set is the reference: every other row gets its paired difference to it.
    """
    if not code_sets:
        raise ValueError("at least one code set is needed")
    views: list[ViewReport] = []
    all_images = np.ones(len(data.labels), dtype=bool)
    sources = list(dict.fromkeys(data.sources.tolist()))
    plans = [(POOLED, all_images)] + [(str(s), data.sources == s) for s in sources]
    for name, members in plans:
        query_rows = np.flatnonzero(members & data.is_query)
        if len(query_rows) == 0:
            continue
        per_query: dict[str, dict[str, np.ndarray]] = {}
        for code_set in code_sets:
            per_query[code_set.name] = retrieval_metrics(data, code_set, query_rows, members, k)
        per_query[RANDOM_ROW] = random_expectation(data, query_rows, members, same_source=False)
        if name == POOLED and len(sources) > 1:
            per_query[SAME_SOURCE_ROW] = random_expectation(
                data, query_rows, members, same_source=True
            )
        views.append(_view_report(name, data, query_rows, members, per_query, resamples, seed))
    return HeldOutReport(k=k, resamples=resamples, seed=seed, views=views)


def retrieval_metrics(
    data: HeldOutSet, code_set: CodeSet, query_rows: np.ndarray, members: np.ndarray, k: int
) -> dict[str, np.ndarray]:
    """Per-query precision@K, ACG@K and ACG_p@K of exact cosine retrieval within ``members``."""
    codes = np.asarray(code_set.codes, dtype=np.float64)
    database_rows = np.flatnonzero(members)
    if code_set.centre:
        codes = codes - codes[database_rows].mean(axis=0)
    norms = np.linalg.norm(codes, axis=1, keepdims=True)
    codes = codes / np.where(norms > 0, norms, 1.0)
    database = codes[database_rows]
    results = {metric: np.zeros(len(query_rows)) for metric in METRICS}
    for start in range(0, len(query_rows), QUERY_BLOCK):
        block = query_rows[start : start + QUERY_BLOCK]
        similarity = codes[block] @ database.T
        # The query itself and its patient's other images are never results.
        own = data.patients[block][:, None] == data.patients[database_rows][None, :]
        similarity[own] = -np.inf
        if code_set.rerank is not None:
            similarity = _finding_agreement(similarity, code_set.rerank, block, database_rows, k)
        top_k = min(k, len(database_rows))
        top = np.argpartition(-similarity, top_k - 1, axis=1)[:, :top_k]
        top_similarity = np.take_along_axis(similarity, top, axis=1)
        order = np.argsort(-top_similarity, axis=1, kind="stable")
        eligible = np.isfinite(np.take_along_axis(top_similarity, order, axis=1))
        top = database_rows[np.take_along_axis(top, order, axis=1)]
        for offset, (row, hits, usable) in enumerate(zip(block, top, eligible, strict=True)):
            hits = hits[usable]
            values = _label_agreement(data.labels[row], data.labels[hits])
            for metric in METRICS:
                results[metric][start + offset] = values[metric].mean() if len(hits) else 0.0
    return results


def _finding_agreement(
    similarity: np.ndarray,
    rerank: FindingRerank,
    query_rows: np.ndarray,
    database_rows: np.ndarray,
    k: int,
) -> np.ndarray:
    """The scores to rank by: the finding agreement within each query's first candidates by
    cosine, -inf elsewhere (and wherever the cosine was -inf: own patient)."""
    count = min(max(rerank.candidates, k), similarity.shape[1])
    candidates = np.argpartition(-similarity, count - 1, axis=1)[:, :count]
    eligible = np.isfinite(np.take_along_axis(similarity, candidates, axis=1))
    agreement = finding_agreement(
        rerank.probabilities[query_rows][:, None, :],
        rerank.probabilities[database_rows[candidates]],
    )
    scores = np.full(similarity.shape, -np.inf)
    np.put_along_axis(scores, candidates, np.where(eligible, agreement, -np.inf), axis=1)
    return scores


def random_expectation(
    data: HeldOutSet, query_rows: np.ndarray, members: np.ndarray, *, same_source: bool
) -> dict[str, np.ndarray]:
    """Per-query expected metrics of a uniformly random pick among the eligible images."""
    results = {metric: np.zeros(len(query_rows)) for metric in METRICS}
    for position, row in enumerate(query_rows):
        eligible = members & (data.patients != data.patients[row])
        if same_source:
            eligible &= data.sources == data.sources[row]
        if eligible.any():
            values = _label_agreement(data.labels[row], data.labels[eligible])
            for metric in METRICS:
                results[metric][position] = values[metric].mean()
    return results


def _label_agreement(query: np.ndarray, retrieved: np.ndarray) -> dict[str, np.ndarray]:
    """Per retrieved image: exact label match, share of agreeing labels, positive Jaccard."""
    same = retrieved == query[None, :]
    common = (retrieved & query[None, :]).sum(axis=1)
    either = (retrieved | query[None, :]).sum(axis=1)
    return {
        "precision": same.all(axis=1).astype(np.float64),
        "acg": same.mean(axis=1),
        "acg_positive": common / np.maximum(either, 1),
    }


def _view_report(
    name: str,
    data: HeldOutSet,
    query_rows: np.ndarray,
    members: np.ndarray,
    per_query: dict[str, dict[str, np.ndarray]],
    resamples: int,
    seed: int,
) -> ViewReport:
    weights = patient_resample_weights(data.patients[query_rows], resamples, seed)
    reference = next(iter(per_query))
    rows: list[RowReport] = []
    for row_name, values in per_query.items():
        metrics = {metric: bootstrap_interval(values[metric], weights) for metric in METRICS}
        difference = None
        if row_name != reference:
            difference = {
                metric: bootstrap_interval(values[metric] - per_query[reference][metric], weights)
                for metric in METRICS
            }
        rows.append(RowReport(row_name, metrics, difference))
    labels = data.labels[members]
    return ViewReport(
        view=name,
        queries=len(query_rows),
        query_patients=len(np.unique(data.patients[query_rows])),
        database=int(members.sum()),
        prevalence={"any finding": float(1.0 - labels[:, -1].mean())},
        rows=rows,
    )

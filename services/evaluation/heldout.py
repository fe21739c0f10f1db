"""Held-out retrieval: new patients' films against a stored archive, with baselines and intervals.

The queries are the images of the encoder's validation patients (it never trained on them); the
database is every other image; images of the query's own patient are never results. Retrieval is
exact cosine over the codes (the ``exact`` strategy's ranking, in numpy: no server needed), the
metrics are the paper's (``services.evaluation.metrics``) at K.

Views: pooled (all queries against all other images) and one per source set (queries and
database both from that set). The sets differ in resolution, reduction and prevalence, and a
network can tell them apart from the pixels, so in the pooled view a query that retrieves its own
set "wins" on labels without knowing any pathology: the pooled view adds a same-source random
row, the expected figures of a random pick among the query's own set. A set may hold several
collections (picked differently, e.g. a No Finding / Pneumonia balanced pick beside a random
sample): every view whose database holds a set of several collections adds a same-collection
random row, and every row reports the share of its top K from the query's own collection (the
collection cue; the random row's value is that collection's share of the database).

External query sets (e.g. full-size films of new patients, processed like neither bundled set)
get a view each: their images are the queries, the whole archive (every image not external) the
database; they are never results of any view.

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

METRICS = ("precision", "acg", "acg_positive", "own_collection")
METRIC_TITLES = {
    "precision": "P@{k}",
    "acg": "ACG@{k}",
    "acg_positive": "ACG_p@{k}",
    "own_collection": "own coll.@{k}",
}
PERCENT_METRICS = frozenset({"precision", "own_collection"})
RANDOM_ROW = "random (expected)"
SAME_SOURCE_ROW = "random, same source (expected)"
SAME_COLLECTION_ROW = "random, same collection (expected)"
POOLED = "pooled"
HELD_OUT = "held-out"
QUERY_SET = "query set"
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
    # (n,) collection of each image; None: each source set is one collection.
    collections: np.ndarray | None = None
    # (n,) bool: images of external query sets, queries of their own view, never results;
    # None: none.
    external: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self.labels)
        columns = [self.sources, self.patients, self.is_query]
        columns += [column for column in (self.collections, self.external) if column is not None]
        if any(len(column) != n for column in columns):
            raise ValueError(
                "labels, sources, patients, is_query, collections and external must have one "
                "row per image"
            )
        if not (self.is_query & self.in_archive).any():
            raise ValueError("no query images: none of the images is a validation image")

    @property
    def collection(self) -> np.ndarray:
        return self.sources if self.collections is None else self.collections

    @property
    def in_archive(self) -> np.ndarray:
        """(n,) bool: the images a view's database is drawn from (every one not external)."""
        if self.external is None:
            return np.ones(len(self.labels), dtype=bool)
        return ~self.external.astype(bool)


@dataclass
class RowReport:
    name: str
    metrics: dict[str, Interval]
    # This row minus the reference row (the model), same resamples; absent for the model.
    difference: dict[str, Interval] | None = None


@dataclass
class ViewReport:
    view: str
    # "held-out": the archive's validation images; "query set": an external set's images
    # against the whole archive.
    kind: str
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
                        f"{row.metrics[metric].shown(metric in PERCENT_METRICS):>24}"
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
                        f"{gain.shown(metric in PERCENT_METRICS, True):>24}"
                        for metric, gain in _gains(row.difference)
                    )
                )
        return "\n".join(lines)


def _gains(difference: dict[str, Interval]) -> list[tuple[str, Interval]]:
    """The reference row minus this row, per metric (the stored difference is the other way)."""
    return [(metric, difference[metric].negated()) for metric in METRICS]


def evaluate_held_out(
    data: HeldOutSet,
    code_sets: Sequence[CodeSet],
    *,
    k: int = 50,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
) -> HeldOutReport:
    """Pooled, per-source and per-query-set views; rows: each code set, then the random
    expectations.

    The first code set is the reference: every other row gets its paired difference to it.
    """
    if not code_sets:
        raise ValueError("at least one code set is needed")
    views: list[ViewReport] = []
    for name, kind, queries, database in _view_plans(data):
        query_rows = np.flatnonzero(queries)
        if len(query_rows) == 0:
            continue
        per_query: dict[str, dict[str, np.ndarray]] = {}
        for code_set in code_sets:
            per_query[code_set.name] = retrieval_metrics(data, code_set, query_rows, database, k)
        per_query[RANDOM_ROW] = random_expectation(data, query_rows, database)
        if name == POOLED and len(np.unique(data.sources[database])) > 1:
            per_query[SAME_SOURCE_ROW] = random_expectation(
                data, query_rows, database, same_source=True
            )
        # Only where some set holds several collections (else it is the same-source row).
        collections = len(np.unique(data.collection[database]))
        if kind == HELD_OUT and collections > len(np.unique(data.sources[database])):
            per_query[SAME_COLLECTION_ROW] = random_expectation(
                data, query_rows, database, same_collection=True
            )
        views.append(
            _view_report(name, kind, data, query_rows, database, per_query, resamples, seed)
        )
    return HeldOutReport(k=k, resamples=resamples, seed=seed, views=views)


def _view_plans(data: HeldOutSet) -> list[tuple[str, str, np.ndarray, np.ndarray]]:
    """(name, kind, query mask, database mask) of every view."""
    archive = data.in_archive
    queries = data.is_query & archive
    plans = [(POOLED, HELD_OUT, queries, archive)]
    for source in dict.fromkeys(data.sources[archive].tolist()):
        members = archive & (data.sources == source)
        plans.append((str(source), HELD_OUT, queries & members, members))
    for source in dict.fromkeys(data.sources[~archive].tolist()):
        plans.append((str(source), QUERY_SET, ~archive & (data.sources == source), archive))
    return plans


def retrieval_metrics(
    data: HeldOutSet, code_set: CodeSet, query_rows: np.ndarray, members: np.ndarray, k: int
) -> dict[str, np.ndarray]:
    """Per-query precision@K, ACG@K, ACG_p@K and own-collection share of exact cosine retrieval
    within ``members``."""
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
            values = _agreement(data, row, hits)
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
    data: HeldOutSet,
    query_rows: np.ndarray,
    members: np.ndarray,
    *,
    same_source: bool = False,
    same_collection: bool = False,
) -> dict[str, np.ndarray]:
    """Per-query expected metrics of a uniformly random pick among the eligible images (those
    of ``members`` not of the query's patient; optionally only its source set or collection)."""
    results = {metric: np.zeros(len(query_rows)) for metric in METRICS}
    for position, row in enumerate(query_rows):
        eligible = members & (data.patients != data.patients[row])
        if same_source:
            eligible &= data.sources == data.sources[row]
        if same_collection:
            eligible &= data.collection == data.collection[row]
        if eligible.any():
            values = _agreement(data, row, np.flatnonzero(eligible))
            for metric in METRICS:
                results[metric][position] = values[metric].mean()
    return results


def _agreement(data: HeldOutSet, query: int, retrieved: np.ndarray) -> dict[str, np.ndarray]:
    """Per retrieved image: exact label match, share of agreeing labels, positive Jaccard, and
    whether it comes from the query's collection."""
    labels, wanted = data.labels[retrieved], data.labels[query][None, :]
    same = labels == wanted
    common = (labels & wanted).sum(axis=1)
    either = (labels | wanted).sum(axis=1)
    return {
        "precision": same.all(axis=1).astype(np.float64),
        "acg": same.mean(axis=1),
        "acg_positive": common / np.maximum(either, 1),
        "own_collection": (data.collection[retrieved] == data.collection[query]).astype(np.float64),
    }


def _view_report(
    name: str,
    kind: str,
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
        kind=kind,
        queries=len(query_rows),
        query_patients=len(np.unique(data.patients[query_rows])),
        database=int(members.sum()),
        prevalence={"any finding": float(1.0 - labels[:, -1].mean())},
        rows=rows,
    )

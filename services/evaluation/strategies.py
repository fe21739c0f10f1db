"""Leave-one-out evaluation of every strategy on the labelled stored set (the paper's Table 1).

Each labelled image (or a seeded sample) is the query: it is excluded from its own results, and
so are the other images of its patient. Every strategy answers with the largest K asked; the
metrics at smaller K are read from the prefix (all three strategies are prefix-consistent: the
first k of a K-answer are the k-answer, up to the vector index's approximation). Latency is the
server-side wall time of ``RetrievalService.search`` (no HTTP), after one warm-up query per
strategy (which also loads the ``exact`` matrix cache).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from services.evaluation.intervals import bootstrap_interval, patient_resample_weights
from services.evaluation.metrics import (
    LabelSpace,
    LatencySummary,
    acg_at_k,
    acg_positive_at_k,
    precision_at_k,
    random_retrieval_expectation,
    recall_at_k,
)
from services.retrieval.contract import SearchFilters, SearchHits, Strategy
from services.retrieval.service import IN_MEMORY, RetrievalService

RANDOM_ROW = "random (expected)"
BOOTSTRAP_RESAMPLES = 2000
# Columns of random_retrieval_expectation's (precision, ACG, ACG_p).
RANDOM_COLUMNS = {"precision": 0, "acg": 1, "acg_positive": 2}


@dataclass
class StrategyReport:
    strategy: str
    k: int
    acg: float
    acg_positive: float
    precision: float
    recall_vs_exact: float | None
    fraction_examined: float | None
    images_examined: float | None
    latency: LatencySummary | None
    returned: float | None
    curves: dict[int, dict[str, float]] = field(default_factory=dict)
    # metric -> [low, high]: 95% bootstrap interval resampling query patients.
    intervals: dict[str, list[float]] = field(default_factory=dict)
    # metric -> [value, low, high]: this row minus the random expectation, paired per query.
    minus_random: dict[str, list[float]] = field(default_factory=dict)
    # Re-ranked rows: metric -> [value, low, high], this row minus the same strategy's own
    # order, paired per query.
    minus_strategy: dict[str, list[float]] = field(default_factory=dict)


@dataclass
class EvaluationReport:
    queries: int
    images: int
    unlabelled_images: int
    labels: tuple[str, ...]
    k: int
    ks: tuple[int, ...]
    exclude_same_patient: bool
    strategies: list[StrategyReport]
    seconds: float
    query_keys: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def table(self) -> str:
        k = self.k
        width = max(18, *(len(row.strategy) for row in self.strategies))
        header = (
            f"{'strategy':<{width}} {'ACG@' + str(k):>8} {'ACG_p@' + str(k):>9} {'P@' + str(k):>7} "
            f"{'R@' + str(k) + ' vs exact':>14} {'examined':>9} {'mean ms':>8} {'p50 ms':>8} "
            f"{'p99 ms':>8}"
        )
        lines = [header, "-" * len(header)]
        for row in self.strategies:
            lines.append(
                f"{row.strategy:<{width}} {row.acg:>8.3f} {row.acg_positive:>9.3f} "
                f"{row.precision:>6.1%} {_opt(row.recall_vs_exact, '{:>14.3f}', 14)} "
                f"{_opt(row.fraction_examined, '{:>9.2%}', 9)} "
                f"{_opt(row.latency and row.latency.mean_ms, '{:>8.1f}', 8)} "
                f"{_opt(row.latency and row.latency.p50_ms, '{:>8.1f}', 8)} "
                f"{_opt(row.latency and row.latency.p99_ms, '{:>8.1f}', 8)}"
            )
        lines.append(
            "95% intervals (bootstrap over query patients); minus random, paired per query "
            "(re-ranked rows: then minus the strategy's own order, paired):"
        )
        for row in self.strategies:
            if not row.intervals:
                continue
            shown = []
            for metric, title, scale in (
                ("precision", "P", 100.0), ("acg", "ACG", 1.0), ("acg_positive", "ACG_p", 1.0),
            ):  # fmt: skip
                low, high = row.intervals[metric]
                digits = 1 if scale == 100.0 else 3
                text = f"{title} [{low * scale:.{digits}f}, {high * scale:.{digits}f}]"
                if row.minus_random:
                    value, d_low, d_high = row.minus_random[metric]
                    text += (
                        f" {value * scale:+.{digits}f} [{d_low * scale:+.{digits}f}, "
                        f"{d_high * scale:+.{digits}f}]"
                    )
                if row.minus_strategy:
                    value, d_low, d_high = row.minus_strategy[metric]
                    text += (
                        f", {value * scale:+.{digits}f} [{d_low * scale:+.{digits}f}, "
                        f"{d_high * scale:+.{digits}f}]"
                    )
                shown.append(text)
            lines.append(f"  {row.strategy:<{width}} " + "; ".join(shown))
        return "\n".join(lines)


def _opt(value: float | None, pattern: str, width: int) -> str:
    return " " * (width - 1) + "-" if value is None else pattern.format(value)


@dataclass(frozen=True)
class LabelledSet:
    keys: list[str]
    findings: list[tuple[str, ...]]
    patient_keys: list[str | None]
    unlabelled: int


def load_labelled_set(service: RetrievalService) -> LabelledSet:
    record = service.store.query("search_labelled_images")[0]
    rows = sorted(record["labelled"], key=lambda row: row[0])
    return LabelledSet(
        keys=[row[0] for row in rows],
        findings=[tuple(row[1] or ()) for row in rows],
        patient_keys=[row[2] for row in rows],
        unlabelled=int(record["unlabelled"]),
    )


def evaluate(
    service: RetrievalService,
    *,
    strategies: Sequence[Strategy] = (Strategy.REGION, Strategy.EXACT, Strategy.VECTOR),
    k: int = 50,
    ks: Sequence[int] = (1, 5, 10, 20, 30, 40, 50),
    sample: int | None = None,
    seed: int = 0,
    exclude_same_patient: bool = True,
    progress: Callable[[int, int], None] | None = None,
    rerank: bool = False,
    query_keys: Collection[str] | None = None,
) -> EvaluationReport:
    """``rerank``: each in-memory strategy also runs re-ranked by the stored predicted
    findings (a row "<strategy> + findings"). ``query_keys``: only these stored images are
    queries (e.g. the encoder's validation images: patients it never trained on)."""
    started = time.perf_counter()
    labelled = load_labelled_set(service)
    if not labelled.keys:
        raise ValueError("no labelled images are stored: ingest a set with a label CSV first")
    ks = tuple(sorted({value for value in ks if value <= k} | {k}))
    order = list(range(len(labelled.keys)))
    if query_keys is not None:
        wanted = frozenset(query_keys)
        order = [row for row in order if labelled.keys[row] in wanted]
        if not order:
            raise ValueError("none of the query images is a stored labelled image")
    if sample is not None and sample < len(order):
        order = sorted(np.random.default_rng(seed).choice(order, size=sample, replace=False))
    space = LabelSpace.from_findings(labelled.findings)
    label_matrix = space.matrix(labelled.findings)
    patient_codes = _codes(labelled.patient_keys)
    # Strategies are evaluated against exact, so exact always runs.
    runs = list(dict.fromkeys([Strategy.EXACT, *strategies]))
    answers: dict[Strategy, list[SearchHits]] = {strategy: [] for strategy in runs}
    latencies: dict[Strategy, list[float]] = {strategy: [] for strategy in runs}
    reranked_runs = [s for s in dict.fromkeys(strategies) if rerank and s in IN_MEMORY]
    reranked: dict[Strategy, list[SearchHits]] = {strategy: [] for strategy in reranked_runs}
    reranked_latencies: dict[Strategy, list[float]] = {s: [] for s in reranked_runs}
    random_expectations = []
    for position, row in enumerate(order):
        stored = service.stored_query(labelled.keys[row])
        filters = SearchFilters(
            exclude_keys=frozenset({stored.key}),
            exclude_patient_key=stored.patient_key if exclude_same_patient else None,
        )
        for strategy in runs:
            if position == 0:
                service.search(stored.embedding, k, strategy, filters)  # warm-up, not timed
            clock = time.perf_counter()
            hits = service.search(stored.embedding, k, strategy, filters)
            latencies[strategy].append((time.perf_counter() - clock) * 1000.0)
            answers[strategy].append(hits)
        for strategy in reranked_runs:
            findings = service.stored_findings(stored)
            clock = time.perf_counter()
            hits = service.search(stored.embedding, k, strategy, filters, findings=findings)
            reranked_latencies[strategy].append((time.perf_counter() - clock) * 1000.0)
            reranked[strategy].append(hits)
        eligible = np.ones(len(labelled.keys), dtype=bool)
        eligible[row] = False
        if exclude_same_patient and patient_codes[row] >= 0:
            eligible &= patient_codes != patient_codes[row]
        random_expectations.append(random_retrieval_expectation(label_matrix, row, eligible))
        if progress:
            progress(position + 1, len(order))
    query_findings = [labelled.findings[row] for row in order]
    # Queries without a patient are their own patient in the bootstrap.
    query_patients = np.array(
        [patient_codes[row] if patient_codes[row] >= 0 else -1 - row for row in order]
    )
    weights = patient_resample_weights(query_patients, BOOTSTRAP_RESAMPLES, seed)
    random_values = np.array(random_expectations)
    reports = [
        _strategy_report(
            strategy.value,
            answers[strategy],
            answers[Strategy.EXACT],
            query_findings,
            latencies[strategy],
            space,
            k,
            ks,
            weights,
            random_values,
        )  # fmt: skip
        for strategy in dict.fromkeys(strategies)
    ]
    reports.extend(
        _strategy_report(
            f"{strategy.value} + findings",
            reranked[strategy],
            answers[Strategy.EXACT],
            query_findings,
            reranked_latencies[strategy],
            space,
            k,
            ks,
            weights,
            random_values,
            own_order=answers[strategy],
        )  # fmt: skip
        for strategy in reranked_runs
    )
    expectation = np.mean(random_values, axis=0)
    reports.append(
        StrategyReport(
            strategy=RANDOM_ROW,
            k=k,
            acg=float(expectation[1]),
            acg_positive=float(expectation[2]),
            precision=float(expectation[0]),
            recall_vs_exact=None,
            fraction_examined=None,
            images_examined=None,
            latency=None,
            returned=None,
            curves={
                value: {
                    "acg": float(expectation[1]),
                    "acg_positive": float(expectation[2]),
                    "precision": float(expectation[0]),
                }
                for value in ks
            },
            intervals={
                metric: _interval(random_values[:, column], weights)
                for metric, column in RANDOM_COLUMNS.items()
            },
        )  # fmt: skip
    )
    return EvaluationReport(
        queries=len(order),
        images=answers[Strategy.EXACT][0].diagnostics.database_size,
        unlabelled_images=labelled.unlabelled,
        labels=space.labels,
        k=k,
        ks=ks,
        exclude_same_patient=exclude_same_patient,
        strategies=reports,
        seconds=time.perf_counter() - started,
        query_keys=[labelled.keys[row] for row in order],
    )


def _strategy_report(
    name: str,
    answers: list[SearchHits],
    exact_answers: list[SearchHits],
    query_findings: list[tuple[str, ...]],
    latencies: list[float],
    space: LabelSpace,
    k: int,
    ks: tuple[int, ...],
    weights: np.ndarray,
    random_values: np.ndarray,
    own_order: list[SearchHits] | None = None,
) -> StrategyReport:
    """``own_order``: for a re-ranked row, the same strategy's answers in its own order (the
    paired difference to them is reported)."""
    pairs = list(zip(query_findings, answers, strict=True))
    against_exact = list(zip(answers, exact_answers, strict=True))
    curves: dict[int, dict[str, float]] = {}
    for value in ks:
        curves[value] = {
            "acg": _mean(acg_at_k(space, q, hits.findings, value) for q, hits in pairs),
            "acg_positive": _mean(acg_positive_at_k(q, hits.findings, value) for q, hits in pairs),
            "precision": _mean(precision_at_k(q, hits.findings, value) for q, hits in pairs),
            "recall_vs_exact": _mean(
                recall_at_k(hits.keys, exact.keys, value) for hits, exact in against_exact
            ),
        }
    top = curves[k]
    per_query = _per_query_metrics(space, query_findings, answers, k)
    minus_random = {}
    for metric, column in RANDOM_COLUMNS.items():
        difference = bootstrap_interval(per_query[metric] - random_values[:, column], weights)
        minus_random[metric] = [difference.value, difference.low, difference.high]
    minus_strategy = {}
    if own_order is not None:
        own = _per_query_metrics(space, query_findings, own_order, k)
        for metric in RANDOM_COLUMNS:
            difference = bootstrap_interval(per_query[metric] - own[metric], weights)
            minus_strategy[metric] = [difference.value, difference.low, difference.high]
    return StrategyReport(
        strategy=name,
        k=k,
        acg=top["acg"],
        acg_positive=top["acg_positive"],
        precision=top["precision"],
        recall_vs_exact=top["recall_vs_exact"],
        fraction_examined=float(np.mean([h.diagnostics.fraction_examined for h in answers])),
        images_examined=float(np.mean([h.diagnostics.images_examined for h in answers])),
        latency=LatencySummary.of(latencies),
        returned=float(np.mean([len(h.keys) for h in answers])),
        curves=curves,
        intervals={metric: _interval(values, weights) for metric, values in per_query.items()},
        minus_random=minus_random,
        minus_strategy=minus_strategy,
    )


def _per_query_metrics(
    space: LabelSpace, query_findings: list[tuple[str, ...]], answers: list[SearchHits], k: int
) -> dict[str, np.ndarray]:
    pairs = list(zip(query_findings, answers, strict=True))
    return {
        "precision": np.array([precision_at_k(q, hits.findings, k) for q, hits in pairs]),
        "acg": np.array([acg_at_k(space, q, hits.findings, k) for q, hits in pairs]),
        "acg_positive": np.array([acg_positive_at_k(q, hits.findings, k) for q, hits in pairs]),
    }


def _interval(values: np.ndarray, weights: np.ndarray) -> list[float]:
    interval = bootstrap_interval(values, weights)
    return [interval.low, interval.high]


def _mean(values: Iterable[float]) -> float:
    return float(np.mean(list(values)))


def _codes(values: list[str | None]) -> np.ndarray:
    index: dict[str, int] = {}
    return np.array(
        [-1 if value is None else index.setdefault(value, len(index)) for value in values],
        dtype=np.int64,
    )


def plot_curves(report: EvaluationReport, path: str) -> None:
    """precision@K and ACG / ACG_p against K, one line per strategy, into a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    for row in report.strategies:
        ks = sorted(row.curves)
        style = ":" if row.strategy == RANDOM_ROW else "-"
        left.plot(ks, [row.curves[k]["precision"] for k in ks], style, marker="o", ms=3,
                  label=row.strategy)  # fmt: skip
        line = right.plot(ks, [row.curves[k]["acg"] for k in ks], style, marker="o", ms=3,
                          label=f"{row.strategy} ACG")[0]  # fmt: skip
        right.plot(ks, [row.curves[k]["acg_positive"] for k in ks], "--", color=line.get_color(),
                   marker="s", ms=3, label=f"{row.strategy} ACG_p")  # fmt: skip
    left.set(xlabel="K", ylabel="precision@K", title="Precision (exact label match)")
    right.set(xlabel="K", ylabel="average cumulative gain", title="ACG and ACG_p")
    left.grid(alpha=0.3)
    right.grid(alpha=0.3)
    left.legend(fontsize=8)
    right.legend(fontsize=7, ncol=2)
    figure.suptitle(
        f"Leave-one-out retrieval, {report.queries} queries over {report.images} images"
        + (", own patient excluded" if report.exclude_same_patient else "")
    )
    figure.savefig(path, dpi=120)
    plt.close(figure)

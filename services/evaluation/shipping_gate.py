"""When a checkpoint may become the shipped default encoder, judged on held-out retrieval.

A better validation AUROC does not say that uploads will be answered better: the bundled sets
differ in processing and label mix, so a network can raise it by telling them apart (issue 28).
The checks are therefore made on figures a collection cannot inflate, each a paired 95%
interval from ``medgraph evaluate --held-out`` (patient bootstrap):

- every external query set (full-size films of new patients, read as uploads, against the whole
  archive): ACG_p@K above random and above raw pixels;
- every source set with several collections: P@K above random *within the query's collection*;
- with a compared checkpoint (the one it would replace): no view's P@K or ACG_p@K wholly below it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from services.evaluation.heldout import (
    HELD_OUT,
    POOLED,
    QUERY_SET,
    RANDOM_ROW,
    SAME_COLLECTION_ROW,
    ViewReport,
)
from services.evaluation.heldout_run import RAW_PIXELS_ROW, HeldOutResult
from services.evaluation.intervals import Interval

GUARDED_METRICS = ("precision", "acg_positive")
_TITLES = {"precision": "P@K", "acg_positive": "ACG_p@K"}


@dataclass(frozen=True)
class GateCheck:
    check: str
    passed: bool
    # The paired difference (checkpoint minus the other row) the check was made on.
    difference: Interval
    view_kind: str  # heldout.HELD_OUT or heldout.QUERY_SET: which kind of view judged it

    def line(self) -> str:
        verdict = "holds" if self.passed else "FAILS"
        figure = self.difference.shown(percent=False, signed=True)
        return f"{verdict}: {self.check}: {figure}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "check": self.check,
            "passed": self.passed,
            "difference": {
                "value": self.difference.value,
                "low": self.difference.low,
                "high": self.difference.high,
            },
        }


def _gain(view: ViewReport, row_name: str, metric: str) -> Interval | None:
    """The checkpoint minus ``row_name`` on ``metric`` in ``view``; None without that row."""
    rows = [row for row in view.rows if row.name == row_name]
    if not rows or rows[0].difference is None:
        return None
    return rows[0].difference[metric].negated()


def shipping_checks(result: HeldOutResult) -> list[GateCheck]:
    """Every check of the module docstring that applies to ``result``."""
    checks: list[GateCheck] = []

    def above(view: ViewReport, row_name: str, metric: str, what: str) -> None:
        gain = _gain(view, row_name, metric)
        if gain is not None:
            checks.append(GateCheck(f"{view.view}: {_TITLES[metric]} above {what}",
                                    gain.low > 0, gain, view.kind))  # fmt: skip

    for view in result.report.views:
        if view.kind == QUERY_SET:
            above(view, RANDOM_ROW, "acg_positive", "random")
            above(view, RAW_PIXELS_ROW, "acg_positive", "raw pixels")
        elif view.kind == HELD_OUT and view.view != POOLED:
            above(view, SAME_COLLECTION_ROW, "precision", "random within the query's collection")
    if result.compared is not None:
        compared_row = f"{result.compared} (exact)"
        for view in result.report.views:
            for metric in GUARDED_METRICS:
                gain = _gain(view, compared_row, metric)
                if gain is not None:
                    checks.append(GateCheck(
                        f"{view.view}: {_TITLES[metric]} not wholly below {result.compared}",
                        gain.high >= 0, gain, view.kind,
                    ))  # fmt: skip
    return checks


def judged_on_uploads(checks: list[GateCheck]) -> bool:
    """Whether an external query set (films read as uploads are) took part in the checks."""
    return any(check.view_kind == QUERY_SET for check in checks)


def shipping_judgement(result: HeldOutResult, checks: list[GateCheck]) -> dict[str, Any]:
    """What the shipped checkpoint's record keeps of its evaluation."""
    evaluated = result.as_dict()
    return {
        "held_out": {
            "command": "medgraph evaluate --held-out --ship",
            "k": result.report.k,
            "resamples": result.report.resamples,
            "compared_with": result.compared,
            "auroc": evaluated["auroc"],
            "auroc_by_query_set": evaluated["auroc_by_query_set"],
            "views": {
                view.view: {
                    row.name: {metric: row.metrics[metric].value for metric in GUARDED_METRICS}
                    for row in view.rows
                }
                for view in result.report.views
            },
            "comparison": result.comparison() if result.compared is not None else None,
        },
        "gate": [check.as_dict() for check in checks],
    }

"""Which rows a search may return, answered for the rows it looks at
(``GraphSnapshot.eligibility``), against the filters' definition checked row by row."""

from __future__ import annotations

import numpy as np
import pytest

from services.retrieval.contract import NO_FINDING, SearchFilters
from services.retrieval.readmodel import GraphSnapshot
from tests.retrieval.graphs import bare_snapshot

N = 60


def filtered_snapshot() -> GraphSnapshot:
    rng = np.random.default_rng(7)
    findings = [tuple(f for f in ("Effusion", "Mass") if rng.random() < 0.4) for _ in range(N)]
    snapshot = bare_snapshot(
        np.zeros((N, 1024), dtype=np.float32),
        patient_codes=(np.arange(N) % 7).astype(np.int32),
        patient_code_of={f"p{code}": code for code in range(7)},
        modality_codes=(np.arange(N) % 2).astype(np.int32),
        modality_code_of={"CR": 0, "DX": 1},
        findings=findings,
    )
    snapshot.alive[[3, 17, 40]] = False  # tombstones
    return snapshot


def expected(snapshot: GraphSnapshot, filters: SearchFilters) -> np.ndarray:
    patient = snapshot.patient_code_of.get(filters.exclude_patient_key or "", -99)
    modality = snapshot.modality_code_of.get(filters.modality or "", -99)
    keep = []
    for row in range(N):
        findings = snapshot.findings[row]
        if filters.finding is None:
            finding_ok = True
        elif filters.finding == NO_FINDING:
            finding_ok = not findings
        else:
            finding_ok = filters.finding in findings
        keep.append(
            bool(snapshot.alive[row])
            and str(snapshot.keys[row]) not in filters.exclude_keys
            and int(snapshot.patient_codes[row]) != patient
            and (filters.modality is None or int(snapshot.modality_codes[row]) == modality)
            and finding_ok
        )
    return np.array(keep)


@pytest.mark.parametrize(
    "filters",
    [
        SearchFilters(),
        SearchFilters(exclude_keys=frozenset({"k5", "k6", "k59", "not-stored"})),
        SearchFilters(exclude_keys=frozenset({"k10"}), exclude_patient_key="p3"),
        SearchFilters(exclude_patient_key="unknown-patient"),
        SearchFilters(modality="DX", finding="Mass", exclude_keys=frozenset({"k1"})),
        SearchFilters(finding=NO_FINDING, exclude_patient_key="p0"),
    ],
    ids=["none", "keys", "key-and-patient", "unknown-patient", "modality-finding", "no-finding"],
)
def test_eligibility_of_any_rows_or_range_matches_the_filters(filters: SearchFilters) -> None:
    snapshot = filtered_snapshot()
    truth = expected(snapshot, filters)
    eligibility = snapshot.eligibility(filters)
    assert np.array_equal(snapshot.eligible(filters), truth)
    rows = np.random.default_rng(1).permutation(N)[:40]
    assert np.array_equal(eligibility[rows], truth[rows])
    for start, stop in [(0, N), (5, 11), (58, 60), (20, 20)]:
        assert np.array_equal(eligibility[start:stop], truth[start:stop])
    # Answers are copies: a caller writing into one changes no other answer.
    eligibility[0:N][:] = False
    eligibility[rows][:] = False
    assert np.array_equal(eligibility[0:N], truth)

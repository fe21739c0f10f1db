"""Step 2, the patient-disjoint train/validation split: whole patients go to validation."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from services.encoder.labels import LabelTable
from services.encoder.training.config import TrainingError

# Candidate patient splits tried; the one keeping most findings on both sides wins (seeded).
SPLIT_CANDIDATES = 64


@dataclass(frozen=True)
class PatientSplit:
    train: np.ndarray  # record indices
    val: np.ndarray
    train_patients: int
    val_patients: int


def patient_disjoint_split(
    table: LabelTable, val_fraction: float, seed: int, candidates: int = SPLIT_CANDIDATES
) -> PatientSplit:
    """Hold out whole patients for validation, about ``val_fraction`` of the images.

    Among ``candidates`` seeded random patient orders, keep the split where most findings have
    both classes in validation and a positive in training, so more findings get an AUROC.
    """
    patient_of = np.array([record.patient_id for record in table.records])
    patients = np.unique(patient_of)
    if len(patients) < 2:
        raise TrainingError(
            f"a patient-disjoint split needs 2 or more patients, got {len(patients)}"
        )
    images_per_patient = {patient: int((patient_of == patient).sum()) for patient in patients}
    targets = table.targets()
    wanted = val_fraction * len(table.records)
    rng = np.random.default_rng(seed)
    best_score: tuple[int, float] | None = None
    best_val: set[str] = set()
    for _ in range(max(1, candidates)):
        val_patients: set[str] = set()
        count = 0
        for patient in patients[rng.permutation(len(patients))]:
            if count >= wanted or len(val_patients) == len(patients) - 1:
                break
            val_patients.add(str(patient))
            count += images_per_patient[patient]
        is_val = np.isin(patient_of, list(val_patients))
        score = (_findings_on_both_sides(targets, is_val), -abs(count - wanted))
        if best_score is None or score > best_score:
            best_score, best_val = score, val_patients
    is_val = np.isin(patient_of, list(best_val))
    return PatientSplit(
        train=np.flatnonzero(~is_val),
        val=np.flatnonzero(is_val),
        train_patients=len(patients) - len(best_val),
        val_patients=len(best_val),
    )


def _findings_on_both_sides(targets: np.ndarray, is_val: np.ndarray) -> int:
    val, train = targets[is_val], targets[~is_val]
    has_val_positive = np.nansum(val == 1, axis=0) > 0
    has_val_negative = np.nansum(val == 0, axis=0) > 0
    has_train_positive = np.nansum(train == 1, axis=0) > 0
    return int((has_val_positive & has_val_negative & has_train_positive).sum())

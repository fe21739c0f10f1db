"""A label metric on the codes: a linear map, fit once after training on the training images.

Cosine retrieval weighs every direction of the 1024-d code alike, yet only a few of them tell
findings apart; the rest (exposure, patient size, the source set's look) decide most of each
pair's cosine. The map stretches the code along the directions that predict the training
images' label sets (No Finding included), in closed form:

- ``B`` (1024, L): ridge regression from the centred unit codes to the centred label vectors;
- ``M = I + s² B Bᵀ``, so ``<x M^½, y M^½> = <x, y> + s² <x B, y B>``: the original inner
  product plus that of the predicted label vectors, and the code stays full rank and 1024-d;
- ``s²`` is set so the label part makes ``share`` of the mapped codes' squared length on the
  training images (``share`` → 1 ranks by the predicted labels alone).

Contract: ``CodeMetric.apply`` takes float32 (n, 1024) unit codes and returns float32
(n, 1024) unit codes; ``M^½`` is stored, symmetric, so applying it is one matrix product.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from torch.nn import functional

# Ridge strength, relative to the training codes' mean variance per dimension times their count
# (dimensionless, so it does not depend on the code's scale or the training set's size).
DEFAULT_RIDGE = 0.1


class CodeMetricError(ValueError):
    """Training codes and labels from which no label metric can be fit."""


@dataclass(frozen=True)
class CodeMetric:
    mean: torch.Tensor  # (d,) float32: the training codes' mean, subtracted first
    root: torch.Tensor  # (d, d) float32, symmetric: M^½
    share: float
    ridge: float

    def apply(self, unit_codes: torch.Tensor) -> torch.Tensor:
        """(n, d) unit codes -> (n, d) unit codes in the label metric (same device)."""
        mean = self.mean.to(unit_codes.device)
        root = self.root.to(unit_codes.device)
        return functional.normalize((unit_codes.float() - mean) @ root, dim=1)

    def to(self, device: torch.device) -> CodeMetric:
        """The same metric with its tensors on ``device`` (once, not per batch)."""
        return replace(self, mean=self.mean.to(device), root=self.root.to(device))

    def to_payload(self) -> dict[str, Any]:
        return {"mean": self.mean, "root": self.root, "share": self.share, "ridge": self.ridge}

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> CodeMetric:
        mean, root = payload["mean"], payload["root"]
        if mean.ndim != 1 or tuple(root.shape) != (len(mean), len(mean)):
            raise CodeMetricError(
                f"a label metric needs a (d,) mean and a (d, d) matrix, got "
                f"{tuple(mean.shape)} and {tuple(root.shape)}"
            )
        return cls(mean.float(), root.float(), float(payload["share"]), float(payload["ridge"]))


def fit_code_metric(
    unit_codes: np.ndarray, label_sets: np.ndarray, share: float, ridge: float = DEFAULT_RIDGE
) -> CodeMetric:
    """Fit on the training images: ``unit_codes`` float (n, d), ``label_sets`` bool (n, L)."""
    if not 0 < share < 1:
        raise CodeMetricError(f"share must be in (0, 1), got {share!r}")
    codes = np.asarray(unit_codes, dtype=np.float64)
    labels = np.asarray(label_sets, dtype=np.float64)
    if codes.ndim != 2 or labels.ndim != 2 or len(codes) != len(labels):
        raise CodeMetricError(
            f"need (n, d) codes and (n, L) label sets, got {codes.shape} and {labels.shape}"
        )
    if len(codes) < 2 or not labels.std(axis=0).any():
        raise CodeMetricError("the training images' label sets do not vary: nothing to fit")
    mean = codes.mean(axis=0)
    centred = codes - mean
    dims = codes.shape[1]
    strength = ridge * len(codes) * max(float(centred.var(axis=0).mean()), 1e-12)
    regression = np.linalg.solve(
        centred.T @ centred + strength * np.eye(dims), centred.T @ (labels - labels.mean(axis=0))
    )
    code_part = float((centred**2).sum(axis=1).mean())
    label_part = float(((centred @ regression) ** 2).sum(axis=1).mean())
    if label_part <= 0:
        raise CodeMetricError("the codes predict none of the label sets: nothing to fit")
    scale = share / (1 - share) * code_part / label_part
    values, vectors = np.linalg.eigh(regression @ regression.T)
    root = (vectors * np.sqrt(1 + scale * np.clip(values, 0, None))) @ vectors.T
    return CodeMetric(
        torch.from_numpy(mean.astype(np.float32)),
        torch.from_numpy(((root + root.T) / 2).astype(np.float32)),
        share,
        ridge,
    )

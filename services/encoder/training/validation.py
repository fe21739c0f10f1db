"""Step 6, each epoch's validation: the validation loss and the per-finding AUROC, pooled and
within each source set."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torch import nn
from torch.utils.data import DataLoader

from services.encoder.preprocessing import Normalisation, to_network_input
from services.encoder.training.losses import WeightedBCELoss, unchanged


@dataclass(frozen=True)
class AurocReport:
    per_finding: dict[str, float | None]  # None where validation has a single class
    skipped: dict[str, str]  # finding -> why it has no AUROC
    mean: float | None  # over the findings that have one

    def table(self) -> str:
        width = max(len(finding) for finding in self.per_finding)
        lines = [f"{'finding':<{width}}  AUROC"]
        for finding, value in self.per_finding.items():
            shown = f"{value:.3f}" if value is not None else f"--  ({self.skipped[finding]})"
            lines.append(f"{finding:<{width}}  {shown}")
        mean = f"{self.mean:.3f}" if self.mean is not None else "n/a"
        counted = sum(value is not None for value in self.per_finding.values())
        lines.append(f"{'mean':<{width}}  {mean}  (over {counted} of {len(self.per_finding)})")
        return "\n".join(lines)


def validation_auroc(
    findings: tuple[str, ...], targets: np.ndarray, probabilities: np.ndarray
) -> AurocReport:
    """Per-finding AUROC over known labels; findings with one class in validation are skipped."""
    per_finding: dict[str, float | None] = {}
    skipped: dict[str, str] = {}
    for i, finding in enumerate(findings):
        known = ~np.isnan(targets[:, i])
        labels = targets[known, i]
        positives = int((labels == 1).sum())
        if positives == 0 or positives == len(labels):
            per_finding[finding] = None
            skipped[finding] = (
                "no positives in validation" if positives == 0 else "no negatives in validation"
            )
            continue
        per_finding[finding] = float(roc_auc_score(labels, probabilities[known, i]))
    scored = [value for value in per_finding.values() if value is not None]
    mean = float(np.mean(scored)) if scored else None
    return AurocReport(per_finding, skipped, mean)


def mean_auroc_by_source(
    findings: tuple[str, ...], sources: np.ndarray, targets: np.ndarray, probabilities: np.ndarray
) -> dict[str, float | None]:
    """Mean validation AUROC over the images of each source set (None: nothing scorable)."""
    return {
        str(source): validation_auroc(
            findings, targets[sources == source], probabilities[sources == source]
        ).mean
        for source in np.unique(sources)
    }


def validation_pass(
    model: nn.Module,
    loader: DataLoader,
    loss_function: WeightedBCELoss,
    normalisation: Normalisation,
    device: torch.device,
    mixed_precision: bool,
    targets_of: Callable[[torch.Tensor], torch.Tensor] = unchanged,
) -> tuple[float, np.ndarray, np.ndarray]:
    model.eval()
    total_loss = 0.0
    targets_seen: list[np.ndarray] = []
    probabilities: list[np.ndarray] = []
    with torch.inference_mode():
        for images, targets in loader:
            inputs = to_network_input(images.to(device), normalisation)
            targets = targets_of(targets.to(device))
            with torch.autocast(device.type, dtype=torch.float16, enabled=mixed_precision):
                logits = model(inputs).float()
            total_loss += float(loss_function(logits, targets)) * len(images)
            targets_seen.append(targets.cpu().numpy())
            probabilities.append(torch.sigmoid(logits).cpu().numpy())
    count = sum(len(batch) for batch in targets_seen)
    return total_loss / max(count, 1), np.concatenate(targets_seen), np.concatenate(probabilities)

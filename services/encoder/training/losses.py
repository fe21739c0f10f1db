"""Step 3, the losses: the paper's weighted BCE per finding, the optional No Finding output and
the optional label-set contrastive loss on the codes."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from torch.nn import functional

# SupCon's temperature (Khosla et al. 2020) for the label-set contrastive loss.
CONTRAST_TEMPERATURE = 0.1


def finding_loss_weights(targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The paper's class-balance weights per finding, from known (non-NaN) training labels.

    Positives weigh N_negative / N and negatives N_positive / N, so the rarer class counts more
    and both classes contribute equally in total. A finding without known labels weighs nothing.
    """
    known = ~np.isnan(targets)
    total = known.sum(axis=0).astype(np.float64)
    positives = np.where(known, targets == 1, False).sum(axis=0).astype(np.float64)
    negatives = total - positives
    with np.errstate(invalid="ignore", divide="ignore"):
        positive_weight = np.where(total > 0, negatives / total, 0.0)
        negative_weight = np.where(total > 0, positives / total, 0.0)
    return positive_weight.astype(np.float32), negative_weight.astype(np.float32)


def with_no_finding(targets: torch.Tensor) -> torch.Tensor:
    """(n, F) finding targets -> (n, F + 1): No Finding is 1 when every finding is a known
    negative, 0 when any is positive, and unknown (NaN) when the rest are only uncertain."""
    any_positive = (targets == 1).any(dim=1, keepdim=True)
    all_negative = (targets == 0).all(dim=1, keepdim=True)
    unknown = torch.full_like(targets[:, :1], math.nan)
    no_finding = torch.where(
        any_positive,
        torch.zeros_like(unknown),
        torch.where(all_negative, torch.ones_like(unknown), unknown),
    )
    return torch.cat([targets, no_finding], dim=1)


def label_set_matrix(targets: torch.Tensor) -> torch.Tensor:
    """(n, F) finding targets -> bool (n, F + 1) label sets, No Finding last: uncertain (NaN)
    counts as positive, as retrieval relevance counts it."""
    positive = targets != 0  # NaN != 0
    return torch.cat([positive, ~positive.any(dim=1, keepdim=True)], dim=1)


def label_set_contrast(
    codes: torch.Tensor, targets: torch.Tensor, temperature: float = CONTRAST_TEMPERATURE
) -> torch.Tensor:
    """Supervised contrastive loss over a batch, with label sets for classes.

    ``codes`` (n, d) are the pooled features, ``targets`` (n, F) the finding targets (NaN =
    uncertain, counted positive as retrieval relevance counts it). Each image's batch-mates are
    its positives in proportion to the Jaccard overlap of their label sets, No Finding included:
    -sum_j J_ij log softmax_j(cos_ij / temperature) / sum_j J_ij, averaged over the images that
    share a label with any batch-mate.
    """
    label_sets = label_set_matrix(targets).float()
    common = label_sets @ label_sets.T
    sizes = label_sets.sum(dim=1)
    jaccard = common / (sizes[:, None] + sizes[None, :] - common).clamp(min=1)
    itself = torch.eye(len(codes), dtype=torch.bool, device=codes.device)
    jaccard = jaccard.masked_fill(itself, 0.0)
    unit = functional.normalize(codes.float(), dim=1)
    similarity = (unit @ unit.T / temperature).masked_fill(itself, -math.inf)
    log_probability = functional.log_softmax(similarity, dim=1).masked_fill(itself, 0.0)
    overlap = jaccard.sum(dim=1)
    anchors = overlap > 0
    if not anchors.any():
        return codes.sum() * 0.0
    per_anchor = -(jaccard * log_probability).sum(dim=1)[anchors] / overlap[anchors]
    return per_anchor.mean()


class WeightedBCELoss(nn.Module):
    """-[w+ y log p + w- (1 - y) log(1 - p)], averaged over known labels; NaN targets ignored."""

    def __init__(self, positive_weight: np.ndarray, negative_weight: np.ndarray) -> None:
        super().__init__()
        self.register_buffer(
            "positive_weight", torch.as_tensor(positive_weight, dtype=torch.float32)
        )
        self.register_buffer(
            "negative_weight", torch.as_tensor(negative_weight, dtype=torch.float32)
        )

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        known = ~torch.isnan(targets)
        labels = torch.where(known, targets, torch.zeros_like(targets))
        # logsigmoid keeps log p and log(1 - p) finite for large logits.
        per_label = -(
            self.positive_weight * labels * functional.logsigmoid(logits)
            + self.negative_weight * (1.0 - labels) * functional.logsigmoid(-logits)
        )
        per_label = torch.where(known, per_label, torch.zeros_like(per_label))
        return per_label.sum() / known.sum().clamp(min=1)


def unchanged(targets: torch.Tensor) -> torch.Tensor:
    return targets

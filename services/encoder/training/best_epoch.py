"""Step 7, the weights kept: the lowest-validation-loss epoch, optionally of an exponential
moving average of the weights, cut to the findings' outputs."""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from services.encoder.training.validation import AurocReport


class BestEpoch:
    """The lowest-validation-loss epoch so far, with a CPU copy of its weights."""

    def __init__(self) -> None:
        self.epoch = 0
        self.val_loss = math.inf
        self.report = AurocReport({}, {}, None)
        self.state_dict: dict[str, torch.Tensor] = {}
        self.image_size = 0
        self.by_source: dict[str, float | None] = {}

    def consider(
        self,
        epoch: int,
        val_loss: float,
        report: AurocReport,
        model: nn.Module,
        image_size: int,
        by_source: dict[str, float | None],
    ) -> None:
        if val_loss < self.val_loss or not self.state_dict:
            self.epoch, self.val_loss, self.report = epoch, val_loss, report
            self.image_size, self.by_source = image_size, by_source
            self.state_dict = {
                key: value.detach().to("cpu", copy=True)
                for key, value in model.state_dict().items()
            }


class WeightAverage:
    """An exponential moving average of a network's weights and batch-norm statistics.

    Why: at the paper's rate of 1e-3 the validation AUROC of this small set swings by +-0.02
    from one epoch to the next (services/encoder/README.md); an average over the last ~1/(1 -
    decay) steps sits nearer the middle of that noise than any one step. Integer buffers (batch
    counters) are copied, not averaged.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.model = copy.deepcopy(model)
        self.model.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        averaged = list(self.model.parameters())
        current = [p.detach() for p in model.parameters()]
        torch._foreach_lerp_(averaged, current, 1.0 - self.decay)
        for mine, theirs in zip(self.model.buffers(), model.buffers(), strict=True):
            if mine.is_floating_point():
                mine.lerp_(theirs, 1.0 - self.decay)
            else:
                mine.copy_(theirs)


# The per-output tensors of the finding classifier, behind a batch-norm neck or not.
_CLASSIFIER_OUTPUT_KEYS = frozenset(
    f"classifier.{head}{name}" for head in ("", "head.") for name in ("weight", "bias")
)


def finding_outputs_only(
    state_dict: dict[str, torch.Tensor], finding_count: int
) -> dict[str, torch.Tensor]:
    """The kept weights with the classifier cut to the findings (drops a No Finding output)."""
    return {
        key: value[:finding_count] if key in _CLASSIFIER_OUTPUT_KEYS else value
        for key, value in state_dict.items()
    }

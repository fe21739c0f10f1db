"""Step 5, the schedules: the learning rate (plateau or warm-up + cosine), the input size of each
epoch (progressive resizing) and the time limit."""

from __future__ import annotations

import math
import time

import numpy as np

from services.encoder.training.config import TrainConfig

# Cosine decay ends at this fraction of the peak rate rather than at zero.
COSINE_FLOOR = 0.01
# The plateau rule's cut, also applied when progressive resizing switches to the final size.
PLATEAU_FACTOR = 0.1


class CosineSchedule:
    """Linear warm-up, then cosine decay to ``COSINE_FLOOR`` of the rate, per optimiser step.

    Planned over the epochs that fit: after each epoch, when ``time_limit_s`` would cut the run
    short, the decay is re-planned to end with the last epoch that fits, so a busy machine still
    ends on a low rate instead of stopping half-way down the curve.
    """

    def __init__(self, config: TrainConfig, steps_per_epoch: int) -> None:
        self.peak = config.learning_rate
        self.steps_per_epoch = max(1, steps_per_epoch)
        self.warmup_steps = round(config.warmup_epochs * self.steps_per_epoch)
        self.planned_epochs = config.epochs
        self.max_epochs = config.epochs
        self.time_limit_s = config.time_limit_s
        self.done = 0

    def rate(self) -> float:
        if self.done < self.warmup_steps:
            return self.peak * (0.01 + 0.99 * self.done / self.warmup_steps)
        total = max(self.planned_epochs * self.steps_per_epoch - self.warmup_steps, 1)
        position = min((self.done - self.warmup_steps) / total, 1.0)
        return self.peak * (
            COSINE_FLOOR + (1 - COSINE_FLOOR) * 0.5 * (1 + math.cos(math.pi * position))
        )

    def step(self) -> None:
        self.done += 1

    def replan(self, epochs_done: int, epoch_seconds: list[float], elapsed: float) -> None:
        if not self.time_limit_s or not epoch_seconds:
            return
        per_epoch = float(np.mean(epoch_seconds[-3:]))
        fit = epochs_done + int(max(self.time_limit_s - elapsed, 0.0) // max(per_epoch, 1e-6))
        self.planned_epochs = max(epochs_done, min(self.max_epochs, fit))


class InputSizes:
    """The input size of each epoch: ``image_size``, then ``final_image_size`` for the last
    ``final_epochs`` (progressive resizing).

    An epoch's cost grows with its pixel count, so the switch is planned in time as well as in
    epochs: when one more small epoch would leave no room for the final ones under
    ``time_limit_s``, the switch comes now. (S'/S)^2 overestimates the cost of the larger epochs
    (a 128-px training step took 2.9x a 64-px one on the 2-core CPU, not 4x), so they fit.
    """

    def __init__(self, config: TrainConfig) -> None:
        self.base = config.image_size
        self.current = config.image_size
        self.final = config.final_image_size if config.final_epochs else None
        self.final_epochs = config.final_epochs
        self.max_epochs = config.epochs
        self.time_limit_s = config.time_limit_s
        self.switched_at: int | None = None
        self._epoch_sizes: list[int] = []

    def cost(self, image_size: int) -> float:
        return (image_size / self.base) ** 2

    def _base_epoch_seconds(self, epoch_seconds: list[float]) -> float:
        recent = list(zip(epoch_seconds, self._epoch_sizes, strict=False))[-3:]
        return float(np.mean([seconds / self.cost(size) for seconds, size in recent]))

    def switch_now(self, epoch: int, epoch_seconds: list[float], elapsed: float) -> bool:
        if self.final is None or self.switched_at is not None:
            return False
        due = epoch > self.max_epochs - self.final_epochs
        if not due and self.time_limit_s and epoch_seconds:
            per_epoch = self._base_epoch_seconds(epoch_seconds)
            needed = per_epoch * (1 + self.final_epochs * self.cost(self.final))
            due = elapsed + needed > self.time_limit_s
        if due:
            self.current, self.switched_at = self.final, epoch
        return due

    def record(self) -> None:
        self._epoch_sizes.append(self.current)

    def next_epoch_cost_ratio(self) -> float:
        """How much longer the next epoch may take than the last (1 unless a switch is near)."""
        if self.final is None or self.switched_at is not None:
            return 1.0
        return self.cost(self.final) / self.cost(self.current)

    def seconds_left(
        self,
        planned_epochs: int,
        next_epoch: int,
        epoch_seconds: list[float],
        current_estimate: float | None,
    ) -> float:
        """Expected seconds until training ends, from the epochs timed so far."""
        if epoch_seconds:
            per_base_epoch = self._base_epoch_seconds(epoch_seconds)
        else:
            per_base_epoch = (current_estimate or 0.0) / self.cost(self.current)
        total = 0.0
        for epoch in range(next_epoch, planned_epochs + 1):
            size = self.current
            if self.final is not None and epoch > planned_epochs - self.final_epochs:
                size = self.final
            total += per_base_epoch * self.cost(size)
        return total


def time_limit_reached(
    config: TrainConfig,
    started: float,
    epoch_started: float,
    epoch: int,
    next_epoch_cost_ratio: float = 1.0,
) -> str | None:
    """Why training stops now, if one more epoch as long as the last would pass the limit.

    ``next_epoch_cost_ratio``: the next epoch's expected length over the last one's, when it may
    differ (progressive resizing).
    """
    if not config.time_limit_s or epoch == config.epochs:
        return None
    now = time.monotonic()
    if now + (now - epoch_started) * next_epoch_cost_ratio <= started + config.time_limit_s:
        return None
    return (
        f"stopping after epoch {epoch} of {config.epochs}: another epoch would pass the time "
        f"limit of {config.time_limit_s:.0f}s (train_time_limit_s)"
    )

"""The demo checkpoint: the configured one, else one trained once on the bundled sets."""

from __future__ import annotations

import fcntl
import json
import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from services.encoder.checkpoint import CheckpointError, load_checkpoint
from services.encoder.default_checkpoint import default_checkpoint_path
from services.encoder.shipping import record_path, shipped_checkpoint
from services.encoder.training.config import TrainConfig
from services.encoder.training.loop import TrainResult, train_encoder

if TYPE_CHECKING:
    from services.config import Settings

logger = logging.getLogger(__name__)


def ensure_demo_checkpoint(
    settings: Settings,
    echo: Callable[[str], None] | None = None,
    train: Callable[..., TrainResult] = train_encoder,
) -> Path:
    """The configured checkpoint; trains one on the bundled sets first if none exists.

    An explicitly configured ``encoder_checkpoint`` must exist (nothing is trained over it).
    Concurrent callers wait on a lock file, so only one of them trains. ``echo`` receives the
    training's progress lines (epoch, loss, AUROC so far, time left); default: the log.
    ``train``: ``train_encoder`` or a function with its signature (the main job passes
    ``training.process.train_in_own_process``).
    """
    path = default_checkpoint_path(settings)
    if settings.encoder_checkpoint is not None:
        load_checkpoint(path)  # raises CheckpointError naming the path when unusable
        return path
    say = echo or logger.info
    if path == shipped_checkpoint():
        record = json.loads(record_path(path).read_text())
        say(f"encoder: the shipped checkpoint {path.name} (sha256 {record['sha256'][:12]}… "
            "verified; no training needed)")  # fmt: skip
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with (path.parent / f".{path.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if path.is_file():
            try:
                load_checkpoint(path)
                return path
            except CheckpointError as exc:
                logger.warning("replacing an unusable demo checkpoint: %s", exc)
        logger.info("no encoder checkpoint at %s; training one on %s", path, settings.data_dir)
        result = train(TrainConfig.from_settings(settings, output=path), progress=False, echo=say)
        say(f"demo checkpoint ready, validation mean AUROC {_format(result.report.mean)}")
        return result.checkpoint_path


def _format(value: float | None) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.3f}"

"""The encoder checkpoint file: weights plus everything needed to use and judge them.

A checkpoint is a ``torch.save``d dict of plain Python values and tensors only, so it loads with
``weights_only=True`` (no pickled code runs on load). It records the findings list, the input
resolution, the normalisation, the training settings and the validation metrics.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from services.encoder.network import ARCHITECTURE
from services.encoder.preprocessing import Normalisation

CHECKPOINT_FORMAT = "medgraph-encoder/1"
_REQUIRED_KEYS = ("format", "architecture", "state_dict", "findings", "image_size", "normalisation")


class CheckpointError(ValueError):
    """A checkpoint file that is missing, unreadable or not an encoder checkpoint."""

    def __init__(self, path: Path | str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")


@dataclass(frozen=True)
class EncoderCheckpoint:
    findings: tuple[str, ...]
    image_size: int
    normalisation: Normalisation
    state_dict: dict[str, torch.Tensor]
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    architecture: str = ARCHITECTURE

    def to_payload(self) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "architecture": self.architecture,
            "findings": list(self.findings),
            "image_size": self.image_size,
            "normalisation": {"mean": self.normalisation.mean, "std": self.normalisation.std},
            "input": "grey image replicated to 3 channels, bilinear antialiased square resize",
            "training": self.training,
            "metrics": self.metrics,
            "state_dict": self.state_dict,
        }


def save_checkpoint(path: Path, checkpoint: EncoderCheckpoint) -> Path:
    """Write atomically (temporary file, then rename), so readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    torch.save(checkpoint.to_payload(), partial)
    os.replace(partial, path)
    return path


def load_checkpoint(path: Path) -> EncoderCheckpoint:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(path, "the checkpoint file does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for files that are not checkpoints
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CheckpointError(path, f"not a loadable checkpoint ({first_line})") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(path, f"not a {CHECKPOINT_FORMAT} checkpoint")
    missing = [key for key in _REQUIRED_KEYS if key not in payload]
    if missing:
        raise CheckpointError(path, f"the checkpoint lacks {missing}")
    if payload["architecture"] != ARCHITECTURE:
        raise CheckpointError(path, f"unsupported architecture {payload['architecture']!r}")
    return EncoderCheckpoint(
        findings=tuple(payload["findings"]),
        image_size=int(payload["image_size"]),
        normalisation=Normalisation(
            float(payload["normalisation"]["mean"]), float(payload["normalisation"]["std"])
        ),
        state_dict=payload["state_dict"],
        training=payload.get("training", {}),
        metrics=payload.get("metrics", {}),
        architecture=payload["architecture"],
    )


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()

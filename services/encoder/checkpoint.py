"""The encoder checkpoint file: weights plus everything needed to use and judge them.

A checkpoint is a ``torch.save``d dict of plain Python values and tensors only, so it loads with
``weights_only=True`` (no pickled code runs on load). It records the findings list, the input
resolution, the normalisation, the training settings and the validation metrics.

An *averaged* checkpoint (format ``medgraph-encoder/2``, written by ``averaging.py``) holds
further networks trained on the same split with other seeds (``members``); an image's code is
the re-normalised mean of every network's unit code, its findings the mean of their
probabilities. Code that only knows format 1 refuses it rather than using one network of it.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from services.encoder.code_metric import CodeMetric, CodeMetricError
from services.encoder.network import ARCHITECTURE
from services.encoder.preprocessing import Normalisation

CHECKPOINT_FORMAT = "medgraph-encoder/1"
AVERAGED_FORMAT = "medgraph-encoder/2"
_REQUIRED_KEYS = ("format", "architecture", "state_dict", "findings", "image_size", "normalisation")


class CheckpointError(ValueError):
    """A checkpoint file that is missing, unreadable or not an encoder checkpoint."""

    def __init__(self, path: Path | str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")


@dataclass(frozen=True)
class NetworkWeights:
    """One network of a checkpoint: its weights, how it was trained, and its label metric."""

    state_dict: dict[str, torch.Tensor]
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    code_metric: CodeMetric | None = None

    def to_payload(self) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "training": self.training,
            "metrics": self.metrics,
            "state_dict": self.state_dict,
        }
        if self.code_metric is not None:
            payload["code_metric"] = self.code_metric.to_payload()
        return payload


@dataclass(frozen=True)
class EncoderCheckpoint:
    findings: tuple[str, ...]
    image_size: int
    normalisation: Normalisation
    state_dict: dict[str, torch.Tensor]
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    architecture: str = ARCHITECTURE
    # The label metric the codes pass through after L2 (code_metric.py); None = the plain code.
    code_metric: CodeMetric | None = None
    # Further networks whose unit codes are averaged with the first one's (same input, findings,
    # split and loss weights; ``averaging.py``). Empty: a single network.
    members: tuple[NetworkWeights, ...] = ()

    @property
    def networks(self) -> tuple[NetworkWeights, ...]:
        """Every network of the checkpoint, the first one (this object's own fields) first."""
        first = NetworkWeights(self.state_dict, self.training, self.metrics, self.code_metric)
        return (first, *self.members)

    def calibrated(self, predicted: np.ndarray) -> np.ndarray:
        """Predicted probabilities (n, F) with the weighted BCE's prior shift undone.

        The loss weighs positives N-/N and negatives N+/N, so the trained odds are the true odds
        times N-/N+ (each finding looks as common as its absence); dividing the odds by w+/w-
        gives back probabilities at the training prevalence, which comparing two images'
        findings needs (``services.retrieval.rerank``). Unchanged without recorded weights."""
        weights = self.training.get("loss_weights")
        if not weights:
            return np.asarray(predicted)
        positive = np.asarray(weights["positive"], dtype=np.float64)[: predicted.shape[1]]
        negative = np.asarray(weights["negative"], dtype=np.float64)[: predicted.shape[1]]
        clipped = np.clip(np.asarray(predicted, dtype=np.float64), 1e-6, 1 - 1e-6)
        with np.errstate(divide="ignore"):
            shift = np.where((positive > 0) & (negative > 0), np.log(positive / negative), 0.0)
        logits = np.log(clipped / (1 - clipped)) - shift
        return 1.0 / (1.0 + np.exp(-logits))

    def to_payload(self) -> dict[str, Any]:
        optional: dict[str, Any] = {}
        if self.code_metric is not None:
            optional["code_metric"] = self.code_metric.to_payload()
        if self.members:
            optional["members"] = [member.to_payload() for member in self.members]
        return {
            "format": AVERAGED_FORMAT if self.members else CHECKPOINT_FORMAT,
            "architecture": self.architecture,
            "findings": list(self.findings),
            "image_size": self.image_size,
            "normalisation": {
                "mean": self.normalisation.mean,
                "std": self.normalisation.std,
                "equalise": self.normalisation.equalise,
            },
            "input": "grey image replicated to 3 channels, bilinear antialiased square resize"
            + (", each image histogram-equalised" if self.normalisation.equalise else ""),
            "training": self.training,
            "metrics": self.metrics,
            "state_dict": self.state_dict,
        } | optional


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
    if not isinstance(payload, dict) or payload.get("format") not in (
        CHECKPOINT_FORMAT, AVERAGED_FORMAT,
    ):  # fmt: skip
        raise CheckpointError(path, f"not a {CHECKPOINT_FORMAT} or {AVERAGED_FORMAT} checkpoint")
    missing = [key for key in _REQUIRED_KEYS if key not in payload]
    if missing:
        raise CheckpointError(path, f"the checkpoint lacks {missing}")
    if payload["architecture"] != ARCHITECTURE:
        raise CheckpointError(path, f"unsupported architecture {payload['architecture']!r}")
    code_metric = _code_metric(path, payload.get("code_metric"))
    members = payload.get("members", []) if payload["format"] == AVERAGED_FORMAT else []
    if not isinstance(members, list) or not all(
        isinstance(member, dict) and isinstance(member.get("state_dict"), dict)
        for member in members
    ):
        raise CheckpointError(path, "its further networks (members) are not weights")
    return EncoderCheckpoint(
        findings=tuple(payload["findings"]),
        image_size=int(payload["image_size"]),
        normalisation=Normalisation(
            float(payload["normalisation"]["mean"]),
            float(payload["normalisation"]["std"]),
            # Checkpoints written before equalisation existed feed the resized pixels as they are.
            bool(payload["normalisation"].get("equalise", False)),
        ),
        state_dict=payload["state_dict"],
        training=payload.get("training", {}),
        metrics=payload.get("metrics", {}),
        architecture=payload["architecture"],
        code_metric=code_metric,
        members=tuple(
            NetworkWeights(
                member["state_dict"],
                member.get("training", {}),
                member.get("metrics", {}),
                _code_metric(path, member.get("code_metric")),
            )  # fmt: skip
            for member in members
        ),
    )


def _code_metric(path: Path, payload: Any) -> CodeMetric | None:
    try:
        return CodeMetric.from_payload(payload) if payload is not None else None
    except (CodeMetricError, KeyError, AttributeError, TypeError) as exc:
        raise CheckpointError(path, f"unusable label metric ({exc})") from None


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()

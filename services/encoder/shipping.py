"""The checkpoint shipped in the repository as the platform's default encoder.

The file lives at ``models/densenet121-demo.pt`` (weights in fp16: half the bytes, and the
codes they give differ from the fp32 original's by less than the bootstrap intervals of any
figure we report), with ``models/densenet121-demo.json`` beside it (its sha256, its training
record and the held-out figures that let it ship) and ``models/densenet121-demo.log`` (the
training's own output). It is used only while the checksum matches; otherwise (or when absent)
the demo trains its own on the CPU.

Whether a checkpoint may ship is judged on held-out retrieval by
``services.evaluation.shipping_gate`` (``medgraph evaluate --held-out --ship``): this module
only writes and verifies the files.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from services.config import REPO_ROOT

if TYPE_CHECKING:
    from services.encoder.checkpoint import NetworkWeights

logger = logging.getLogger(__name__)

SHIPPED_CHECKPOINT = REPO_ROOT / "models" / "densenet121-demo.pt"
RECORD_SUFFIX = ".json"
LOG_SUFFIX = ".log"
# Training facts copied into the record, so a reader needs no torch to judge the file.
RECORD_TRAINING_KEYS = (
    "recipe",
    "image_size",
    "epochs",
    "batch_size",
    "learning_rate",
    "weight_decay",
    "schedule",
    "warmup_epochs",
    "augmentation",
    "equalise",
    "label_metric",
    "seed",
    "device",
    "mixed_precision",
    "duration_s",
    "torch",
    "created_at",
)


class ShippingError(ValueError):
    """A checkpoint that may not become the shipped default."""


@dataclass(frozen=True)
class ShipResult:
    path: Path
    record: Path
    sha256: str


def record_path(checkpoint: Path) -> Path:
    return checkpoint.with_suffix(RECORD_SUFFIX)


def log_path(checkpoint: Path) -> Path:
    return checkpoint.with_suffix(LOG_SUFFIX)


# (path, mtime, size, record mtime) -> (sha256 matches, the input size it was made for)
_verified: dict[tuple[str, int, int, int], tuple[bool, int | None]] = {}


def shipped_checkpoint(path: Path | None = None, image_size: int | None = None) -> Path | None:
    """The shipped checkpoint when present and its sha256 matches its record (and, with
    ``image_size``, it was trained for that input size), else None."""
    # defers torch: `medgraph` commands import this module and must start quickly
    from services.encoder.checkpoint import file_sha256

    path = SHIPPED_CHECKPOINT if path is None else path
    if not path.is_file() or not record_path(path).is_file():
        return None
    stat, record_stat = path.stat(), record_path(path).stat()
    stamp = (str(path), stat.st_mtime_ns, stat.st_size, record_stat.st_mtime_ns)
    if stamp not in _verified:  # read and hash once per version of the two files
        try:
            record = json.loads(record_path(path).read_text())
            expected, made_for = record["sha256"], record.get("image_size")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            logger.warning("ignoring %s: unreadable record (%s)", path, exc)
            expected, made_for = None, None
        actual = file_sha256(path)
        _verified[stamp] = (expected == actual, made_for)
        if expected is not None and expected != actual:
            logger.warning(
                "ignoring %s: its sha256 %s differs from the record's %s", path, actual, expected
            )
    verified, made_for = _verified[stamp]
    if not verified or (image_size is not None and made_for != image_size):
        return None
    return path


def write_half_precision(source: Path, target: Path) -> Path:
    """``source`` with its floating-point weights stored as fp16 (everything else as it is).

    Loading it gives fp32 weights again (``load_state_dict`` copies into the model's fp32
    parameters), rounded to fp16's 11 significant bits."""
    # defers torch: `medgraph` commands import this module and must start quickly
    from services.encoder.checkpoint import (
        CheckpointError,
        file_sha256,
        load_checkpoint,
        save_checkpoint,
    )

    try:
        checkpoint = load_checkpoint(source)
    except CheckpointError as exc:
        raise ShippingError(str(exc)) from None

    def halved(state_dict: dict[str, Any]) -> dict[str, Any]:
        return {
            name: tensor.half() if tensor.is_floating_point() else tensor
            for name, tensor in state_dict.items()
        }

    training = checkpoint.training | {
        "stored_weights": "fp16",
        "stored_from_sha256": file_sha256(source),
    }
    changed = replace(
        checkpoint,
        state_dict=halved(checkpoint.state_dict),
        training=training,
        members=tuple(
            replace(member, state_dict=halved(member.state_dict)) for member in checkpoint.members
        ),
    )
    return save_checkpoint(target, changed)


def install_shipped_checkpoint(
    candidate: Path,
    judgement: dict[str, Any],
    training_log: Path | None = None,
    destination: Path = SHIPPED_CHECKPOINT,
) -> ShipResult:
    """Copy ``candidate`` to ``destination`` with its record (the training facts and
    ``judgement``: the held-out figures and the checks it passed) and its training log."""
    # defers torch: `medgraph` commands import this module and must start quickly
    from services.encoder.checkpoint import CheckpointError, file_sha256, load_checkpoint

    try:
        checkpoint = load_checkpoint(candidate)
    except CheckpointError as exc:
        raise ShippingError(str(exc)) from None
    if training_log is not None and not training_log.is_file():
        raise ShippingError(f"{training_log}: the training log does not exist")
    destination.parent.mkdir(parents=True, exist_ok=True)
    partial = destination.with_name(f".{destination.name}.{os.getpid()}.partial")
    shutil.copyfile(candidate, partial)
    os.replace(partial, destination)
    digest = file_sha256(destination)
    log: dict[str, Any] | None = None
    if training_log is not None:
        shutil.copyfile(training_log, log_path(destination))
        log = {"file": log_path(destination).name, "sha256": file_sha256(log_path(destination))}
    split = checkpoint.training.get("split", {})
    record: dict[str, Any] = {
        "sha256": digest,
        "stored_weights": checkpoint.training.get("stored_weights", "fp32"),
        "stored_from_sha256": checkpoint.training.get("stored_from_sha256"),
        "image_size": checkpoint.image_size,
        "equalise": checkpoint.normalisation.equalise,
        "training_log": log,
        "split": {key: value for key, value in split.items() if key != "val_image_sha256"},
        # Every network whose codes are averaged (one for a plain checkpoint), each with its
        # own training facts and validation AUROC; the average's own AUROC is the held-out
        # evaluation's (``held_out.auroc``).
        "networks": [_network_summary(network) for network in checkpoint.networks],
    } | judgement
    if not checkpoint.members:  # one network: its facts at the top, as records always had them
        record |= {
            "training": {key: checkpoint.training.get(key) for key in RECORD_TRAINING_KEYS},
            "val_mean_auroc": checkpoint.metrics.get("val_mean_auroc"),
            "val_mean_auroc_by_source": checkpoint.metrics.get("val_mean_auroc_by_source"),
            "val_auroc": checkpoint.metrics.get("val_auroc"),
            "selected_epoch": checkpoint.metrics.get("selected_epoch"),
        }
    record_path(destination).write_text(json.dumps(record, indent=2) + "\n")
    return ShipResult(destination, record_path(destination), digest)


def _network_summary(network: NetworkWeights) -> dict[str, Any]:
    """What the record keeps of one network: its source file, training facts, validation."""
    return {
        "averaged_from": network.training.get("averaged_from"),
        "training": {key: network.training.get(key) for key in RECORD_TRAINING_KEYS},
        "val_mean_auroc": network.metrics.get("val_mean_auroc"),
        "selected_epoch": network.metrics.get("selected_epoch"),
    }

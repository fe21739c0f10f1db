"""A GPU-trained checkpoint shipped in the repository as the demo's default encoder.

The file lives at ``models/densenet121-demo.pt`` with ``models/densenet121-demo.json`` beside
it: its sha256, its training record and the CPU checkpoint it was compared with. It is used only
while the checksum matches; otherwise (or when absent) the demo trains its own on the CPU.

A checkpoint is shipped only when it beats the CPU-trained one on the same validation patients
(the same validation images, by content hash) on mean validation AUROC, pooled and within every
source set: a network that sees more pixels can raise the pooled figure by telling the bundled
sets apart (they differ in resolution and prevalence) without knowing more findings.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.config import REPO_ROOT

logger = logging.getLogger(__name__)

SHIPPED_CHECKPOINT = REPO_ROOT / "models" / "densenet121-demo.pt"
RECORD_SUFFIX = ".json"
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
    val_mean_auroc: float
    reference_val_mean_auroc: float


def record_path(checkpoint: Path) -> Path:
    return checkpoint.with_suffix(RECORD_SUFFIX)


_verified: dict[tuple[str, int, int], bool] = {}


def shipped_checkpoint(path: Path = SHIPPED_CHECKPOINT) -> Path | None:
    """The shipped checkpoint when present and its sha256 matches its record, else None."""
    # defers torch: `medgraph` commands import this module and must start quickly
    from services.encoder.checkpoint import file_sha256

    if not path.is_file() or not record_path(path).is_file():
        return None
    stat = path.stat()
    stamp = (str(path), stat.st_mtime_ns, stat.st_size)
    if stamp not in _verified:
        try:
            expected = json.loads(record_path(path).read_text())["sha256"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            logger.warning("ignoring %s: unreadable record (%s)", path, exc)
            expected = None
        actual = file_sha256(path)
        _verified[stamp] = expected == actual
        if expected is not None and expected != actual:
            logger.warning(
                "ignoring %s: its sha256 %s differs from the record's %s", path, actual, expected
            )
    return path if _verified[stamp] else None


def ship_checkpoint(
    candidate: Path, reference: Path, destination: Path = SHIPPED_CHECKPOINT
) -> ShipResult:
    """Copy ``candidate`` to ``destination`` with its record, if it beats ``reference``.

    Both must have been validated on the same images (``val_image_sha256``), and the candidate's
    mean validation AUROC must be higher, pooled and within every source set.
    """
    # defers torch: `medgraph` commands import this module and must start quickly
    from services.encoder.checkpoint import CheckpointError, file_sha256, load_checkpoint

    try:
        trained, cpu = load_checkpoint(candidate), load_checkpoint(reference)
    except CheckpointError as exc:
        raise ShippingError(str(exc)) from None
    trained_val = trained.training.get("split", {}).get("val_image_sha256")
    cpu_val = cpu.training.get("split", {}).get("val_image_sha256")
    if not trained_val or trained_val != cpu_val:
        raise ShippingError(
            f"{candidate} and {reference} were not validated on the same images: train both "
            "on the same label files with the same seed and validation fraction"
        )
    mine, theirs = trained.metrics.get("val_mean_auroc"), cpu.metrics.get("val_mean_auroc")
    if mine is None or theirs is None or not mine > theirs:
        raise ShippingError(
            f"{candidate} (mean validation AUROC {mine}) does not beat {reference} ({theirs})"
        )
    mine_by_source = trained.metrics.get("val_mean_auroc_by_source")
    theirs_by_source = cpu.metrics.get("val_mean_auroc_by_source")
    if not mine_by_source or not theirs_by_source:
        raise ShippingError(
            f"{candidate if not mine_by_source else reference} does not record its AUROC within "
            "each source set (trained before it was recorded): retrain it with `medgraph train`"
        )
    for source in sorted(set(mine_by_source) | set(theirs_by_source)):
        own, other = mine_by_source.get(source), theirs_by_source.get(source)
        if other is not None and (own is None or not own > other):
            raise ShippingError(
                f"{candidate} does not beat {reference} within source set {source} (mean "
                f"validation AUROC {own} against {other}): its pooled gain may only be telling "
                "the sets apart"
            )
    destination.parent.mkdir(parents=True, exist_ok=True)
    partial = destination.with_name(f".{destination.name}.{os.getpid()}.partial")
    shutil.copyfile(candidate, partial)
    os.replace(partial, destination)
    digest = file_sha256(destination)
    record: dict[str, Any] = {
        "sha256": digest,
        "image_size": trained.image_size,
        "training": {key: trained.training.get(key) for key in RECORD_TRAINING_KEYS},
        "split": {
            key: value
            for key, value in trained.training.get("split", {}).items()
            if key != "val_image_sha256"
        },
        "val_mean_auroc": mine,
        "val_mean_auroc_by_source": mine_by_source,
        "val_auroc": trained.metrics.get("val_auroc"),
        "selected_epoch": trained.metrics.get("selected_epoch"),
        "compared_with": {
            "sha256": file_sha256(reference),
            "image_size": cpu.image_size,
            "device": cpu.training.get("device"),
            "val_mean_auroc": theirs,
            "val_mean_auroc_by_source": theirs_by_source,
        },
    }
    record_path(destination).write_text(json.dumps(record, indent=2) + "\n")
    return ShipResult(destination, record_path(destination), digest, mine, theirs)

"""Step 9, the training record the checkpoint keeps: every setting, the split (with the
validation images' hashes), the device, the versions."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from services.encoder.checkpoint import file_sha256
from services.encoder.code_metric import DEFAULT_RIDGE
from services.encoder.labels import LabelTable
from services.encoder.network import ARCHITECTURE
from services.encoder.training.config import TrainConfig
from services.encoder.training.losses import CONTRAST_TEMPERATURE
from services.encoder.training.schedules import COSINE_FLOOR
from services.encoder.training.split import PatientSplit


def training_record(
    config: TrainConfig,
    table: LabelTable,
    split: PatientSplit,
    device: torch.device,
    mixed_precision: bool,
    duration: float,
    augmentation: Callable[[torch.Tensor], torch.Tensor] | None,
) -> dict[str, Any]:
    settings = {
        key: (str(value) if isinstance(value, Path) else value)
        for key, value in asdict(config).items()
    }
    settings["labels_csv"] = [str(path) for path in config.label_files]
    return settings | {
        "architecture": ARCHITECTURE,
        "optimizer": f"AdamW(weight_decay={config.weight_decay:g})"
        if config.weight_decay > 0
        else "Adam",
        "lr_schedule": (
            f"ReduceLROnPlateau(val loss, factor=0.1, patience={config.plateau_patience})"
            if config.schedule == "plateau"
            else f"linear warm-up {config.warmup_epochs:g} epochs, cosine decay per step to "
            f"{COSINE_FLOOR:g} x, planned over the epochs that fit the time limit"
        ),
        "loss": "weighted BCE, w+ = N-/N, w- = N+/N per finding; uncertain labels ignored"
        + ("; plus a No Finding output (training only)" if config.no_finding_output else "")
        + (
            f"; plus {config.label_contrast:g} x label-set contrastive loss on the codes "
            f"(temperature {CONTRAST_TEMPERATURE:g})"
            if config.label_contrast
            else ""
        ),
        "augmentation": getattr(augmentation, "description", "none"),
        "code": "L2-normalised pooled features"
        + (" after a batch-norm neck" if config.code_batchnorm else "")
        + (
            f", then a label metric fit on the training images (share {config.label_metric:g}, "
            f"ridge {DEFAULT_RIDGE:g})"
            if config.label_metric
            else ""
        ),
        "weights_kept": (
            f"exponential moving average, decay {config.weight_averaging:g} per step"
            if config.weight_averaging
            else "the network's own weights"
        ),
        "split": {
            "method": "patient-disjoint, seeded",
            "train_images": len(split.train),
            "val_images": len(split.val),
            "train_patients": split.train_patients,
            "val_patients": split.val_patients,
            "sources": {
                source: {
                    "train_images": sum(table.records[i].source == source for i in split.train),
                    "val_images": sum(table.records[i].source == source for i in split.val),
                }
                for source in table.sources()
            },
            # Content hashes (the graph's image keys) of the validation images, so held-out
            # evaluations find the images this model never trained on, without patient ids.
            "val_image_sha256": sorted(file_sha256(table.records[i].image_path) for i in split.val),
        },
        "device": str(device),
        "mixed_precision": mixed_precision,
        "duration_s": round(duration, 1),
        "torch": str(torch.__version__),
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }

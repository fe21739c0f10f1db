"""Step 1, the configuration of a training run: the recipes and every setting of ``TrainConfig``.

``TrainConfig.from_settings`` fills a config from the platform settings and a named recipe;
every value can still be overridden one by one (``medgraph train``'s options).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from services.encoder.default_checkpoint import default_checkpoint_path
from services.encoder.labels import bundled_label_files
from services.encoder.preprocessing import AUGMENTATIONS

if TYPE_CHECKING:
    from services.config import Settings

SCHEDULES = ("plateau", "cosine")

# The recipes `train_recipe` names; every value can still be overridden one by one.
# "paper" is the paper's (and CheXNet's) recipe as this project first ran it, and the ablation's
# plain row on both sets. "retrieval", the default, is "paper" with the code shaped for cosine
# retrieval: a batch-norm neck, a classifier that sees the code's direction only, and a label
# metric fit after training; it beat "paper" within the 128-px set on held-out retrieval.
# "regularised" (weight decay, warm-up + cosine, strong augmentation) measured worse
# (services/encoder/README.md).
_PAPER_RECIPE: dict[str, Any] = {
    "epochs": 15,
    "weight_decay": 0.0,
    "schedule": "plateau",
    "warmup_epochs": 0,
    "augmentation": "light",
    "weight_averaging": 0.0,
    "final_image_size": None,
    "final_epochs": 0,
    "no_finding_output": False,
    "label_contrast": 0.0,
    "unit_code_scale": 0.0,
    "code_batchnorm": False,
    "label_metric": 0.0,
    "equalise": False,
}
RECIPES: dict[str, dict[str, Any]] = {
    "retrieval": _PAPER_RECIPE
    | {
        # The plain model's median code length, so the classifier's inputs keep their scale.
        "unit_code_scale": 12.0,
        "code_batchnorm": True,
        "label_metric": 0.8,
    },
    "paper": _PAPER_RECIPE,
    "regularised": _PAPER_RECIPE
    | {"weight_decay": 1e-4, "schedule": "cosine", "warmup_epochs": 1, "augmentation": "strong"},
}


class TrainingError(ValueError):
    """Training cannot start or run with the given data or settings."""


@dataclass(frozen=True)
class TrainConfig:
    # One label file or several of one format (e.g. both bundled sets), split by patient together.
    labels_csv: Path | tuple[Path, ...]
    output: Path
    images_dir: Path | None = None
    label_format: str = "auto"
    image_size: int = 64
    epochs: int = 15
    batch_size: int = 32
    learning_rate: float = 1e-3
    plateau_patience: int = 2
    val_fraction: float = 0.2
    seed: int = 0
    # The patient split's own seed (None = ``seed``): training the same split with another
    # ``seed`` measures how much two runs of one recipe differ on the same queries.
    split_seed: int | None = None
    initial_weights: Path | None = None
    device: str | None = None
    workers: int = 0
    # Stop before an epoch that would end past this many seconds; None or 0 = no limit.
    time_limit_s: float | None = None
    # Defaults: the paper's recipe (RECIPES["paper"]); from_settings applies train_recipe.
    recipe: str = "paper"
    weight_decay: float = 0.0  # > 0: AdamW (decoupled decay), else Adam
    schedule: str = "plateau"  # plateau (val loss, /10) or cosine (per step, after warm-up)
    warmup_epochs: float = 0.0  # linear warm-up from 1% of the rate (cosine schedule)
    augmentation: str = "light"
    # > 0: validate, select and keep an exponential moving average of the weights (and the
    # batch-norm statistics), updated after every optimiser step with this decay; 0 = the raw
    # weights, as the paper.
    weight_averaging: float = 0.0
    # Progressive resizing: the last ``final_epochs`` epochs run at ``final_image_size`` (larger
    # than image_size); at the switch the plateau schedule's rate is set to a tenth of the peak
    # and its rule starts afresh. With a time limit the switch comes earlier, so they fit.
    final_image_size: int | None = None
    final_epochs: int = 0
    # Train one more output, "No Finding" (every finding a known negative), with the same
    # weighted BCE. The checkpoint keeps the findings' outputs only; the extra one shapes the
    # code, whose retrieval precision rests mostly on telling normal films from abnormal ones.
    no_finding_output: bool = False
    # > 0: add this times a supervised contrastive loss on the codes (label_set_contrast), so
    # images with overlapping label sets (No Finding included) lie close in cosine, the way
    # retrieval compares them; 0 = the weighted BCE alone, as the paper.
    label_contrast: float = 0.0
    # > 0: the classifier sees the L2-normalised code times this (network.UnitCodeLinear), so
    # what it learns lies in the code's direction, the part retrieval's cosine compares; 0 = the
    # plain linear head on the raw code, as the paper. The extractor rebuilds the same head.
    unit_code_scale: float = 0.0
    # A batch-norm neck (shift fixed at zero) between the pooled features and the classifier,
    # whose output is the code (network.CodeNeckHead): the classifier learns on centred codes,
    # the space cosine retrieval compares. False = the paper's code, the pooled features.
    code_batchnorm: bool = False
    # In (0, 1): after training, fit a label metric on the training images' codes (code_metric.py)
    # that gives this share of the code's squared length to the directions predicting their
    # label sets; the checkpoint keeps it and the extractor applies it. 0 = the plain code.
    label_metric: float = 0.0
    # Histogram-equalise every image on its own before the network (preprocessing.Normalisation),
    # in training and in the extractor alike, so that how an archive processed its films (window,
    # gamma, look-up table) is not a cue the code can learn; False = the paper's input.
    equalise: bool = False

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise TrainingError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.augmentation not in AUGMENTATIONS:
            raise TrainingError(
                f"augmentation must be one of {AUGMENTATIONS}, got {self.augmentation!r}"
            )
        if self.weight_decay < 0 or self.warmup_epochs < 0:
            raise TrainingError("weight_decay and warmup_epochs cannot be negative")
        if not 0 <= self.final_epochs < self.epochs:
            raise TrainingError(
                f"final_epochs must be in [0, epochs), got {self.final_epochs} of {self.epochs}"
            )
        if self.final_epochs and (self.final_image_size or 0) <= self.image_size:
            raise TrainingError(
                f"final_image_size must exceed image_size ({self.image_size}) when final_epochs "
                f"is set, got {self.final_image_size}"
            )
        if self.label_contrast < 0 or self.unit_code_scale < 0:
            raise TrainingError(
                "label_contrast and unit_code_scale cannot be negative, got "
                f"{self.label_contrast!r} and {self.unit_code_scale!r}"
            )
        if not 0 <= self.label_metric < 1:
            raise TrainingError(f"label_metric is a share in [0, 1), got {self.label_metric!r}")
        if not 0 <= self.weight_averaging < 1:
            raise TrainingError(
                f"weight_averaging is a decay in [0, 1), got {self.weight_averaging!r}"
            )

    @property
    def label_files(self) -> tuple[Path, ...]:
        if isinstance(self.labels_csv, (list, tuple)):
            return tuple(Path(path) for path in self.labels_csv)
        return (Path(self.labels_csv),)

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> TrainConfig:
        recipe_name = overrides.get("recipe") or settings.train_recipe
        if recipe_name not in RECIPES:
            raise TrainingError(f"unknown recipe {recipe_name!r}; use one of {list(RECIPES)}")
        recipe = RECIPES[recipe_name]
        image_size = overrides.get("image_size")
        if (
            image_size is None
            and resolve_device(overrides.get("device") or settings.encoder_device).type == "cuda"
            and overrides.get("output") is None
        ):
            # A GPU trains at the larger size; the demo's checkpoint (an explicit output) keeps
            # image_size, so CPU and GPU workers sharing a models folder use the same codes.
            image_size = max(settings.image_size, settings.gpu_image_size)
        image_size = image_size or settings.image_size
        values: dict[str, Any] = {
            "labels_csv": tuple(bundled_label_files(settings.data_dir)),
            "output": default_checkpoint_path(settings, image_size),
            "image_size": image_size,
            "epochs": settings.train_epochs or recipe["epochs"],
            "batch_size": settings.train_batch_size,
            "learning_rate": settings.train_learning_rate,
            "weight_decay": recipe["weight_decay"],
            "schedule": recipe["schedule"],
            "warmup_epochs": recipe["warmup_epochs"],
            "augmentation": recipe["augmentation"],
            "weight_averaging": recipe["weight_averaging"],
            "final_image_size": recipe["final_image_size"],
            "final_epochs": recipe["final_epochs"],
            "no_finding_output": recipe["no_finding_output"],
            "label_contrast": recipe["label_contrast"],
            "unit_code_scale": recipe["unit_code_scale"],
            "code_batchnorm": recipe["code_batchnorm"],
            "label_metric": recipe["label_metric"],
            "equalise": recipe["equalise"],
            "recipe": recipe_name,
            "plateau_patience": settings.train_plateau_patience,
            "val_fraction": settings.train_val_fraction,
            "seed": settings.train_seed,
            "initial_weights": settings.initial_weights,
            "device": settings.encoder_device,
            "workers": settings.train_workers,
            "time_limit_s": settings.train_time_limit_s,
        }
        values.update({key: value for key, value in overrides.items() if value is not None})
        return cls(**values)


def resolve_device(name: str | None) -> torch.device:
    if name:
        device = torch.device(name)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise TrainingError(f"device {name!r} requested but CUDA is not available")
        return device
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")

"""Training DenseNet-121 on chest X-ray labels, as the paper does.

Weighted binary cross-entropy (per-finding weights from the positive/negative ratio), Adam at
1e-3, learning rate cut by 10 when the validation loss plateaus, batch 32, a patient-disjoint
train/validation split, per-finding validation AUROC. CUDA with mixed precision when present.
"""

from __future__ import annotations

import copy
import fcntl
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torch import nn
from torch.nn import functional
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from services.encoder.checkpoint import (
    CheckpointError,
    EncoderCheckpoint,
    file_sha256,
    load_checkpoint,
    save_checkpoint,
)
from services.encoder.code_metric import (
    DEFAULT_RIDGE,
    CodeMetric,
    CodeMetricError,
    fit_code_metric,
)
from services.encoder.imaging import read_image
from services.encoder.labels import LabelTable, bundled_label_files, read_label_sets
from services.encoder.network import ARCHITECTURE, build_densenet121, classify, pooled_features
from services.encoder.preprocessing import (
    AUGMENTATIONS,
    Normalisation,
    XrayAugmentation,
    equalise_histograms,
    resize_pixels,
    to_network_input,
)
from services.encoder.shipping import shipped_checkpoint

if TYPE_CHECKING:
    from services.config import Settings

logger = logging.getLogger(__name__)

# Candidate patient splits tried; the one keeping most findings on both sides wins (seeded).
SPLIT_CANDIDATES = 64
# Images read to estimate the normalisation; more adds time, not accuracy.
NORMALISATION_SAMPLE = 2000
# Resized training images are kept in memory when they fit in this (the bundled sets at 64 px
# take 36 MiB): decoding PNGs again every epoch cost a third of a CPU epoch.
IMAGE_CACHE_BYTES = 2 << 30
SCHEDULES = ("plateau", "cosine")
# Cosine decay ends at this fraction of the peak rate rather than at zero.
COSINE_FLOOR = 0.01
# The plateau rule's cut, also applied when progressive resizing switches to the final size.
PLATEAU_FACTOR = 0.1
# SupCon's temperature (Khosla et al. 2020) for the label-set contrastive loss.
CONTRAST_TEMPERATURE = 0.1
# How often (in batches) a run without a progress bar reports within an epoch.
PROGRESS_LINES_PER_EPOCH = 4

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


@dataclass(frozen=True)
class PatientSplit:
    train: np.ndarray  # record indices
    val: np.ndarray
    train_patients: int
    val_patients: int


@dataclass(frozen=True)
class AurocReport:
    per_finding: dict[str, float | None]  # None where validation has a single class
    skipped: dict[str, str]  # finding -> why it has no AUROC
    mean: float | None  # over the findings that have one

    def table(self) -> str:
        width = max(len(finding) for finding in self.per_finding)
        lines = [f"{'finding':<{width}}  AUROC"]
        for finding, value in self.per_finding.items():
            shown = f"{value:.3f}" if value is not None else f"--  ({self.skipped[finding]})"
            lines.append(f"{finding:<{width}}  {shown}")
        mean = f"{self.mean:.3f}" if self.mean is not None else "n/a"
        counted = sum(value is not None for value in self.per_finding.values())
        lines.append(f"{'mean':<{width}}  {mean}  (over {counted} of {len(self.per_finding)})")
        return "\n".join(lines)


@dataclass(frozen=True)
class TrainResult:
    checkpoint_path: Path
    report: AurocReport
    duration_s: float
    history: list[dict[str, float | None]]


# --- split, loss weights, metrics ------------------------------------------------------------


def patient_disjoint_split(
    table: LabelTable, val_fraction: float, seed: int, candidates: int = SPLIT_CANDIDATES
) -> PatientSplit:
    """Hold out whole patients for validation, about ``val_fraction`` of the images.

    Among ``candidates`` seeded random patient orders, keep the split where most findings have
    both classes in validation and a positive in training, so more findings get an AUROC.
    """
    patient_of = np.array([record.patient_id for record in table.records])
    patients = np.unique(patient_of)
    if len(patients) < 2:
        raise TrainingError(
            f"a patient-disjoint split needs 2 or more patients, got {len(patients)}"
        )
    images_per_patient = {patient: int((patient_of == patient).sum()) for patient in patients}
    targets = table.targets()
    wanted = val_fraction * len(table.records)
    rng = np.random.default_rng(seed)
    best_score: tuple[int, float] | None = None
    best_val: set[str] = set()
    for _ in range(max(1, candidates)):
        val_patients: set[str] = set()
        count = 0
        for patient in patients[rng.permutation(len(patients))]:
            if count >= wanted or len(val_patients) == len(patients) - 1:
                break
            val_patients.add(str(patient))
            count += images_per_patient[patient]
        is_val = np.isin(patient_of, list(val_patients))
        score = (_findings_on_both_sides(targets, is_val), -abs(count - wanted))
        if best_score is None or score > best_score:
            best_score, best_val = score, val_patients
    is_val = np.isin(patient_of, list(best_val))
    return PatientSplit(
        train=np.flatnonzero(~is_val),
        val=np.flatnonzero(is_val),
        train_patients=len(patients) - len(best_val),
        val_patients=len(best_val),
    )


def _findings_on_both_sides(targets: np.ndarray, is_val: np.ndarray) -> int:
    val, train = targets[is_val], targets[~is_val]
    has_val_positive = np.nansum(val == 1, axis=0) > 0
    has_val_negative = np.nansum(val == 0, axis=0) > 0
    has_train_positive = np.nansum(train == 1, axis=0) > 0
    return int((has_val_positive & has_val_negative & has_train_positive).sum())


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


def validation_auroc(
    findings: tuple[str, ...], targets: np.ndarray, probabilities: np.ndarray
) -> AurocReport:
    """Per-finding AUROC over known labels; findings with one class in validation are skipped."""
    per_finding: dict[str, float | None] = {}
    skipped: dict[str, str] = {}
    for i, finding in enumerate(findings):
        known = ~np.isnan(targets[:, i])
        labels = targets[known, i]
        positives = int((labels == 1).sum())
        if positives == 0 or positives == len(labels):
            per_finding[finding] = None
            skipped[finding] = (
                "no positives in validation" if positives == 0 else "no negatives in validation"
            )
            continue
        per_finding[finding] = float(roc_auc_score(labels, probabilities[known, i]))
    scored = [value for value in per_finding.values() if value is not None]
    mean = float(np.mean(scored)) if scored else None
    return AurocReport(per_finding, skipped, mean)


# --- data ------------------------------------------------------------------------------------


class LabelledImages(Dataset):
    """(1, S, S) images in [0, 1] and their targets, read lazily so any dataset size fits."""

    def __init__(
        self,
        table: LabelTable,
        image_size: int,
        augment: Callable[[torch.Tensor], torch.Tensor] | None = None,
        cache: bool = False,
    ) -> None:
        self.table = table
        self.image_size = image_size
        self.augment = augment
        self._cache: list[torch.Tensor | None] | None = (
            [None] * len(table.records)
            if cache and len(table.records) * image_size**2 * 4 <= IMAGE_CACHE_BYTES
            else None
        )

    def __len__(self) -> int:
        return len(self.table.records)

    def unaugmented(self) -> LabelledImages:
        """The same images (and in-memory copies) without augmentation."""
        view = copy.copy(self)
        view.augment = None
        return view

    def resized(self, index: int) -> torch.Tensor:
        """The (1, S, S) image before augmentation (kept in memory after the first read)."""
        if self._cache is not None and self._cache[index] is not None:
            return self._cache[index]  # type: ignore[return-value]
        record = self.table.records[index]
        image = resize_pixels(read_image(record.image_path).pixels, self.image_size)
        if self._cache is not None:
            self._cache[index] = image
        return image

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        record = self.table.records[index]
        image = self.resized(index)
        if self.augment is not None:
            image = self.augment(image)
        return image, torch.from_numpy(record.targets)


def compute_normalisation(
    table: LabelTable, image_size: int, seed: int, equalise: bool = False
) -> Normalisation:
    """Mean and standard deviation of the (resized, maybe equalised) training images, from a
    seeded sample."""
    count = min(len(table.records), NORMALISATION_SAMPLE)
    chosen = np.random.default_rng(seed).choice(len(table.records), size=count, replace=False)
    images = LabelledImages(table.subset(chosen), image_size)
    stacked = torch.stack([images[i][0] for i in range(len(images))])
    if equalise:
        stacked = equalise_histograms(stacked)
    return Normalisation(
        mean=float(stacked.mean()), std=max(float(stacked.std()), 1e-3), equalise=equalise
    )


def resolve_device(name: str | None) -> torch.device:
    if name:
        device = torch.device(name)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise TrainingError(f"device {name!r} requested but CUDA is not available")
        return device
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


# --- training --------------------------------------------------------------------------------


def train_encoder(
    config: TrainConfig, *, progress: bool = True, echo: Callable[[str], None] = print
) -> TrainResult:
    """Train, validate each epoch, save the epoch with the lowest validation loss.

    Keeping the lowest-validation-loss epoch is CheXNet's model selection; the reported AUROC is
    that epoch's, so the validation split both selects and scores it (slightly optimistic).
    ``progress`` shows a bar per epoch; without it, a line goes to ``echo`` a few times per epoch
    (batches done, loss, time left), so a first demo run is never silent for minutes.
    """
    started = time.monotonic()
    torch.manual_seed(config.seed)
    device = resolve_device(config.device)
    mixed_precision = device.type == "cuda"

    table = read_label_sets(config.label_files, config.images_dir, config.label_format)
    split = patient_disjoint_split(table, config.val_fraction, config.seed)
    train_table, val_table = table.subset(split.train), table.subset(split.val)
    echo(
        f"{len(table.records)} images: {len(split.train)} train ({split.train_patients} patients), "
        f"{len(split.val)} validation ({split.val_patients} patients); device {device}"
        + (", mixed precision" if mixed_precision else "")
        + f"; {config.image_size} px, recipe {config.recipe}, up to {config.epochs} epochs"
        + (f", time limit {config.time_limit_s:.0f}s" if config.time_limit_s else "")
    )
    cache = device.type == "cpu" or config.workers == 0
    augmentation = XrayAugmentation(config.augmentation)
    normalisation = compute_normalisation(
        train_table, config.image_size, config.seed, config.equalise
    )
    finding_count = len(table.findings)
    targets_of = with_no_finding if config.no_finding_output else _unchanged
    positive_weight, negative_weight = finding_loss_weights(
        targets_of(torch.from_numpy(train_table.targets())).numpy()
    )

    outputs = finding_count + 1 if config.no_finding_output else finding_count
    model = build_densenet121(
        outputs, config.initial_weights, config.unit_code_scale, config.code_batchnorm
    ).to(device)
    loss_function = WeightedBCELoss(positive_weight, negative_weight).to(device)
    if config.weight_decay > 0:
        optimizer: torch.optim.Optimizer = torch.optim.AdamW(
            model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
        )
    else:
        optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)

    def new_plateau() -> torch.optim.lr_scheduler.ReduceLROnPlateau:
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="min", factor=PLATEAU_FACTOR, patience=config.plateau_patience
        )

    plateau = new_plateau()
    scaler = torch.amp.GradScaler(device.type, enabled=mixed_precision)
    averaged = _WeightAverage(model, config.weight_averaging) if config.weight_averaging else None
    # The network that is validated, selected and kept: the running average when there is one.
    kept_model = averaged.model if averaged is not None else model
    shuffling = torch.Generator().manual_seed(config.seed)

    def loaders_at(image_size: int) -> tuple[DataLoader, DataLoader]:
        train_images = LabelledImages(train_table, image_size, augmentation, cache=cache)
        val_images = LabelledImages(val_table, image_size, cache=cache)
        train_loader = DataLoader(
            train_images,
            batch_size=config.batch_size,
            shuffle=True,
            # BatchNorm cannot train on a last batch of one image; a partial batch is dropped.
            drop_last=len(train_table.records) > config.batch_size,
            num_workers=config.workers,
            generator=shuffling,
            pin_memory=mixed_precision,
        )
        val_loader = DataLoader(
            val_images, batch_size=config.batch_size, num_workers=config.workers
        )
        return train_loader, val_loader

    # The validation loader keeps the table's order, so row i is val_table.records[i].
    val_sources = np.array([record.source for record in val_table.records])
    sizes = _InputSizes(config)
    train_loader, val_loader = loaders_at(sizes.current)
    schedule = _CosineSchedule(config, len(train_loader))

    history: list[dict[str, float | None]] = []
    best = _BestEpoch()
    stopped_early: str | None = None
    epoch_seconds: list[float] = []
    for epoch in range(1, config.epochs + 1):
        if sizes.switch_now(epoch, epoch_seconds, time.monotonic() - started):
            train_loader, val_loader = loaders_at(sizes.current)
            if config.schedule == "plateau":
                # A tenth of the peak, even when the rule had cut deeper: the network has to
                # adapt to the larger input, and the rule starts afresh at this size.
                for group in optimizer.param_groups:
                    group["lr"] = config.learning_rate * PLATEAU_FACTOR
                plateau = new_plateau()
            echo(
                f"epoch {epoch}: {sizes.current} px from here on (the last "
                f"{config.epochs - epoch + 1} epochs at most), rate "
                f"{optimizer.param_groups[0]['lr']:.0e}"
            )
        epoch_started = time.monotonic()
        model.train()
        train_loss = 0.0
        seen = 0
        batches = tqdm(
            train_loader,
            desc=f"epoch {epoch}/{config.epochs}",
            unit="batch",
            disable=not progress,
            leave=False,
        )
        report_every = max(1, math.ceil(len(train_loader) / PROGRESS_LINES_PER_EPOCH))
        for batch, (images, targets) in enumerate(batches, start=1):
            if config.schedule == "cosine":
                for group in optimizer.param_groups:
                    group["lr"] = schedule.rate()
            inputs = to_network_input(images.to(device, non_blocking=True), normalisation)
            targets = targets_of(targets.to(device, non_blocking=True))
            with torch.autocast(device.type, dtype=torch.float16, enabled=mixed_precision):
                codes = pooled_features(model, inputs)
                loss = loss_function(classify(model, codes), targets)
                if config.label_contrast:
                    loss = loss + config.label_contrast * label_set_contrast(codes, targets)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            schedule.step()
            if averaged is not None:
                averaged.update(model)
            train_loss += loss.item() * len(images)
            seen += len(images)
            batches.set_postfix(loss=f"{loss.item():.4f}")
            if not progress and batch % report_every == 0 and batch < len(train_loader):
                per_batch = (time.monotonic() - epoch_started) / batch
                left = (
                    sizes.seconds_left(
                        schedule.planned_epochs, epoch, epoch_seconds, per_batch * len(train_loader)
                    )
                    - per_batch * batch
                )
                echo(
                    f"  epoch {epoch}/{schedule.planned_epochs}: batch {batch}/"
                    f"{len(train_loader)}, train loss {train_loss / max(seen, 1):.4f}, "
                    f"about {_duration(left)} left"
                )
        val_loss, val_targets, val_probabilities = _evaluate(
            kept_model,
            val_loader,
            loss_function,
            normalisation,
            device,
            mixed_precision,
            targets_of,
        )
        if config.schedule == "plateau":
            plateau.step(val_loss)
        report = validation_auroc(
            table.findings, val_targets[:, :finding_count], val_probabilities[:, :finding_count]
        )
        by_source = _mean_auroc_by_source(
            table.findings, val_sources, val_targets[:, :finding_count],
            val_probabilities[:, :finding_count],
        )  # fmt: skip
        best.consider(epoch, val_loss, report, kept_model, sizes.current, by_source)
        epoch_seconds.append(time.monotonic() - epoch_started)
        sizes.record()
        schedule.replan(epoch, epoch_seconds, time.monotonic() - started)
        history.append(
            {
                "epoch": epoch,
                "train_loss": train_loss / max(seen, 1),
                "val_loss": val_loss,
                "val_mean_auroc": report.mean,
                "learning_rate": optimizer.param_groups[0]["lr"],
                "image_size": sizes.current,
                "seconds": round(epoch_seconds[-1], 1),
            }
        )
        mean = f"{report.mean:.3f}" if report.mean is not None else "n/a"
        best_mean = f"{best.report.mean:.3f}" if best.report.mean is not None else "n/a"
        left = sizes.seconds_left(schedule.planned_epochs, epoch + 1, epoch_seconds, None)
        echo(
            f"epoch {epoch}/{schedule.planned_epochs}: train loss {train_loss / max(seen, 1):.4f}, "
            f"val loss {val_loss:.4f}, val mean AUROC {mean} (kept epoch {best.epoch}: "
            f"{best_mean}), lr {optimizer.param_groups[0]['lr']:.0e}, "
            f"{time.monotonic() - started:.0f}s"
            + (f", about {_duration(left)} left" if epoch < schedule.planned_epochs else "")
        )
        stopped_early = _time_limit_reached(
            config, started, epoch_started, epoch, sizes.next_epoch_cost_ratio()
        )
        if stopped_early:
            echo(stopped_early)
            break

    report = best.report
    echo(f"keeping epoch {best.epoch} (lowest validation loss {best.val_loss:.4f})")
    code_metric = None
    if config.label_metric:
        metric_started = time.monotonic()
        train_images = train_loader.dataset
        assert isinstance(train_images, LabelledImages)
        code_metric = _fit_label_metric(
            config,
            outputs,
            best,
            train_images.unaugmented()
            if train_images.image_size == best.image_size
            else LabelledImages(train_table, best.image_size),
            normalisation,
            device,
            mixed_precision,
        )
        echo(
            f"label metric fit on the {len(train_table.records)} training images' codes "
            f"(share {config.label_metric:g}), {time.monotonic() - metric_started:.0f}s"
        )
    duration = time.monotonic() - started
    checkpoint = EncoderCheckpoint(
        findings=table.findings,
        image_size=best.image_size,
        normalisation=normalisation,
        state_dict=_finding_outputs_only(best.state_dict, finding_count),
        training=_training_record(
            config, table, split, device, mixed_precision, duration, augmentation
        )
        | {
            "loss_weights": {
                "positive": positive_weight.tolist(),
                "negative": negative_weight.tolist(),
            }
        },
        metrics={
            "val_auroc": report.per_finding,
            "val_auroc_skipped": report.skipped,
            "val_mean_auroc": report.mean,
            # Within each source set: the pooled figure also rewards telling the sets apart.
            "val_mean_auroc_by_source": best.by_source,
            "val_loss": best.val_loss,
            "selected_epoch": best.epoch,
            "epochs_run": len(history),
            "final_image_size_from_epoch": sizes.switched_at,
            "stopped_early": stopped_early,
            "history": history,
        },
        code_metric=code_metric,
    )
    path = save_checkpoint(config.output, checkpoint)
    return TrainResult(path, report, duration, history)


def _fit_label_metric(
    config: TrainConfig,
    outputs: int,
    best: _BestEpoch,
    images: LabelledImages,
    normalisation: Normalisation,
    device: torch.device,
    mixed_precision: bool,
) -> CodeMetric:
    """The label metric of the kept weights, fit on the training images' unit codes (no
    augmentation), the way the extractor will compute them."""
    model = build_densenet121(outputs, None, config.unit_code_scale, config.code_batchnorm)
    model.load_state_dict(best.state_dict)
    model = model.to(device).eval()
    codes: list[np.ndarray] = []
    targets: list[torch.Tensor] = []
    with torch.inference_mode():
        for batch, batch_targets in DataLoader(images, batch_size=config.batch_size * 2):
            inputs = to_network_input(batch.to(device), normalisation)
            with torch.autocast(device.type, dtype=torch.float16, enabled=mixed_precision):
                features = pooled_features(model, inputs)
            codes.append(functional.normalize(features.float(), dim=1).cpu().numpy())
            targets.append(batch_targets)
    try:
        return fit_code_metric(
            np.concatenate(codes),
            label_set_matrix(torch.cat(targets)).numpy(),
            config.label_metric,
        )
    except CodeMetricError as exc:
        raise TrainingError(f"cannot fit the label metric: {exc}") from None


class _WeightAverage:
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


class _CosineSchedule:
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


class _InputSizes:
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


def _duration(seconds: float) -> str:
    seconds = max(seconds, 0.0)
    return f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s"


def _time_limit_reached(
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


class _BestEpoch:
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


def _mean_auroc_by_source(
    findings: tuple[str, ...], sources: np.ndarray, targets: np.ndarray, probabilities: np.ndarray
) -> dict[str, float | None]:
    """Mean validation AUROC over the images of each source set (None: nothing scorable)."""
    return {
        str(source): validation_auroc(
            findings, targets[sources == source], probabilities[sources == source]
        ).mean
        for source in np.unique(sources)
    }


def _unchanged(targets: torch.Tensor) -> torch.Tensor:
    return targets


# The per-output tensors of the finding classifier, behind a batch-norm neck or not.
_CLASSIFIER_OUTPUT_KEYS = frozenset(
    f"classifier.{head}{name}" for head in ("", "head.") for name in ("weight", "bias")
)


def _finding_outputs_only(
    state_dict: dict[str, torch.Tensor], finding_count: int
) -> dict[str, torch.Tensor]:
    """The kept weights with the classifier cut to the findings (drops a No Finding output)."""
    return {
        key: value[:finding_count] if key in _CLASSIFIER_OUTPUT_KEYS else value
        for key, value in state_dict.items()
    }


def _evaluate(
    model: nn.Module,
    loader: DataLoader,
    loss_function: WeightedBCELoss,
    normalisation: Normalisation,
    device: torch.device,
    mixed_precision: bool,
    targets_of: Callable[[torch.Tensor], torch.Tensor] = _unchanged,
) -> tuple[float, np.ndarray, np.ndarray]:
    model.eval()
    total_loss = 0.0
    targets_seen: list[np.ndarray] = []
    probabilities: list[np.ndarray] = []
    with torch.inference_mode():
        for images, targets in loader:
            inputs = to_network_input(images.to(device), normalisation)
            targets = targets_of(targets.to(device))
            with torch.autocast(device.type, dtype=torch.float16, enabled=mixed_precision):
                logits = model(inputs).float()
            total_loss += float(loss_function(logits, targets)) * len(images)
            targets_seen.append(targets.cpu().numpy())
            probabilities.append(torch.sigmoid(logits).cpu().numpy())
    count = sum(len(batch) for batch in targets_seen)
    return total_loss / max(count, 1), np.concatenate(targets_seen), np.concatenate(probabilities)


def _training_record(
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


# --- the demo checkpoint ---------------------------------------------------------------------


def default_checkpoint_path(settings: Settings, image_size: int | None = None) -> Path:
    """The checkpoint the platform uses.

    ``encoder_checkpoint`` if set; else the shipped GPU-trained ``models/densenet121-demo.pt``
    when present with a matching checksum; else ``<models_dir>/densenet121-<size>px.pt``. With
    an explicit ``image_size``, always the last (where `medgraph train` writes).
    """
    if settings.encoder_checkpoint is not None:
        return settings.encoder_checkpoint
    if image_size is None:
        shipped = shipped_checkpoint()
        if shipped is not None:
            return shipped
    return settings.models_dir / f"{ARCHITECTURE}-{image_size or settings.image_size}px.pt"


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
    ``training_process.train_in_own_process``).
    """
    path = default_checkpoint_path(settings)
    if settings.encoder_checkpoint is not None:
        load_checkpoint(path)  # raises CheckpointError naming the path when unusable
        return path
    if path == shipped_checkpoint():
        return path
    say = echo or logger.info
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

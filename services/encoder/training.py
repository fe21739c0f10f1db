"""Training DenseNet-121 on chest X-ray labels, as the paper does.

Weighted binary cross-entropy (per-finding weights from the positive/negative ratio), Adam at
1e-3, learning rate cut by 10 when the validation loss plateaus, batch 32, a patient-disjoint
train/validation split, per-finding validation AUROC. CUDA with mixed precision when present.
"""

from __future__ import annotations

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
    load_checkpoint,
    save_checkpoint,
)
from services.encoder.imaging import read_image
from services.encoder.labels import LabelTable, read_labels
from services.encoder.network import ARCHITECTURE, build_densenet121
from services.encoder.preprocessing import (
    Normalisation,
    XrayAugmentation,
    resize_pixels,
    to_network_input,
)

if TYPE_CHECKING:
    from services.config import Settings

logger = logging.getLogger(__name__)

# Candidate patient splits tried; the one keeping most findings on both sides wins (seeded).
SPLIT_CANDIDATES = 64
# Images read to estimate the normalisation; more adds time, not accuracy.
NORMALISATION_SAMPLE = 2000


class TrainingError(ValueError):
    """Training cannot start or run with the given data or settings."""


@dataclass(frozen=True)
class TrainConfig:
    labels_csv: Path
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

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> TrainConfig:
        values: dict[str, Any] = {
            "labels_csv": settings.data_dir / "labels.csv",
            "output": default_checkpoint_path(settings, overrides.get("image_size")),
            "image_size": settings.image_size,
            "epochs": settings.train_epochs,
            "batch_size": settings.train_batch_size,
            "learning_rate": settings.train_learning_rate,
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
    ) -> None:
        self.table = table
        self.image_size = image_size
        self.augment = augment

    def __len__(self) -> int:
        return len(self.table.records)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        record = self.table.records[index]
        image = resize_pixels(read_image(record.image_path).pixels, self.image_size)
        if self.augment is not None:
            image = self.augment(image)
        return image, torch.from_numpy(record.targets)


def compute_normalisation(table: LabelTable, image_size: int, seed: int) -> Normalisation:
    """Mean and standard deviation of the (resized) training images, from a seeded sample."""
    count = min(len(table.records), NORMALISATION_SAMPLE)
    chosen = np.random.default_rng(seed).choice(len(table.records), size=count, replace=False)
    images = LabelledImages(table.subset(chosen), image_size)
    stacked = torch.stack([images[i][0] for i in range(len(images))])
    return Normalisation(mean=float(stacked.mean()), std=max(float(stacked.std()), 1e-3))


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
    """
    started = time.monotonic()
    torch.manual_seed(config.seed)
    device = resolve_device(config.device)
    mixed_precision = device.type == "cuda"

    table = read_labels(config.labels_csv, config.images_dir, config.label_format)
    split = patient_disjoint_split(table, config.val_fraction, config.seed)
    train_table, val_table = table.subset(split.train), table.subset(split.val)
    echo(
        f"{len(table.records)} images: {len(split.train)} train ({split.train_patients} patients), "
        f"{len(split.val)} validation ({split.val_patients} patients); device {device}"
        + (", mixed precision" if mixed_precision else "")
    )
    normalisation = compute_normalisation(train_table, config.image_size, config.seed)
    positive_weight, negative_weight = finding_loss_weights(train_table.targets())

    model = build_densenet121(len(table.findings), config.initial_weights).to(device)
    loss_function = WeightedBCELoss(positive_weight, negative_weight).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="min", factor=0.1, patience=config.plateau_patience
    )
    scaler = torch.amp.GradScaler(device.type, enabled=mixed_precision)
    augmentation = XrayAugmentation()
    train_loader = DataLoader(
        LabelledImages(train_table, config.image_size, augmentation),
        batch_size=config.batch_size,
        shuffle=True,
        # BatchNorm cannot train on a last batch of one image; a partial batch is dropped.
        drop_last=len(train_table.records) > config.batch_size,
        num_workers=config.workers,
        generator=torch.Generator().manual_seed(config.seed),
        pin_memory=mixed_precision,
    )
    val_loader = DataLoader(
        LabelledImages(val_table, config.image_size),
        batch_size=config.batch_size,
        num_workers=config.workers,
    )

    history: list[dict[str, float | None]] = []
    best = _BestEpoch()
    stopped_early: str | None = None
    for epoch in range(1, config.epochs + 1):
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
        for images, targets in batches:
            inputs = to_network_input(images.to(device, non_blocking=True), normalisation)
            targets = targets.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=torch.float16, enabled=mixed_precision):
                loss = loss_function(model(inputs), targets)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            train_loss += loss.item() * len(images)
            seen += len(images)
            batches.set_postfix(loss=f"{loss.item():.4f}")
        val_loss, val_targets, val_probabilities = _evaluate(
            model, val_loader, loss_function, normalisation, device, mixed_precision
        )
        scheduler.step(val_loss)
        report = validation_auroc(table.findings, val_targets, val_probabilities)
        best.consider(epoch, val_loss, report, model)
        history.append(
            {
                "epoch": epoch,
                "train_loss": train_loss / max(seen, 1),
                "val_loss": val_loss,
                "val_mean_auroc": report.mean,
                "learning_rate": optimizer.param_groups[0]["lr"],
            }
        )
        mean = f"{report.mean:.3f}" if report.mean is not None else "n/a"
        echo(
            f"epoch {epoch}/{config.epochs}: train loss {train_loss / max(seen, 1):.4f}, "
            f"val loss {val_loss:.4f}, val mean AUROC {mean}, "
            f"lr {optimizer.param_groups[0]['lr']:.0e}, {time.monotonic() - started:.0f}s"
        )
        stopped_early = _time_limit_reached(config, started, epoch_started, epoch)
        if stopped_early:
            echo(stopped_early)
            break

    duration = time.monotonic() - started
    report = best.report
    echo(f"keeping epoch {best.epoch} (lowest validation loss {best.val_loss:.4f})")
    checkpoint = EncoderCheckpoint(
        findings=table.findings,
        image_size=config.image_size,
        normalisation=normalisation,
        state_dict=best.state_dict,
        training=_training_record(config, split, device, mixed_precision, duration, augmentation)
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
            "val_loss": best.val_loss,
            "selected_epoch": best.epoch,
            "epochs_run": len(history),
            "stopped_early": stopped_early,
            "history": history,
        },
    )
    path = save_checkpoint(config.output, checkpoint)
    return TrainResult(path, report, duration, history)


def _time_limit_reached(
    config: TrainConfig, started: float, epoch_started: float, epoch: int
) -> str | None:
    """Why training stops now, if one more epoch as long as the last would pass the limit."""
    if not config.time_limit_s or epoch == config.epochs:
        return None
    now = time.monotonic()
    if now + (now - epoch_started) <= started + config.time_limit_s:
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

    def consider(self, epoch: int, val_loss: float, report: AurocReport, model: nn.Module) -> None:
        if val_loss < self.val_loss or not self.state_dict:
            self.epoch, self.val_loss, self.report = epoch, val_loss, report
            self.state_dict = {
                key: value.detach().to("cpu", copy=True)
                for key, value in model.state_dict().items()
            }


def _evaluate(
    model: nn.Module,
    loader: DataLoader,
    loss_function: WeightedBCELoss,
    normalisation: Normalisation,
    device: torch.device,
    mixed_precision: bool,
) -> tuple[float, np.ndarray, np.ndarray]:
    model.eval()
    total_loss = 0.0
    targets_seen: list[np.ndarray] = []
    probabilities: list[np.ndarray] = []
    with torch.inference_mode():
        for images, targets in loader:
            inputs = to_network_input(images.to(device), normalisation)
            targets = targets.to(device)
            with torch.autocast(device.type, dtype=torch.float16, enabled=mixed_precision):
                logits = model(inputs).float()
            total_loss += float(loss_function(logits, targets)) * len(images)
            targets_seen.append(targets.cpu().numpy())
            probabilities.append(torch.sigmoid(logits).cpu().numpy())
    count = sum(len(batch) for batch in targets_seen)
    return total_loss / max(count, 1), np.concatenate(targets_seen), np.concatenate(probabilities)


def _training_record(
    config: TrainConfig,
    split: PatientSplit,
    device: torch.device,
    mixed_precision: bool,
    duration: float,
    augmentation: XrayAugmentation,
) -> dict[str, Any]:
    settings = {
        key: (str(value) if isinstance(value, Path) else value)
        for key, value in asdict(config).items()
    }
    return settings | {
        "architecture": ARCHITECTURE,
        "optimizer": "Adam",
        "lr_schedule": (
            f"ReduceLROnPlateau(val loss, factor=0.1, patience={config.plateau_patience})"
        ),
        "loss": "weighted BCE, w+ = N-/N, w- = N+/N per finding; uncertain labels ignored",
        "augmentation": augmentation.description,
        "split": {
            "method": "patient-disjoint, seeded",
            "train_images": len(split.train),
            "val_images": len(split.val),
            "train_patients": split.train_patients,
            "val_patients": split.val_patients,
        },
        "device": str(device),
        "mixed_precision": mixed_precision,
        "duration_s": round(duration, 1),
        "torch": str(torch.__version__),
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


# --- the demo checkpoint ---------------------------------------------------------------------


def default_checkpoint_path(settings: Settings, image_size: int | None = None) -> Path:
    """``encoder_checkpoint`` if set, else ``<models_dir>/densenet121-<size>px.pt``."""
    return settings.encoder_checkpoint or (
        settings.models_dir / f"{ARCHITECTURE}-{image_size or settings.image_size}px.pt"
    )


def ensure_demo_checkpoint(settings: Settings) -> Path:
    """The configured checkpoint; trains one on the bundled set first if none exists.

    An explicitly configured ``encoder_checkpoint`` must exist (nothing is trained over it).
    Concurrent callers wait on a lock file, so only one of them trains.
    """
    path = default_checkpoint_path(settings)
    if settings.encoder_checkpoint is not None:
        load_checkpoint(path)  # raises CheckpointError naming the path when unusable
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
        result = train_encoder(
            TrainConfig.from_settings(settings, output=path), progress=False, echo=logger.info
        )
        logger.info("demo checkpoint ready, validation mean AUROC %s", _format(result.report.mean))
        return result.checkpoint_path


def _format(value: float | None) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.3f}"

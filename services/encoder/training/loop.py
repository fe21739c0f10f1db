"""The training loop: ``train_encoder`` runs the steps of a training run in order.

Configuration (``config.py``), the patient split (``split.py``), the images (``dataset.py``),
the losses (``losses.py``), then every epoch: train, validate (``validation.py``), keep the best
epoch (``best_epoch.py``), follow the schedules (``schedules.py``); after the last epoch, the
label metric (``label_metric.py``) and the checkpoint with its training record (``record.py``).

Weighted binary cross-entropy, Adam at 1e-3, learning rate cut by 10 when the validation loss
plateaus, batch 32, as the paper; CUDA with mixed precision when present.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from services.encoder.checkpoint import EncoderCheckpoint, save_checkpoint
from services.encoder.code_metric import CodeMetric
from services.encoder.labels import LabelTable, read_label_sets
from services.encoder.network import build_densenet121, classify, pooled_features
from services.encoder.preprocessing import Normalisation, XrayAugmentation, to_network_input
from services.encoder.training.best_epoch import BestEpoch, WeightAverage, finding_outputs_only
from services.encoder.training.config import TrainConfig, resolve_device
from services.encoder.training.dataset import LabelledImages, compute_normalisation
from services.encoder.training.label_metric import fit_label_metric
from services.encoder.training.losses import (
    WeightedBCELoss,
    finding_loss_weights,
    label_set_contrast,
    unchanged,
    with_no_finding,
)
from services.encoder.training.record import training_record
from services.encoder.training.schedules import (
    PLATEAU_FACTOR,
    CosineSchedule,
    InputSizes,
    time_limit_reached,
)
from services.encoder.training.split import PatientSplit, patient_disjoint_split
from services.encoder.training.validation import (
    AurocReport,
    mean_auroc_by_source,
    validation_auroc,
    validation_pass,
)

# How often (in batches) a run without a progress bar reports within an epoch.
PROGRESS_LINES_PER_EPOCH = 4


@dataclass(frozen=True)
class TrainResult:
    checkpoint_path: Path
    report: AurocReport
    duration_s: float
    history: list[dict[str, float | None]]


@dataclass(frozen=True)
class _Data:
    """A run's labelled images split by patient, with the loss weights of its training side."""

    table: LabelTable
    split: PatientSplit
    train: LabelTable
    val: LabelTable
    normalisation: Normalisation
    # The loss's targets from the findings' (adds No Finding when the recipe trains it).
    targets_of: Callable[[torch.Tensor], torch.Tensor]
    positive_weight: np.ndarray
    negative_weight: np.ndarray

    @property
    def finding_count(self) -> int:
        return len(self.table.findings)

    @property
    def outputs(self) -> int:
        return self.finding_count + 1 if self.targets_of is with_no_finding else self.finding_count


class _Optimisation:
    """The network, its loss, optimiser, plateau rule, gradient scaler and weight average."""

    def __init__(
        self, config: TrainConfig, data: _Data, device: torch.device, mixed_precision: bool
    ) -> None:
        self.config = config
        self.model = build_densenet121(
            data.outputs, config.initial_weights, config.unit_code_scale, config.code_batchnorm
        ).to(device)
        self.loss_function = WeightedBCELoss(data.positive_weight, data.negative_weight).to(device)
        if config.weight_decay > 0:
            self.optimizer: torch.optim.Optimizer = torch.optim.AdamW(
                self.model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
            )
        else:
            self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.learning_rate)
        self.plateau = self.new_plateau()
        self.scaler = torch.amp.GradScaler(device.type, enabled=mixed_precision)
        self.averaged = (
            WeightAverage(self.model, config.weight_averaging) if config.weight_averaging else None
        )

    @property
    def kept_model(self) -> torch.nn.Module:
        """The network that is validated, selected and kept: the running average if any."""
        return self.averaged.model if self.averaged is not None else self.model

    @property
    def rate(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def set_rate(self, rate: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = rate

    def new_plateau(self) -> torch.optim.lr_scheduler.ReduceLROnPlateau:
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            self.optimizer, mode="min", factor=PLATEAU_FACTOR, patience=self.config.plateau_patience
        )

    def step(self, loss: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.averaged is not None:
            self.averaged.update(self.model)


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
    augmentation = XrayAugmentation(config.augmentation)
    data = _read_data(config, device, mixed_precision, echo)
    run = _Optimisation(config, data, device, mixed_precision)
    shuffling = torch.Generator().manual_seed(config.seed)
    cache = device.type == "cpu" or config.workers == 0

    def loaders_at(image_size: int) -> tuple[DataLoader, DataLoader]:
        train_images = LabelledImages(data.train, image_size, augmentation, cache=cache)
        val_images = LabelledImages(data.val, image_size, cache=cache)
        train_loader = DataLoader(
            train_images,
            batch_size=config.batch_size,
            shuffle=True,
            # BatchNorm cannot train on a last batch of one image; a partial batch is dropped.
            drop_last=len(data.train.records) > config.batch_size,
            num_workers=config.workers,
            generator=shuffling,
            pin_memory=mixed_precision,
        )
        val_loader = DataLoader(
            val_images, batch_size=config.batch_size, num_workers=config.workers
        )
        return train_loader, val_loader

    # The validation loader keeps the table's order, so row i is data.val.records[i].
    val_sources = np.array([record.source for record in data.val.records])
    sizes = InputSizes(config)
    train_loader, val_loader = loaders_at(sizes.current)
    schedule = CosineSchedule(config, len(train_loader))

    history: list[dict[str, float | None]] = []
    best = BestEpoch()
    stopped_early: str | None = None
    epoch_seconds: list[float] = []
    for epoch in range(1, config.epochs + 1):
        if sizes.switch_now(epoch, epoch_seconds, time.monotonic() - started):
            train_loader, val_loader = loaders_at(sizes.current)
            if config.schedule == "plateau":
                # A tenth of the peak, even when the rule had cut deeper: the network has to
                # adapt to the larger input, and the rule starts afresh at this size.
                run.set_rate(config.learning_rate * PLATEAU_FACTOR)
                run.plateau = run.new_plateau()
            echo(
                f"epoch {epoch}: {sizes.current} px from here on (the last "
                f"{config.epochs - epoch + 1} epochs at most), rate {run.rate:.0e}"
            )
        epoch_started = time.monotonic()
        clock = _EpochClock(epoch, epoch_started, sizes, schedule, epoch_seconds, echo)
        train_loss = _train_epoch(
            config, run, data, train_loader, schedule, device, mixed_precision,
            f"epoch {epoch}/{config.epochs}", progress, clock,
        )  # fmt: skip
        val_loss, val_targets, val_probabilities = validation_pass(
            run.kept_model, val_loader, run.loss_function, data.normalisation, device,
            mixed_precision, data.targets_of,
        )  # fmt: skip
        if config.schedule == "plateau":
            run.plateau.step(val_loss)
        findings = data.finding_count
        report = validation_auroc(
            data.table.findings, val_targets[:, :findings], val_probabilities[:, :findings]
        )
        by_source = mean_auroc_by_source(
            data.table.findings, val_sources, val_targets[:, :findings],
            val_probabilities[:, :findings],
        )  # fmt: skip
        best.consider(epoch, val_loss, report, run.kept_model, sizes.current, by_source)
        epoch_seconds.append(time.monotonic() - epoch_started)
        sizes.record()
        schedule.replan(epoch, epoch_seconds, time.monotonic() - started)
        history.append(
            {
                "epoch": epoch,
                "train_loss": train_loss,
                "val_loss": val_loss,
                "val_mean_auroc": report.mean,
                "learning_rate": run.rate,
                "image_size": sizes.current,
                "seconds": round(epoch_seconds[-1], 1),
            }
        )
        mean = f"{report.mean:.3f}" if report.mean is not None else "n/a"
        best_mean = f"{best.report.mean:.3f}" if best.report.mean is not None else "n/a"
        left = sizes.seconds_left(schedule.planned_epochs, epoch + 1, epoch_seconds, None)
        echo(
            f"epoch {epoch}/{schedule.planned_epochs}: train loss {train_loss:.4f}, "
            f"val loss {val_loss:.4f}, val mean AUROC {mean} (kept epoch {best.epoch}: "
            f"{best_mean}), lr {run.rate:.0e}, "
            f"{time.monotonic() - started:.0f}s"
            + (f", about {_duration(left)} left" if epoch < schedule.planned_epochs else "")
        )
        stopped_early = time_limit_reached(
            config, started, epoch_started, epoch, sizes.next_epoch_cost_ratio()
        )
        if stopped_early:
            echo(stopped_early)
            break

    echo(f"keeping epoch {best.epoch} (lowest validation loss {best.val_loss:.4f})")
    train_images = train_loader.dataset
    assert isinstance(train_images, LabelledImages)
    code_metric = _label_metric(config, data, best, train_images, device, mixed_precision, echo)
    duration = time.monotonic() - started
    checkpoint = EncoderCheckpoint(
        findings=data.table.findings,
        image_size=best.image_size,
        normalisation=data.normalisation,
        state_dict=finding_outputs_only(best.state_dict, data.finding_count),
        training=training_record(
            config, data.table, data.split, device, mixed_precision, duration, augmentation
        )
        | {
            "loss_weights": {
                "positive": data.positive_weight.tolist(),
                "negative": data.negative_weight.tolist(),
            }
        },
        metrics={
            "val_auroc": best.report.per_finding,
            "val_auroc_skipped": best.report.skipped,
            "val_mean_auroc": best.report.mean,
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
    return TrainResult(path, best.report, duration, history)


def _read_data(
    config: TrainConfig,
    device: torch.device,
    mixed_precision: bool,
    echo: Callable[[str], None],
) -> _Data:
    """Every label file as one table, split by patient; normalisation and loss weights from the
    training side."""
    table = read_label_sets(config.label_files, config.images_dir, config.label_format)
    split_seed = config.seed if config.split_seed is None else config.split_seed
    split = patient_disjoint_split(table, config.val_fraction, split_seed)
    train_table, val_table = table.subset(split.train), table.subset(split.val)
    echo(
        f"{len(table.records)} images: {len(split.train)} train ({split.train_patients} patients), "
        f"{len(split.val)} validation ({split.val_patients} patients); device {device}"
        + (", mixed precision" if mixed_precision else "")
        + f"; {config.image_size} px, recipe {config.recipe}, up to {config.epochs} epochs"
        + (f", time limit {config.time_limit_s:.0f}s" if config.time_limit_s else "")
    )
    normalisation = compute_normalisation(
        train_table, config.image_size, config.seed, config.equalise
    )
    targets_of = with_no_finding if config.no_finding_output else unchanged
    positive_weight, negative_weight = finding_loss_weights(
        targets_of(torch.from_numpy(train_table.targets())).numpy()
    )
    return _Data(
        table, split, train_table, val_table, normalisation, targets_of, positive_weight,
        negative_weight,
    )  # fmt: skip


@dataclass(frozen=True)
class _EpochClock:
    """Progress lines within an epoch: batches done, loss, and the run's time left."""

    epoch: int
    started: float
    sizes: InputSizes
    schedule: CosineSchedule
    epoch_seconds: list[float]
    echo: Callable[[str], None]

    def batch_line(self, batch: int, batches: int, train_loss: float) -> None:
        per_batch = (time.monotonic() - self.started) / batch
        left = (
            self.sizes.seconds_left(
                self.schedule.planned_epochs, self.epoch, self.epoch_seconds, per_batch * batches
            )
            - per_batch * batch
        )
        self.echo(
            f"  epoch {self.epoch}/{self.schedule.planned_epochs}: batch {batch}/{batches}, "
            f"train loss {train_loss:.4f}, about {_duration(left)} left"
        )


def _train_epoch(
    config: TrainConfig,
    run: _Optimisation,
    data: _Data,
    train_loader: DataLoader,
    schedule: CosineSchedule,
    device: torch.device,
    mixed_precision: bool,
    title: str,
    progress: bool,
    clock: _EpochClock,
) -> float:
    """One pass over the training images; the mean training loss."""
    run.model.train()
    train_loss = 0.0
    seen = 0
    batches = tqdm(train_loader, desc=title, unit="batch", disable=not progress, leave=False)
    report_every = max(1, math.ceil(len(train_loader) / PROGRESS_LINES_PER_EPOCH))
    for batch, (images, targets) in enumerate(batches, start=1):
        if config.schedule == "cosine":
            run.set_rate(schedule.rate())
        inputs = to_network_input(images.to(device, non_blocking=True), data.normalisation)
        targets = data.targets_of(targets.to(device, non_blocking=True))
        with torch.autocast(device.type, dtype=torch.float16, enabled=mixed_precision):
            codes = pooled_features(run.model, inputs)
            loss = run.loss_function(classify(run.model, codes), targets)
            if config.label_contrast:
                loss = loss + config.label_contrast * label_set_contrast(codes, targets)
        run.step(loss)
        schedule.step()
        train_loss += loss.item() * len(images)
        seen += len(images)
        batches.set_postfix(loss=f"{loss.item():.4f}")
        if not progress and batch % report_every == 0 and batch < len(train_loader):
            clock.batch_line(batch, len(train_loader), train_loss / max(seen, 1))
    return train_loss / max(seen, 1)


def _label_metric(
    config: TrainConfig,
    data: _Data,
    best: BestEpoch,
    train_images: LabelledImages,
    device: torch.device,
    mixed_precision: bool,
    echo: Callable[[str], None],
) -> CodeMetric | None:
    """The label metric of the kept weights when the recipe asks for one."""
    if not config.label_metric:
        return None
    started = time.monotonic()
    code_metric = fit_label_metric(
        config,
        data.outputs,
        best,
        train_images.unaugmented()
        if train_images.image_size == best.image_size
        else LabelledImages(data.train, best.image_size),
        data.normalisation,
        device,
        mixed_precision,
    )
    echo(
        f"label metric fit on the {len(data.train.records)} training images' codes "
        f"(share {config.label_metric:g}), {time.monotonic() - started:.0f}s"
    )
    return code_metric


def _duration(seconds: float) -> str:
    seconds = max(seconds, 0.0)
    return f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s"

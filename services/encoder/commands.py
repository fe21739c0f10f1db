"""``medgraph train`` and ``medgraph embed``: the encoder's command-line entry points.

Registered on the main CLI group with ``main.add_command(train)`` and ``main.add_command(embed)``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click
import numpy as np

from services.config import get_settings
from services.encoder.imaging import ImageReadError, read_image
from services.encoder.labels import LABEL_FORMATS, LabelFileError

TOP_FINDINGS_SHOWN = 3


def _user_errors() -> tuple[type[Exception], ...]:
    """Errors that describe bad input or settings: shown as one line, no traceback."""
    # defers torch (these modules import it): other `medgraph` commands stay quick to start
    from services.encoder.checkpoint import CheckpointError
    from services.encoder.network import InitialWeightsError
    from services.encoder.training.config import TrainingError

    return (LabelFileError, ImageReadError, CheckpointError, InitialWeightsError, TrainingError)


@click.command("train")
@click.option(
    "--labels",
    "labels_csv",
    multiple=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="Label CSV, NIH ChestX-ray14 or CheXpert; repeat it to train on several sets, split "
    "by patient together. Default: every bundled set's labels.csv.",
)
@click.option(
    "--images",
    "images_dir",
    type=click.Path(path_type=Path, file_okay=False),
    help="Folder the CSV's image paths are relative to. Default: next to the CSV.",
)
@click.option(
    "--format",
    "label_format",
    type=click.Choice(LABEL_FORMATS),
    default="auto",
    show_default=True,
    help="Label file format.",
)
@click.option(
    "--recipe",
    type=click.Choice(["retrieval", "paper", "regularised"]),
    help="retrieval (paper, plus a batch-norm neck, a unit-code classifier and a label metric), "
    "paper (Adam, plateau, light augmentation) or regularised (AdamW, warm-up + cosine, "
    "strong augmentation). Default: train_recipe setting.",
)
@click.option(
    "--epochs", type=click.IntRange(min=1), help="Default: train_epochs, else the recipe's."
)
@click.option(
    "--image-size",
    type=click.IntRange(32, 1024),
    help="Default: image_size setting; on a CUDA GPU, gpu_image_size (128) or more.",
)
@click.option("--weight-decay", type=click.FloatRange(min=0), help="Default: the recipe's.")
@click.option("--schedule", type=click.Choice(["plateau", "cosine"]), help="Default: the recipe's.")
@click.option("--warmup-epochs", type=click.FloatRange(min=0), help="Default: the recipe's.")
@click.option(
    "--augmentation",
    type=click.Choice(["light", "strong", "robust"]),
    help="robust = strong plus resolution and blur changes. Default: the recipe's.",
)
@click.option(
    "--equalise/--no-equalise",
    default=None,
    help="Histogram-equalise each image before the network (training and codes alike). "
    "Default: the recipe's.",
)
@click.option(
    "--weight-averaging",
    type=click.FloatRange(0, 1, max_open=True),
    help="Keep an exponential moving average of the weights with this decay per step "
    "(0 = off). Default: the recipe's.",
)
@click.option(
    "--final-image-size",
    type=click.IntRange(32, 1024),
    help="Progressive resizing: the last --final-epochs epochs run at this larger size (the "
    "plateau rate cut by 10 at the switch). Default: the recipe's.",
)
@click.option(
    "--final-epochs",
    type=click.IntRange(min=0),
    help="How many epochs run at --final-image-size (0 = none). Default: the recipe's.",
)
@click.option(
    "--no-finding-output/--findings-only",
    default=None,
    help="Also train a No Finding output (training only; the checkpoint keeps the findings). "
    "Default: the recipe's.",
)
@click.option(
    "--label-contrast",
    type=click.FloatRange(min=0),
    help="Weight of a supervised contrastive loss on the codes, with label sets (No Finding "
    "included) for classes (0 = off). Default: the recipe's.",
)
@click.option(
    "--unit-code-scale",
    type=click.FloatRange(min=0),
    help="Feed the classifier the L2-normalised code times this (0 = the raw code). "
    "Default: the recipe's.",
)
@click.option(
    "--code-batchnorm/--no-code-batchnorm",
    default=None,
    help="Put a batch-norm neck between the pooled features and the classifier; the code is "
    "its output. Default: the recipe's.",
)
@click.option(
    "--label-metric",
    type=click.FloatRange(0, 1, max_open=True),
    help="After training, fit a label metric on the training images' codes giving this share "
    "of each code's length to the directions that predict findings (0 = the plain code). "
    "Default: the recipe's.",
)
@click.option("--batch-size", type=click.IntRange(min=2), help="Default: train_batch_size.")
@click.option("--seed", type=int, help="Default: train_seed setting.")
@click.option(
    "--split-seed",
    type=int,
    help="Seed of the patient split alone (default: --seed): another --seed on the same split "
    "can be compared with `evaluate --held-out --compare` on the same queries.",
)
@click.option(
    "--val-fraction",
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    help="Default: train_val_fraction setting.",
)
@click.option(
    "--initial-weights",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Local DenseNet-121 .pth to start from. Default: initial_weights setting.",
)
@click.option("--device", help="cpu, cuda, cuda:1 ... Default: encoder_device, else auto.")
@click.option(
    "--output",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Checkpoint file. Default: the checkpoint the platform uses "
    "(<models_dir>/densenet121-<size>px.pt, or encoder_checkpoint).",
)
@click.option(
    "--time-limit",
    "time_limit_s",
    type=click.FloatRange(min=0),
    help="Stop before an epoch would end past this many seconds (0 = none). "
    "Default: train_time_limit_s setting.",
)
@click.option(
    "--progress/--no-progress",
    default=True,
    show_default=True,
    help="Show a progress bar per epoch.",
)
def train(
    labels_csv: tuple[Path, ...],
    images_dir: Path | None,
    label_format: str,
    recipe: str | None,
    epochs: int | None,
    image_size: int | None,
    weight_decay: float | None,
    schedule: str | None,
    warmup_epochs: float | None,
    augmentation: str | None,
    equalise: bool | None,
    weight_averaging: float | None,
    final_image_size: int | None,
    final_epochs: int | None,
    no_finding_output: bool | None,
    label_contrast: float | None,
    unit_code_scale: float | None,
    code_batchnorm: bool | None,
    label_metric: float | None,
    batch_size: int | None,
    seed: int | None,
    split_seed: int | None,
    val_fraction: float | None,
    initial_weights: Path | None,
    device: str | None,
    output: Path | None,
    time_limit_s: float | None,
    progress: bool,
) -> None:
    """Train the DenseNet-121 encoder and report per-finding validation AUROC."""
    # defers torch: other `medgraph` commands stay quick to start
    from services.encoder.training.config import TrainConfig
    from services.encoder.training.process import train_in_own_process

    settings = get_settings()
    try:
        config = TrainConfig.from_settings(
            settings,
            labels_csv=tuple(labels_csv) or None,
            images_dir=images_dir,
            label_format=label_format,
            recipe=recipe,
            epochs=epochs,
            image_size=image_size,
            weight_decay=weight_decay,
            schedule=schedule,
            warmup_epochs=warmup_epochs,
            augmentation=augmentation,
            equalise=equalise,
            weight_averaging=weight_averaging,
            final_image_size=final_image_size,
            final_epochs=final_epochs,
            no_finding_output=no_finding_output,
            label_contrast=label_contrast,
            unit_code_scale=unit_code_scale,
            code_batchnorm=code_batchnorm,
            label_metric=label_metric,
            batch_size=batch_size,
            seed=seed,
            split_seed=split_seed,
            val_fraction=val_fraction,
            initial_weights=initial_weights,
            device=device,
            output=output,
            time_limit_s=time_limit_s,
        )
        result = train_in_own_process(config, progress=progress, echo=click.echo)
    except _user_errors() as exc:
        raise click.ClickException(str(exc)) from None
    click.echo("\nValidation AUROC per finding (patient-disjoint split):")
    click.echo(result.report.table())
    mean = f"{result.report.mean:.3f}" if result.report.mean is not None else "n/a"
    click.echo(f"\nmean validation AUROC: {mean}")
    click.echo(f"checkpoint: {result.checkpoint_path} ({result.duration_s:.0f}s)")


@click.command("embed")
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--checkpoint",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Encoder checkpoint. Default: the one `medgraph train` writes.",
)
@click.option(
    "--output",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Write the (n, 1024) float32 codes of the readable files to this .npy file.",
)
@click.option("--device", help="cpu, cuda ... Default: encoder_device, else auto.")
def embed(
    files: tuple[Path, ...], checkpoint: Path | None, output: Path | None, device: str | None
) -> None:
    """Read images, print their top predicted findings, optionally save their image codes."""
    # defers torch: other `medgraph` commands stay quick to start
    from services.encoder.checkpoint import CheckpointError
    from services.encoder.default_checkpoint import default_checkpoint_path
    from services.encoder.extractor import FeatureExtractor

    settings = get_settings()
    extractor = FeatureExtractor(
        checkpoint or default_checkpoint_path(settings),
        device or settings.encoder_device,
        batch_size=settings.embed_batch_size,
    )
    try:
        extractor.load()
    except CheckpointError as exc:
        raise click.ClickException(f"{exc} (train one with `medgraph train`)") from None
    readable: list[tuple[Path, np.ndarray]] = []
    failures = 0
    for path in files:
        try:
            readable.append((path, read_image(path).pixels))
        except ImageReadError as exc:
            click.echo(f"error: {exc}", err=True)
            failures += 1
    if readable:
        images = [pixels for _, pixels in readable]
        codes, probabilities = extractor.embed_and_predict(images)
        click.echo(f"model {extractor.model_version}")
        for (path, _), row in zip(readable, probabilities, strict=True):
            top = np.argsort(row)[::-1][:TOP_FINDINGS_SHOWN]
            shown = ", ".join(f"{extractor.findings[i]} {row[i]:.2f}" for i in top)
            click.echo(f"{path}\t{shown}")
        if output is not None:
            np.save(output, codes)
            click.echo(f"wrote {codes.shape} codes to {output}")
    if failures:
        sys.exit(1)


@click.command("average-encoders")
@click.argument(
    "checkpoints", nargs=-1, required=True, type=click.Path(path_type=Path, dir_okay=False)
)
@click.option(
    "--output",
    required=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="The averaged checkpoint to write.",
)
def average_encoders(checkpoints: tuple[Path, ...], output: Path) -> None:
    """One checkpoint whose codes are the mean of several networks' (other seeds, same split).

    Judge it like any checkpoint: `medgraph evaluate --held-out --checkpoint OUTPUT`. Every
    image then passes through each network, so embedding costs that many times more."""
    # defers torch: other `medgraph` commands stay quick to start
    from services.encoder.averaging import average_checkpoints
    from services.encoder.checkpoint import save_checkpoint

    try:
        averaged = average_checkpoints(checkpoints)
    except _user_errors() as exc:
        raise click.ClickException(str(exc)) from None
    save_checkpoint(output, averaged)
    click.echo(f"wrote {output}: the mean of {len(averaged.networks)} networks' codes")

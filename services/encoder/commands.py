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
    from services.encoder.training import TrainingError

    return (LabelFileError, ImageReadError, CheckpointError, InitialWeightsError, TrainingError)


@click.command("train")
@click.option(
    "--labels",
    "labels_csv",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Label CSV, NIH ChestX-ray14 or CheXpert. Default: the bundled set's labels.csv.",
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
@click.option("--epochs", type=click.IntRange(min=1), help="Default: train_epochs setting.")
@click.option("--image-size", type=click.IntRange(32, 1024), help="Default: image_size setting.")
@click.option("--batch-size", type=click.IntRange(min=2), help="Default: train_batch_size.")
@click.option("--seed", type=int, help="Default: train_seed setting.")
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
    labels_csv: Path | None,
    images_dir: Path | None,
    label_format: str,
    epochs: int | None,
    image_size: int | None,
    batch_size: int | None,
    seed: int | None,
    val_fraction: float | None,
    initial_weights: Path | None,
    device: str | None,
    output: Path | None,
    time_limit_s: float | None,
    progress: bool,
) -> None:
    """Train the DenseNet-121 encoder and report per-finding validation AUROC."""
    # defers torch: other `medgraph` commands stay quick to start
    from services.encoder.training import TrainConfig, train_encoder

    config = TrainConfig.from_settings(
        get_settings(),
        labels_csv=labels_csv,
        images_dir=images_dir,
        label_format=label_format,
        epochs=epochs,
        image_size=image_size,
        batch_size=batch_size,
        seed=seed,
        val_fraction=val_fraction,
        initial_weights=initial_weights,
        device=device,
        output=output,
        time_limit_s=time_limit_s,
    )
    try:
        result = train_encoder(config, progress=progress, echo=click.echo)
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
    from services.encoder.extractor import FeatureExtractor
    from services.encoder.training import default_checkpoint_path

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

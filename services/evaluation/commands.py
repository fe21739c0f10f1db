"""`medgraph evaluate`: the paper's Table 1 for every strategy on the labelled stored set."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import click

from services.config import Settings, get_settings
from services.encoder.imaging import ImageReadError
from services.encoder.labels import LabelFileError, bundled_label_files, query_label_files
from services.encoder.shipping import (
    SHIPPED_CHECKPOINT,
    ShippingError,
    install_shipped_checkpoint,
    write_half_precision,
)
from services.evaluation.image_collections import CollectionsFileError
from services.evaluation.strategies import evaluate as run_evaluation
from services.evaluation.strategies import plot_curves
from services.graph.store import GraphStore
from services.retrieval.contract import FindingsUnavailable, Strategy
from services.retrieval.service import RetrievalService

if TYPE_CHECKING:
    from services.evaluation.heldout_run import HeldOutResult

STRATEGY_NAMES = [strategy.value for strategy in Strategy]


@click.command("evaluate")
@click.option(
    "--k",
    "k",
    type=click.IntRange(1, 1000),
    default=50,
    show_default=True,
    help="K of the table (the paper's 50).",
)
@click.option(
    "--ks",
    default="1,5,10,20,30,40,50",
    show_default=True,
    help="K values of the curves (comma-separated; values above --k are dropped).",
)
@click.option(
    "--sample",
    type=click.IntRange(1),
    default=None,
    help="Use N seeded random labelled images as queries instead of all.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of --sample.")
@click.option(
    "--strategies",
    default=",".join(STRATEGY_NAMES),
    show_default=True,
    help="Comma-separated strategies (exact always runs: it is the recall reference).",
)
@click.option(
    "--include-same-patient", is_flag=True, help="Do not exclude the query's own patient's images."
)
@click.option(
    "--output-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where evaluation.json and evaluation.png (heldout.json) go. Default: <home>/evaluation.",
)
@click.option(
    "--rerank",
    is_flag=True,
    help="Also run each in-memory strategy re-ranked by the stored predicted findings (rows "
    "'<strategy> + findings').",
)
@click.option(
    "--validation-queries",
    is_flag=True,
    help="Only the encoder checkpoint's validation images (patients it never trained on) are "
    "queries; the database stays every stored image. Uses --checkpoint, else the platform's.",
)
@click.option(
    "--held-out",
    is_flag=True,
    help="Held-out mode: the queries are the encoder's validation patients' images (never "
    "trained on), the database every other image; exact cosine in numpy (no server needed), "
    "pooled and per source set, and each query set against the whole archive; against random, "
    "same-source and same-collection random, raw-pixel and random-init DenseNet-121 baselines, "
    "with the share of each top K from the query's collection, patient-bootstrap 95% intervals "
    "and paired differences.",
)
@click.option(
    "--checkpoint",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Held-out mode: the encoder checkpoint. Default: the one the platform uses.",
)
@click.option(
    "--compare",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Held-out mode: a second checkpoint with the same validation patients, as an extra "
    "row with paired differences (e.g. the paper recipe's).",
)
@click.option(
    "--labels",
    "label_files",
    multiple=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="Held-out mode: label CSVs (repeatable). Default: every bundled set's labels.csv.",
)
@click.option(
    "--query-set",
    "query_files",
    multiple=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="Held-out mode: the label CSV of an external query set (repeatable): its images, read "
    "as uploads, are queries against the whole archive and never results. Default without "
    "--labels: every set under <data dir>/queries/ (the bundled full-size originals).",
)
@click.option(
    "--json",
    "json_path",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Held-out mode: also write the results (every view, row, paired difference and AUROC, "
    "and with --compare the checkpoint minus the compared one per view) to this JSON file.",
)
@click.option(
    "--resamples",
    type=click.IntRange(100, 100_000),
    default=2000,
    show_default=True,
    help="Held-out mode: bootstrap resamples of query patients.",
)
@click.option(
    "--ship",
    is_flag=True,
    help="Held-out mode: evaluate --checkpoint stored in fp16 and, if it passes the shipping "
    "checks (services/evaluation/shipping_gate.py; --compare: the checkpoint it replaces), make "
    "it the repository's shipped default (models/densenet121-demo.pt, .json record, .log).",
)
@click.option(
    "--training-log",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="With --ship: the training's output, kept beside the shipped checkpoint.",
)
def evaluate(
    k: int, ks: str, sample: int | None, seed: int, strategies: str,
    include_same_patient: bool, output_dir: Path | None, rerank: bool,
    validation_queries: bool, held_out: bool, checkpoint: Path | None, compare: Path | None,
    label_files: tuple[Path, ...], query_files: tuple[Path, ...], json_path: Path | None,
    resamples: int, ship: bool, training_log: Path | None,
) -> None:  # fmt: skip
    """Leave-one-out retrieval metrics (ACG, ACG_p, precision@K, recall@K vs exact, fraction of
    the database examined, latency) for each strategy, as a table, JSON and a PNG plot; with
    --held-out, new patients' images against the rest, with baselines and intervals."""
    if ship and (not held_out or checkpoint is None):
        raise click.UsageError("--ship needs --held-out and --checkpoint (the file to ship)")
    if held_out:
        settings = get_settings()
        if not query_files and not label_files:
            query_files = tuple(query_label_files(settings.data_dir))
        if ship and checkpoint is not None:
            _ship(
                settings, k, seed, output_dir, checkpoint, compare, label_files, query_files,
                resamples, json_path, training_log,
            )  # fmt: skip
            return
        _held_out(
            settings, k, seed, output_dir, checkpoint, compare, label_files, query_files,
            resamples, json_path,
        )  # fmt: skip
        return
    try:
        chosen = [Strategy(name.strip()) for name in strategies.split(",") if name.strip()]
        k_values = [int(value) for value in ks.split(",") if value.strip()]
    except ValueError as problem:
        raise click.BadParameter(str(problem)) from None
    settings = get_settings()
    service = RetrievalService(GraphStore.from_settings(settings), settings)
    query_keys = _validation_keys(settings, checkpoint) if validation_queries else None

    def progress(done: int, total: int) -> None:
        if done == total or done % 25 == 0:
            click.echo(f"  {done}/{total} queries", err=True)

    try:
        report = run_evaluation(
            service, strategies=chosen, k=k, ks=k_values, sample=sample, seed=seed,
            exclude_same_patient=not include_same_patient, progress=progress, rerank=rerank,
            query_keys=query_keys,
        )  # fmt: skip
    except (ValueError, FindingsUnavailable) as problem:
        click.secho(f"error: {problem}", fg="red", err=True)
        sys.exit(1)
    click.echo(
        f"{report.queries} queries, leave-one-out over {report.images} stored images"
        f"{', own patient excluded' if report.exclude_same_patient else ''}; "
        f"labels: {len(report.labels)} ({report.seconds:.0f} s)"
    )
    if report.unlabelled_images:
        click.secho(
            f"note: {report.unlabelled_images} stored images have no labels; as results they "
            "count as No Finding", fg="yellow", err=True,
        )  # fmt: skip
    click.echo(report.table())
    folder = output_dir or settings.home / "evaluation"
    folder.mkdir(parents=True, exist_ok=True)
    json_path = folder / "evaluation.json"
    json_path.write_text(json.dumps(report.as_dict(), indent=2) + "\n")
    plot_path = folder / "evaluation.png"
    plot_curves(report, str(plot_path))
    click.echo(f"wrote {json_path} and {plot_path}")


def _validation_keys(settings: Settings, checkpoint: Path | None) -> frozenset[str]:
    """The checkpoint's validation images as graph keys (both are the files' SHA-256)."""
    # defers torch: other `medgraph` commands stay quick to start
    from services.encoder.checkpoint import CheckpointError, load_checkpoint
    from services.encoder.default_checkpoint import default_checkpoint_path

    path = checkpoint or default_checkpoint_path(settings)
    try:
        recorded = load_checkpoint(path).training.get("split", {}).get("val_image_sha256")
    except CheckpointError as problem:
        click.secho(f"error: {problem}", fg="red", err=True)
        sys.exit(1)
    if not recorded:
        click.secho(
            f"error: {path} does not record its validation images: retrain it with "
            "`medgraph train`", fg="red", err=True,
        )  # fmt: skip
        sys.exit(1)
    return frozenset(recorded)


def _held_out(
    settings: Settings, k: int, seed: int, output_dir: Path | None, checkpoint: Path | None,
    compare: Path | None, label_files: tuple[Path, ...], query_files: tuple[Path, ...],
    resamples: int, json_path: Path | None,
) -> HeldOutResult:  # fmt: skip
    # defers torch: other `medgraph` commands stay quick to start
    from services.encoder.checkpoint import CheckpointError
    from services.encoder.default_checkpoint import default_checkpoint_path
    from services.encoder.training.config import TrainingError
    from services.evaluation.heldout_run import held_out_evaluation

    try:
        result = held_out_evaluation(
            list(label_files) or bundled_label_files(settings.data_dir),
            checkpoint or default_checkpoint_path(settings),
            query_files=query_files, compare=compare, k=k, resamples=resamples, seed=seed,
            device=settings.encoder_device, batch_size=settings.embed_batch_size,
            progress=lambda message: click.echo(f"  {message}", err=True),
        )  # fmt: skip
    except (
        CheckpointError, LabelFileError, ImageReadError, TrainingError, CollectionsFileError,
    ) as problem:  # fmt: skip
        click.secho(f"error: {problem}", fg="red", err=True)
        sys.exit(1)
    click.echo(result.summary())
    click.echo(result.report.table())
    folder = output_dir or settings.home / "evaluation"
    folder.mkdir(parents=True, exist_ok=True)
    text = json.dumps(result.as_dict(), indent=2) + "\n"
    written = [folder / "heldout.json"]
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        written.append(json_path)
    for path in written:
        path.write_text(text)
    click.echo(f"({result.seconds:.0f} s) wrote {' and '.join(str(path) for path in written)}")
    return result


def _ship(
    settings: Settings, k: int, seed: int, output_dir: Path | None, checkpoint: Path,
    compare: Path | None, label_files: tuple[Path, ...], query_files: tuple[Path, ...],
    resamples: int, json_path: Path | None, training_log: Path | None,
) -> None:  # fmt: skip
    """Judge the fp16 copy, the exact bytes that would ship, and install it if it passes."""
    # defers torch: other `medgraph` commands stay quick to start
    from services.evaluation.shipping_gate import (
        judged_on_uploads,
        shipping_checks,
        shipping_judgement,
    )

    with tempfile.TemporaryDirectory(prefix="medgraph-ship-") as folder:
        try:
            candidate = write_half_precision(checkpoint, Path(folder) / SHIPPED_CHECKPOINT.name)
        except ShippingError as problem:
            raise click.ClickException(f"not shipped: {problem}") from None
        result = _held_out(
            settings, k, seed, output_dir, candidate, compare, label_files, query_files,
            resamples, json_path,
        )  # fmt: skip
        checks = shipping_checks(result)
        click.echo("\nshipping checks (paired 95% intervals, checkpoint minus the other row):")
        for check in checks:
            click.echo(f"  {check.line()}")
        if not judged_on_uploads(checks):
            raise click.ClickException("not shipped: no external query set to judge it on")
        failed = [check for check in checks if not check.passed]
        if failed:
            raise click.ClickException(f"not shipped: {len(failed)} check(s) fail")
        try:
            shipped = install_shipped_checkpoint(
                candidate, shipping_judgement(result, checks), training_log
            )
        except ShippingError as problem:
            raise click.ClickException(f"not shipped: {problem}") from None
    click.echo(f"shipped {checkpoint} as {shipped.path} (fp16, sha256 {shipped.sha256[:12]}…, "
               f"record {shipped.record})")  # fmt: skip

"""The held-out evaluation of an encoder checkpoint, with its baselines (``medgraph evaluate
--held-out``).

Reads the labelled sets (the archive) and any external query sets, finds the checkpoint's
validation images by content hash, computes the codes of every row (the checkpoint, optionally a
second checkpoint to compare, raw pixels, a randomly initialised DenseNet-121) and hands them to
``services.evaluation.heldout``. A query set's files are read as bytes and decoded the way an
upload is (``read_image(bytes, name=...)``), then embedded by the same extractor.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional

from services.encoder.checkpoint import EncoderCheckpoint, file_sha256, load_checkpoint
from services.encoder.extractor import FeatureExtractor
from services.encoder.imaging import read_image
from services.encoder.labels import LabelTable, read_label_sets
from services.encoder.network import build_densenet121, pooled_features
from services.encoder.preprocessing import Normalisation, prepare_batch, resize_pixels
from services.encoder.training.config import TrainingError, resolve_device
from services.evaluation.heldout import (
    CodeSet,
    FindingRerank,
    HeldOutReport,
    HeldOutSet,
    evaluate_held_out,
)
from services.evaluation.image_collections import image_collections
from services.evaluation.intervals import Interval, mean_auroc_interval
from services.evaluation.metrics import LabelSpace
from services.retrieval.rerank import RERANK_CANDIDATES_PER_K

RAW_PIXEL_SIZE = 64
RAW_PIXELS_ROW = "raw pixels (64 px, centred)"
RANDOM_INIT_ROW = "random-init DenseNet-121"
RANDOM_INIT_SEED = 0


@dataclass
class HeldOutResult:
    report: HeldOutReport
    checkpoint: str
    compared: str | None
    auroc: dict[str, Any]
    # Per source set: {source: {checkpoint name: {"mean", "difference"}}}. The pooled AUROC
    # also rewards telling the sets apart (they differ in resolution and prevalence); within
    # one set it cannot.
    auroc_by_source: dict[str, dict[str, Any]]
    # Per external query set, the same: mean AUROC of the predicted findings on its images.
    auroc_by_query_set: dict[str, dict[str, Any]]
    images: int
    query_images: int
    query_patients: int
    # Per external query set: its images (one query each).
    query_set_images: dict[str, int]
    seconds: float

    def summary(self) -> str:
        lines = [
            f"held-out queries: {self.query_images} validation images of {self.query_patients} "
            f"patients (never trained on); database: every other of {self.images} images; own "
            f"patient excluded; exact cosine, K = {self.report.k}; 95% intervals from "
            f"{self.report.resamples} bootstrap resamples of query patients",
        ]
        for name, entry in self.auroc.items():
            line = f"mean validation AUROC, {name}: {_interval(entry['mean'])}"
            if entry.get("difference") is not None:
                gain = entry["difference"].negated()
                line += f"; {self.checkpoint} minus {name}, paired: {_interval(gain, signed=True)}"
            lines.append(line)
        for source, entries in self.auroc_by_source.items():
            shown = [f"{name} {_interval(entry['mean'])}" for name, entry in entries.items()]
            for name, entry in entries.items():
                if entry.get("difference") is not None:
                    gain = _interval(entry["difference"].negated(), signed=True)
                    shown.append(f"{self.checkpoint} minus {name}, paired: {gain}")
            lines.append(f"  within {source}: " + "; ".join(shown))
        for query_set, entries in self.auroc_by_query_set.items():
            lines.append(
                f"query set {query_set}: {self.query_set_images[query_set]} images of new "
                f"patients against the whole archive of {self.images}; mean AUROC of the predicted "
                "findings beside the mean validation AUROC:"
            )
            for name, entry in entries.items():
                line = (
                    f"  {name}: {_interval(entry['mean'])} on {query_set}, "
                    f"{_interval(self.auroc[name]['mean'])} on validation"
                )
                if entry.get("difference") is not None:
                    gain = _interval(entry["difference"].negated(), signed=True)
                    line += f"; {self.checkpoint} minus {name}, paired: {gain}"
                lines.append(line)
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        """Everything, JSON-ready: the views (rows, paired differences) and the AUROCs; with a
        compared checkpoint, ``comparison``: the checkpoint minus it, per view and metric."""
        payload = {
            "checkpoint": self.checkpoint,
            "compared": self.compared,
            "images": self.images,
            "query_images": self.query_images,
            "query_patients": self.query_patients,
            "query_set_images": self.query_set_images,
            "auroc": _plain(self.auroc),
            "auroc_by_source": {key: _plain(value) for key, value in self.auroc_by_source.items()},
            "auroc_by_query_set": {
                key: _plain(value) for key, value in self.auroc_by_query_set.items()
            },
            "seconds": round(self.seconds, 1),
        } | self.report.as_dict()
        if self.compared is not None:
            payload["comparison"] = self.comparison()
        return payload

    def comparison(self) -> dict[str, Any]:
        """The checkpoint minus the compared checkpoint, paired on the same queries: per view
        and metric, and for the mean AUROC (validation, per source set, per query set)."""
        assert self.compared is not None
        row = f"{self.compared} (exact)"

        def auroc_gain(entries: dict[str, Any]) -> dict[str, float]:
            return asdict(entries[self.compared]["difference"].negated())

        views: dict[str, dict[str, dict[str, float]]] = {}
        for view in self.report.views:
            difference = view.row(row).difference
            assert difference is not None
            views[view.view] = {
                metric: asdict(interval.negated()) for metric, interval in difference.items()
            }
        return {
            "checkpoint": self.checkpoint,
            "compared": self.compared,
            "views": views,
            "auroc": auroc_gain(self.auroc),
            "auroc_by_source": {
                key: auroc_gain(value) for key, value in self.auroc_by_source.items()
            },
            "auroc_by_query_set": {
                key: auroc_gain(value) for key, value in self.auroc_by_query_set.items()
            },
        }


def _plain(entries: dict[str, dict[str, Interval | None]]) -> dict[str, Any]:
    return {
        name: {key: asdict(value) if value is not None else None for key, value in entry.items()}
        for name, entry in entries.items()
    }


def _interval(interval: Interval | dict[str, float], signed: bool = False) -> str:
    if isinstance(interval, dict):
        interval = Interval(**interval)
    return interval.shown(percent=False, signed=signed)


def held_out_evaluation(
    label_files: Sequence[Path],
    checkpoint_path: Path,
    *,
    query_files: Sequence[Path] = (),
    compare: Path | None = None,
    k: int = 50,
    resamples: int = 2000,
    seed: int = 0,
    device: str | None = None,
    batch_size: int = 64,
    progress: Callable[[str], None] = lambda _: None,
) -> HeldOutResult:
    started = time.monotonic()
    images = read_held_out_images(label_files, checkpoint_path, progress, query_files)
    checkpoint, table, pixels, data = images.checkpoint, images.table, images.pixels, images.data
    validation, is_query = images.validation, data.is_query
    external = ~data.in_archive

    code_sets: list[CodeSet] = []
    # After the checkpoints' own rows: the first row stays the reference of every difference.
    rows_after: list[CodeSet] = []
    probabilities: dict[str, np.ndarray] = {}  # every image's, uncalibrated
    named = [(checkpoint_path.name, checkpoint_path)]
    if compare is not None:
        other = load_checkpoint(compare)
        if validation_hashes(other, compare) != validation:
            raise TrainingError(
                f"{compare} was validated on other images than {checkpoint_path}: paired "
                "comparisons need the same validation patients"
            )
        named.append((compare.name, compare))
    for name, path in named:
        progress(f"codes of {name}")
        extractor = FeatureExtractor(path, device, batch_size=batch_size).load()
        codes, predicted = extractor.embed_and_predict(pixels)
        code_sets.append(CodeSet(f"{name} (exact)", codes))
        probabilities[name] = predicted
        if path == checkpoint_path:
            rerank = FindingRerank(checkpoint.calibrated(predicted), RERANK_CANDIDATES_PER_K * k)
            rows_after.append(
                CodeSet(f"{name} (exact, re-ranked by findings)", codes, rerank=rerank)
            )
    code_sets.extend(rows_after)
    progress("raw-pixel and random-init codes")
    code_sets.append(CodeSet(RAW_PIXELS_ROW, raw_pixel_codes(pixels), centre=True))
    code_sets.append(
        CodeSet(
            RANDOM_INIT_ROW,
            random_init_codes(
                pixels, checkpoint.image_size, checkpoint.normalisation, device, batch_size
            ),
        )
    )
    progress("retrieval and bootstrap")
    report = evaluate_held_out(data, code_sets, k=k, resamples=resamples, seed=seed)
    targets = table.targets()

    def auroc_rows(rows: np.ndarray) -> dict[str, Any]:
        intervals = mean_auroc_interval(
            targets[rows],
            [probabilities[name][rows] for name, _ in named],
            data.patients[rows],
            resamples=resamples,
            seed=seed,
        )
        return {
            name: {"mean": mean, "difference": difference}
            for (name, _), (mean, difference) in zip(named, intervals, strict=True)
        }

    validation_rows = is_query & ~external
    auroc = auroc_rows(validation_rows)
    auroc_by_source = {
        str(source): auroc_rows(validation_rows & (data.sources == source))
        for source in np.unique(data.sources[validation_rows])
    }
    query_sets = [str(source) for source in dict.fromkeys(data.sources[external].tolist())]
    auroc_by_query_set = {
        query_set: auroc_rows(external & (data.sources == query_set)) for query_set in query_sets
    }
    return HeldOutResult(
        report=report,
        checkpoint=checkpoint_path.name,
        compared=compare.name if compare is not None else None,
        auroc=auroc,
        auroc_by_source=auroc_by_source,
        auroc_by_query_set=auroc_by_query_set,
        images=int((~external).sum()),
        query_images=int(validation_rows.sum()),
        query_patients=len(np.unique(data.patients[validation_rows])),
        query_set_images={
            query_set: int((external & (data.sources == query_set)).sum())
            for query_set in query_sets
        },
        seconds=time.monotonic() - started,
    )


@dataclass
class HeldOutImages:
    """The labelled images of a held-out evaluation, split by a checkpoint's validation hashes;
    the archive's images first, then those of any external query sets."""

    checkpoint: EncoderCheckpoint
    validation: frozenset[str]  # sha256 of the checkpoint's validation images
    table: LabelTable
    pixels: list[np.ndarray]  # decoded, in the table's order
    data: HeldOutSet  # is_query: the validation images; external: the query sets' images


def read_held_out_images(
    label_files: Sequence[Path],
    checkpoint_path: Path,
    progress: Callable[[str], None] = lambda _: None,
    query_files: Sequence[Path] = (),
) -> HeldOutImages:
    """Reads every labelled image and marks the checkpoint's validation images as queries;
    ``query_files``: label files of external query sets, searched against the whole archive."""
    checkpoint = load_checkpoint(checkpoint_path)
    validation = validation_hashes(checkpoint, checkpoint_path)
    archive = read_label_sets(label_files)
    queries = read_label_sets(query_files) if query_files else LabelTable(archive.findings, [])
    if queries.findings != archive.findings:
        raise TrainingError(
            f"the query sets' findings ({', '.join(queries.findings)}) are not the archive's "
            f"({', '.join(archive.findings)})"
        )
    progress(f"reading {len(archive.records)} images and {len(queries.records)} query-set images")
    pixels = [read_image(record.image_path).pixels for record in archive.records]
    # As an upload: the file's bytes, decoded under its name.
    pixels += [
        read_image(record.image_path.read_bytes(), name=record.image_path.name).pixels
        for record in queries.records
    ]
    is_query = np.array(
        [file_sha256(record.image_path) in validation for record in archive.records]
        + [False] * len(queries.records)
    )
    if not is_query.any():
        raise TrainingError(
            f"none of the images is one of {checkpoint_path}'s validation images: evaluate on "
            "the label files it was trained on"
        )
    table = LabelTable(archive.findings, archive.records + queries.records)
    external = np.arange(len(table.records)) >= len(archive.records)
    collections = np.concatenate(
        [image_collections(label_files, archive), image_collections(query_files, queries)]
    )
    return HeldOutImages(
        checkpoint, validation, table, pixels,
        held_out_set(table, is_query, collections=collections, external=external),
    )  # fmt: skip


def validation_hashes(checkpoint: EncoderCheckpoint, path: Path) -> frozenset[str]:
    hashes = checkpoint.training.get("split", {}).get("val_image_sha256")
    if not hashes:
        raise TrainingError(
            f"{path} does not record its validation images (trained before they were "
            "recorded): retrain it with `medgraph train`"
        )
    return frozenset(hashes)


def held_out_set(
    table: LabelTable,
    is_query: np.ndarray,
    *,
    collections: np.ndarray | None = None,
    external: np.ndarray | None = None,
) -> HeldOutSet:
    findings = [record.findings for record in table.records]
    space = LabelSpace.from_findings(findings)
    # Patient ids are the release's across every set (the two bundled sets share patient 211),
    # so the own-patient rule holds across the archive and the query sets alike.
    _, patients = np.unique([record.patient_id for record in table.records], return_inverse=True)
    return HeldOutSet(
        labels=space.matrix(findings),
        sources=np.array([record.source for record in table.records]),
        patients=patients.astype(np.int64),
        is_query=is_query,
        collections=collections,
        external=external,
    )


def raw_pixel_codes(pixels: Sequence[np.ndarray], size: int = RAW_PIXEL_SIZE) -> np.ndarray:
    """Each image resized to ``size`` squared, as a flat vector (centred per view later)."""
    return np.stack([resize_pixels(image, size).reshape(-1).numpy() for image in pixels]).astype(
        np.float32
    )


def random_init_codes(
    pixels: Sequence[np.ndarray],
    image_size: int,
    normalisation: Normalisation,
    device: str | None = None,
    batch_size: int = 64,
    seed: int = RANDOM_INIT_SEED,
) -> np.ndarray:
    """Codes of an untrained DenseNet-121 (seeded), same input pipeline and pooling as the
    model: the level that architecture alone gives."""
    torch.manual_seed(seed)
    target = resolve_device(device)
    model = build_densenet121(14).to(target).eval()
    codes = []
    with torch.inference_mode():
        for start in range(0, len(pixels), batch_size):
            batch = prepare_batch(
                pixels[start : start + batch_size], image_size, normalisation, target
            )
            codes.append(functional.normalize(pooled_features(model, batch), dim=1).cpu().numpy())
    return np.concatenate(codes).astype(np.float32)

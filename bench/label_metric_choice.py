"""How do the label metric's share and ridge strength change held-out retrieval?

Takes a checkpoint, computes its codes without any label metric, then for each (share, ridge)
fits ``services.encoder.code_metric.fit_code_metric`` on the training images (every image that
is not one of the checkpoint's validation images: the training split of ``medgraph train``),
exactly as training does, and scores the mapped codes as ``medgraph evaluate --held-out`` does
(the validation images as queries, every other bundled image as the database, own patient
excluded, exact cosine, K = 50, patient-bootstrap intervals, paired against the codes without
a metric).

    .venv/bin/python -m bench.label_metric_choice [--checkpoint CKPT]

Writes ``bench/results/label_metric_choice.json``. Default checkpoint: the platform's. The
shares and ridges are scored on the same validation patients that pick among them, so the best
row is optimistic; the spread across rows is the figure to read.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import torch

from services.config import REPO_ROOT, get_settings
from services.encoder.checkpoint import file_sha256, save_checkpoint
from services.encoder.code_metric import fit_code_metric
from services.encoder.default_checkpoint import default_checkpoint_path
from services.encoder.extractor import FeatureExtractor
from services.encoder.labels import bundled_label_files
from services.encoder.training.losses import label_set_matrix
from services.evaluation.heldout import CodeSet, evaluate_held_out
from services.evaluation.heldout_run import read_held_out_images

SHARES = (0.5, 0.8, 0.9, 0.97)
RIDGES = (0.01, 0.1, 1.0)
K = 50
RESULTS = REPO_ROOT / "bench" / "results" / "label_metric_choice.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=None)
    parser.add_argument("--resamples", type=int, default=2000)
    args = parser.parse_args()
    settings = get_settings()
    path = args.checkpoint or default_checkpoint_path(settings)
    started = time.monotonic()
    images = read_held_out_images(bundled_label_files(settings.data_dir), path)
    checkpoint, table, pixels, data = images.checkpoint, images.table, images.pixels, images.data
    with tempfile.TemporaryDirectory() as folder:
        without = save_checkpoint(
            Path(folder) / "without-metric.pt", replace(checkpoint, code_metric=None)
        )
        codes = FeatureExtractor(without).load().embed(pixels)
    train = ~data.is_query
    label_sets = label_set_matrix(torch.from_numpy(table.targets()[train])).numpy()
    rows = [CodeSet("no label metric", codes)]
    for ridge in RIDGES:
        for share in SHARES:
            metric = fit_code_metric(codes[train], label_sets, share, ridge)
            mapped = metric.apply(torch.from_numpy(codes)).numpy()
            rows.append(CodeSet(f"share {share:g}, ridge {ridge:g}", mapped))
    report = evaluate_held_out(data, rows, k=K, resamples=args.resamples)
    print(report.table())
    payload = {
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "checkpoint": path.name,
        "checkpoint_sha256": file_sha256(path),
        "checkpoint_recipe": checkpoint.training.get("recipe"),
        "k": K,
        "shares": SHARES,
        "ridges": RIDGES,
        "seconds": round(time.monotonic() - started, 1),
    } | report.as_dict()
    RESULTS.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()

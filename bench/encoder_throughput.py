"""Image-code throughput of FeatureExtractor.embed: images per second by size and batch.

    .venv/bin/python -m bench.encoder_throughput                      # CPU: 64/224 px, batch 1/64
    .venv/bin/python -m bench.encoder_throughput --device cuda --precision fp32 fp16 bf16 \\
        --batch-sizes 1 64 256

Each run measures the whole embed path (normalise, 3 channels, DenseNet-121, pooling, L2) on
random pixel arrays already at the model's size. The checkpoints are freshly initialised ones
at each size: speed does not depend on the weight values. Results are merged into
bench/results/encoder_throughput.json under the device's name (a CPU run keeps GPU results).
"""

from __future__ import annotations

import services  # noqa: F401  (before torch: sets its OpenMP wait policy, see services/__init__.py)

# isort: split
import argparse
import json
import os
import platform
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from services.encoder.checkpoint import EncoderCheckpoint, load_checkpoint, save_checkpoint
from services.encoder.extractor import PRECISIONS, FeatureExtractor
from services.encoder.labels import FINDINGS_NIH
from services.encoder.network import build_densenet121
from services.encoder.preprocessing import Normalisation

RESULTS = Path(__file__).resolve().parent / "results" / "encoder_throughput.json"
# Enough images per setting for a stable figure, few enough to keep a CPU run near a minute.
MIN_IMAGES = 64
MIN_SECONDS = 2.0


def fresh_checkpoint(folder: Path, image_size: int) -> Path:
    model = build_densenet121(len(FINDINGS_NIH))
    checkpoint = EncoderCheckpoint(
        findings=FINDINGS_NIH,
        image_size=image_size,
        normalisation=Normalisation(0.5, 0.25),
        state_dict=model.state_dict(),
        training={"note": "untrained, for throughput measurement only"},
    )
    return save_checkpoint(folder / f"bench-{image_size}px.pt", checkpoint)


def measure(extractor: FeatureExtractor, image_size: int, batch_size: int) -> dict[str, float]:
    rng = np.random.default_rng(0)
    batch = [rng.random((image_size, image_size), dtype=np.float32) for _ in range(batch_size)]
    extractor.embed(batch)  # warm-up: allocator, kernels, autotuning
    _synchronise(extractor.device)
    images, started = 0, time.perf_counter()
    while images < MIN_IMAGES or time.perf_counter() - started < MIN_SECONDS:
        extractor.embed(batch)
        images += batch_size
        if images >= MIN_IMAGES and time.perf_counter() - started > 4 * MIN_SECONDS:
            break  # slow settings (CPU, 224 px): enough
    _synchronise(extractor.device)
    elapsed = time.perf_counter() - started
    return {"images": images, "seconds": round(elapsed, 3), "images_per_s": images / elapsed}


def _synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 224])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--precision", nargs="+", default=["fp32"], choices=list(PRECISIONS))
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument(
        "--checkpoint",
        type=Path,
        help="Measure this checkpoint (at its own input size; --sizes is ignored) instead of an "
        "untrained network, e.g. models/densenet121-demo.pt: an averaged one runs each image "
        "through every network it holds.",
    )
    args = parser.parse_args()

    rows: list[dict[str, object]] = []
    # Other processes on the machine slow a CPU run down; the load says how busy it was.
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as folder:
        if args.checkpoint:
            chosen = [(load_checkpoint(args.checkpoint).image_size, args.checkpoint)]
        else:
            chosen = [(size, fresh_checkpoint(Path(folder), size)) for size in args.sizes]
        for size, checkpoint in chosen:
            for precision in args.precision:
                for batch_size in args.batch_sizes:
                    extractor = FeatureExtractor(
                        checkpoint, args.device, batch_size=batch_size, precision=precision
                    ).load()
                    result = measure(extractor, size, batch_size)
                    rows.append(
                        {"image_size": size, "batch_size": batch_size, "precision": precision,
                         "checkpoint": str(args.checkpoint) if args.checkpoint else "untrained",
                         "networks": extractor.network_count}
                        | result
                    )  # fmt: skip
                    print(
                        f"{size:>4} px  batch {batch_size:>4}  {precision}  "
                        f"{result['images_per_s']:9.1f} images/s",
                        flush=True,
                    )
    device = torch.device(args.device)
    run = {
        "device": device_name(device),
        "torch": str(torch.__version__),
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "load_average_1min": {"before": load_before, "after": os.getloadavg()[0]},
        "cpu_count": os.cpu_count(),
        "results": rows,
    }
    everything = json.loads(args.output.read_text()) if args.output.is_file() else {}
    everything[device.type] = run
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(everything, indent=2) + "\n")
    print()
    print(markdown_table(run))
    print(f"\nwritten to {args.output}")


def markdown_table(run: dict[str, Any]) -> str:
    load = run["load_average_1min"]
    lines = [
        f"{run['device']} (torch {run['torch']}); 1-min load average "
        f"{load['before']:.1f} before, {load['after']:.1f} after",
        "",
        "| image size | batch | precision | images/s |",
        "|---:|---:|---|---:|",
    ]
    for row in run["results"]:
        lines.append(
            f"| {row['image_size']} | {row['batch_size']} | {row['precision']} "
            f"| {row['images_per_s']:.1f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()

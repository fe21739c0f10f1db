"""Exact kNN edge build alone (``services.ingest.knn.exact_knn``), on the CPU or a CUDA GPU.

The bulk ingest's edge step without Neo4j, on generated embeddings (``bench.synthetic``): the
figure that decides whether a bulk ingest of 10^5-10^6 images belongs on a GPU worker. Each
size is timed after one warm-up call on a small set, so CUDA start-up is not counted; the
result is checked against plain numpy on a few rows.

    .venv/bin/python -m bench.knn_throughput --sizes 10000 100000 223648 --device cuda

Appends to ``bench/results/knn_throughput.json`` (one entry per device and size) and prints a
table.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from bench.synthetic import generate
from services.ingest.knn import exact_knn, pick_device

RESULTS = Path(__file__).resolve().parent / "results" / "knn_throughput.json"
CHECK_ROWS = 50


def device_name(device: str) -> str:
    import torch

    if device.startswith("cuda"):
        return f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}"
    return f"{platform.processor() or platform.machine()} ({torch.get_num_threads()} threads), " \
        f"torch {torch.__version__}"  # fmt: skip


def agreement(embeddings: np.ndarray, indices: np.ndarray, k: int) -> float:
    """Share of the checked rows' k nearest (by numpy) that exact_knn found, ties aside."""
    rows = np.linspace(0, len(embeddings) - 1, CHECK_ROWS).astype(int)
    scores = embeddings[rows] @ embeddings.T
    scores[np.arange(len(rows)), rows] = -np.inf
    expected = np.argsort(-scores, axis=1)[:, :k]
    hits = [len(set(expected[i]) & set(indices[row])) for i, row in enumerate(rows)]
    return float(sum(hits) / (k * len(rows)))


def measure(n: int, k: int, device: str) -> dict[str, Any]:
    import torch

    embeddings = generate(n, seed=n).embeddings
    started = time.perf_counter()
    indices, _ = exact_knn(embeddings, k, device=device)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    multiply_adds = n * n * embeddings.shape[1] / 2  # the upper triangle, once
    return {
        "images": n, "k": k, "device": device, "device_name": device_name(device),
        "seconds": seconds, "images_per_s": n / seconds,
        "gflops": 2 * multiply_adds / seconds / 1e9,
        "agreement_with_numpy": agreement(embeddings, indices, k),
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 223_648])
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if present)")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    device = pick_device(args.device)
    exact_knn(generate(2_000, seed=0).embeddings, args.k, device=device)  # warm-up

    previous = json.loads(args.results.read_text()) if args.results.is_file() else []
    print(f"{'images':>8} {'device':>6} {'seconds':>9} {'images/s':>9} {'GFLOPS':>7} agree")
    for n in args.sizes:
        row = measure(n, args.k, device)
        previous = [r for r in previous if (r["images"], r["device"]) != (n, device)] + [row]
        args.results.parent.mkdir(parents=True, exist_ok=True)
        args.results.write_text(json.dumps(previous, indent=2) + "\n")
        print(f"{n:>8} {device:>6} {row['seconds']:>9.1f} {row['images_per_s']:>9.0f} "
              f"{row['gflops']:>7.0f} {row['agreement_with_numpy']:.3f}", flush=True)  # fmt: skip
    print(f"results: {args.results} ({device_name(device)})")


if __name__ == "__main__":
    main()

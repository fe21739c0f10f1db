"""How many of the cosine's results should the re-ranking by predicted findings look at?

The held-out queries of ``medgraph evaluate --held-out`` (the checkpoint's validation images,
unseen patients; every other bundled image as the database; own patient excluded; K = 50),
ranked by exact cosine, then re-ranked by ``services.retrieval.rerank.finding_agreement``
over the first C results for C in CANDIDATES (C = all: the classifier's agreement alone, the
code only breaks ties). Pooled and per source set: precision@50 and ACG_p@50 with
patient-bootstrap intervals.

    .venv/bin/python -m bench.rerank_candidates [--checkpoint CKPT]

Writes ``bench/results/rerank_candidates.json``. Default checkpoint: the platform's.
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import UTC, datetime
from pathlib import Path

from services.config import REPO_ROOT, get_settings
from services.encoder.checkpoint import file_sha256
from services.encoder.default_checkpoint import default_checkpoint_path
from services.encoder.extractor import FeatureExtractor
from services.encoder.labels import bundled_label_files
from services.evaluation.heldout import CodeSet, FindingRerank, evaluate_held_out
from services.evaluation.heldout_run import read_held_out_images

CANDIDATES = (50, 100, 200, 400, 800, 1600, None)  # None = every database image
K = 50
RESULTS = REPO_ROOT / "bench" / "results" / "rerank_candidates.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=None)
    parser.add_argument("--resamples", type=int, default=2000)
    args = parser.parse_args()
    settings = get_settings()
    path = args.checkpoint or default_checkpoint_path(settings)
    started = time.monotonic()
    images = read_held_out_images(bundled_label_files(settings.data_dir), path)
    pixels, data = images.pixels, images.data
    codes, probabilities = FeatureExtractor(path).load().embed_with_findings(pixels)
    rows = [CodeSet("cosine", codes)] + [
        CodeSet(
            f"re-ranked, first {count or 'all'}",
            codes,
            rerank=FindingRerank(probabilities, count or len(codes)),
        )
        for count in CANDIDATES
    ]
    report = evaluate_held_out(data, rows, k=K, resamples=args.resamples)
    print(report.table())
    payload = {
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "checkpoint": path.name,
        "checkpoint_sha256": file_sha256(path),
        "k": K,
        "candidates": [count or len(codes) for count in CANDIDATES],
        "seconds": round(time.monotonic() - started, 1),
    } | report.as_dict()
    RESULTS.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()

"""Which k for the SIMILAR kNN graph? Measured on the bundled NIH set with the demo encoder.

For k in {5, 10, 20, 30}: the symmetrised exact kNN graph of the 733 image codes, and
- precision@k of the exact neighbours: share of an image's k nearest images *of other patients*
  whose finding set equals the image's own (the paper's exact-match relevance), and their mean
  graded relevance (Jaccard of the finding sets, "No Finding" matching "No Finding");
- the graph: pairs, mean degree, connected components, largest component share;
- Louvain communities (networkx, weighted, seed 0): count, modularity, and community precision:
  the share of same-finding-set images (other patients) among an image's community mates, the
  pool Algorithm 1 searches in; plus the same share over all images (the chance level).

    .venv/bin/python -m bench.knn_k_choice

Writes ``bench/results/knn_k_choice.json``. Uses the demo checkpoint (trained once if missing).
"""

from __future__ import annotations

import json
import os
import sys
import time
from datetime import UTC, datetime
from typing import Any

import networkx as nx
import numpy as np

from services.config import REPO_ROOT, get_settings
from services.encoder.extractor import FeatureExtractor, ensure_demo_checkpoint
from services.encoder.imaging import read_image
from services.encoder.labels import bundled_label_files, read_label_sets
from services.ingest.knn import exact_knn, symmetric_edges

KS = (5, 10, 20, 30)
RESULTS = REPO_ROOT / "bench" / "results" / "knn_k_choice.json"


def embed_bundled() -> tuple[np.ndarray, list[frozenset[str]], np.ndarray, str]:
    settings = get_settings()
    table = read_label_sets(bundled_label_files(settings.data_dir))
    extractor = FeatureExtractor(ensure_demo_checkpoint(settings), "cpu").load()
    codes = extractor.embed([read_image(record.image_path).pixels for record in table.records])
    findings = [frozenset(record.findings) for record in table.records]
    patients = np.array([record.patient_id for record in table.records])
    return codes, findings, patients, extractor.model_version


def jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    """Graded relevance: shared findings over all findings of the two ("No Finding" = {})."""
    return 1.0 if not a and not b else len(a & b) / len(a | b)


def measure_k(
    codes: np.ndarray, findings: list[frozenset[str]], patients: np.ndarray, k: int
) -> dict[str, Any]:
    n = len(codes)
    same_findings = np.array([[a == b for b in findings] for a in findings])
    other_patient = patients[:, None] != patients[None, :]

    # precision@k over other patients' images (same-patient images are not retrieval answers)
    similarity = codes @ codes.T
    masked = np.where(other_patient, similarity, -np.inf)
    nearest = np.argsort(-masked, axis=1)[:, :k]
    precision = float(np.mean(np.take_along_axis(same_findings, nearest, axis=1)))
    graded = float(
        np.mean([jaccard(findings[i], findings[j]) for i in range(n) for j in nearest[i]])
    )

    clock = time.monotonic()
    indices, cosines = exact_knn(codes, k, device="cpu")
    edges = symmetric_edges(indices, cosines)
    build_s = time.monotonic() - clock
    graph = nx.Graph()
    graph.add_nodes_from(range(n))
    graph.add_weighted_edges_from(
        zip(edges.smaller.tolist(), edges.larger.tolist(), edges.cosine.tolist(), strict=True)
    )
    components = list(nx.connected_components(graph))
    communities = nx.community.louvain_communities(graph, weight="weight", seed=0)
    modularity = nx.community.modularity(graph, communities, weight="weight")
    community_of = np.empty(n, dtype=int)
    for label, members in enumerate(communities):
        community_of[list(members)] = label
    mates = (community_of[:, None] == community_of[None, :]) & other_patient
    sizes = np.array([len(members) for members in communities])
    per_image = [float(same_findings[i, mates[i]].mean()) for i in range(n) if mates[i].any()]
    return {
        "k": k,
        "precision_at_k_other_patients": round(precision, 4),
        "graded_relevance_at_k": round(graded, 4),
        "pairs": len(edges),
        "mean_degree": round(2 * len(edges) / n, 2),
        "components": len(components),
        "largest_component_share": round(max(len(c) for c in components) / n, 4),
        "louvain_communities": len(communities),
        "louvain_modularity": round(modularity, 4),
        "community_precision": round(float(np.mean(per_image)), 4),
        "community_size_min_median_max": [
            int(sizes.min()),
            int(np.median(sizes)),
            int(sizes.max()),
        ],
        "images_in_communities_of_50_or_more": round(float(np.mean(sizes[community_of] >= 50)), 4),
        "knn_build_s": round(build_s, 3),
    }


def main() -> None:
    codes, findings, patients, model_version = embed_bundled()
    n = len(codes)
    same = np.array([[a == b for b in findings] for a in findings])
    other = patients[:, None] != patients[None, :]
    chance = float(same[other].mean())
    rows = [measure_k(codes, findings, patients, k) for k in KS]
    payload = {
        "benchmark": "knn_k_choice",
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "data": f"bundled NIH ChestX-ray14 64px, {n} images, {len(set(patients))} patients",
        "model_version": model_version,
        "chance_same_findings_other_patient": round(chance, 4),
        "results": rows,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"{n} images, model {model_version}; chance of same finding set: {chance:.3f}")
    print(f"{'k':>3} {'P@k':>6} {'ACG@k':>6} {'pairs':>6} {'degree':>6} {'comps':>5} "
          f"{'largest':>7} {'comms':>5} {'Q':>6} {'comm P':>6} {'>=50':>5}")  # fmt: skip
    for r in rows:
        print(f"{r['k']:>3} {r['precision_at_k_other_patients']:>6.3f} "
              f"{r['graded_relevance_at_k']:>6.3f} {r['pairs']:>6} "
              f"{r['mean_degree']:>6.1f} {r['components']:>5} "
              f"{r['largest_component_share']:>7.3f} {r['louvain_communities']:>5} "
              f"{r['louvain_modularity']:>6.3f} {r['community_precision']:>6.3f} "
              f"{r['images_in_communities_of_50_or_more']:>5.2f}")  # fmt: skip
    print(f"results: {RESULTS}")


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))
    sys.exit(main())

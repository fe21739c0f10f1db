"""The in-memory strategies at scale without Neo4j: the read model built straight from generated
data, for when a full ``bench/search_scale.py`` build (hours on a busy shared machine) does not fit.

Per size: ``bench.synthetic.generate`` (or ``generate_hard``), the exact kNN graph (k = 10, blocked
per planted cluster/group as in ``search_scale``), and a :class:`GraphSnapshot` whose communities
are the planted clusters (on the easy set GDS Leiden finds the same partition: 118 communities,
modularity 0.987, at 223,648 in ``search_scale``), with m, degrees and sigma_tot summed from the
edges exactly as the clustering job stores them. Then, for ``--queries`` leave-one-out queries
(own patient excluded, K = 50), the compute of each in-memory strategy (no version-check round
trip: add the ~1 ms Neo4j read of ``search_scale``), a plain numpy top-50 in the same process,
recall@50 against ``exact``, whether ``region`` with its inverted-file seed gives the same answer
as with the exact nearest as the query's edges, the read model's bytes and the process RSS.

    .venv/bin/python -m bench.search_inprocess --sizes 223648 --set easy

Writes ``bench/results/search_inprocess.json`` (``--output``).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from bench.similarity_graph import knn_edges
from bench.synthetic import generate, generate_hard
from services.config import REPO_ROOT
from services.evaluation.metrics import LatencySummary, recall_at_k
from services.retrieval.contract import SearchFilters
from services.retrieval.exact import ExactSearch
from services.retrieval.incremental import relayout
from services.retrieval.ranked import CommunityRankedSearch
from services.retrieval.readmodel import GraphSnapshot
from services.retrieval.region import RegionGrowingSearch

K = 50
KNN_K = 10
RESULTS = REPO_ROOT / "bench" / "results" / "search_inprocess.json"


class FixedSnapshot:
    """Stands in for the read-model cache: always the same snapshot, no version check."""

    def __init__(self, snapshot: GraphSnapshot) -> None:
        self.snapshot = snapshot

    def get(self, diagnostics: object = None) -> GraphSnapshot:
        return self.snapshot


def build_snapshot(n: int, generated: str, seed: int) -> tuple[GraphSnapshot, dict[str, Any]]:
    report: dict[str, Any] = {"images": n, "set": generated}
    clock = time.perf_counter()
    data = generate_hard(n, seed=seed) if generated == "hard" else generate(n, seed=seed)
    report["generate_s"] = round(time.perf_counter() - clock, 1)
    clock = time.perf_counter()
    edges = knn_edges(data.embeddings, KNN_K, groups=data.cluster)
    report["knn_s"] = round(time.perf_counter() - clock, 1)
    report["pairs"] = len(edges)
    communities = data.cluster.astype(np.int64)
    order = np.argsort(communities, kind="stable")
    row_of = np.empty(n, dtype=np.int64)
    row_of[order] = np.arange(n)
    matrix = data.embeddings[order]
    community = communities[order].astype(np.int32)
    del data
    source = np.concatenate([row_of[edges.smaller], row_of[edges.larger]])
    target = np.concatenate([row_of[edges.larger], row_of[edges.smaller]]).astype(np.int32)
    weight = np.concatenate([edges.cosine, edges.cosine]).astype(np.float64)
    by_source = np.argsort(source, kind="stable")
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(source, minlength=n), out=indptr[1:])
    degree = np.bincount(source, weights=weight, minlength=n)
    ids = np.unique(community).astype(np.int64)
    starts = np.searchsorted(community, ids, side="left")
    stops = np.searchsorted(community, ids, side="right")
    sigma = np.array([degree[a:b].sum() for a, b in zip(starts, stops, strict=True)])
    generator = np.random.default_rng(seed + 1)
    patients = generator.integers(0, max(1, int(n / 3.5)), size=n).astype(np.int32)
    snapshot = GraphSnapshot(
        version=(n, None, None, 0),
        keys=np.array([f"syn-{int(i):07d}" for i in order], dtype=str),
        matrix=matrix,
        patient_codes=patients,
        patient_code_of={str(p): int(p) for p in range(int(patients.max()) + 1)},
        modality_codes=np.zeros(n, dtype=np.int32),
        modality_code_of={"PNG": 0},
        findings=[()] * n,
        community=community,
        indptr=indptr,
        neighbours=target[by_source],
        weights=weight[by_source],
        degree=degree,
        community_ids=ids,
        sigma_tot=sigma,
        community_size=(stops - starts).astype(np.int64),
        block_start=starts.astype(np.int64),
        block_stop=stops.astype(np.int64),
        m=float(weight.sum() / 2.0),
        run="generated",
    )
    # As a compaction lays a model out: each block cut into its scan lists.
    sums = {"communities": list(zip(ids.tolist(), sigma.tolist(), (stops - starts).tolist(),
                                    strict=True)),
            "m": snapshot.m, "run": snapshot.run}  # fmt: skip
    snapshot = relayout(snapshot, None, sums)
    report["communities"] = len(ids)
    report["community_size_median"] = float(np.median(stops - starts))
    return snapshot, report


def measure(snapshot: GraphSnapshot, queries: int, seed: int) -> dict[str, Any]:
    cache = FixedSnapshot(snapshot)
    strategies: dict[str, Any] = {
        "region": RegionGrowingSearch(cache, query_edges=KNN_K),  # type: ignore[arg-type]
        "community_ranked": CommunityRankedSearch(cache, query_edges=KNN_K),  # type: ignore[arg-type]
        "exact": ExactSearch(cache),  # type: ignore[arg-type]
    }
    exact_seed = RegionGrowingSearch(cache, query_edges=KNN_K, seed_candidates=0)  # type: ignore[arg-type]
    rows = np.random.default_rng(seed).choice(len(snapshot), size=queries + 10, replace=False)
    warmup, chosen = rows[:10], rows[10:]

    def filters(row: int) -> SearchFilters:
        return SearchFilters(exclude_keys=frozenset({str(snapshot.keys[row])}),
                             exclude_patient_key=snapshot.patient_of(int(row)))  # fmt: skip

    numpy_ms = []
    for row in list(warmup) + list(chosen):
        clock = time.perf_counter()
        scores = snapshot.matrix @ snapshot.matrix[row]
        top = np.argpartition(-scores, K)[:K]
        top[np.argsort(-scores[top])]
        numpy_ms.append((time.perf_counter() - clock) * 1000.0)
    numpy = LatencySummary.of(numpy_ms[len(warmup) :])
    answers: dict[str, list[tuple[str, ...]]] = {}
    out: dict[str, Any] = {"queries": len(chosen), "k": K,
                           "numpy_brute_force": _summary(numpy)}  # fmt: skip
    for name, strategy in strategies.items():
        for row in warmup:
            strategy.search(snapshot.matrix[row], K, filters(row))
        samples, fractions, results = [], [], []
        for row in chosen:
            clock = time.perf_counter()
            hits = strategy.search(snapshot.matrix[row], K, filters(row))
            samples.append((time.perf_counter() - clock) * 1000.0)
            fractions.append(hits.diagnostics.fraction_examined)
            results.append(hits.keys)
        answers[name] = results
        summary = LatencySummary.of(samples)
        out[name] = {
            "compute": _summary(summary),
            "compute_p50_over_numpy_p50": round(summary.p50_ms / numpy.p50_ms, 3),
            "compute_p99_over_numpy_p50": round(summary.p99_ms / numpy.p50_ms, 3),
            "fraction_examined": round(float(np.mean(fractions)), 5),
        }
    for name in strategies:
        out[name]["recall_at_50_vs_exact"] = round(float(np.mean([
            recall_at_k(got, truth, K) for got, truth in zip(answers[name], answers["exact"],
                                                             strict=True)])), 4)  # fmt: skip
    same = sum(
        exact_seed.search(snapshot.matrix[row], K, filters(row)).keys == got
        for row, got in zip(chosen, answers["region"], strict=True)
    )
    out["region_answers_identical_to_exact_seed"] = round(same / len(chosen), 4)
    outside = []
    for row, hits in zip(chosen, answers["exact"], strict=True):
        found = [snapshot.key_index[key] for key in hits]
        outside.append(float(np.mean(snapshot.community[found] != snapshot.community[row])))
    out["exact_top50_outside_query_community"] = round(float(np.mean(outside)), 4)
    return out


def _summary(summary: LatencySummary) -> dict[str, float]:
    return {"mean_ms": round(summary.mean_ms, 2), "p50_ms": round(summary.p50_ms, 2),
            "p99_ms": round(summary.p99_ms, 2)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="223648")
    parser.add_argument("--set", dest="generated", choices=("easy", "hard"), default="easy")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=RESULTS)
    arguments = parser.parse_args()
    results = []
    if arguments.output.exists():
        wanted = {(int(size), arguments.generated) for size in arguments.sizes.split(",")}
        previous = json.loads(arguments.output.read_text())["results"]
        results = [r for r in previous if (r["images"], r["set"]) not in wanted]
    for n in (int(value) for value in arguments.sizes.split(",")):
        snapshot, entry = build_snapshot(n, arguments.generated, arguments.seed)
        entry["read_model_mib"] = round(snapshot.nbytes / 2**20)
        entry["load_average_1m_before"] = round(os.getloadavg()[0], 2)
        entry.update(measure(snapshot, arguments.queries, arguments.seed))
        entry["load_average_1m_after"] = round(os.getloadavg()[0], 2)
        entry["process_rss_mib"] = round(psutil.Process().memory_info().rss / 2**20)
        results.append(entry)
        print(json.dumps(entry, indent=1), flush=True)
        arguments.output.parent.mkdir(parents=True, exist_ok=True)
        arguments.output.write_text(json.dumps({
            "benchmark": "search_inprocess",
            "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": {"cpus": os.cpu_count(), "note": "2-core machine shared with other "
                        "engineers' jobs; load_average_1m per entry"},
            "results": results}, indent=2) + "\n")  # fmt: skip


if __name__ == "__main__":
    main()

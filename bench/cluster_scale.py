"""Community detection at scale: seconds and peak memory of `medgraph cluster` by graph size.

    .venv/bin/python -m bench.cluster_scale                       # 10^4, 10^5, 223,648 images
    .venv/bin/python -m bench.cluster_scale --sizes 10000 --keep-neo4j

For each size the benchmark starts a fresh Neo4j of its own (``.medgraph/bench-cluster``, Bolt
27787, heap 4g, page cache 2g; a new data folder per size so that the JVM's memory is measured
per size), writes ``bench.synthetic.generate(n)`` as ingestion does (1024-d float32 embeddings,
findings, patient keys, ``ingested_at``) with the symmetric kNN graph (k = 10) of the ingestion's
own exact kNN code, run inside each planted cluster (the all-pairs product at 223,648 images is
~10^14 flops, ~20 min on 2 cores; with the generator's default spread every point's k nearest
lie in its own cluster, which is checked on a sample: ``knn_agreement``). The vector index is not
created: its background population would compete with the clustering for the 2 cores.

Then it runs the job as an operator does, ``python -m services.cli cluster --json`` in a child
process, and samples the resident memory of that process and of the Neo4j JVM every 0.2 s
(psutil; the child's peak also from the kernel's ru_maxrss). Finally it ingests 1,000 more
images (their nodes and every kNN pair touching them) and times ``assign_new_images`` on them
in batches of 100, as the ingest pipeline would call it. Results go to
bench/results/cluster_scale.json.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from bench.memory import PeakSampler
from bench.similarity_graph import (
    knn_agreement,
    knn_edges,
    select_edges,
    synthetic_keys,
    write_edges,
    write_graph,
)
from bench.synthetic import SCALES, generate
from services.communities.freshness import assign_new_images
from services.config import REPO_ROOT, Settings
from services.graph.cypher import load_cypher_statements
from services.graph.store import GraphStore, close_shared_drivers
from services.runtime.neo4j import Neo4jRuntime

RESULTS = Path(__file__).resolve().parent / "results" / "cluster_scale.json"
BENCH_HOME = REPO_ROOT / ".medgraph" / "bench-cluster"
BOLT_PORT, HTTP_PORT = 27787, 27574
K = 10
NEW_IMAGES = 1_000
ASSIGN_BATCH = 100
MIB = 1024 * 1024


def bench_settings(algorithm: str) -> Settings:
    return Settings(
        home=BENCH_HOME, neo4j_bolt_port=BOLT_PORT, neo4j_http_port=HTTP_PORT,
        neo4j_heap="4g", neo4j_pagecache="2g", cluster_algorithm=algorithm,
    )  # fmt: skip


def child_environment(settings: Settings) -> dict[str, str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("MEDGRAPH_")}
    environment.update({
        "MEDGRAPH_HOME": str(settings.home),
        "MEDGRAPH_NEO4J_BOLT_PORT": str(settings.neo4j_bolt_port),
        "MEDGRAPH_NEO4J_HTTP_PORT": str(settings.neo4j_http_port),
        "MEDGRAPH_CLUSTER_ALGORITHM": settings.cluster_algorithm,
    })  # fmt: skip
    return environment


def apply_bench_schema(store: GraphStore) -> None:
    for statement in load_cypher_statements("schema"):
        if "VECTOR INDEX" not in statement:
            store.run_text(statement)
    store.run_text("CALL db.awaitIndexes(300)")


def fresh_neo4j(settings: Settings) -> Neo4jRuntime:
    runtime = Neo4jRuntime(settings)
    close_shared_drivers()
    runtime.stop()
    shutil.rmtree(runtime.data_dir, ignore_errors=True)
    runtime.start()
    return runtime


def measure_size(n: int, algorithm: str, say: Any) -> dict[str, Any]:
    settings = bench_settings(algorithm)
    runtime = fresh_neo4j(settings)
    store = GraphStore.from_settings(settings)
    apply_bench_schema(store)
    record: dict[str, Any] = {"images": n, "k": K, "algorithm": algorithm}

    clock = time.perf_counter()
    data = generate(n + NEW_IMAGES)
    keys = synthetic_keys(range(n + NEW_IMAGES))
    record["generate_s"] = round(time.perf_counter() - clock, 1)
    clock = time.perf_counter()
    all_edges = knn_edges(data.embeddings, K, groups=data.cluster)
    record["knn_s"] = round(time.perf_counter() - clock, 1)
    record["knn_agreement_sample"] = knn_agreement(data.embeddings, all_edges, K, sample=200)
    base_edges = select_edges(all_edges, all_edges.larger < n)
    record["pairs"] = len(base_edges)
    record["pairs_per_image"] = round(len(base_edges) / n, 2)
    agreement = record["knn_agreement_sample"]
    say(f"{n}: {len(base_edges)} SIMILAR pairs ({record['pairs_per_image']} per image), kNN "
        f"{record['knn_s']} s, exact-kNN agreement on a sample {agreement:.0%}")  # fmt: skip

    clock = time.perf_counter()
    write_graph(store, keys[:n], data.embeddings[:n], data.findings[:n], data.patient[:n],
                base_edges, progress=lambda message: say(f"{n}: {message}"))  # fmt: skip
    record["write_graph_s"] = round(time.perf_counter() - clock, 1)

    jvm_pid = runtime.process.pid()
    assert jvm_pid is not None
    jvm_before = psutil.Process(jvm_pid).memory_info().rss
    gc.collect()
    # The machine is shared: the load says how much of the 2 cores the figures had.
    record["load_average_1m_before"] = round(os.getloadavg()[0], 2)
    say(f"{n}: clustering ({algorithm}) in a child process")
    clock = time.perf_counter()
    child = subprocess.Popen(
        [sys.executable, "-m", "services.cli", "cluster", "--json"],
        cwd=REPO_ROOT, env=child_environment(settings), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    with PeakSampler({"python": child.pid, "neo4j": jvm_pid}, interval_s=0.2) as sampler:
        stdout, stderr = child.communicate()
    wall = time.perf_counter() - clock
    if child.returncode != 0:
        raise RuntimeError(f"medgraph cluster failed at {n} images:\n{stderr[-3000:]}")
    summary = json.loads(stdout.strip().splitlines()[-1])
    record.update({
        "cluster_wall_s": round(wall, 1),
        "cluster_job_s": round(summary["seconds"], 1),
        "phase_s": {name: round(s, 1) for name, s in summary["phase_seconds"].items()},
        "communities": summary["community_count"],
        "size_min": summary["size_min"],
        "size_median": summary["size_median"],
        "size_max": summary["size_max"],
        "modularity": round(summary["modularity"], 6),
        "reported_modularity": round(summary["reported_modularity"], 6),
        "communities_merged": summary["communities_merged"],
        "python_peak_rss_mib": round(sampler.peaks.get("python", 0) / MIB),
        "neo4j_rss_before_mib": round(jvm_before / MIB),
        "neo4j_peak_rss_mib": round(sampler.peaks.get("neo4j", 0) / MIB),
        "load_average_1m_after": round(os.getloadavg()[0], 2),
    })  # fmt: skip
    say(f"{n}: {summary['community_count']} communities, Q {summary['modularity']:.4f}, "
        f"{wall:.1f} s, python peak {record['python_peak_rss_mib']} MiB, Neo4j peak "
        f"{record['neo4j_peak_rss_mib']} MiB")  # fmt: skip

    new = np.arange(n, n + NEW_IMAGES)
    write_graph(store, keys[n:], data.embeddings[new], data.findings[n:], data.patient[new], None)
    write_edges(store, keys, select_edges(all_edges, all_edges.larger >= n))
    clock = time.perf_counter()
    for start in range(n, n + NEW_IMAGES, ASSIGN_BATCH):
        assign_new_images(store, keys[start : start + ASSIGN_BATCH])
    assign_s = time.perf_counter() - clock
    record["assign_new_images_ms_per_image"] = round(1000 * assign_s / NEW_IMAGES, 2)
    say(f"{n}: assign_new_images {record['assign_new_images_ms_per_image']} ms per image "
        f"(batches of {ASSIGN_BATCH})")  # fmt: skip
    close_shared_drivers()
    return record


def print_table(rows: list[dict[str, Any]]) -> None:
    header = (
        f"{'images':>8} {'pairs':>9} {'comm.':>6} {'sizes min/med/max':>20} {'Q':>7} "
        f"{'cluster s':>9} {'py MiB':>7} {'neo4j MiB':>10} {'assign ms':>9}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        sizes = f"{r['size_min']}/{r['size_median']:g}/{r['size_max']}"
        print(
            f"{r['images']:>8} {r['pairs']:>9} {r['communities']:>6} {sizes:>20} "
            f"{r['modularity']:>7.4f} {r['cluster_wall_s']:>9.1f} {r['python_peak_rss_mib']:>7} "
            f"{r['neo4j_peak_rss_mib']:>10} {r['assign_new_images_ms_per_image']:>9}"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=sorted(SCALES.values()))
    parser.add_argument("--algorithm", default="leiden", choices=["leiden", "louvain"])
    parser.add_argument("--keep-neo4j", action="store_true", help="Leave the server running.")
    args = parser.parse_args(argv)

    def say(message: str) -> None:
        print(f"[{datetime.now():%H:%M:%S}] {message}", flush=True)

    rows = []
    try:
        for n in args.sizes:
            rows.append(measure_size(n, args.algorithm, say))
            write_results(rows)
    finally:
        if not args.keep_neo4j:
            Neo4jRuntime(bench_settings(args.algorithm)).stop()
    print_table(rows)


def write_results(rows: list[dict[str, Any]]) -> None:
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    memory = psutil.virtual_memory().total
    RESULTS.write_text(json.dumps({
        "benchmark": "cluster_scale",
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "memory_gib": round(memory / 1024**3, 1),
                    "python": platform.python_version(), "neo4j_heap": "4g",
                    "neo4j_pagecache": "2g"},
        "results": rows,
    }, indent=2) + "\n")  # fmt: skip


if __name__ == "__main__":
    main()

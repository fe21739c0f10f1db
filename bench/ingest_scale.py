"""Ingestion at scale: node writes (embeddings and vector index included), the exact kNN edge
build, edge writes, and an incremental add, at 10^4, 10^5 and 223,648 (CheXpert) images.

Skips Celery and the encoder (measured elsewhere): the generated embeddings of
``bench.synthetic`` go through the same Cypher (``cypher/ingest_*.cypher``) and the same
``services.ingest`` code the graph-queue tasks run. Each size runs in its own child process
against a fresh Neo4j (own home and ports below, heap 4g, page cache 4g), so the peak memory
figures belong to that size alone.

    .venv/bin/python -m bench.ingest_scale                # all three sizes
    .venv/bin/python -m bench.ingest_scale --sizes 10000  # one size

Writes ``bench/results/ingest_scale.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from bench.memory import PeakSampler
from bench.synthetic import SCALES, generate
from services.config import REPO_ROOT, Settings
from services.graph.cypher import load_cypher_statements
from services.graph.store import GraphStore, close_shared_drivers
from services.ingest.edges import build_edges, edge_state, load_embeddings, write_edges
from services.ingest.knn import exact_knn, knn_floor, symmetric_edges
from services.ingest.pipeline import write_image_rows
from services.runtime.neo4j import Neo4jRuntime
from services.secrets import neo4j_auth

BENCH_HOME = REPO_ROOT / ".medgraph" / "bench-ingest"
BOLT_PORT, HTTP_PORT = 27687, 27474
RESULTS = REPO_ROOT / "bench" / "results" / "ingest_scale.json"
NEW_IMAGES = 200  # the incremental add, held out from the same generated set
CHECK_ROWS = 200  # rows whose kNN is re-checked against plain numpy
MIB = 1024 * 1024


def bench_settings(heap: str = "4g", pagecache: str = "4g") -> Settings:
    return Settings(
        home=BENCH_HOME, neo4j_bolt_port=BOLT_PORT, neo4j_http_port=HTTP_PORT,
        neo4j_heap=heap, neo4j_pagecache=pagecache, neo4j_start_timeout_s=300,
    )  # fmt: skip


def patient_store(settings: Settings) -> Any:
    """A GraphStore whose driver keeps retrying for 10 minutes: on a machine shared with other
    heavy jobs Neo4j can stall for longer than the driver's default 30 s of retries."""
    from neo4j import GraphDatabase

    driver = GraphDatabase.driver(
        settings.bolt_uri, auth=neo4j_auth(settings),
        max_transaction_retry_time=600, connection_acquisition_timeout=600,
    )  # fmt: skip
    return GraphStore(driver, settings.neo4j_database)


def vm_hwm_mib(pid: int) -> float | None:
    """The kernel's own peak resident set (VmHWM) of a process, in MiB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def python_peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def folder_mib(path: Path) -> float:
    return sum(file.stat().st_size for file in path.rglob("*") if file.is_file()) / MIB


def node_rows(data: Any, indices: range) -> Iterator[dict[str, Any]]:
    keys = data.keys
    for i in indices:
        yield {
            "key": keys[i],
            "source": f"synthetic://{keys[i]}",
            "findings": list(data.findings[i]),
            "patient_key": f"{int(data.patient[i]):016x}",
            "modality": "OT", "width": 1024, "height": 1024, "file_bytes": 0,
            "model_version": "synthetic",
            "embedding": data.embeddings[i],
        }  # fmt: skip


def measure(
    n: int, say: Any, overlap: bool = False, heap: str = "4g", pagecache: str = "4g"
) -> dict[str, Any]:
    """One size, in this (child) process, against a fresh bench Neo4j.

    ``overlap``: compute the kNN in a thread while the nodes are written (on the generated
    embeddings, the same values the bulk path reads back), to fit a slow, shared machine's
    time budget; the result says so, and both phases then share the CPU.
    """
    settings = bench_settings(heap, pagecache)
    runtime = Neo4jRuntime(settings)
    close_shared_drivers()
    runtime.stop()
    shutil.rmtree(runtime.data_dir, ignore_errors=True)
    runtime.start()
    store = patient_store(settings)
    for statement in load_cypher_statements("schema"):
        store.run_text(statement)
    store.run_text("CALL db.awaitIndexes(300)")
    neo4j_pid = runtime.status().pid
    assert neo4j_pid is not None
    result: dict[str, Any] = {
        "images": n, "k": settings.knn_k, "load_average_1m_start": os.getloadavg()[0],
        "knn_overlapped_with_node_writes": overlap, "neo4j_heap": heap,
        "neo4j_pagecache": pagecache,
    }  # fmt: skip
    memory: dict[str, float] = {}

    with PeakSampler({"neo4j": neo4j_pid, "python": os.getpid()}) as sampler:
        clock = time.monotonic()
        data = generate(n + NEW_IMAGES)
        result["generate_s"] = time.monotonic() - clock
        say(f"{n}: generated {n + NEW_IMAGES} embeddings in {result['generate_s']:.1f}s")

        knn_result: dict[str, Any] = {}

        def compute_knn() -> None:
            started = time.monotonic()
            knn_result["knn"] = exact_knn(
                data.embeddings[:n], settings.knn_k, block_mib=settings.knn_block_mib,
                device="cpu",
            )  # fmt: skip
            knn_result["seconds"] = time.monotonic() - started

        knn_thread = threading.Thread(target=compute_knn, daemon=True) if overlap else None
        if knn_thread is not None:
            knn_thread.start()
        clock = time.monotonic()
        write_image_rows(store, node_rows(data, range(n)), settings.write_batch_size)
        result["node_write_s"] = time.monotonic() - clock
        clock = time.monotonic()
        store.run_text("CALL db.awaitIndexes(3600)")
        result["index_wait_s"] = time.monotonic() - clock
        result["nodes_per_s"] = n / (result["node_write_s"] + result["index_wait_s"])
        memory["python_after_nodes_mib"] = python_peak_mib()
        say(f"{n}: nodes written at {result['nodes_per_s']:.0f}/s "
            f"({result['node_write_s']:.0f}s + index {result['index_wait_s']:.0f}s)")  # fmt: skip

        # The bulk edge build, phase by phase, exactly as services.ingest.edges._bulk runs it.
        clock = time.monotonic()
        keys, matrix = load_embeddings(store, pending_only=False)
        result["embedding_read_s"] = time.monotonic() - clock
        assert len(keys) == n and keys == sorted(keys)
        say(f"{n}: embeddings read back in {result['embedding_read_s']:.1f}s")

        clock = time.monotonic()
        if knn_thread is not None:
            knn_thread.join()
            indices, cosines = knn_result["knn"]
            result["knn_s"] = knn_result["seconds"]
            # Same rows, same order: the bulk path would have computed exactly this.
            assert np.array_equal(matrix, data.embeddings[:n])
        else:
            indices, cosines = exact_knn(
                matrix, settings.knn_k, block_mib=settings.knn_block_mib, device="cpu"
            )
            result["knn_s"] = time.monotonic() - clock
        clock = time.monotonic() - result["knn_s"]
        edges = symmetric_edges(indices, cosines, settings.min_cosine)
        floors = knn_floor(cosines, settings.knn_k)
        result["edge_build_s"] = time.monotonic() - clock
        result["pairs"] = len(edges)
        memory["python_after_knn_mib"] = python_peak_mib()
        say(f"{n}: exact kNN in {result['knn_s']:.0f}s, {len(edges)} pairs")

        rng = np.random.default_rng(1)
        rows = rng.choice(n, size=min(CHECK_ROWS, n), replace=False)
        reference = np.argsort(-(matrix[rows] @ matrix.T), axis=1)[:, 1 : settings.knn_k + 1]
        result["knn_check_agreement"] = float(
            np.mean([len(set(a) & set(b)) / settings.knn_k
                     for a, b in zip(indices[rows], reference, strict=True)])
        )  # fmt: skip
        del matrix

        clock = time.monotonic()
        write_edges(
            store, keys, edges.smaller, edges.larger, edges.cosine, settings.edge_write_batch_size
        )
        result["edge_write_s"] = time.monotonic() - clock
        result["edges_per_s"] = len(edges) / result["edge_write_s"]
        clock = time.monotonic()
        store.write_batches(
            "ingest_set_knn_floor",
            ({"key": key, "floor": float(f)} for key, f in zip(keys, floors, strict=True)),
            settings.edge_write_batch_size,
        )
        result["floor_write_s"] = time.monotonic() - clock
        say(f"{n}: {len(edges)} edges written at {result['edges_per_s']:.0f}/s")
        del indices, cosines, edges, floors

        # Incremental: the held-out images arrive into the linked graph.
        clock = time.monotonic()
        new_rows = node_rows(data, range(n, n + NEW_IMAGES))
        write_image_rows(store, new_rows, settings.write_batch_size)
        store.run_text("CALL db.awaitIndexes(600)")
        result["incremental_node_write_s"] = time.monotonic() - clock
        report = build_edges(store, settings)
        result["incremental"] = report.as_dict()
        result["incremental_ms_per_image"] = 1000 * report.total_s / NEW_IMAGES
        images, linked = edge_state(store)
        assert (report.mode, images, linked) == ("incremental", n + NEW_IMAGES, n + NEW_IMAGES)
        say(f"{n}: {NEW_IMAGES} new images linked incrementally in {report.total_s:.1f}s")

    result["similar_edges"] = int(store.query("ingest_similar_count")[0]["edges"])
    store.driver.close()
    memory["python_peak_mib"] = python_peak_mib()
    memory["python_sampled_peak_mib"] = sampler.peaks.get("python", 0) / MIB
    memory["neo4j_sampled_peak_mib"] = sampler.peaks.get("neo4j", 0) / MIB
    memory["neo4j_vmhwm_mib"] = vm_hwm_mib(neo4j_pid) or 0.0
    result["memory"] = memory
    result["store_mib"] = folder_mib(runtime.data_dir)
    result["load_average_1m_end"] = os.getloadavg()[0]
    close_shared_drivers()
    runtime.stop()
    return result


def save_result(result: dict[str, Any]) -> dict[str, Any]:
    """Merge one size's result into the results file (kept after each size, so a later size
    that fails loses nothing)."""
    settings = bench_settings()
    previous = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    kept = [r for r in previous.get("results", []) if r["images"] != result["images"]]
    payload = {
        "benchmark": "ingest_scale",
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "memory_gib": round(psutil.virtual_memory().total / 1024**3, 1),
            "python": sys.version.split()[0],
            "gpu": False,
        },
        "settings": {
            "knn_k": settings.knn_k,
            "min_cosine": settings.min_cosine,
            "write_batch_size": settings.write_batch_size,
            "edge_write_batch_size": settings.edge_write_batch_size,
            "knn_block_mib": settings.knn_block_mib,
            "knn_index_candidates": settings.knn_index_candidates,
            "new_images_incremental": NEW_IMAGES,
        },  # fmt: skip
        "results": sorted([*kept, result], key=lambda r: r["images"]),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(payload, indent=2) + "\n")
    return payload


def print_table(results: list[dict[str, Any]]) -> None:
    header = (f"{'images':>8} {'nodes/s':>8} {'kNN s':>8} {'edges':>9} {'edges/s':>8} "
              f"{'incr ms/img':>11} {'py MiB':>7} {'neo4j MiB':>9}")  # fmt: skip
    print(header)
    for r in results:
        print(f"{r['images']:>8} {r['nodes_per_s']:>8.0f} {r['edge_build_s']:>8.1f} "
              f"{r['pairs']:>9} {r['edges_per_s']:>8.0f} {r['incremental_ms_per_image']:>11.1f} "
              f"{r['memory']['python_peak_mib']:>7.0f} "
              f"{r['memory']['neo4j_vmhwm_mib']:>9.0f}")  # fmt: skip


def markdown_table(results: list[dict[str, Any]]) -> str:
    """The README table of ``services/ingest/README.md``."""
    lines = [
        "| images | nodes/s (with embeddings, vector index) | embeddings read back s | exact kNN s "
        "| SIMILAR pairs | edges/s | incremental ms / new image | peak Python MiB "
        "| peak Neo4j MiB | store MiB | load avg |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        memory = r["memory"]
        lines.append(
            f"| {r['images']:,} | {r['nodes_per_s']:.0f} | {r['embedding_read_s']:.0f} "
            f"| {r['edge_build_s']:.0f} | {r['pairs']:,} | {r['edges_per_s']:.0f} "
            f"| {r['incremental_ms_per_image']:.0f} | {memory['python_peak_mib']:.0f} "
            f"| {memory['neo4j_vmhwm_mib']:.0f} | {r['store_mib']:.0f} "
            f"| {r['load_average_1m_start']:.0f}-{r['load_average_1m_end']:.0f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=sorted(SCALES.values()))
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--markdown", action="store_true", help="Print the README table.")
    parser.add_argument(
        "--overlap",
        action="store_true",
        help="Compute the kNN while the nodes are written (saves time).",
    )
    parser.add_argument("--heap", default="4g", help="Neo4j heap.")
    parser.add_argument("--pagecache", default="4g", help="Neo4j page cache.")
    args = parser.parse_args(argv)
    if args.markdown:
        print(markdown_table(json.loads(RESULTS.read_text())["results"]))
        return

    def say(message: str) -> None:  # progress on stderr; a child's stdout is its JSON result
        print(f"[{datetime.now():%H:%M:%S}] {message}", file=sys.stderr, flush=True)

    if args.child:
        import torch

        torch.set_num_threads(os.cpu_count() or 1)
        result = measure(args.child, say, args.overlap, args.heap, args.pagecache)
        print(json.dumps(result), flush=True)
        return

    if not args.sizes:
        parser.error("give at least one size")
    for n in args.sizes:
        say(f"--- {n} images ---")
        completed = subprocess.run(
            [sys.executable, "-m", "bench.ingest_scale", "--child", str(n), "--heap", args.heap,
             "--pagecache", args.pagecache, *(["--overlap"] if args.overlap else [])],
            cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True, check=True,
        )  # fmt: skip
        payload = save_result(json.loads(completed.stdout.strip().splitlines()[-1]))
    print_table(payload["results"])
    print(f"results: {RESULTS}")


if __name__ == "__main__":
    main()

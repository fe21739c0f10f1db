"""Bounded load test on loopback: concurrent clients searching the demo set through the real
API served by waitress (``medgraph serve``).

Setup, on its own stack (``.medgraph/bench-load``, Bolt 27987, HTTP 27774, Redis 26879, API
25140), done once and reused by later runs:

1. the bundled NIH set (733 images) ingested with the ingestion's own code
   (``services.ingest.pipeline`` + ``services.ingest.edges``, exact kNN, k = 10), then clustered by
   the clustering job (``services.communities.job.run_clustering``, GDS Leiden);
2. a read API key made with ``services.auth.api_keys.create_api_key``.

Load: ``--clients`` threads (16), each with one keep-alive HTTP connection to 127.0.0.1, send
``POST /api/v1/search`` back to back for ``--duration`` seconds (60) or until ``--max-requests``
(200,000) in total, then stop. Each request picks its kind from the mix in turn: a stored
image's key (leave-one-out, k = 10) with the ``region``, ``community_ranked``, ``exact`` or
``vector`` strategy, or an
uploaded PNG (decoded and embedded by the server) searched with ``region``. Any answer but 200
counts as an error. Reports requests/s, p50/p90/p99/max latency and errors per kind and in
total; writes ``bench/results/load_test.json``.

    .venv/bin/python -m bench.load_test                    # 16 clients, 60 s
    .venv/bin/python -m bench.load_test --clients 4 --duration 10

The encoder is the demo checkpoint when the home has one, else a seeded random-weight
DenseNet-121 (codes without medical meaning, but the same cost): the load figures do not depend
on what the network learnt.
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import json
import logging
import os
import random
import subprocess
import sys
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from services.auth.api_keys import create_api_key
from services.communities.job import run_clustering
from services.config import REPO_ROOT, Settings
from services.encoder.checkpoint import EncoderCheckpoint, save_checkpoint
from services.encoder.default_checkpoint import default_checkpoint_path
from services.encoder.extractor import FeatureExtractor
from services.encoder.imaging import ReadLimits
from services.encoder.labels import FINDINGS_NIH
from services.encoder.network import build_densenet121
from services.encoder.preprocessing import Normalisation
from services.graph.store import GraphStore, close_shared_drivers
from services.ingest.edges import build_edges
from services.ingest.pipeline import embed_files, write_image_rows
from services.ingest.submit import plan_ingest
from services.runtime.neo4j import Neo4jRuntime
from services.runtime.redis import RedisRuntime
from services.secrets import patient_key_secret

HOME = REPO_ROOT / ".medgraph" / "bench-load"
HOST = "127.0.0.1"
API_PORT = 25140
RESULTS = REPO_ROOT / "bench" / "results" / "load_test.json"
DEMO = REPO_ROOT / "data" / "nih-cxr14-64px"
K = 10
# The request kinds and their share of the requests, in this repeating order.
DEFAULT_MIX = "region:3,exact:2,vector:2,upload:1"


def bench_settings() -> Settings:
    return Settings(
        home=HOME,
        neo4j_bolt_port=27987,
        neo4j_http_port=27774,
        redis_port=26879,
        api_host=HOST,
        api_port=API_PORT,
        neo4j_heap="1g",
        neo4j_pagecache="512m",
        data_roots=[REPO_ROOT / "data"],
    )


def environment(settings: Settings, checkpoint: Path) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if not name.startswith("MEDGRAPH_")}
    env.update(
        MEDGRAPH_HOME=str(settings.home),
        MEDGRAPH_NEO4J_BOLT_PORT=str(settings.neo4j_bolt_port),
        MEDGRAPH_NEO4J_HTTP_PORT=str(settings.neo4j_http_port),
        MEDGRAPH_REDIS_PORT=str(settings.redis_port),
        MEDGRAPH_API_HOST=HOST,
        MEDGRAPH_API_PORT=str(settings.api_port),
        MEDGRAPH_ENCODER_CHECKPOINT=str(checkpoint),
        PYTHONPATH=str(REPO_ROOT),
    )
    # A per-key rate limit would turn a load test into a rate-limit test: switch it off here.
    for name in Settings.model_fields:
        if "rate_limit" in name:
            env[f"MEDGRAPH_{name.upper()}"] = "0"
    return env


def encoder_checkpoint(settings: Settings) -> tuple[Path, str]:
    demo = default_checkpoint_path(settings)
    for candidate in (demo, REPO_ROOT / ".medgraph" / "models" / demo.name):
        if candidate.is_file():
            return candidate, f"demo checkpoint {candidate.name}"
    import torch

    path = settings.models_dir / "load-test-random-densenet121.pt"
    if not path.is_file():
        torch.manual_seed(0)
        model = build_densenet121(len(FINDINGS_NIH))
        save_checkpoint(
            path,
            EncoderCheckpoint(FINDINGS_NIH, 64, Normalisation(0.5, 0.25), dict(model.state_dict())),
        )
    return path, "seeded random-weight DenseNet-121 (no demo checkpoint in the home)"


def prepare_graph(
    settings: Settings, store: GraphStore, checkpoint: Path, algorithm: str
) -> dict[str, Any]:
    """The demo set ingested and clustered (skipped when a previous run left it complete)."""
    files = len(list((DEMO / "images").glob("*.png")))
    state = store.run_text(
        "MATCH (i:Image) WITH count(i) AS images, count(i.knn_floor) AS linked "
        "OPTIONAL MATCH (r:ClusteringRun {status: 'finished'}) "
        "RETURN images, linked, count(r) AS runs"
    )[0]
    if (state["images"], state["linked"]) == (files, files) and state["runs"] > 0:
        return {"reused": True, "images": files}
    store.run_autocommit("MATCH (n) CALL (n) { DETACH DELETE n } IN TRANSACTIONS OF 5000 ROWS")
    started = time.perf_counter()

    plan = plan_ingest([DEMO / "images"], settings, DEMO / "labels.csv")
    extractor = FeatureExtractor(checkpoint).load()
    outcome = embed_files(
        plan.entries,
        extractor,
        limits=ReadLimits(settings.max_file_bytes, settings.max_image_pixels),
        secret=patient_key_secret(settings),
    )
    if outcome.failures:
        raise RuntimeError(f"demo images failed to ingest: {outcome.failures[:5]}")
    write_image_rows(store, outcome.rows, settings.write_batch_size)
    store.run_text("CALL db.awaitIndexes(300)")
    edges = build_edges(store, settings, "bulk")
    summary = run_clustering(store, settings, algorithm=algorithm)
    return {
        "reused": False,
        "clustering": algorithm,
        "images": len(outcome.rows),
        "edges": edges.edges_merged,
        "communities": summary.community_count,
        "modularity": summary.modularity,
        "prepare_s": round(time.perf_counter() - started, 1),
    }


@dataclass
class Outcome:
    latencies_ms: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    # The server's own time per answer (diagnostics.total_ms): no HTTP or client threads in it.
    server_ms: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    errors: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    error_samples: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(
        self, kind: str, latency_ms: float, error: str | None, server_ms: float | None = None
    ) -> None:
        with self.lock:
            if error is None:
                self.latencies_ms[kind].append(latency_ms)
                if server_ms is not None:
                    self.server_ms[kind].append(server_ms)
            else:
                self.errors[kind] += 1
                if len(self.error_samples) < 20:
                    self.error_samples.append(f"{kind}: {error}")


def multipart(fields: dict[str, str], file_name: str, data: bytes) -> tuple[bytes, str]:
    boundary = "medgraph-load-test-boundary"
    parts = []
    for name, value in fields.items():
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'
            .encode()
        )  # fmt: skip
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{file_name}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n".encode()
        + data
        + b"\r\n"
    )
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def client_loop(
    token: str, keys: list[str], uploads: list[bytes], kinds: list[str], deadline: float,
    budget: itertools.count, max_requests: int, outcome: Outcome, seed: int,
) -> None:  # fmt: skip
    rng = random.Random(seed)
    connection = http.client.HTTPConnection(HOST, API_PORT, timeout=60)
    headers = {"Authorization": f"Bearer {token}"}
    turn = itertools.cycle(kinds[seed % len(kinds) :] + kinds[: seed % len(kinds)])
    while time.monotonic() < deadline and next(budget) < max_requests:
        kind = next(turn)
        if kind == "upload":
            body, content_type = multipart(
                {"k": str(K), "strategy": "region"}, "query.png", rng.choice(uploads)
            )
        else:
            body = json.dumps({"key": rng.choice(keys), "k": K, "strategy": kind}).encode()
            content_type = "application/json"
        started = time.perf_counter()
        error = None
        server_ms = None
        try:
            connection.request(
                "POST", "/api/v1/search", body, {**headers, "Content-Type": content_type}
            )
            response = connection.getresponse()
            payload = response.read()
            if response.status != 200:
                error = f"{response.status} {payload[:200]!r}"
            else:
                answer = json.loads(payload)
                server_ms = float(answer["diagnostics"]["total_ms"])
                if len(answer["results"]) != K:
                    error = "fewer results than k"
        except (OSError, http.client.HTTPException, ValueError) as problem:
            error = f"{type(problem).__name__}: {problem}"
            connection.close()
            connection = http.client.HTTPConnection(HOST, API_PORT, timeout=60)
        outcome.add(kind, (time.perf_counter() - started) * 1000.0, error, server_ms)
    connection.close()


def _percentile(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 2) if values else None


def summary(latencies: list[float], errors: int, seconds: float) -> dict[str, Any]:
    values = np.asarray(latencies, dtype=np.float64)
    figures: dict[str, Any] = {
        "requests": int(values.size) + errors,
        "ok": int(values.size),
        "errors": errors,
        "throughput_rps": round((values.size + errors) / seconds, 2),
    }
    if values.size:
        figures.update(
            {
                f"{name}_ms": round(float(np.percentile(values, q)), 2)
                for name, q in (("p50", 50), ("p90", 90), ("p99", 99))
            }
        )
        figures["max_ms"] = round(float(values.max()), 2)
        figures["mean_ms"] = round(float(values.mean()), 2)
    return figures


def wait_for_api(process: subprocess.Popen[bytes], log: Path, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the API exited during start-up:\n{log.read_text()[-3000:]}")
        try:
            connection = http.client.HTTPConnection(HOST, API_PORT, timeout=2)
            connection.request("GET", "/api/v1/health")
            if connection.getresponse().status == 200:
                return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError("the API did not answer /api/v1/health")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--duration", type=float, default=60.0, help="Seconds of load.")
    parser.add_argument("--max-requests", type=int, default=200_000)
    parser.add_argument("--mix", default=DEFAULT_MIX, help="kind:weight,... (region, exact, "
                        "vector: search by stored key; upload: PNG upload, region)")  # fmt: skip
    parser.add_argument("--threads", type=int, default=None, help="waitress threads")
    parser.add_argument("--keep-stack", action="store_true", help="Leave Neo4j/Redis running.")
    parser.add_argument(
        "--uploads", type=Path, default=DEMO / "images",
        help="Folder of the PNGs uploaded (the first 64). Default: the 64-px bundled set; the "
        "full-size films users upload: data/queries/nih-cxr14-originals-512px/images.",
    )  # fmt: skip
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument(
        "--cluster-algorithm", default="leiden", choices=("leiden", "louvain", "cnm")
    )
    args = parser.parse_args(argv)
    if not 1 <= args.clients <= 256 or not 0 < args.duration <= 900:
        parser.error("--clients must be 1-256 and --duration 0-900 s (the test is bounded)")
    kinds = [
        kind for part in args.mix.split(",") for kind, weight in [part.split(":")]
        for _ in range(int(weight))
    ]  # fmt: skip
    unknown = set(kinds) - {"region", "community_ranked", "exact", "vector", "upload"}
    if unknown:
        parser.error(f"unknown kinds in --mix: {sorted(unknown)}")

    # The driver logs a warning per query that reads a property no node has yet; noise here.
    logging.getLogger("neo4j.notifications").setLevel(logging.ERROR)
    settings = bench_settings()
    checkpoint, encoder = encoder_checkpoint(settings)
    neo4j, redis_server = Neo4jRuntime(settings), RedisRuntime(settings)
    redis_server.start()
    neo4j.start()
    api_process = None
    try:
        store = GraphStore.from_settings(settings)
        store.apply_schema()
        print("preparing the demo graph ...", flush=True)
        prepared = prepare_graph(settings, store, checkpoint, args.cluster_algorithm)
        print(f"graph: {prepared}", flush=True)

        token = create_api_key(store, f"load-test-{int(time.time())}", ("read",)).token
        keys = [r["key"] for r in store.run_text("MATCH (i:Image) RETURN i.key AS key")]
        uploads = [path.read_bytes() for path in sorted(args.uploads.glob("*.png"))[:64]]

        log = settings.home / "logs" / "load-test-api.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        threads = args.threads or settings.api_threads
        with log.open("wb") as handle:
            api_process = subprocess.Popen(
                [sys.executable, "-m", "services.cli", "serve", "--host", HOST,
                 "--port", str(API_PORT), "--threads", str(threads)],
                cwd=REPO_ROOT, env=environment(settings, checkpoint), stdout=handle,
                stderr=subprocess.STDOUT,
            )  # fmt: skip
        wait_for_api(api_process, log)
        # Warm-up: the first upload loads the encoder, the first searches fill the caches.
        warm = Outcome()
        client_loop(token, keys, uploads, sorted(set(kinds)) * 3, time.monotonic() + 120,
                    itertools.count(), 12, warm, 0)  # fmt: skip
        if warm.errors:
            raise RuntimeError(f"warm-up requests failed: {warm.error_samples}")

        outcome = Outcome()
        budget = itertools.count()
        load_before = os.getloadavg()[0]
        started = time.monotonic()
        deadline = started + args.duration
        workers = [
            threading.Thread(
                target=client_loop,
                args=(
                    token,
                    keys,
                    uploads,
                    kinds,
                    deadline,
                    budget,
                    args.max_requests,
                    outcome,
                    seed,
                ),
                daemon=True,
            )  # fmt: skip
            for seed in range(args.clients)
        ]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(timeout=args.duration + 120)
        seconds = time.monotonic() - started
        api_cpu = psutil.Process(api_process.pid).cpu_times()

        per_kind = {
            kind: summary(outcome.latencies_ms[kind], outcome.errors[kind], seconds)
            | {
                "server_p50_ms": _percentile(outcome.server_ms[kind], 50),
                "server_p99_ms": _percentile(outcome.server_ms[kind], 99),
            }  # fmt: skip
            for kind in sorted(set(kinds))
        }
        all_latencies = [v for values in outcome.latencies_ms.values() for v in values]
        total = summary(all_latencies, sum(outcome.errors.values()), seconds)
        result = {
            "benchmark": "load_test",
            "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": {
                "cpus": os.cpu_count(),
                "load_average_1m_start": round(load_before, 2),
                "load_average_1m_end": round(os.getloadavg()[0], 2),
                "python": sys.version.split()[0],
            },
            "setup": {
                "clients": args.clients,
                "duration_s": args.duration,
                "seconds_measured": round(seconds, 2),
                "max_requests": args.max_requests,
                "mix": args.mix,
                "uploads": str(
                    args.uploads.relative_to(REPO_ROOT)
                    if args.uploads.is_relative_to(REPO_ROOT)
                    else args.uploads
                ),
                "k": K,
                "server": f"waitress via `medgraph serve`, {threads} threads, 127.0.0.1",
                "encoder": encoder,
                "graph": prepared,
                "api_cpu_s": round(api_cpu.user + api_cpu.system, 1),
            },
            "total": total,
            "per_kind": per_kind,
            "error_samples": outcome.error_samples,
            "output": str(args.output),
        }
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(result, indent=2) + "\n")
        print_table(result)
    finally:
        if api_process is not None and api_process.poll() is None:
            api_process.terminate()
            try:
                api_process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                api_process.kill()
        close_shared_drivers()
        if not args.keep_stack:
            neo4j.stop()
            redis_server.stop()


def print_table(result: dict[str, Any]) -> None:
    setup = result["setup"]
    print(
        f"\n{setup['clients']} clients, {setup['seconds_measured']} s, mix {setup['mix']}, "
        f"k={setup['k']}; load average {result['machine']['load_average_1m_start']}"
    )
    print(f"{'kind':<8} {'requests':>9} {'req/s':>8} {'p50 ms':>8} {'p90 ms':>8} "
          f"{'p99 ms':>8} {'max ms':>8} {'errors':>7} {'server p50':>10}")  # fmt: skip
    rows = [*result["per_kind"].items(), ("total", result["total"])]
    for kind, figures in rows:
        print(
            f"{kind:<8} {figures['requests']:>9} {figures['throughput_rps']:>8} "
            f"{figures.get('p50_ms', '-'):>8} {figures.get('p90_ms', '-'):>8} "
            f"{figures.get('p99_ms', '-'):>8} {figures.get('max_ms', '-'):>8} "
            f"{figures['errors']:>7} {figures.get('server_p50_ms') or '-':>10}"
        )
    print(f"results: {result.get('output', RESULTS)}")


if __name__ == "__main__":
    main()

"""Searches while the archive changes: latency, visibility and memory of the API under writes.

Per size, on its own stack (Neo4j, Redis, one Celery worker of both queues, ``medgraph serve``
with 8 threads; home ``.medgraph/bench-live``, ports 20300+):

1. the generated set (``--set``, hard by default) with its kNN graph and a clustering run, as in
   ``bench/search_scale.py``;
2. 16 client threads search by key (``community_ranked``, k = 50, random stored keys, each its
   own keep-alive connection) for ``--quiet-s`` with no writes (the quiet period), then for
   ``--writes-s`` while a writer, every 5 s, submits an ingest job of 32 new PNG files through
   the real path (``services.ingest.submit``: Redis, the Celery worker embedding them with a
   seeded random-weight DenseNet-121 checkpoint, node and edge writes, community assignment),
   and every 10 s deletes 2 images and relabels 2 through the API (``DELETE``/``PATCH
   /api/v1/images/<key>``); one clustering run (``run_clustering``, the job's code) starts half-way;
3. for each ingest job, the time from its ``done`` to the first search (by the key of one of its
   images, repeated every 20 ms) that returns another of its images (each job's 32 files are
   noisy variants of one bundled image, so they are each other's nearest);
4. every answer is checked against the images whose ``DELETE`` had answered before the search
   was sent; each answer's server-side ``wait_for_model`` stage (time spent waiting on a model
   build) is recorded; the API process's RSS is sampled every second.

    nice -n 10 .venv/bin/python -m bench.live_load --sizes 20000,100000

Writes ``bench/results/live_load.json`` (``--output``; ``--merge`` keeps other sizes).
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import random
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import psutil
from PIL import Image

from bench.search_scale import (
    build_graph,
    fresh_neo4j,
    machine,
    peak_rss_mib,
    say,
    stack_environment,
    wait_for_api,
)
from services.auth.api_keys import create_api_key
from services.communities.job import run_clustering
from services.config import REPO_ROOT, Settings
from services.graph.store import GraphStore, close_shared_drivers
from services.ingest.jobs import JobTracker
from services.ingest.submit import plan_ingest, submit
from services.runtime.neo4j import Neo4jRuntime
from services.runtime.redis import RedisRuntime

RESULTS = REPO_ROOT / "bench" / "results" / "live_load.json"
BUNDLED = REPO_ROOT / "data" / "nih-cxr14-64px" / "images"
K = 50
CLIENTS = 16
INGEST_EVERY_S, INGEST_IMAGES = 5.0, 32
CURATE_EVERY_S, DELETES, RELABELS = 10.0, 2, 2
FINDINGS = (["Effusion"], ["Atelectasis", "Mass"])


def live_settings(
    home: Path, data_root: Path, checkpoint: Path, heap: str = "4g", pagecache: str = "3g"
) -> Settings:
    return Settings(
        home=home,
        neo4j_bolt_port=20387,
        neo4j_http_port=20374,
        redis_port=20379,
        api_port=20340,
        neo4j_heap=heap,
        neo4j_pagecache=pagecache,
        knn_k=10,
        data_roots=[data_root],
        encoder_checkpoint=checkpoint,
        api_rate_limit_per_minute=0,
    )


def environment(settings: Settings) -> dict[str, str]:
    env = stack_environment(settings)
    env.update(
        MEDGRAPH_DATA_ROOTS=json.dumps([str(root) for root in settings.data_roots]),
        MEDGRAPH_ENCODER_CHECKPOINT=str(settings.encoder_checkpoint),
        OMP_NUM_THREADS="1",
    )
    return env


def random_checkpoint(path: Path) -> Path:
    """A DenseNet-121 with seeded random weights as a proper checkpoint (its codes mean nothing;
    the benchmark measures the path, not the codes)."""
    if path.exists():
        return path
    import torch  # defers torch: only to write the checkpoint once

    from services.encoder.checkpoint import (  # defers torch
        EncoderCheckpoint,
        save_checkpoint,
    )
    from services.encoder.network import build_densenet121  # defers torch
    from services.encoder.preprocessing import Normalisation  # defers torch

    torch.manual_seed(0)
    findings = ("Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule")
    checkpoint = EncoderCheckpoint(
        findings=findings,
        image_size=64,
        normalisation=Normalisation(0.5, 0.25),
        state_dict=build_densenet121(len(findings)).state_dict(),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_checkpoint(path, checkpoint)


def job_files(root: Path, jobs: int) -> list[list[Path]]:
    """``jobs`` folders of ``INGEST_IMAGES`` PNGs, each folder noisy variants of one bundled
    image (distinct bytes, so distinct keys)."""
    bases = sorted(BUNDLED.glob("*.png"))
    rng = np.random.default_rng(7)
    folders = []
    for job in range(jobs):
        folder = root / f"job-{job:04d}"
        folder.mkdir(parents=True, exist_ok=True)
        pixels = np.asarray(Image.open(bases[job % len(bases)]).convert("L"), dtype=np.int16)
        files = []
        for variant in range(INGEST_IMAGES):
            path = folder / f"v{variant:02d}.png"
            if not path.exists():
                noisy = np.clip(pixels + rng.integers(-3, 4, pixels.shape), 0, 255)
                Image.fromarray(noisy.astype(np.uint8)).save(path)
            files.append(path)
        folders.append(files)
    return folders


@dataclass
class Log:
    lock: threading.Lock = field(default_factory=threading.Lock)
    searches: list[tuple[float, float, float, str]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    deleted_at: dict[str, float] = field(default_factory=dict)
    # Keys whose DELETE has been sent (answered or not): a search by such a key that answers
    # 404 raced the deletion and got the right answer, so it is counted apart, not an error.
    deleting: set[str] = field(default_factory=set)
    not_found_while_deleted: int = 0
    deleted_returned: int = 0
    visible_after: list[float] = field(default_factory=list)
    rss: list[tuple[float, int]] = field(default_factory=list)
    jobs: list[dict[str, Any]] = field(default_factory=list)
    curation: list[dict[str, Any]] = field(default_factory=list)
    clustering: dict[str, Any] = field(default_factory=dict)
    pending: dict[str, str] = field(default_factory=dict)  # unfinished job -> its progress
    refused: list[str] = field(default_factory=list)  # deletions refused (409 during a run)


class Client:
    def __init__(self, port: int, token: str) -> None:
        self.port = port
        self.headers = {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)

    def call(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
        for attempt in range(2):
            try:
                self.connection.request(method, path, None if body is None else json.dumps(body),
                                        self.headers)  # fmt: skip
                response = self.connection.getresponse()
                return response.status, json.loads(response.read() or b"{}")
            except (http.client.HTTPException, OSError):
                self.connection.close()
                self.connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def search(self, key: str, strategy: str = "community_ranked") -> tuple[int, dict]:
        return self.call("POST", "/api/v1/search",
                         {"key": key, "k": K, "strategy": strategy})  # fmt: skip


def searcher(port: int, token: str, keys: list[str], log: Log, stop: threading.Event,
             seed: int) -> None:  # fmt: skip
    client = Client(port, token)
    rng = random.Random(seed)
    while not stop.is_set():
        key = rng.choice(keys)
        with log.lock:
            if key in log.deleted_at:
                continue
            deleted_before = dict(log.deleted_at)
        sent = time.monotonic()
        try:
            status, body = client.search(key)
        except Exception as problem:  # noqa: BLE001 - every failure is counted, none stops it
            with log.lock:
                log.errors.append(f"{type(problem).__name__}: {problem}")
            continue
        elapsed = (time.monotonic() - sent) * 1000.0
        if status != 200:
            with log.lock:
                if status == 404 and key in log.deleting:
                    log.not_found_while_deleted += 1
                else:
                    log.errors.append(f"HTTP {status}: {str(body)[:200]}")
            continue
        returned = {hit["key"] for hit in body["results"]}
        wait = float(body["diagnostics"]["stage_ms"].get("wait_for_model", 0.0))
        with log.lock:
            log.searches.append((sent, elapsed, wait, key))
            log.deleted_returned += sum(1 for k in returned if k in deleted_before)


def key_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def ingest_job(settings: Settings, files: list[Path], tracker: JobTracker, port: int,
               token: str, log: Log, stop: threading.Event) -> None:  # fmt: skip
    keys = [key_of(path) for path in files]
    plan = plan_ingest([files[0].parent], settings)
    submitted = time.monotonic()
    job = submit(plan, settings).job_id
    while True:
        progress = tracker.progress(job)
        with log.lock:
            log.pending[job] = (
                f"{progress.status} {progress.done}+{progress.failed}/{progress.total}"
            )
        if progress.finished:
            break
        if stop.is_set():  # past the drain: counted as unfinished, before the stack stops
            return
        time.sleep(0.02)
    with log.lock:
        log.pending.pop(job, None)
    done = time.monotonic()
    probe = Client(port, token)
    others = set(keys[1:])
    visible = sent_after = None
    while time.monotonic() - done < 30 and not stop.is_set():
        # `exact`: whether the process's model holds the job's images, not whether an
        # approximate strategy's probe reaches them (community_ranked missed the job-mates of 3
        # of 60 jobs at 223,648 on 2026-12-05, a freshly loaded model as well: its recall).
        sent = time.monotonic() - done
        status, body = probe.search(keys[0], "exact")
        if status == 200 and others & {hit["key"] for hit in body["results"]}:
            visible = time.monotonic() - done
            # When that search was sent: the part of `visible` it spent queued and searching
            # behind the 16 clients is visible - sent_after.
            sent_after = sent
            break
        time.sleep(0.02)
    with log.lock:
        log.jobs.append(
            {
                "job": job,
                "status": progress.status,
                "seconds": round(done - submitted, 2),
                "visible_after_done_s": None if visible is None else round(visible, 3),
                "found_by_search_sent_after_done_s": None
                if sent_after is None
                else round(sent_after, 3),
            }
        )
        if visible is not None:
            log.visible_after.append(visible)
        elif stop.is_set():  # the run ended while it looked: not timed
            log.pending[job] = "done; the run ended before a search returned its images"
        else:
            log.errors.append(f"job {job}: its images were not found within 30 s of done")


def curate(client: Client, keys: list[str], log: Log, rng: random.Random) -> None:
    for _ in range(DELETES):
        key = rng.choice(keys)
        keys.remove(key)
        with log.lock:
            log.deleting.add(key)
        status, body = client.call("DELETE", f"/api/v1/images/{key}")
        with log.lock:
            log.curation.append({"delete": key[:16], "status": status})
            if status == 200:  # only an answered deletion promises anything
                log.deleted_at[key] = time.monotonic()
            elif status == 409:  # refused while a clustering run writes the communities
                log.refused.append(key)
            else:
                log.errors.append(f"DELETE {status}: {str(body)[:200]}")
    for turn in range(RELABELS):
        key = rng.choice(keys)
        status, body = client.call("PATCH", f"/api/v1/images/{key}",
                                   {"findings": FINDINGS[turn % 2]})  # fmt: skip
        with log.lock:
            log.curation.append({"relabel": key[:16], "status": status})
            if status != 200:
                log.errors.append(f"PATCH {status}: {str(body)[:200]}")


def sample_rss(pid: int, log: Log, stop: threading.Event) -> None:
    process = psutil.Process(pid)
    while not stop.wait(1.0):
        try:
            with log.lock:
                log.rss.append((time.monotonic(), process.memory_info().rss))
        except psutil.Error:
            return


def percentile(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 2) if values else None


def run_size(n: int, arguments: argparse.Namespace, home: Path) -> dict[str, Any]:
    data_root = home / "incoming"
    checkpoint = random_checkpoint(home / "models" / "random-densenet121-64px.pt")
    settings = live_settings(home, data_root, checkpoint, arguments.heap, arguments.pagecache)
    jobs_needed = int(arguments.writes_s / INGEST_EVERY_S) + 2
    say(f"n={n}: writing {jobs_needed} jobs' files")
    shutil.rmtree(data_root, ignore_errors=True)
    folders = job_files(data_root, jobs_needed)
    redis_runtime = RedisRuntime(settings)
    redis_runtime.stop()
    shutil.rmtree(redis_runtime.home, ignore_errors=True)
    redis_runtime.start()
    store = fresh_neo4j(settings)
    entry: dict[str, Any] = build_graph(store, settings, n, arguments.seed, arguments.generated)
    keys = [r["key"] for r in store.run_text("MATCH (i:Image) RETURN i.key AS key")]
    token = create_api_key(store, "bench-live", ("read", "write")).token
    env = environment(settings)
    logs = home / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "workers.celery_app", "worker", "-P", "solo",
         "-Q", "embed,graph", "-n", f"bench-live-{os.getpid()}@%h", "--loglevel", "WARNING",
         "--without-gossip", "--without-mingle"],
        cwd=REPO_ROOT, env=env, stdout=(logs / "worker.log").open("wb"),
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    api = subprocess.Popen(
        [sys.executable, "-m", "services.cli", "serve", "--host", "127.0.0.1",
         "--port", str(settings.api_port), "--threads", "8"],
        cwd=REPO_ROOT, env=env, stdout=(logs / "api.log").open("wb"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    log = Log()
    stop = threading.Event()
    threads: list[threading.Thread] = []
    writers: list[threading.Thread] = []  # ingest jobs, each timed to its images' visibility
    try:
        wait_for_api(api, settings.api_port, logs / "api.log")
        warm = Client(settings.api_port, token)
        clock = time.monotonic()
        status, body = warm.search(keys[0])
        entry["first_search_s"] = round(time.monotonic() - clock, 1)
        if status != 200:
            raise RuntimeError(f"the first search failed: {body}")
        pool = random.Random(arguments.seed).sample(keys, min(len(keys), 5000))
        threads.append(threading.Thread(target=sample_rss, args=(api.pid, log, stop)))
        for client in range(CLIENTS):
            arguments_of = (settings.api_port, token, pool, log, stop, client)
            threads.append(threading.Thread(target=searcher, args=arguments_of))
        for thread in threads:
            thread.start()
        say(f"n={n}: quiet for {arguments.quiet_s:.0f} s")
        time.sleep(arguments.quiet_s)
        writes_start = time.monotonic()
        # The highest RSS so far: the first load and the quiet searches, before any write.
        peak_before_writes = peak_rss_mib(api.pid)
        say(f"n={n}: writes for {arguments.writes_s:.0f} s")
        tracker = JobTracker.from_settings(settings)
        curator = Client(settings.api_port, token)
        rng = random.Random(arguments.seed + 1)
        candidates = list(pool)
        next_ingest, next_curate, job = writes_start, writes_start + CURATE_EVERY_S, 0
        clustering: threading.Thread | None = None

        def cluster() -> None:
            started = time.monotonic()
            summary = run_clustering(GraphStore.from_settings(settings), settings)
            log.clustering = {"started_s": round(started - writes_start, 1),
                              "seconds": round(time.monotonic() - started, 1),
                              "communities": summary.community_count}  # fmt: skip

        curating: threading.Thread | None = None
        while time.monotonic() - writes_start < arguments.writes_s:
            now = time.monotonic()
            if clustering is None and now - writes_start >= arguments.writes_s / 2:
                say(f"n={n}: clustering run")
                clustering = threading.Thread(target=cluster)
                clustering.start()
            if now >= next_ingest and job < len(folders):
                writer = threading.Thread(target=ingest_job, args=(
                    settings, folders[job], tracker, settings.api_port, token, log,
                    stop))  # fmt: skip
                writer.start()
                writers.append(writer)
                job += 1
                next_ingest += INGEST_EVERY_S
            if now >= next_curate and (curating is None or not curating.is_alive()):
                curating = threading.Thread(target=curate, args=(curator, candidates, log, rng))
                curating.start()
                next_curate += CURATE_EVERY_S
            time.sleep(0.05)
        writes_end = time.monotonic()
        say(f"n={n}: writes over; waiting for the last jobs")
        for writer in writers:
            writer.join(timeout=max(1.0, writes_end + arguments.drain_s - time.monotonic()))
        if curating is not None:
            curating.join(timeout=120)
        if clustering is not None:
            clustering.join(timeout=600)
    finally:
        stop.set()
        for thread in threads + writers:
            thread.join(timeout=60)
        peak = peak_rss_mib(api.pid)
        for process in (api, worker):
            process.terminate()
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
        close_shared_drivers()
        Neo4jRuntime(settings).stop()
        redis_runtime.stop()
    quiet = [s[1] for s in log.searches if s[0] < writes_start]
    during = [s[1] for s in log.searches if writes_start <= s[0] < writes_end]
    waits = [s[2] for s in log.searches]
    quiet_p50 = percentile(quiet, 50)
    entry.update({
        "images": n,
        "clients": CLIENTS,
        "quiet_s": arguments.quiet_s,
        "writes_s": arguments.writes_s,
        "quiet_searches": len(quiet),
        "writes_searches": len(during),
        "quiet_p50_ms": quiet_p50,
        "quiet_p99_ms": percentile(quiet, 99),
        "writes_p50_ms": percentile(during, 50),
        "writes_p99_ms": percentile(during, 99),
        "writes_p50_over_quiet_p50": None if not quiet_p50 or not during
        else round(float(np.percentile(during, 50)) / quiet_p50, 2),
        "writes_p99_over_quiet_p50": None if not quiet_p50 or not during
        else round(float(np.percentile(during, 99)) / quiet_p50, 2),
        "ingest_jobs_submitted": job,
        "ingest_jobs": len(log.jobs),
        "max_visible_after_done_s": round(max(log.visible_after), 3) if log.visible_after
        else None,
        "p50_visible_after_done_s": percentile(log.visible_after, 50),
        "deleted": len(log.deleted_at),
        "deletes_refused_during_clustering": len(log.refused),
        "jobs_unfinished": dict(log.pending),
        "deleted_returned": log.deleted_returned,
        "not_found_while_deleted": log.not_found_while_deleted,
        "errors": len(log.errors),  # searches that failed, and curation calls other than 409
        "error_examples": log.errors[:5],
        "rebuild_wait_ms_max": max(waits) if waits else None,
        "api_rss_mib": round(max(r for _, r in log.rss) / 2**20) if log.rss else None,
        "api_rss_mib_at_end": round(log.rss[-1][1] / 2**20) if log.rss else None,
        "api_peak_rss_mib": peak,
        "api_peak_rss_mib_before_writes": peak_before_writes,
        "api_rss_mib_max_during_writes": round(
            max((r for t, r in log.rss if writes_start <= t), default=0) / 2**20
        ),
        "clustering": log.clustering,
        # The API's own account of each whole model it built (services/retrieval/cache.py).
        "read_model_builds": [line.split("read model: ", 1)[1].strip() for line in
                              (logs / "api.log").read_text(errors="replace").splitlines()
                              if "read model: " in line],
        "jobs": log.jobs,
        "load_average_1m_at_end": round(os.getloadavg()[0], 2),
    })  # fmt: skip
    say(f"n={n}: quiet p50 {entry['quiet_p50_ms']} ms, writes p50 {entry['writes_p50_ms']} / "
        f"p99 {entry['writes_p99_ms']} ms, max visible after done "
        f"{entry['max_visible_after_done_s']} s, deleted returned {log.deleted_returned}, "
        f"errors {len(log.errors)}, rebuild wait max {entry['rebuild_wait_ms_max']} ms, "
        f"RSS {entry['api_rss_mib']} MiB")  # fmt: skip
    return entry


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100000,223648")
    parser.add_argument("--set", dest="generated", choices=("easy", "hard"), default="hard")
    parser.add_argument("--quiet-s", type=float, default=60.0)
    parser.add_argument("--writes-s", type=float, default=300.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--drain-s", type=float, default=240.0,
        help="How long to wait after the writes for the jobs still queued (on a loaded machine "
        "the worker falls behind); jobs unfinished by then are counted, not timed.",
    )  # fmt: skip
    parser.add_argument("--heap", default="4g", help="Neo4j heap of the benchmark's server.")
    parser.add_argument("--pagecache", default="3g", help="Neo4j page cache.")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--merge", action="store_true", help="Keep other sizes in --output.")
    arguments = parser.parse_args()
    home = REPO_ROOT / ".medgraph" / "bench-live"
    sizes = [int(value) for value in arguments.sizes.split(",")]
    results: list[dict[str, Any]] = []
    if arguments.merge and arguments.output.exists():
        previous = json.loads(arguments.output.read_text())["results"]
        results.extend(entry for entry in previous if entry["images"] not in sizes)
    document = {
        "benchmark": "live_load",
        "command": "python -m bench.live_load " + " ".join(sys.argv[1:]),
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "results": results,
    }
    for n in sizes:
        results.append(run_size(n, arguments, home))
        results.sort(key=lambda item: item["images"])
        arguments.output.parent.mkdir(parents=True, exist_ok=True)
        arguments.output.write_text(json.dumps(document, indent=2) + "\n")
    say(f"wrote {arguments.output}")


if __name__ == "__main__":
    main()

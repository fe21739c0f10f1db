"""Search latency per strategy at 10^4, 10^5 and 223,648 generated images (CheXpert's size).

For each size, on its own fresh Neo4j (``.medgraph/bench-search``, Bolt 27887, heap 4g, page
cache 3g):

1. ``bench.synthetic.generate(n)`` (easy) or ``generate_hard(n)`` (hard): unit vectors with
   findings and patients;
2. the kNN graph (k = 10) with the ingestion's exact blocked kNN inside each planted cluster
   (``bench.similarity_graph.knn_edges``; ``knn_agreement`` checks on a sample that every point's
   all-points k nearest are among its edges), written as ingestion writes it;
3. communities by the clustering job itself (``services.communities.job.run_clustering``, GDS
   Leiden), which stores the sums region search reads;
4. for ``--queries`` stored images as leave-one-out queries (own patient excluded, k = 50):
   server-side latency of ``RetrievalService.search`` per strategy, the same through HTTP
   (waitress, ``POST /api/v1/search`` with the key, one keep-alive connection), a plain numpy
   brute-force top-50 over the same float32 matrix (the ``exact`` cache's), and recall@50 of
   ``region`` and ``vector`` against ``exact``. The in-process service is a live one, as in an
   API process (no Neo4j round trip per search; with its read lease, no Redis read either: the
   stack includes Redis);
5. faiss-cpu on the same matrix and queries (the ``bench`` extra): IVF-Flat with 4·sqrt(n)
   lists at nprobe 8/16/32/64 and HNSW (M 32) at efSearch 32/64/128/256, single queries on one
   thread, recall@50 against ``exact`` (``strategies.faiss_ivf_flat`` / ``faiss_hnsw``);
   beside them ``community_ranked`` at ``ranked_seed_candidates`` 512/768/1,024/1,536/2,048
   (``strategies.community_ranked_sweep``), its own nprobe. Since 2026-12-06 (sixth session)
   these 13 settings are timed in turns of 20 queries each (``timed_together``), so that the
   comparison is not at the mercy of when each was timed.

Run: ``.venv/bin/python -m bench.search_scale`` measures both generated sets, hard then easy,
in one run (one ``run_id`` in both results files), at every size (about an hour on the idle
2-core machine); ``--set hard --sizes 10000`` for a quick look. The server is stopped at the end
unless ``--keep-neo4j``. Writes ``bench/results/search_scale_easy.json`` and
``search_scale_hard.json``.
"""

from __future__ import annotations

import argparse
import copy
import http.client
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from bench.similarity_graph import knn_agreement, knn_edges, synthetic_keys, write_graph
from bench.synthetic import generate, generate_hard
from services.auth.api_keys import create_api_key
from services.communities.job import run_clustering
from services.config import REPO_ROOT, Settings
from services.evaluation.metrics import LatencySummary, recall_at_k
from services.graph.cypher import load_cypher
from services.graph.store import GraphStore, close_shared_drivers
from services.retrieval.contract import SearchFilters, Strategy
from services.retrieval.region import RegionGrowingSearch
from services.retrieval.service import RetrievalService
from services.runtime.neo4j import Neo4jRuntime
from services.runtime.redis import RedisRuntime

SIZES = (10_000, 100_000, 223_648)
K = 50
KNN_K = 10
RESULTS = REPO_ROOT / "bench" / "results" / "search_scale_easy.json"
RESULTS_HARD = REPO_ROOT / "bench" / "results" / "search_scale_hard.json"
SETS = ("hard", "easy")  # hard first: its outside-community share is the figure most at risk


def bench_settings(
    heap: str = "4g", pagecache: str = "3g", port_offset: int = 0, base_port: int | None = None
) -> Settings:
    """``port_offset`` > 0: a second stack beside the first (own home, every port + offset);
    ``base_port``: Bolt base+87, HTTP base+74, Redis base+79, API base+40 and its own home."""
    suffix = f"-{port_offset}" if port_offset else ""
    if base_port is not None:
        suffix = f"-{base_port}"
        port_offset = base_port - 27800
    return Settings(
        home=REPO_ROOT / ".medgraph" / f"bench-search{suffix}",
        neo4j_bolt_port=27887 + port_offset,
        neo4j_http_port=27874 + port_offset,
        redis_port=27879 + port_offset,
        api_port=27840 + port_offset,
        neo4j_heap=heap,
        neo4j_pagecache=pagecache,
        knn_k=KNN_K,
    )


def say(message: str) -> None:
    print(f"[{datetime.now(UTC):%H:%M:%S}] {message}", flush=True)


def fresh_neo4j(settings: Settings) -> GraphStore:
    close_shared_drivers()
    runtime = Neo4jRuntime(settings)
    runtime.stop()
    shutil.rmtree(runtime.data_dir, ignore_errors=True)
    runtime.start()
    store = GraphStore.from_settings(settings)
    store.apply_schema()
    return store


def build_graph(
    store: GraphStore, settings: Settings, n: int, seed: int, generated: str = "easy"
) -> dict[str, Any]:
    report: dict[str, Any] = {"images": n, "set": generated}
    clock = time.perf_counter()
    synthetic = generate_hard(n, seed=seed) if generated == "hard" else generate(n, seed=seed)
    report["generate_s"] = round(time.perf_counter() - clock, 1)
    clock = time.perf_counter()
    edges = knn_edges(synthetic.embeddings, KNN_K, groups=synthetic.cluster)
    report["knn_s"] = round(time.perf_counter() - clock, 1)
    report["knn_agreement_sample"] = knn_agreement(synthetic.embeddings, edges, KNN_K)
    report["pairs"] = len(edges)
    say(f"n={n}: {len(edges)} SIMILAR pairs, kNN agreement {report['knn_agreement_sample']:.3f}")
    clock = time.perf_counter()
    keys = synthetic_keys(range(n))
    write_graph(store, keys, synthetic.embeddings, synthetic.findings, synthetic.patient, edges,
                knn_k=KNN_K, progress=say)  # fmt: skip
    store.run_text("CALL db.awaitIndexes(3600)")
    report["write_graph_and_index_s"] = round(time.perf_counter() - clock, 1)
    clock = time.perf_counter()
    summary = run_clustering(store, settings, progress=say)
    report["cluster_s"] = round(time.perf_counter() - clock, 1)
    report.update(
        communities=summary.community_count,
        community_size_min=summary.size_min,
        community_size_median=summary.size_median,
        community_size_max=summary.size_max,
        modularity=round(summary.modularity or 0.0, 6),
        total_weight_m=round(summary.total_weight_m, 3),
        clustering_algorithm=summary.algorithm,
    )
    return report


def stored_graph_report(store: GraphStore, n: int) -> dict[str, Any]:
    """The graph figures of a graph built by an earlier run (``--reuse-graph``)."""
    images = store.run_text("MATCH (i:Image) RETURN count(i) AS n")[0]["n"]
    if images != n:
        raise SystemExit(f"--reuse-graph: the stored graph has {images} images, not {n}")
    run = store.run_text(
        "MATCH (r:ClusteringRun {status: 'finished'}) RETURN r {.*} AS run "
        "ORDER BY r.finished_at DESC LIMIT 1"
    )[0]["run"]
    say(f"n={n}: reusing the stored graph (run {run['id']})")
    return {
        "images": n,
        "pairs": run["edge_count"],
        "graph_reused_from_an_earlier_run": True,
        "communities": run["community_count"],
        "community_size_min": run["size_min"],
        "community_size_median": run["size_median"],
        "community_size_max": run["size_max"],
        "modularity": round(run["modularity"], 6),
        "total_weight_m": round(run["total_weight_m"], 3),
        "clustering_algorithm": run["algorithm"],
    }


def numpy_top_k(matrix: np.ndarray, query: np.ndarray, k: int) -> np.ndarray:
    scores = matrix @ query
    top = np.argpartition(-scores, k)[:k]
    return top[np.argsort(-scores[top])]


def measure(
    store: GraphStore, settings: Settings, queries: int, seed: int, http_too: bool
) -> dict[str, Any]:
    # As an API process runs it: the read model follows the graph in the background, and a
    # search makes no Neo4j round trip (one Redis read for deleted keys).
    service = RetrievalService(store, settings, live=True)
    keys = [r["key"] for r in store.run_text("MATCH (i:Image) RETURN i.key AS key ORDER BY key")]
    chosen = list(np.random.default_rng(seed).choice(keys, size=queries + 10, replace=False))
    warmup, chosen = chosen[:10], chosen[10:]
    report: dict[str, Any] = {"queries": len(chosen), "k": K}
    clock = time.perf_counter()
    snapshot = service.read_model.get()
    report["read_model_load_s"] = round(time.perf_counter() - clock, 1)
    report["read_model_mib"] = round(snapshot.nbytes / 2**20)
    stored = {key: service.stored_query(key) for key in warmup + chosen}

    def filters(key: str) -> SearchFilters:
        return SearchFilters(
            exclude_keys=frozenset({key}), exclude_patient_key=stored[key].patient_key
        )

    matrix = snapshot.matrix
    latencies: dict[str, list[float]] = {"numpy": []}
    answers: dict[Strategy, list[tuple[str, ...]]] = {}
    examined: dict[Strategy, list[float]] = {}
    stages: dict[Strategy, dict[str, list[float]]] = {}
    for key in warmup:
        numpy_top_k(matrix, stored[key].embedding, K)
    for key in chosen:
        clock = time.perf_counter()
        numpy_top_k(matrix, stored[key].embedding, K)
        latencies["numpy"].append((time.perf_counter() - clock) * 1000.0)
    for strategy in Strategy:
        for key in warmup:
            service.search(stored[key].embedding, K, strategy, filters(key))
        samples, results, fractions = [], [], []
        stage_samples: dict[str, list[float]] = {}
        for key in chosen:
            clock = time.perf_counter()
            hits = service.search(stored[key].embedding, K, strategy, filters(key))
            samples.append((time.perf_counter() - clock) * 1000.0)
            results.append(hits.keys)
            fractions.append(hits.diagnostics.fraction_examined)
            for name, ms in hits.diagnostics.stage_ms.items():
                stage_samples.setdefault(name, []).append(ms)
        latencies[strategy.value] = samples
        answers[strategy] = results
        examined[strategy] = fractions
        stages[strategy] = stage_samples
        say(f"  server {strategy.value}: p50 {np.percentile(samples, 50):.1f} ms")

    report["faithful_region"] = faithful_region_check(
        service, settings, stored, chosen, filters, answers[Strategy.REGION]
    )
    report["exact_top50_outside_query_community"] = outside_share(
        snapshot, chosen, answers[Strategy.EXACT]
    )
    report["vector_profile"] = vector_profile(store, stored, chosen[:50], filters)

    http: dict[str, Any] = {}
    if http_too:
        http = measure_http(settings, store, warmup, chosen)

    numpy_summary = LatencySummary.of(latencies["numpy"])
    report["numpy_brute_force"] = _summary(numpy_summary)
    strategies: dict[str, Any] = {}
    for strategy in Strategy:
        server = LatencySummary.of(latencies[strategy.value])
        entry: dict[str, Any] = {
            "server": _summary(server),
            "server_p50_over_numpy_p50": round(server.p50_ms / numpy_summary.p50_ms, 3),
            "server_p99_over_numpy_p50": round(server.p99_ms / numpy_summary.p50_ms, 3),
            "server_p99_over_numpy_p99": round(server.p99_ms / numpy_summary.p99_ms, 3),
            "recall_at_50_vs_exact": round(
                float(
                    np.mean(
                        [
                            recall_at_k(got, exact, K)
                            for got, exact in zip(
                                answers[strategy], answers[Strategy.EXACT], strict=True
                            )
                        ]
                    )
                ),
                4,
            ),  # fmt: skip
            "fraction_examined": round(float(np.mean(examined[strategy])), 5),
            "stage_ms_p50": {
                name: round(float(np.percentile(values, 50)), 3)
                for name, values in stages[strategy].items()
            },
        }
        if strategy.value in http.get("strategies", {}):
            over_http = http["strategies"][strategy.value]
            entry["http"] = over_http
            entry["http_p50_over_numpy_p50"] = round(
                over_http["client"]["p50_ms"] / numpy_summary.p50_ms, 3
            )
        strategies[strategy.value] = entry
    build, anchors = faiss_anchor(snapshot)
    # community_ranked's settings and faiss's timed in turns over the same minutes, so that
    # every row of the comparison meets the same machine: on this shared 2-core machine one
    # setting timed a few minutes apart gave 1.21 and 1.55 ms (2026-12-06, sixth session).
    rows = timed_together(
        [*ranked_settings(service, stored, filters), *anchors], snapshot, chosen,
        answers[Strategy.EXACT],
    )  # fmt: skip
    strategies.update(rows)
    report["faiss"] = build
    report["strategies"] = strategies
    if http:
        report["api_process"] = http["api_process"]
    service.read_model.close()
    return report


RANKED_SWEEP = (512, 768, 1024, 1536, 2048)
FAISS_NPROBE = (8, 16, 32, 64)
FAISS_EF_SEARCH = (32, 64, 128, 256)
TIMED_BLOCK = 20  # queries each searcher runs in a row in ``timed_together``

# (results key, setting, search): ``search(row, key)`` runs one query and returns the keys found
# (own key and patient excluded), timed by ``timed_together`` around the call.
Searcher = tuple[str, str, Callable[[int, str], list[str]]]


def ranked_settings(
    service: RetrievalService, stored: dict[str, Any], filters: Callable[[str], SearchFilters]
) -> list[Searcher]:
    """``community_ranked`` at several ``ranked_seed_candidates`` (its nprobe), over the same
    read model, called like the strategies (the deleted-keys check included): the rows to set
    beside faiss IVF-Flat's nprobe rows."""
    searchers: list[Searcher] = []
    for candidates in RANKED_SWEEP:
        ranked = copy.copy(service.strategies[Strategy.COMMUNITY_RANKED])
        ranked.seed_candidates = candidates  # type: ignore[attr-defined]

        def search(row: int, key: str, ranked: Any = ranked) -> list[str]:
            return list(ranked.search(stored[key].embedding, K, filters(key)).keys)

        searchers.append(("community_ranked_sweep", f"ranked_seed_candidates {candidates}",
                          search))  # fmt: skip
    return searchers


def faiss_anchor(snapshot: Any) -> tuple[dict[str, Any], list[Searcher]]:
    """faiss-cpu on the same float32 matrix: IVF-Flat with 4·sqrt(n) lists at several nprobe,
    HNSW (M 32) at several efSearch; single queries on one thread, ``K + 64`` asked and the
    own key and patient excluded after the fact. A benchmark dependency only
    (``pip install -e '.[bench]'``)."""
    import faiss  # the bench extra; never imported by services/

    matrix = np.ascontiguousarray(snapshot.matrix, dtype=np.float32)
    n, dimensions = matrix.shape
    keys = snapshot.keys
    patient_of_row = snapshot.patient_codes
    build: dict[str, Any] = {"version": faiss.__version__}
    faiss.omp_set_num_threads(os.cpu_count() or 1)
    lists = int(4 * np.sqrt(n))
    clock = time.perf_counter()
    quantizer = faiss.IndexFlatIP(dimensions)
    ivf = faiss.IndexIVFFlat(quantizer, dimensions, lists, faiss.METRIC_INNER_PRODUCT)
    ivf.train(matrix)
    ivf.add(matrix)
    build["ivf_flat_lists"] = lists
    build["ivf_flat_build_s"] = round(time.perf_counter() - clock, 1)
    clock = time.perf_counter()
    hnsw = faiss.IndexHNSWFlat(dimensions, 32, faiss.METRIC_INNER_PRODUCT)
    hnsw.add(matrix)
    build["hnsw_build_s"] = round(time.perf_counter() - clock, 1)
    faiss.omp_set_num_threads(1)  # single queries, as the API serves them

    def searcher(index: Any, name: str, setting: str, tune: Callable[[], None]) -> Searcher:
        def search(row: int, key: str) -> list[str]:
            tune()
            _, found = index.search(matrix[row : row + 1], K + 64)
            own = patient_of_row[row]
            return [
                str(keys[i]) for i in found[0].tolist()
                if i >= 0 and i != row and (own < 0 or patient_of_row[i] != own)
            ][:K]  # fmt: skip

        return name, setting, search

    def nprobe(value: int) -> Callable[[], None]:
        return lambda: setattr(ivf, "nprobe", value)

    def ef_search(value: int) -> Callable[[], None]:
        return lambda: setattr(hnsw.hnsw, "efSearch", value)

    searchers = [searcher(ivf, "faiss_ivf_flat", f"nprobe {v}", nprobe(v)) for v in FAISS_NPROBE]
    searchers += [searcher(hnsw, "faiss_hnsw", f"M 32, efSearch {v}", ef_search(v))
                  for v in FAISS_EF_SEARCH]  # fmt: skip
    return build, searchers


def timed_together(
    searchers: list[Searcher],
    snapshot: Any,
    chosen: list[str],
    exact: list[tuple[str, ...]],
) -> dict[str, list[dict[str, Any]]]:
    """Every searcher on every query, in blocks of ``TIMED_BLOCK`` queries: each searcher runs
    a block in turn (the order rotated each round), so that all of them meet the same minutes
    of the machine, and each keeps what a run of its own queries leaves in the caches (faiss
    its coarse centroids, 7.7 MiB; query by query, each search found the caches full of the
    others' data: IVF-Flat nprobe 8 measured 0.95 instead of 0.59 ms). Per searcher its p50,
    p99 and recall@50 against ``exact``. The faiss settings (nprobe, efSearch) are set inside
    the timed call: an attribute write, ~1 µs."""
    rows = [snapshot.key_index[key] for key in chosen]
    for key, row in zip(chosen[:10], rows[:10], strict=True):  # warm-up
        for _, _, search in searchers:
            search(row, key)
    samples: list[list[float]] = [[] for _ in searchers]
    recalls: list[list[float]] = [[] for _ in searchers]
    queries = list(zip(chosen, rows, exact, strict=True))
    for turn, start in enumerate(range(0, len(queries), TIMED_BLOCK)):
        block = queries[start : start + TIMED_BLOCK]
        for offset in range(len(searchers)):
            which = (turn + offset) % len(searchers)
            for key, row, expected in block:
                clock = time.perf_counter()
                got = searchers[which][2](row, key)
                samples[which].append((time.perf_counter() - clock) * 1000.0)
                recalls[which].append(recall_at_k(tuple(got), expected, K))
    results: dict[str, list[dict[str, Any]]] = {}
    for (name, setting, _), times, hits in zip(searchers, samples, recalls, strict=True):
        p50 = float(np.percentile(times, 50))
        say(f"  {name} {setting}: p50 {p50:.2f} ms, recall {np.mean(hits):.3f}")
        results.setdefault(name, []).append(
            {
                "setting": setting,
                "p50_ms": round(p50, 3),
                "p99_ms": round(float(np.percentile(times, 99)), 3),
                "recall_at_50_vs_exact": round(float(np.mean(hits)), 4),
            }  # fmt: skip
        )
    return results


def faithful_region_check(
    service: RetrievalService,
    settings: Settings,
    stored: dict[str, Any],
    chosen: list[str],
    filters: Any,
    answers: list[tuple[str, ...]],
) -> dict[str, Any]:
    """``region`` with its probe seed against ``region`` with the exact nearest as the query's
    edges (the reference's definition, ``region_seed_candidates`` = 0)."""
    exact_seed = RegionGrowingSearch(
        service.read_model,
        query_edges=settings.region_query_edges or settings.knn_k,
        max_communities=settings.region_max_communities,
        seed_candidates=0,
    )
    same, latencies = 0, []
    for key, got in zip(chosen, answers, strict=True):
        clock = time.perf_counter()
        hits = exact_seed.search(stored[key].embedding, K, filters(key))
        latencies.append((time.perf_counter() - clock) * 1000.0)
        same += hits.keys == got
    return {
        "seed_candidates": settings.region_seed_candidates,
        "answers_identical_to_exact_seed": round(same / len(chosen), 4),
        "exact_seed_server": _summary(LatencySummary.of(latencies)),
    }


def outside_share(snapshot: Any, chosen: list[str], exact: list[tuple[str, ...]]) -> float:
    """Mean share of a query's exact top K outside the query's own (stored) community."""
    shares = []
    for key, hits in zip(chosen, exact, strict=True):
        own = snapshot.community[snapshot.key_index[key]]
        rows = [snapshot.key_index[hit] for hit in hits]
        shares.append(float(np.mean(snapshot.community[rows] != own)))
    return round(float(np.mean(shares)), 4)


def vector_profile(
    store: GraphStore, stored: dict[str, Any], chosen: list[str], filters: Any
) -> dict[str, Any]:
    """Where ``vector``'s time goes: the whole statement from Python, Neo4j's own time for it
    (``result_available_after`` + ``result_consumed_after``), the index call alone, and the
    parameter encoding on our side."""
    statement = load_cypher("search_vector")
    index_only = (
        "CALL db.index.vector.queryNodes('image_embedding', $fetch, $embedding) "
        "YIELD node, score RETURN count(node) AS n"
    )
    timings: dict[str, list[float]] = {name: [] for name in (
        "statement_python_ms", "statement_server_ms", "index_only_python_ms",
        "index_only_server_ms", "embedding_tolist_ms")}  # fmt: skip
    fetch = 2 * K + 1
    with store.driver.session(database=store.database) as session:
        for key in chosen:
            clock = time.perf_counter()
            embedding = stored[key].embedding.astype(np.float64).tolist()
            timings["embedding_tolist_ms"].append((time.perf_counter() - clock) * 1000.0)
            params = {"embedding": embedding, "fetch": fetch, "k": K,
                      **filters(key).cypher_params()}  # fmt: skip
            for text, python_name, server_name in (
                (statement, "statement_python_ms", "statement_server_ms"),
                (index_only, "index_only_python_ms", "index_only_server_ms"),
            ):
                clock = time.perf_counter()
                result = session.run(text, params)
                list(result)
                summary = result.consume()
                timings[python_name].append((time.perf_counter() - clock) * 1000.0)
                server_ms = (summary.result_available_after or 0) + (
                    summary.result_consumed_after or 0
                )
                timings[server_name].append(float(server_ms))
    return {
        "queries": len(chosen),
        "fetch": fetch,
        **{name: round(float(np.percentile(values, 50)), 2) for name, values in timings.items()},
    }


def measure_http(
    settings: Settings, store: GraphStore, warmup: list[str], chosen: list[str]
) -> dict[str, Any]:
    """The API as its own process (``medgraph serve``): per strategy, the client's time for
    ``POST /api/v1/search`` with a key over one keep-alive connection, the server's own time
    for the same request (``diagnostics.total_ms``), and the process's memory with every
    strategy warm."""
    token = create_api_key(store, "bench-search-scale", ("read",)).token
    log = settings.home / "logs" / "search-scale-api.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    env = stack_environment(settings)
    result: dict[str, Any] = {"strategies": {}}
    with log.open("wb") as handle:
        process = subprocess.Popen(
            [sys.executable, "-m", "services.cli", "serve", "--host", "127.0.0.1",
             "--port", str(settings.api_port), "--threads", "4"],
            cwd=REPO_ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        wait_for_api(process, settings.api_port, log)
        connection = http.client.HTTPConnection("127.0.0.1", settings.api_port, timeout=600)
        for strategy in Strategy:
            for key in warmup:
                http_search(connection, key, strategy, token)
            client, server, overhead = [], [], []
            for key in chosen:
                clock = time.perf_counter()
                total_ms = http_search(connection, key, strategy, token)
                elapsed = (time.perf_counter() - clock) * 1000.0
                client.append(elapsed)
                server.append(total_ms)
                overhead.append(elapsed - total_ms)
            result["strategies"][strategy.value] = {
                "client": _summary(LatencySummary.of(client)),
                "server_total_ms": _summary(LatencySummary.of(server)),
                "client_minus_server_p50_ms": round(float(np.percentile(overhead, 50)), 2),
            }
            say(f"  http {strategy.value}: p50 {np.percentile(client, 50):.1f} ms, "
                f"server in the response {np.percentile(server, 50):.1f} ms")  # fmt: skip
        connection.close()
        info = psutil.Process(process.pid).memory_info()
        peak = peak_rss_mib(process.pid)
        result["api_process"] = {
            "rss_mib_every_strategy_warm": round(info.rss / 2**20),
            "peak_rss_mib": peak,
            "threads": 4,
        }
        say(f"  API process RSS {info.rss / 2**20:.0f} MiB (peak {peak} MiB)")
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
    return result


def stack_environment(settings: Settings) -> dict[str, str]:
    """The environment of a child process (``medgraph serve``, a worker) of the benchmark's
    stack: its home and ports, no rate limit (a load test is not a rate-limit test)."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("MEDGRAPH_")}
    env.update(
        MEDGRAPH_HOME=str(settings.home),
        MEDGRAPH_NEO4J_BOLT_PORT=str(settings.neo4j_bolt_port),
        MEDGRAPH_NEO4J_HTTP_PORT=str(settings.neo4j_http_port),
        MEDGRAPH_REDIS_PORT=str(settings.redis_port),
        MEDGRAPH_API_PORT=str(settings.api_port),
        MEDGRAPH_KNN_K=str(settings.knn_k),
        MEDGRAPH_API_RATE_LIMIT_PER_MINUTE="0",
        PYTHONPATH=str(REPO_ROOT),
    )
    return env


def peak_rss_mib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024)
    except OSError:
        return None
    return None


def wait_for_api(
    process: subprocess.Popen[bytes], port: int, log: Path, timeout_s: float = 180
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the API exited during start-up:\n{log.read_text()[-3000:]}")
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            connection.request("GET", "/api/v1/health")
            if connection.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError("the API did not answer /api/v1/health")


def http_search(
    connection: http.client.HTTPConnection, key: str, strategy: Strategy, token: str
) -> float:
    """One search by key; returns the server's own time for it (``diagnostics.total_ms``)."""
    body = json.dumps({"key": key, "k": K, "strategy": strategy.value})
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}
    connection.request("POST", "/api/v1/search", body, headers)
    response = connection.getresponse()
    payload = response.read()
    if response.status != 200:
        raise RuntimeError(f"HTTP {response.status}: {payload[:300]!r}")
    return float(json.loads(payload)["diagnostics"]["total_ms"])


def _summary(summary: LatencySummary) -> dict[str, float]:
    return {
        "mean_ms": round(summary.mean_ms, 2),
        "p50_ms": round(summary.p50_ms, 2),
        "p99_ms": round(summary.p99_ms, 2),
    }


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "note": "a 2-core machine shared with other engineers' test runs and benchmarks; "
        "load_average_1m is recorded per size",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default=",".join(str(s) for s in SIZES))
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-http", action="store_true")
    parser.add_argument(
        "--set", dest="generated", choices=(*SETS, "both"), default="both",
        help="easy: bench.synthetic.generate (isotropic clusters far apart); hard: "
        "generate_hard (neighbourhoods across community boundaries); both (default): easy then "
        "hard in one run, so both tables share one run id and one machine state",
    )  # fmt: skip
    parser.add_argument("--output", type=Path, default=None, help="One set only.")
    parser.add_argument(
        "--reuse-graph",
        action="store_true",
        help="Measure the graph already in the benchmark's Neo4j (one size) without rebuilding.",
    )
    parser.add_argument(
        "--keep-neo4j",
        action="store_true",
        help="Leave the benchmark's Neo4j (and its last graph) running, e.g. for --reuse-graph.",
    )
    parser.add_argument("--heap", default="4g", help="Neo4j heap of the benchmark's server.")
    parser.add_argument("--pagecache", default="3g", help="Neo4j page cache.")
    parser.add_argument(
        "--port-offset", type=int, default=0,
        help="Run a second stack beside the first: home .medgraph/bench-search-N, ports + N.",
    )  # fmt: skip
    parser.add_argument(
        "--base-port", type=int, default=None,
        help="Ports from this base (Bolt +87, HTTP +74, Redis +79, API +40) and home "
        ".medgraph/bench-search-BASE, e.g. 20300 beside other stacks.",
    )  # fmt: skip
    parser.add_argument(
        "--merge", action="store_true", help="Keep the other sizes' results already in --output."
    )
    parser.add_argument(
        "--report", action="store_true",
        help="Print the README's markdown tables from the results files of one run, and exit.",
    )  # fmt: skip
    arguments = parser.parse_args()
    if arguments.report:
        print(markdown_report())
        return
    settings = bench_settings(
        arguments.heap, arguments.pagecache, arguments.port_offset, arguments.base_port
    )
    # The API processes' read models read the deleted keys from Redis on every search.
    redis_runtime = RedisRuntime(settings)
    redis_runtime.start()
    sets = SETS if arguments.generated == "both" else (arguments.generated,)
    if arguments.output is not None and len(sets) > 1:
        parser.error("--output needs one --set")
    if arguments.reuse_graph and len(sets) > 1:
        parser.error("--reuse-graph needs one --set (the stored graph is of one set)")
    run_id = datetime.now(UTC).isoformat(timespec="seconds")
    try:
        for generated in sets:
            output = arguments.output or (RESULTS_HARD if generated == "hard" else RESULTS)
            run_set(arguments, settings, generated, output, run_id)
    finally:
        close_shared_drivers()
        if not arguments.keep_neo4j:  # a 4 GiB-heap server left behind slows everything after
            Neo4jRuntime(settings).stop()
            redis_runtime.stop()


def run_set(
    arguments: argparse.Namespace, settings: Settings, generated: str, output: Path, run_id: str
) -> None:
    results: list[dict[str, Any]] = []
    if arguments.merge and output.exists():
        sizes = {int(value) for value in arguments.sizes.split(",")}
        previous = json.loads(output.read_text())["results"]
        results.extend(entry for entry in previous if entry["images"] not in sizes)
    document = {
        "benchmark": "search_scale",
        "set": generated,
        "run_id": run_id,  # the same for every set measured by one invocation
        "command": "python -m bench.search_scale " + " ".join(sys.argv[1:]),
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "neo4j": {"heap": settings.neo4j_heap, "pagecache": settings.neo4j_pagecache},
        "k": K,
        "knn_k": KNN_K,
        "results": results,
    }
    for n in (int(value) for value in arguments.sizes.split(",")):
        if arguments.reuse_graph:
            Neo4jRuntime(settings).start()  # no-op when still running from --keep-neo4j
            store = GraphStore.from_settings(settings)
            entry = stored_graph_report(store, n)
        else:
            say(f"n={n} ({generated} set): fresh Neo4j")
            store = fresh_neo4j(settings)
            entry = build_graph(store, settings, n, arguments.seed, generated)
        entry["neo4j_heap"], entry["neo4j_pagecache"] = (
            settings.neo4j_heap,
            settings.neo4j_pagecache,
        )
        entry["load_average_1m_before_queries"] = round(os.getloadavg()[0], 2)
        entry.update(measure(store, settings, arguments.queries, arguments.seed,
                             not arguments.no_http))  # fmt: skip
        entry["load_average_1m_after_queries"] = round(os.getloadavg()[0], 2)
        entry["python_rss_mib"] = round(psutil.Process().memory_info().rss / 2**20)
        results.append(entry)
        results.sort(key=lambda item: item["images"])
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(document, indent=2) + "\n")
        print_table(entry)
    say(f"wrote {output}")


def markdown_report(paths: tuple[Path, ...] = (RESULTS_HARD, RESULTS)) -> str:
    """The README tables, generated from the results files so that they are one run's figures
    (``--report``): refuses files of different runs."""
    documents = [json.loads(path.read_text()) for path in paths if path.exists()]
    runs = {document.get("run_id") for document in documents}
    if len(runs) != 1 or None in runs:
        raise SystemExit(f"--report needs the files of one run; run ids: {sorted(map(str, runs))}")
    command = documents[0].get("command", "python -m bench.search_scale").strip()
    lines = [
        f"Run {runs.pop()}: `{command}`.",
        "",
        "| set | images | communities (median size) | exact top 50 outside own community | "
        "strategy | server p50 / p99 ms | p50 / numpy p50 | p99 / numpy p50 | HTTP p50 ms | "
        "HTTP − server p50 ms | recall@50 vs exact | examined | load avg |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for document in documents:
        for entry in document["results"]:
            numpy_ms = entry["numpy_brute_force"]
            first = True
            in_process = [(n, r) for n, r in entry["strategies"].items() if isinstance(r, dict)]
            for name, row in [*in_process, ("numpy top-50", None)]:
                head = (
                    f"| {document['set']} | {entry['images']:,} | {entry['communities']} "
                    f"({entry['community_size_median']:g}) | "
                    f"{entry['exact_top50_outside_query_community']:.1%} |"
                    if first
                    else "| | | | |"
                )
                load = (
                    f"{entry['load_average_1m_before_queries']}–"
                    f"{entry['load_average_1m_after_queries']}"
                    if first
                    else ""
                )
                first = False
                if row is None:
                    lines.append(
                        f"{head} {name} | {numpy_ms['p50_ms']:.1f} / {numpy_ms['p99_ms']:.1f} | "
                        f"1.00 | {numpy_ms['p99_ms'] / numpy_ms['p50_ms']:.2f} | – | – | 1.000 | "
                        f"100% | {load} |"
                    )
                    continue
                http_row = row.get("http", {})
                http_p50 = http_row.get("client", {}).get("p50_ms")
                overhead = http_row.get("client_minus_server_p50_ms")
                lines.append(
                    f"{head} {name} | {row['server']['p50_ms']:.1f} / "
                    f"{row['server']['p99_ms']:.1f} | {row['server_p50_over_numpy_p50']:.2f} | "
                    f"{row['server_p99_over_numpy_p50']:.2f} | "
                    f"{'–' if http_p50 is None else f'{http_p50:.1f}'} | "
                    f"{'–' if overhead is None else f'{overhead:.1f}'} | "
                    f"{row['recall_at_50_vs_exact']:.3f} | {row['fraction_examined']:.2%} | "
                    f"{load} |"
                )
    lines += [
        "",
        "| set | images | region's stages p50 ms | faithful region | read model | "
        "API process RSS, every strategy warm (peak) | vector: statement / in Neo4j / "
        "index alone ms | build s (kNN, write + index, Leiden) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for document in documents:
        for entry in document["results"]:
            stages = ", ".join(
                f"{name} {ms:.1f}"
                for name, ms in entry["strategies"]["region"]["stage_ms_p50"].items()
            )
            faithful = entry["faithful_region"]
            api = entry.get("api_process") or {}
            vector = entry["vector_profile"]
            lines.append(
                f"| {document['set']} | {entry['images']:,} | {stages} | "
                f"{faithful['answers_identical_to_exact_seed']:.1%} identical to the exact-seed "
                f"answer | {entry['read_model_mib']} MiB, loaded in {entry['read_model_load_s']} s "
                f"| {api.get('rss_mib_every_strategy_warm', '–')} MiB "
                f"({api.get('peak_rss_mib', '–')} MiB) | {vector['statement_python_ms']} / "
                f"{vector['statement_server_ms']} / {vector['index_only_python_ms']} | "
                f"{entry.get('knn_s', '–')}, {entry.get('write_graph_and_index_s', '–')}, "
                f"{entry.get('cluster_s', '–')} |"
            )
    lines += [
        "",
        "| set | images | index | setting | p50 ms | recall@50 vs exact | p50 / numpy p50 |",
        "|---|---|---|---|---|---|---|",
    ]
    for document in documents:
        for entry in document["results"]:
            numpy_p50 = entry["numpy_brute_force"]["p50_ms"]
            ranked = entry["strategies"]["community_ranked"]
            rows = [("numpy top-50", "", numpy_p50, 1.0),
                    ("community_ranked (server)", "", ranked["server"]["p50_ms"],
                     ranked["recall_at_50_vs_exact"])]  # fmt: skip
            for name in ("community_ranked_sweep", "faiss_ivf_flat", "faiss_hnsw"):
                rows += [(name, r["setting"], r["p50_ms"], r["recall_at_50_vs_exact"])
                         for r in entry["strategies"].get(name, [])]  # fmt: skip
            for index, (name, setting, p50, recall) in enumerate(rows):
                head = f"| {document['set']} | {entry['images']:,} |" if index == 0 else "| | |"
                lines.append(f"{head} {name} | {setting} | {p50:.2f} | {recall:.3f} | "
                             f"{p50 / numpy_p50:.2f} |")  # fmt: skip
    return "\n".join(lines)


def print_table(entry: dict[str, Any]) -> None:
    numpy_ms = entry["numpy_brute_force"]
    print(f"\n{entry['images']:,} images ({entry.get('set', 'easy')} set), {entry['pairs']:,} "
          f"pairs, {entry['communities']} communities; numpy brute force p50 "
          f"{numpy_ms['p50_ms']} ms, p99 {numpy_ms['p99_ms']} ms; exact top 50 outside the "
          f"query's community {entry['exact_top50_outside_query_community']:.1%}")  # fmt: skip
    print(f"{'strategy':<17} {'p50 ms':>8} {'p99 ms':>8} {'HTTP p50':>9} {'HTTP-srv':>9} "
          f"{'p50/numpy':>10} {'p99/np50':>9} {'recall@50':>10} {'examined':>9}")  # fmt: skip
    for name, row in entry["strategies"].items():
        if isinstance(row, list):  # the faiss anchor rows
            for anchor in row:
                print(f"{name:<17} {anchor['setting']:<22} p50 {anchor['p50_ms']:.2f} ms, "
                      f"recall@50 {anchor['recall_at_50_vs_exact']:.3f}")  # fmt: skip
            continue
        http_row = row.get("http", {})
        print(f"{name:<17} {row['server']['p50_ms']:>8.1f} {row['server']['p99_ms']:>8.1f} "
              f"{http_row.get('client', {}).get('p50_ms', float('nan')):>9.1f} "
              f"{http_row.get('client_minus_server_p50_ms', float('nan')):>9.2f} "
              f"{row['server_p50_over_numpy_p50']:>10.3f} "
              f"{row['server_p99_over_numpy_p50']:>9.3f} "
              f"{row['recall_at_50_vs_exact']:>10.3f} "
              f"{row['fraction_examined']:>9.2%}")  # fmt: skip
    print(f"faithful region: {entry['faithful_region']}")
    print(f"vector profile: {entry['vector_profile']}")
    print(f"API process: {entry.get('api_process')}")


if __name__ == "__main__":
    main()

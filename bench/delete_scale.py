"""Time per deleted image at 10^5 generated images (issue 15, acceptance 7).

On its own fresh Neo4j (home ``.medgraph/bench-delete``, Bolt 8187, HTTP 7974: the base ports
+500, heap 3g, page cache 2g):

1. the search benchmark's graph (``bench.search_scale.build_graph``): ``bench.synthetic``
   embeddings, the kNN graph (k = 10) inside each planted cluster, written as ingestion writes
   it, then communities by the clustering job; every image's ``knn_floor`` is then set from its
   edges (``cypher/ingest_refresh_knn_floor.cypher``), as ingestion leaves it, so deletions
   re-link former neighbours exactly as they would in production;
2. deletions through ``services.curation.deletion.delete_images``, each one transaction:
   ``--singles`` single images, ``--batches`` batches of ``--batch-size`` images, and
   ``--patients`` whole (generated) patients; wall time of each call, divided by its images;
3. the next ``exact`` search after a deletion (the matrix cache reloads: the cost a deletion
   puts on the next search) against a warm one;
4. a check that the stored community sums and m still equal a server-side recomputation.

Run: ``.venv/bin/python -m bench.delete_scale`` (``--size 10000`` for a quick look). Writes
``bench/results/delete_scale.json``; the Neo4j is stopped at the end unless ``--keep-neo4j``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from bench.search_scale import build_graph, fresh_neo4j, machine, say
from bench.similarity_graph import patient_key as synthetic_patient_key
from services.config import REPO_ROOT, Settings
from services.curation.deletion import DeletionReport, delete_images
from services.graph.store import GraphStore, close_shared_drivers
from services.retrieval.contract import SearchFilters, Strategy
from services.retrieval.service import RetrievalService
from services.runtime.neo4j import Neo4jRuntime

RESULTS = REPO_ROOT / "bench" / "results" / "delete_scale.json"
KNN_K = 10
FLOOR_BATCH = 5_000
SALT = b"bench-delete-salt"


def bench_settings(heap: str, pagecache: str) -> Settings:
    return Settings(
        home=REPO_ROOT / ".medgraph" / "bench-delete",
        neo4j_bolt_port=8187,
        neo4j_http_port=7974,
        redis_port=6879,
        api_port=5500,
        neo4j_heap=heap,
        neo4j_pagecache=pagecache,
        knn_k=KNN_K,
    )


def set_floors(store: GraphStore, keys: list[str]) -> float:
    clock = time.perf_counter()
    for start in range(0, len(keys), FLOOR_BATCH):
        store.query("ingest_refresh_knn_floor", keys=keys[start : start + FLOOR_BATCH], k=KNN_K)
    return time.perf_counter() - clock


def summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "count": len(values),
        "mean_ms": round(statistics.fmean(values), 2),
        "p50_ms": round(ordered[len(ordered) // 2], 2),
        "p95_ms": round(ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)], 2),
        "max_ms": round(ordered[-1], 2),
    }


STAGES: dict[str, list[float]] = {}


def timed_delete(
    store: GraphStore, settings: Settings, keys: list[str], patient: str | None = None
) -> tuple[DeletionReport, float]:
    clock = time.perf_counter()
    report = delete_images(store, settings, keys, actor="bench", salt=SALT, patient_key=patient)
    for stage, ms in report.stage_ms.items():
        STAGES.setdefault(stage, []).append(ms)
    return report, (time.perf_counter() - clock) * 1000.0


def sums_agree(store: GraphStore) -> dict[str, Any]:
    """Stored sigma_tot, internal weight and m against Neo4j's own aggregation of the edges."""
    recomputed = {
        int(row["community"]): (float(row["sigma_tot"]), float(row["internal_weight"]))
        for row in store.query("community_edge_sums")
    }
    stored = {
        int(row["id"]): (float(row["sigma"] or 0.0), float(row["internal"] or 0.0))
        for row in store.run_text(
            "MATCH (c:Community) RETURN c.id AS id, c.sigma_tot AS sigma, "
            "c.internal_weight AS internal"
        )
    }
    worst = max(
        (abs(stored.get(c, (0.0, 0.0))[i] - recomputed[c][i]) for c in recomputed for i in (0, 1)),
        default=0.0,
    )
    m_stored = float(
        store.run_text(
            "MATCH (r:ClusteringRun {status: 'finished'}) RETURN r.total_weight_m AS m "
            "ORDER BY r.finished_at DESC LIMIT 1"
        )[0]["m"]
    )
    m_recomputed = sum(sigma for sigma, _ in recomputed.values()) / 2.0
    return {
        "communities_compared": len(recomputed),
        "communities_without_members": len(set(stored) - set(recomputed)),
        "max_abs_sum_error": worst,
        "m_abs_error": abs(m_stored - m_recomputed),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=100_000)
    parser.add_argument("--singles", type=int, default=200)
    parser.add_argument("--batches", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--patients", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--heap", default="3g")
    parser.add_argument("--pagecache", default="2g")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--keep-neo4j", action="store_true")
    arguments = parser.parse_args()
    settings = bench_settings(arguments.heap, arguments.pagecache)
    entry: dict[str, Any] = {
        "benchmark": "delete_scale",
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "neo4j": {"heap": settings.neo4j_heap, "pagecache": settings.neo4j_pagecache},
        "knn_k": KNN_K,
        "knn_index_candidates": settings.knn_index_candidates,
    }
    try:
        say(f"n={arguments.size}: fresh Neo4j")
        store = fresh_neo4j(settings)
        entry["graph"] = build_graph(store, settings, arguments.size, arguments.seed)
        keys = [row["key"] for row in store.run_text("MATCH (i:Image) RETURN i.key AS key")]
        entry["graph"]["set_knn_floor_s"] = round(set_floors(store, keys), 1)
        say("floors set; deleting")
        rng = np.random.default_rng(arguments.seed + 15)
        order = [str(key) for key in rng.permutation(sorted(keys))]
        entry["load_average_1m_before"] = round(os.getloadavg()[0], 2)

        per_image: dict[str, list[float]] = {"single": [], "batch": [], "patient": []}
        per_call: dict[str, list[float]] = {"single": [], "batch": [], "patient": []}
        relinked = edges_added = edges_removed = images = 0
        for _ in range(arguments.singles):
            report, ms = timed_delete(store, settings, [order.pop()])
            per_call["single"].append(ms)
            per_image["single"].append(ms / max(len(report.deleted), 1))
            relinked, edges_added = relinked + report.relinked, edges_added + report.edges_added
            edges_removed, images = edges_removed + report.edges_removed, images + 1
        for _ in range(arguments.batches):
            batch = [order.pop() for _ in range(arguments.batch_size)]
            report, ms = timed_delete(store, settings, batch)
            per_call["batch"].append(ms)
            per_image["batch"].append(ms / len(report.deleted))
            relinked, edges_added = relinked + report.relinked, edges_added + report.edges_added
            edges_removed, images = edges_removed + report.edges_removed, images + len(batch)
        patients = rng.choice(max(1, int(arguments.size / 3.5)), size=arguments.patients,
                              replace=False)  # fmt: skip
        for patient in patients:
            report, ms = timed_delete(store, settings, [], synthetic_patient_key(int(patient)))
            if not report.deleted:
                continue
            per_call["patient"].append(ms)
            per_image["patient"].append(ms / len(report.deleted))
            relinked, edges_added = relinked + report.relinked, edges_added + report.edges_added
            edges_removed, images = (
                edges_removed + report.edges_removed,
                images + len(report.deleted),
            )
        entry["load_average_1m_after_deletions"] = round(os.getloadavg()[0], 2)
        entry["deleted_images"] = images
        entry["edges_removed"] = edges_removed
        entry["edges_added"] = edges_added
        entry["neighbours_relinked"] = relinked
        entry["per_image_ms"] = {kind: summary(v) for kind, v in per_image.items() if v}
        entry["per_call_ms"] = {kind: summary(v) for kind, v in per_call.items() if v}
        # Where a call's time goes, statement by statement (mean ms per call that ran it).
        entry["statement_mean_ms"] = {
            stage: round(statistics.fmean(values), 2) for stage, values in sorted(
                STAGES.items(), key=lambda item: -statistics.fmean(item[1]))
        }  # fmt: skip

        # The next exact search after a deletion reloads the matrix cache.
        service = RetrievalService(store, settings)
        query = np.asarray(
            store.run_text("MATCH (i:Image) RETURN i.embedding AS e LIMIT 1")[0]["e"],
            dtype=np.float32,
        )
        service.search(query, 50, Strategy.EXACT, SearchFilters())
        warm: list[float] = []
        after_delete: list[float] = []
        for _ in range(3):
            clock = time.perf_counter()
            service.search(query, 50, Strategy.EXACT, SearchFilters())
            warm.append((time.perf_counter() - clock) * 1000.0)
            timed_delete(store, settings, [order.pop()])
            clock = time.perf_counter()
            hits = service.search(query, 50, Strategy.EXACT, SearchFilters())
            after_delete.append((time.perf_counter() - clock) * 1000.0)
            assert len(hits.keys) == 50
        entry["exact_search_ms"] = {"warm": summary(warm), "first_after_a_deletion":
                                    summary(after_delete)}  # fmt: skip
        entry["sums_check"] = sums_agree(store)
        arguments.output.parent.mkdir(parents=True, exist_ok=True)
        arguments.output.write_text(json.dumps(entry, indent=2) + "\n")
        shown = ("deleted_images", "edges_removed", "edges_added", "neighbours_relinked",
                 "per_image_ms", "per_call_ms", "statement_mean_ms", "exact_search_ms",
                 "sums_check")  # fmt: skip
        print(json.dumps({name: entry[name] for name in shown}, indent=2))
    finally:
        close_shared_drivers()
        if not arguments.keep_neo4j:
            Neo4jRuntime(settings).stop()
    say(f"wrote {arguments.output}")


if __name__ == "__main__":
    main()

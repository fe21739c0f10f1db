"""The full clustering run: detect, give stable ids, store the assignment and every sum.

Steps (each reported through ``progress``):
1. open a :ClusteringRun (status 'running'); refuse while another recent run is running;
2. detect communities (GDS Leiden/Louvain on a projection, or CNM in networkx);
3. carry community ids over from the previous assignment (``identities.py``);
4. write the changed ``community`` properties; images ingested during the run, which the
   detection did not see, lose theirs and are assigned at the end (step 7);
5. recompute every community's sums from the graph and the modularity from them (exactly
   ``networkx.community.modularity`` of the stored partition);
6. replace the :Community nodes; finish the run (status 'finished');
7. assign the images that arrived during the run (``assign_new_images``).
"""

from __future__ import annotations

import contextlib
import json
import statistics
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from neo4j import ManagedTransaction

from services.communities.detection import (
    GDS_ALGORITHMS,
    ClusteringError,
    ClusteringInProgress,
    DetectionParameters,
    detect,
)
from services.communities.freshness import assign_new_images
from services.communities.identities import FIRST_COMMUNITY_ID, match_community_ids
from services.communities.statistics import collect_sums as recompute_sums
from services.communities.statistics import modularity
from services.config import Settings, get_settings
from services.graph.changes import ChangeKind, record_change
from services.graph.cypher import load_cypher
from services.graph.store import GraphStore

Progress = Callable[[str], None]
# A run still 'running' after this long is taken as crashed and no longer blocks a new one.
ABANDONED_AFTER = timedelta(hours=2)
# {key, community} rows are tiny: large batches save round trips (9k rows/s at 1,000 a batch).
ASSIGNMENT_BATCH = 10_000
# Images written this long before the run started may still be missing from its projection
# (their transaction committed after the projection began).
LATE_INGEST_MARGIN = timedelta(minutes=5)


@dataclass(frozen=True)
class ClusteringSummary:
    run_id: str
    algorithm: str
    parameters: dict[str, Any]
    community_count: int
    size_min: int
    size_median: float
    size_max: int
    modularity: float | None  # recomputed from the stored sums (networkx's definition)
    reported_modularity: float | None  # the algorithm's own figure
    total_weight_m: float
    node_count: int
    edge_count: int
    images_kept: int  # previously clustered images whose community id did not change
    images_before: int
    late_images_assigned: int
    seconds: float
    phase_seconds: dict[str, float]
    communities_merged: int = 0  # by Leiden's merge pass (detection.merge_pass)

    @property
    def kept_fraction(self) -> float | None:
        return self.images_kept / self.images_before if self.images_before else None

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "kept_fraction": self.kept_fraction}

    def describe(self) -> str:
        lines = [
            f"run {self.run_id} ({self.algorithm}): {self.community_count} communities over "
            f"{self.node_count} images and {self.edge_count} SIMILAR pairs",
            f"  sizes: min {self.size_min}, median {self.size_median:g}, max {self.size_max}",
            f"  modularity: {_figure(self.modularity)} (algorithm reported "
            f"{_figure(self.reported_modularity)}), m = {self.total_weight_m:.4f}",
        ]
        if self.communities_merged:
            lines.append(f"  merge pass: joined {self.communities_merged} communities that "
                         "Leiden left apart")  # fmt: skip
        if self.images_before:
            lines.append(
                f"  stable ids: {self.images_kept}/{self.images_before} previously clustered "
                f"images kept their community id ({self.kept_fraction:.1%})"
            )
        if self.late_images_assigned:
            lines.append(f"  {self.late_images_assigned} images that arrived during the run "
                         "were assigned incrementally")  # fmt: skip
        phases = ", ".join(f"{name} {seconds:.1f}" for name, seconds in self.phase_seconds.items())
        lines.append(f"  seconds: {self.seconds:.1f} ({phases})")
        return "\n".join(lines)


def _figure(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.6f}"


def detection_parameters(
    settings: Settings, algorithm: str | None = None, resolution: float | None = None,
    seed: int | None = None,
) -> DetectionParameters:  # fmt: skip
    return DetectionParameters(
        algorithm=(algorithm or settings.cluster_algorithm).lower(),
        resolution=settings.cluster_resolution if resolution is None else float(resolution),
        seed=settings.cluster_seed if seed is None else int(seed),
        concurrency=settings.cluster_concurrency,
        max_levels=settings.cluster_max_levels,
        cnm_max_nodes=settings.cluster_cnm_max_nodes,
        seed_from_previous=settings.cluster_seed_previous,
    )


def run_clustering(
    store: GraphStore,
    settings: Settings | None = None,
    *,
    algorithm: str | None = None,
    resolution: float | None = None,
    seed: int | None = None,
    progress: Progress | None = None,
) -> ClusteringSummary:
    """One full clustering run; raises ``ClusteringError`` for a request that cannot run."""
    settings = settings or get_settings()
    say = progress or (lambda _message: None)
    parameters = detection_parameters(settings, algorithm, resolution, seed)
    parameters.validate()
    started_at = datetime.now(UTC)
    clock = time.perf_counter()
    phases: dict[str, float] = {}

    _retire_abandoned_runs(store, started_at)
    counts = store.query("community_graph_counts")[0]
    if counts["images"] == 0:
        raise ClusteringError("no :Image nodes to cluster: ingest images first")
    previous_runs = store.query("community_latest_finished_run")
    previous_run = previous_runs[0] if previous_runs else None

    run_id = f"run-{started_at:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"
    # Starting from the previous partition needs one that covers most images: images without
    # a community all start in one placeholder community.
    parameters = replace(
        parameters,
        seed_from_previous=parameters.seed_from_previous
        and previous_run is not None
        and 2 * counts["unassigned"] <= counts["images"],
    )
    parameter_record = {
        "algorithm": parameters.algorithm,
        "seeded_from_previous": parameters.seed_from_previous
        and parameters.algorithm in GDS_ALGORITHMS,
        "resolution": parameters.resolution,
        "seed": parameters.seed if parameters.algorithm == "leiden" else None,
        "concurrency": parameters.concurrency,
        "max_levels": parameters.max_levels,
    }
    store.query("community_run_create", id=run_id, properties={
        "status": "running", "algorithm": parameters.algorithm,
        "parameters": json.dumps(parameter_record, sort_keys=True),
        "resolution": parameters.resolution, "seed": parameter_record["seed"],
        "started_at": started_at,
        "previous_run_id": previous_run["id"] if previous_run else None,
    })  # fmt: skip
    try:
        _yield_to_earlier_run(store, run_id, started_at)
        say(f"run {run_id}: {parameters.algorithm} on {counts['images']} images, "
            f"{counts['pairs']} SIMILAR pairs")  # fmt: skip
        if counts["invalid"]:
            raise ClusteringError(
                f"{counts['invalid']} SIMILAR relationships have a missing or negative weight; "
                "modularity needs non-negative weights: set MEDGRAPH_MIN_COSINE >= 0 and "
                "rebuild the edges"
            )
        mark = time.perf_counter()
        detection = detect(store, parameters)
        phases["detect"] = time.perf_counter() - mark
        say(f"detected {len(set(detection.labels.values()))} communities in "
            f"{phases['detect']:.1f} s")  # fmt: skip

        mark = time.perf_counter()
        stored = store.query("community_assignment")[0]
        previous = dict(zip(stored["keys"], map(int, stored["communities"]), strict=True))
        next_id = int(previous_run["next_community_id"]) if previous_run else FIRST_COMMUNITY_ID
        matched = match_community_ids(previous, detection.labels, next_id)
        changed = [
            {"key": key, "community": matched.ids[label]}
            for key, label in detection.labels.items()
            if previous.get(key) != matched.ids[label]
        ]
        say(f"ids: {matched.inherited} communities kept their id, {matched.fresh} new; "
            f"writing {len(changed)} changed assignments")  # fmt: skip
        _write_in_batches(store, "community_write_assignment", changed, ASSIGNMENT_BATCH, say,
                          "assignments")  # fmt: skip
        recent = store.query("community_images_since", since=started_at - LATE_INGEST_MARGIN)
        late = sorted(set(recent[0]["keys"]) - detection.labels.keys())
        if late:
            _logged_write(store, "community_clear_assignment", {"keys": late}, ChangeKind.ROWS,
                          late)  # fmt: skip
        phases["write"] = time.perf_counter() - mark

        mark = time.perf_counter()
        say("recomputing community sums, finding histograms and centroids")
        sums = recompute_sums(store, say)
        total_weight_m = sum(s.sigma_tot for s in sums.values()) / 2.0
        q = modularity(sums.values(), total_weight_m)
        phases["statistics"] = time.perf_counter() - mark

        mark = time.perf_counter()
        now = datetime.now(UTC)
        rows = [
            {"id": community, "properties": {**s.properties(), "run_id": run_id,
                                             "updated_at": now, "created_by": "run"}}
            for community, s in sorted(sums.items())
        ]  # fmt: skip
        _write_in_batches(store, "community_write_communities", rows, 100, say, "communities")
        store.query("community_delete_except", ids=sorted(sums))
        sizes = sorted(s.size for s in sums.values())
        finished_at = datetime.now(UTC)
        phases["store"] = time.perf_counter() - mark
        duration = time.perf_counter() - clock
        # Finishing the run and logging the new partition commit together (the search side
        # swaps in a model of the new partition, built in the background).
        _logged_write(store, "community_run_update", {"id": run_id, "properties": {
            "status": "finished", "finished_at": finished_at, "duration_s": duration,
            "modularity": q, "reported_modularity": detection.reported_modularity,
            "total_weight_m": total_weight_m, "total_weight_m_at_run": total_weight_m,
            "node_count": len(detection.labels), "edge_count": detection.pair_count,
            "community_count": len(sums), "size_min": sizes[0], "size_max": sizes[-1],
            "size_median": float(statistics.median(sizes)),
            "levels": detection.levels, "converged": detection.converged,
            "seeded": detection.seeded, "seed_discarded": detection.seed_discarded,
            "seed_kept": detection.seed_kept,
            "communities_merged": detection.communities_merged,
            "next_community_id": matched.next_community_id,
            "communities_inherited": matched.inherited, "communities_new": matched.fresh,
            "images_kept": matched.images_kept, "images_before": matched.images_before,
            "images_added": 0, "weight_added": 0.0,
            "phase_seconds": json.dumps({k: round(v, 3) for k, v in phases.items()}),
        }}, ChangeKind.PARTITION)  # fmt: skip
    except BaseException as error:
        # If Neo4j went away, recording the failure fails too: the first error is the one to see.
        with contextlib.suppress(Exception):
            store.query("community_run_update", id=run_id, properties={
                "status": "failed", "finished_at": datetime.now(UTC),
                "error": f"{type(error).__name__}: {error}"[:2000],
            })  # fmt: skip
        raise

    late_assigned = 0
    if late:
        say(f"assigning {len(late)} images that arrived during the run")
        late_assigned = len(assign_new_images(store, late))

    return ClusteringSummary(
        run_id=run_id,
        algorithm=parameters.algorithm,
        parameters=parameter_record,
        community_count=len(sums),
        size_min=sizes[0],
        size_median=float(statistics.median(sizes)),
        size_max=sizes[-1],
        modularity=q,
        reported_modularity=detection.reported_modularity,
        total_weight_m=total_weight_m,
        node_count=len(detection.labels),
        edge_count=detection.pair_count,
        images_kept=matched.images_kept,
        images_before=matched.images_before,
        late_images_assigned=late_assigned,
        seconds=time.perf_counter() - clock,
        phase_seconds=phases,
        communities_merged=detection.communities_merged,
    )


def _logged_write(
    store: GraphStore, name: str, params: dict[str, Any], kind: ChangeKind,
    keys: Sequence[str] = (),
) -> None:  # fmt: skip
    """The named write and its change-log record in one transaction."""

    def work(tx: ManagedTransaction) -> None:
        def run(statement: str, **values: Any) -> list[dict[str, Any]]:
            return [record.data() for record in tx.run(load_cypher(statement), values)]

        run(name, **params)
        record_change(run, kind, keys)

    with store.driver.session(database=store.database) as session:
        session.execute_write(work)


def _retire_abandoned_runs(store: GraphStore, now: datetime) -> None:
    for row in store.query("community_runs_in_progress"):
        started = row["started_at"].to_native() if row["started_at"] is not None else None
        if started is None or now - started >= ABANDONED_AFTER:
            store.query("community_run_update", id=row["id"], properties={
                "status": "failed", "error": "abandoned: still running after "
                f"{ABANDONED_AFTER}, taken as crashed"})  # fmt: skip


def _yield_to_earlier_run(store: GraphStore, run_id: str, started_at: datetime) -> None:
    """Refuses to go on when another run is in progress.

    Checked after this run's node exists, so two runs starting together both see each other
    and exactly one, the later by (start time, id), gives way.
    """
    for row in store.query("community_runs_in_progress"):
        if row["id"] == run_id or row["started_at"] is None:
            continue
        started = row["started_at"].to_native()
        if (started, row["id"]) < (started_at, run_id):
            raise ClusteringInProgress(
                f"clustering run {row['id']} is in progress since {started:%Y-%m-%d %H:%M:%S} "
                "UTC; wait for it to finish"
            )


def _write_in_batches(
    store: GraphStore, name: str, rows: Sequence[dict[str, Any]], batch_size: int,
    say: Progress, what: str,
) -> None:  # fmt: skip
    report_every = max(batch_size, len(rows) // 10)
    written = 0
    for chunk in _chunks(rows, report_every):
        written += store.write_batches(name, chunk, batch_size)
        if len(rows) > report_every:
            say(f"  {what}: {written}/{len(rows)}")


def _chunks(rows: Sequence[dict[str, Any]], size: int) -> Iterator[Sequence[dict[str, Any]]]:
    for start in range(0, len(rows), size):
        yield rows[start : start + size]

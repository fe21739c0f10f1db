"""Keeping the clustering fresh between full runs.

``assign_new_images`` puts images ingested after the last run into the existing community with
the largest weighted-modularity gain from their edges and extends the stored sums, so that
retrieval sees a consistent graph without a full re-run. ``staleness`` says how much of the
graph arrived since the last run; past ``cluster_rerun_fraction`` a full run is due
(``needs_full_rerun``, ``medgraph cluster --if-stale``).

Invariant kept by both the full run and this module: the stored sums (every community's size,
sigma_tot, internal weight; m on the latest run) describe exactly the subgraph of images that
have a community. An edge to an image still waiting for assignment counts once that image is
assigned.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from neo4j import ManagedTransaction

from services.communities.statistics import CommunitySums
from services.config import Settings, get_settings
from services.graph.changes import ChangeKind, record_change
from services.graph.cypher import load_cypher
from services.graph.store import GraphStore

log = logging.getLogger(__name__)


class UnknownImagesError(ValueError):
    """Keys given for assignment that are not :Image nodes."""


@dataclass(frozen=True)
class Staleness:
    run_id: str | None  # latest finished run; None when the graph was never clustered
    node_count: int  # images that run clustered
    images_added: int  # images assigned at ingest since then
    images_unassigned: int  # images without a community
    weight_added: float  # SIMILAR weight those assignments added to m
    added_fraction: float  # (images_added + images_unassigned) / node_count
    threshold: float
    stale: bool

    def describe(self) -> str:
        if self.run_id is None:
            return f"never clustered; {self.images_unassigned} images without a community"
        return (
            f"run {self.run_id}: {self.node_count} images clustered, {self.images_added} added "
            f"since, {self.images_unassigned} unassigned: {self.added_fraction:.1%} new "
            f"(threshold {self.threshold:.1%}) -> {'stale' if self.stale else 'fresh'}"
        )


def staleness(store: GraphStore, settings: Settings | None = None) -> Staleness:
    settings = settings or get_settings()
    threshold = settings.cluster_rerun_fraction
    unassigned = int(store.query("community_image_counts")[0]["unassigned"])
    latest = store.query("community_latest_finished_run")
    if not latest:
        return Staleness(
            None, 0, 0, unassigned, 0.0, 1.0 if unassigned else 0.0, threshold, stale=unassigned > 0
        )
    run = latest[0]
    node_count = int(run["node_count"] or 0)
    added = int(run["images_added"])
    fraction = (added + unassigned) / node_count if node_count else float(added + unassigned > 0)
    return Staleness(
        run_id=run["id"],
        node_count=node_count,
        images_added=added,
        images_unassigned=unassigned,
        weight_added=float(run["weight_added"]),
        added_fraction=fraction,
        threshold=threshold,
        stale=fraction > threshold,
    )


def needs_full_rerun(store: GraphStore, settings: Settings | None = None) -> bool:
    """True when the images added since the last full run exceed the configured fraction."""
    return staleness(store, settings).stale


def assign_new_images(store: GraphStore, keys: Iterable[str]) -> dict[str, int]:
    """Gives each new image a community without a full re-run; returns key -> community.

    Call it after the images' nodes and SIMILAR edges are written. Each image (in the order
    given) joins the community c of its neighbours with the largest gain
    ``dQ = k_i,c / m - gamma * sigma_tot_c * k_i / (2 m^2)`` (m and sigma_tot including the
    image's edges), or a new community of its own when no gain is positive or it has no
    clustered neighbour. Images that already have a community keep it. Before the first full
    run nothing is assigned (empty result). Concurrent callers are serialised by a write lock
    on the latest run; raises ``UnknownImagesError`` for keys that are not images.
    """
    unique = list(dict.fromkeys(keys))
    if not unique:
        return {}
    with store.driver.session(database=store.database) as session:
        return session.execute_write(_assign, unique)


def _run(tx: ManagedTransaction, name: str, **params: Any) -> list[dict[str, Any]]:
    return [record.data() for record in tx.run(load_cypher(name), params)]


def _assign(tx: ManagedTransaction, keys: list[str]) -> dict[str, int]:
    locked = _run(tx, "community_lock_latest_run")
    rows = _run(tx, "community_new_image_edges", keys=keys)
    missing = sorted(set(keys) - {row["key"] for row in rows})
    if missing:
        shown = ", ".join(missing[:5]) + (
            f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        )
        raise UnknownImagesError(f"cannot assign communities: no :Image with key {shown}")
    if not locked:
        return {}
    run = locked[0]
    result = {row["key"]: int(row["community"]) for row in rows if row["community"] is not None}
    position = {key: index for index, key in enumerate(keys)}
    pending = sorted(
        (row for row in rows if row["community"] is None), key=lambda row: position[row["key"]]
    )
    if not pending:
        return result

    neighbour_ids = sorted({edge["community"] for row in pending for edge in row["edges"]} - {None})
    sums = {
        int(row["id"]): CommunitySums.from_stored(row)
        for row in _run(tx, "community_sums", ids=neighbour_ids)
    }
    resolution = float(run["resolution"] or 1.0)
    m_before = m = float(run["total_weight_m"] or 0.0)
    next_id = int(run["next_community_id"])
    touched: set[int] = set()
    created: set[int] = set()
    assigned: dict[str, int] = {}

    for row in pending:
        counted: list[tuple[int, float]] = []
        for edge in row["edges"]:
            community = edge["community"]
            if community is None:
                community = assigned.get(edge["key"])
            if edge["weight"] is None:  # not a usable edge; the next full run refuses it
                continue
            if community is None or int(community) not in sums:
                if community is not None:
                    log.warning(
                        "community %s of %s has no :Community node; edge ignored",
                        community,
                        edge["key"],
                    )
                continue
            counted.append((int(community), float(edge["weight"])))
        degree = sum(weight for _, weight in counted)
        # The image's edges raise its neighbours' degrees and m before the gains are compared.
        for community, weight in counted:
            sums[community].sigma_tot += weight
            touched.add(community)
        m += degree
        weight_into: Counter[int] = Counter()
        for community, weight in counted:
            weight_into[community] += weight
        best, best_gain = None, 0.0
        for community in sorted(weight_into):
            gain = weight_into[community] / m - resolution * sums[community].sigma_tot * degree / (
                2.0 * m * m
            )
            if gain > best_gain:
                best, best_gain = community, gain
        if best is None:
            best = next_id
            next_id += 1
            sums[best] = CommunitySums(id=best)
            created.add(best)
        target = sums[best]
        target.sigma_tot += degree
        target.internal_weight += weight_into.get(best, 0.0)
        target.add_member(row["embedding"], row["findings"])
        touched.add(best)
        assigned[row["key"]] = best

    now = datetime.now(UTC)
    _run(
        tx,
        "community_write_assignment",
        rows=[{"key": key, "community": community} for key, community in assigned.items()],
    )
    _run(
        tx,
        "community_write_communities",
        rows=[
            {
                "id": community,
                "properties": {
                    **sums[community].properties(),
                    "updated_at": now,
                    **(
                        {"run_id": run["id"], "created_by": "assignment"}
                        if community in created
                        else {}
                    ),
                },
            }
            for community in sorted(touched)
        ],
    )
    _run(
        tx,
        "community_run_update",
        id=run["id"],
        properties={
            "total_weight_m": m,
            "next_community_id": next_id,
            "images_added": int(run["images_added"]) + len(assigned),
            "weight_added": float(run["weight_added"]) + (m - m_before),
            "last_assignment_at": now,
        },
    )
    record_change(lambda name, **params: _run(tx, name, **params), ChangeKind.ROWS, assigned)
    result.update(assigned)
    return result

"""Community detection on the SIMILAR graph: GDS Leiden/Louvain inside Neo4j, or CNM in networkx.

Every detector returns a :class:`Detection`: an arbitrary label per image key. Stable community
ids are given afterwards (``identities.py``); the stored statistics are recomputed from the
graph (``job.py``), so a detector's own modularity figure is only recorded for comparison.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass

import networkx as nx
from neo4j.exceptions import ClientError

from services.graph.store import GraphStore

log = logging.getLogger(__name__)

ALGORITHMS = ("leiden", "louvain", "cnm")
GDS_ALGORITHMS = ("leiden", "louvain")
SEED_PROPERTY = "seed_community"  # projected by cypher/community_gds_project.cypher
PLACEHOLDER_COMMUNITY = 0  # the seed of images without a community (never a community id)


class ClusteringError(RuntimeError):
    """The clustering cannot run as asked; the message says why and what to change."""


class ClusteringInProgress(ClusteringError):
    """Another full run is still running."""


@dataclass(frozen=True)
class Detection:
    labels: dict[str, int]  # image key -> label (arbitrary numbering)
    reported_modularity: float | None  # the algorithm's own figure, for comparison only
    levels: int | None
    converged: bool | None
    node_count: int
    pair_count: int
    seconds: float
    seeded: bool = False  # started from the stored partition
    seed_discarded: bool = False  # the seeded result was worse than its start; rerun unseeded
    seed_kept: bool = False  # the seeded result was worse than its start, which was kept
    communities_merged: int = 0  # Leiden communities joined by the merge pass (merge_pass)


@dataclass(frozen=True)
class DetectionParameters:
    algorithm: str
    resolution: float
    seed: int
    concurrency: int
    max_levels: int
    cnm_max_nodes: int
    seed_from_previous: bool = True

    def validate(self) -> None:
        if self.algorithm not in ALGORITHMS:
            raise ClusteringError(
                f"unknown clustering algorithm {self.algorithm!r}: "
                f"use one of {', '.join(ALGORITHMS)}"
            )
        if not self.resolution > 0:
            raise ClusteringError(f"resolution must be > 0, got {self.resolution}")
        if self.algorithm == "louvain" and self.resolution != 1.0:
            raise ClusteringError(
                "GDS Louvain has no resolution parameter (it optimises modularity at "
                f"resolution 1), but resolution {self.resolution} was asked: use leiden or cnm"
            )


def detect(store: GraphStore, parameters: DetectionParameters) -> Detection:
    parameters.validate()
    if parameters.algorithm == "cnm":
        return detect_cnm(store, parameters)
    return detect_gds(store, parameters)


def detect_gds(store: GraphStore, parameters: DetectionParameters) -> Detection:
    """Leiden or Louvain in GDS on a projection of every :Image and SIMILAR (undirected).

    Seeded from the stored partition, the result must be at least as modular as that start:
    GDS 2.13's seeded Leiden sometimes returns a worse partition (a few communities merged,
    measured 0.52 from a 0.57 start on one node order out of six) or fails inside the
    procedure. Then the start itself is kept when it covers every image (the algorithm could
    not improve on it, and keeping it keeps every id); a start with images in the placeholder
    community 0 is no partition worth keeping, so the run starts over from singletons.
    Leiden's result then goes through :func:`merge_pass`.
    """
    graph_name = f"medgraph-communities-{uuid.uuid4().hex[:12]}"
    started = time.perf_counter()
    seeded = parameters.seed_from_previous
    seed_discarded = seed_kept = False
    try:
        projected = store.query(
            "community_gds_project", graph_name=graph_name,
            read_concurrency=parameters.concurrency,
        )[0]  # fmt: skip
        label_property = "community"
        result: dict[str, object] | None
        try:
            result = _run_gds(store, parameters, graph_name, label_property, seeded)
        except ClientError as error:
            # GDS 2.13's seeded Leiden can fail inside the procedure (a NullPointerException in
            # its dendrogram manager when the seed is already a fixed point).
            if not seeded:
                raise
            log.warning("seeded %s failed (%s)", parameters.algorithm, error.message)
            result = None
        if seeded:
            start_q = _start_modularity(store, graph_name)
            found_q = None if result is None else _gds_modularity(store, graph_name, "community")
            if start_q is None or found_q is None or found_q < start_q - 1e-9:
                if found_q is not None and start_q is not None:
                    log.warning("seeded %s lost modularity (%.6f from a %.6f start)",
                                parameters.algorithm, found_q, start_q)  # fmt: skip
                if start_q is not None and _seed_is_complete(store, graph_name):
                    log.warning("keeping the start partition (modularity %.6f)", start_q)
                    label_property, seed_kept = SEED_PROPERTY, True
                    result = {"modularity": start_q, "ranLevels": 0, "didConverge": True}
                else:
                    log.warning("the start has images without a community: starting over "
                                "from singletons")  # fmt: skip
                    label_property, seeded, seed_discarded = "community_unseeded", False, True
                    result = _run_gds(store, parameters, graph_name, label_property, False)
        assert result is not None
        labels = _gds_labels(store, graph_name, label_property)
        communities_merged = 0
        if parameters.algorithm == "leiden":
            merged = merge_pass(store, graph_name, label_property, parameters.resolution)
            if merged.merged:
                log.info("merge pass joined %d Leiden communities (modularity %.6f)",
                         merged.merged, merged.modularity)  # fmt: skip
                labels = {key: merged.label_of.get(label, label) for key, label in labels.items()}
                result = {**result, "modularity": merged.modularity}
            communities_merged = merged.merged
    finally:
        store.query("community_gds_drop", graph_name=graph_name)
    return Detection(
        labels=labels,
        reported_modularity=float(result["modularity"]),  # type: ignore[arg-type]
        levels=int(result["ranLevels"]),  # type: ignore[call-overload]
        converged=bool(result["didConverge"]),
        node_count=int(projected["nodeCount"]),
        pair_count=int(projected["pairCount"]),
        seconds=time.perf_counter() - started,
        seeded=seeded,
        seed_discarded=seed_discarded,
        seed_kept=seed_kept,
        communities_merged=communities_merged,
    )


@dataclass(frozen=True)
class MergeResult:
    label_of: dict[int, int]  # old label -> merged label (labels absent here are unchanged)
    merged: int  # communities that disappeared into another
    modularity: float  # of the merged partition, at resolution 1


def merge_pass(
    store: GraphStore, graph_name: str, property_name: str, resolution: float
) -> MergeResult:
    """Joins whole communities while that raises modularity (at ``resolution``).

    GDS Leiden aggregates the *refined* partition, so its last level moves sub-communities, never
    a whole community: it can stop with one cluster split in two halves that no single
    sub-community gains by leaving. Measured on the planted-cluster test graph, 13 of 100 node
    orders of the projection ended so (10 communities, modularity 0.62, adjusted Rand index 0.75
    instead of 9 communities, 0.655, 0.99), and the native projection's node order varies with
    the store's node ids. Clauset-Newman-Moore on the community graph (each community a node,
    its internal weight a self-loop) joins such halves; on a partition no merge improves it
    changes nothing. A merge only joins communities linked by an edge, so each stays connected.
    """
    rows = store.query("community_gds_links", graph_name=graph_name, property=property_name)[0]
    community_graph = nx.Graph()
    community_graph.add_weighted_edges_from(
        zip(rows["sources"], rows["targets"], map(float, rows["weights"]), strict=True)
    )
    if community_graph.size(weight="weight") <= 0:
        return MergeResult(label_of={}, merged=0, modularity=0.0)
    parts = nx.community.greedy_modularity_communities(
        community_graph, weight="weight", resolution=resolution
    )
    label_of = {int(label): int(min(part)) for part in parts for label in part}
    modularity = nx.community.modularity(community_graph, parts, weight="weight", resolution=1.0)
    return MergeResult(
        label_of=label_of,
        merged=community_graph.number_of_nodes() - len(parts),
        modularity=float(modularity),
    )


def _gds_labels(store: GraphStore, graph_name: str, property_name: str) -> dict[str, int]:
    streamed = store.query("community_gds_labels", graph_name=graph_name, property=property_name)
    return dict(zip(streamed[0]["keys"], map(int, streamed[0]["labels"]), strict=True))


def _seed_is_complete(store: GraphStore, graph_name: str) -> bool:
    """Whether every image of the projection starts in a real community (none in 0)."""
    return PLACEHOLDER_COMMUNITY not in _gds_labels(store, graph_name, SEED_PROPERTY).values()


def _run_gds(
    store: GraphStore, parameters: DetectionParameters, graph_name: str, property_name: str,
    seeded: bool,
) -> dict[str, object]:  # fmt: skip
    common = {
        "graph_name": graph_name,
        "property": property_name,
        "seed_property": SEED_PROPERTY if seeded else None,
        "concurrency": parameters.concurrency,
        "max_levels": parameters.max_levels,
    }
    if parameters.algorithm == "leiden":
        rows = store.query(
            "community_gds_leiden", resolution=parameters.resolution, seed=parameters.seed, **common
        )
    else:
        rows = store.query("community_gds_louvain", **common)
    return rows[0].data()


def _start_modularity(store: GraphStore, graph_name: str) -> float | None:
    """The start partition's modularity, or None where GDS cannot compute it: at 223,648
    images with a live archive (2026-12-05) GDS 2.13's modularity of the seed property failed
    with an ArrayIndexOutOfBoundsException, after the seeded Leiden itself was refused on a
    memory estimate of 800 GB. A start that cannot be judged is not kept."""
    try:
        return _gds_modularity(store, graph_name, SEED_PROPERTY)
    except ClientError as error:
        log.warning("the start partition's modularity failed (%s)", error.message)
        return None


def _gds_modularity(store: GraphStore, graph_name: str, property_name: str) -> float:
    rows = store.query("community_gds_modularity", graph_name=graph_name, property=property_name)
    return float(rows[0]["modularity"] or 0.0)


def load_networkx_graph(store: GraphStore) -> nx.Graph:
    """The SIMILAR graph as an undirected weighted networkx graph (isolated images included)."""
    graph = nx.Graph()
    graph.add_nodes_from(store.query("community_image_key_list")[0]["keys"])
    edges = store.query("community_graph_edges")[0]
    graph.add_weighted_edges_from(
        zip(edges["sources"], edges["targets"], map(float, edges["weights"]), strict=True)
    )
    return graph


def detect_cnm(store: GraphStore, parameters: DetectionParameters) -> Detection:
    """Clauset-Newman-Moore greedy modularity (the paper's method), for small graphs."""
    started = time.perf_counter()
    node_count = store.query("community_image_counts")[0]["images"]
    if node_count > parameters.cnm_max_nodes:
        raise ClusteringError(
            f"CNM (networkx greedy modularity, single-threaded Python) is limited to "
            f"{parameters.cnm_max_nodes} images and the graph has {node_count}: use leiden or "
            "louvain, or raise MEDGRAPH_CLUSTER_CNM_MAX_NODES"
        )
    graph = load_networkx_graph(store)
    if graph.number_of_edges() == 0:
        parts: list[set[str]] = [{key} for key in graph.nodes]
    else:
        parts = nx.community.greedy_modularity_communities(
            graph, weight="weight", resolution=parameters.resolution
        )
    labels = {key: label for label, part in enumerate(parts) for key in part}
    return Detection(
        labels=labels,
        reported_modularity=(
            float(nx.community.modularity(graph, parts, weight="weight", resolution=1.0))
            if graph.number_of_edges()
            else None
        ),
        levels=None,
        converged=None,
        node_count=graph.number_of_nodes(),
        pair_count=graph.number_of_edges(),
        seconds=time.perf_counter() - started,
    )

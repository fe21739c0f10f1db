"""The per-community sums that the graph model stores, and the modularity computed from them."""

from __future__ import annotations

import math
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

from services.graph.cypher import load_cypher
from services.graph.store import GraphStore

NO_FINDING = "No Finding"
EMBEDDING_CHUNK = 4096


@dataclass
class CommunitySums:
    """What a :Community stores. ``embedding_sum`` is kept here, stored as centroid + mean_norm."""

    id: int
    size: int = 0
    sigma_tot: float = 0.0
    internal_weight: float = 0.0
    embedding_sum: np.ndarray | None = None  # float64, sum of the members' embeddings
    findings: Counter[str] = field(default_factory=Counter)

    @classmethod
    def from_stored(cls, row: Mapping[str, object]) -> CommunitySums:
        size = int(row["size"] or 0)  # type: ignore[call-overload]
        centroid, mean_norm = row.get("centroid"), row.get("mean_norm")
        embedding_sum = None
        if centroid is not None and mean_norm is not None and size:
            embedding_sum = np.asarray(centroid, dtype=np.float64) * float(mean_norm) * size  # type: ignore[arg-type]
        names = row.get("finding_names") or []
        counts = row.get("finding_counts") or []
        return cls(
            id=int(row["id"]),  # type: ignore[call-overload]
            size=size,
            sigma_tot=float(row["sigma_tot"] or 0.0),  # type: ignore[arg-type]
            internal_weight=float(row["internal_weight"] or 0.0),  # type: ignore[arg-type]
            embedding_sum=embedding_sum,
            findings=Counter(dict(zip(names, counts, strict=True))),  # type: ignore[arg-type]
        )

    def add_member(self, embedding: Iterable[float] | None, findings: Iterable[str]) -> None:
        self.size += 1
        if embedding is not None:
            vector = np.asarray(embedding, dtype=np.float64)
            self.embedding_sum = (
                vector if self.embedding_sum is None else self.embedding_sum + vector
            )
        self.findings.update(finding_list(findings))

    def properties(self) -> dict[str, object]:
        """Neo4j properties (no maps): the histogram is two parallel lists, most frequent first."""
        centroid: list[float] | None = None
        mean_norm: float | None = None
        if self.embedding_sum is not None and self.size:
            mean = self.embedding_sum / self.size
            norm = float(np.linalg.norm(mean))
            if norm > 0:
                centroid = (mean / norm).tolist()
                mean_norm = norm
        histogram = sorted(self.findings.items(), key=lambda item: (-item[1], item[0]))
        return {
            "size": self.size,
            "sigma_tot": self.sigma_tot,
            "internal_weight": self.internal_weight,
            "centroid": centroid,
            "mean_norm": mean_norm,
            "finding_names": [name for name, _ in histogram],
            "finding_counts": [count for _, count in histogram],
        }


def finding_list(findings: Iterable[str] | None) -> list[str]:
    names = list(findings or [])
    return names or [NO_FINDING]


def modularity(
    sums: Iterable[CommunitySums], total_weight_m: float, resolution: float = 1.0
) -> float | None:
    """Q = sum_c [in_c / m - resolution * (sigma_tot_c / 2m)^2]; None for a graph without weight."""
    if total_weight_m <= 0:
        return None
    two_m = 2.0 * total_weight_m
    return math.fsum(
        s.internal_weight / total_weight_m - resolution * (s.sigma_tot / two_m) ** 2 for s in sums
    )


def collect_sums(
    store: GraphStore, progress: Callable[[str], None] | None = None
) -> dict[int, CommunitySums]:
    """Recomputes every community's sums from the graph.

    Only images with a community and pairs between two such images count, so that the sums
    describe exactly the clustered subgraph (images still waiting for assignment are added by
    ``assign_new_images``, which extends the sums by their edges). The edge sums (a Cypher
    aggregation) run in a second session while this thread reads the members' embeddings.
    """
    edge_sums: list[dict[str, object]] = []
    failure: list[BaseException] = []

    def aggregate_edges() -> None:
        try:
            edge_sums.extend(record.data() for record in store.query("community_edge_sums"))
        except BaseException as error:  # noqa: BLE001 - re-raised in the calling thread
            failure.append(error)

    worker = threading.Thread(target=aggregate_edges, name="community-edge-sums")
    worker.start()
    try:
        sums = _member_sums(store, progress)
    finally:
        worker.join()
    if failure:
        raise failure[0]
    for row in edge_sums:
        entry = sums.get(int(row["community"]))  # type: ignore[call-overload]
        if entry is None:  # assigned after the member pass: the next run counts it
            continue
        entry.sigma_tot = float(row["sigma_tot"])  # type: ignore[arg-type]
        entry.internal_weight = float(row["internal_weight"])  # type: ignore[arg-type]
    return sums


def _member_sums(
    store: GraphStore, progress: Callable[[str], None] | None
) -> dict[int, CommunitySums]:
    """Sizes, finding histograms and embedding sums in one pass over the clustered images."""
    sums: dict[int, CommunitySums] = {}
    row_of: dict[int, int] = {}
    totals = np.zeros((0, 0), dtype=np.float64)
    rows: list[int] = []
    vectors: list[list[float]] = []
    streamed = 0

    def flush() -> None:
        nonlocal totals
        if not rows:
            return
        block = np.asarray(vectors, dtype=np.float64)
        if totals.shape[1] != block.shape[1]:
            if totals.size:
                raise ValueError("embeddings of different lengths among the clustered images")
            totals = np.zeros((0, block.shape[1]), dtype=np.float64)
        if totals.shape[0] < len(row_of):
            totals = np.vstack([totals, np.zeros((len(row_of) - totals.shape[0], block.shape[1]))])
        np.add.at(totals, np.asarray(rows, dtype=np.int64), block)
        rows.clear()
        vectors.clear()

    with store.driver.session(database=store.database) as session:
        for record in session.run(load_cypher("community_member_stream")):
            community = int(record["community"])
            entry = sums.get(community)
            if entry is None:
                entry = sums[community] = CommunitySums(id=community)
            entry.size += 1
            entry.findings.update(finding_list(record["findings"]))
            embedding = record["embedding"]
            if embedding is not None:
                rows.append(row_of.setdefault(community, len(row_of)))
                vectors.append(embedding)
            streamed += 1
            if len(rows) >= EMBEDDING_CHUNK:
                flush()
            if progress and streamed % 50_000 == 0:
                progress(f"  members read: {streamed}")
        flush()
    for community, row in row_of.items():
        sums[community].embedding_sum = totals[row]
    return sums

"""The in-process read model every in-memory strategy searches (``exact``, ``region``,
``community_ranked``): a snapshot of the stored graph, loaded from Neo4j with the Cypher of
``cypher/search_*.cypher`` and keyed by the *graph version*.

What it holds (N images, E stored SIMILAR pairs, C communities):

- ``matrix``: float32 (N, 1024), the stored embeddings, laid out community by community so that
  each community's members are one contiguous block (a view, never a copy, when a strategy scores
  them); ``keys``, patient/modality codes and finding columns for the filters;
- ``community``: int32 (N,), the stored ``Image.community`` (-1 = not assigned yet), and per
  community its block ``[start, stop)``, its stored ``sigma_tot`` and ``size``, and the unit mean of
  its members' embeddings (``centroids``, computed here from the stored embeddings);
- CSR adjacency of the SIMILAR edges (``indptr`` int64, ``neighbours`` int32, ``weights``
  float64, both directions) and the weighted degrees ``degree`` (float64, the sum of each image's
  stored edge weights, as ``k_i`` is defined in cypher/README.md);
- ``m``, the total weight of the latest finished :ClusteringRun, and that run's id.

The *graph version* (``cypher/search_graph_version.cypher``: number of images, latest
``ingested_at``, latest finished clustering run) is read for every request, one cheap round trip
shared by concurrent requests (:class:`VersionGate`, never staler than a read of their own);
a different version reloads the whole snapshot (streamed record by record: at 223,648 images it
takes tens of seconds and holds ~1 GB). Anything that changes the stored graph without a new
image or a new run must change what that statement returns, or call ``invalidate()``.
"""

from __future__ import annotations

import threading
import time
from array import array
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from services.graph.cypher import load_cypher
from services.graph.store import GraphStore
from services.retrieval.contract import EMBEDDING_DIM, SearchDiagnostics, SearchFilters

# images, latest ingested_at, latest finished clustering run, generation (bumped by every
# delete and relabel, which the first three do not show)
GraphVersion = tuple[int, str | None, str | None, int]
NO_COMMUNITY = -1


@dataclass
class GraphSnapshot:
    version: GraphVersion
    keys: np.ndarray  # str (N,)
    matrix: np.ndarray  # float32 (N, 1024), unit rows, community-contiguous
    patient_codes: np.ndarray  # int32 (N,), -1 = no patient key
    patient_code_of: dict[str, int]
    modality_codes: np.ndarray  # int32 (N,), -1 = none
    modality_code_of: dict[str, int]
    findings: list[tuple[str, ...]]
    community: np.ndarray  # int32 (N,), -1 = none
    indptr: np.ndarray  # int64 (N + 1,)
    neighbours: np.ndarray  # int32 (2E',), rows of the neighbours (edges to loaded images)
    weights: np.ndarray  # float64 (2E',): as stored, so ties in gains stay ties
    degree: np.ndarray  # float64 (N,), k_i: every stored SIMILAR weight of the image
    community_ids: np.ndarray  # int64 (C,), the stored communities with sums, ascending id
    sigma_tot: np.ndarray  # float64 (C,), stored
    community_size: np.ndarray  # int64 (C,), stored
    block_start: np.ndarray  # int64 (C,), rows [start, stop) of each community's members
    block_stop: np.ndarray  # int64 (C,)
    centroids: np.ndarray  # float32 (C, 1024), unit mean of the members' embeddings
    m: float | None
    run: str | None
    load_s: float = 0.0
    key_index: dict[str, int] = field(default_factory=dict)
    position_of_community: dict[int, int] = field(default_factory=dict)
    community_position: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    unassigned_rows: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    patient_of_code: list[str] = field(default_factory=list)
    _finding_columns: dict[str, np.ndarray] = field(default_factory=dict)
    # float32 (N, F): each image's calibrated predicted findings (Image.finding_probabilities),
    # NaN rows where none are stored; F = 0 when no image has them.
    finding_probabilities: np.ndarray = field(
        default_factory=lambda: np.zeros((0, 0), dtype=np.float32)
    )

    def __post_init__(self) -> None:
        if self.finding_probabilities.shape[0] != len(self.keys):
            self.finding_probabilities = np.zeros((len(self.keys), 0), dtype=np.float32)
        self.key_index = {str(key): i for i, key in enumerate(self.keys)}
        self.position_of_community = {int(c): i for i, c in enumerate(self.community_ids)}
        # Each row's community as a position in community_ids (-1: none, or no stored sums).
        self.community_position = np.full(len(self.keys), -1, dtype=np.int32)
        for position in range(len(self.community_ids)):
            self.community_position[self.block(position)] = position
        self.unassigned_rows = np.flatnonzero(self.community_position < 0)
        self.patient_of_code = [""] * len(self.patient_code_of)
        for patient, code in self.patient_code_of.items():
            self.patient_of_code[code] = patient

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def nbytes(self) -> int:
        arrays = (self.matrix, self.indptr, self.neighbours, self.weights, self.degree,
                  self.community, self.centroids, self.patient_codes, self.modality_codes,
                  self.keys, self.finding_probabilities)  # fmt: skip
        return int(sum(a.nbytes for a in arrays))

    def patient_of(self, row: int) -> str | None:
        code = int(self.patient_codes[row])
        return None if code < 0 else self.patient_of_code[code]

    def community_of(self, row: int) -> int | None:
        value = int(self.community[row])
        return None if value == NO_COMMUNITY else value

    def edges_of(self, row: int) -> tuple[np.ndarray, np.ndarray]:
        start, stop = self.indptr[row], self.indptr[row + 1]
        return self.neighbours[start:stop], self.weights[start:stop]

    def finding_column(self, finding: str | None, no_finding: bool) -> np.ndarray:
        name = "\x00no-finding" if no_finding else str(finding)
        column = self._finding_columns.get(name)
        if column is None:
            if no_finding:
                column = np.array([not f for f in self.findings], dtype=bool)
            else:
                column = np.array([finding in f for f in self.findings], dtype=bool)
            self._finding_columns[name] = column
        return column

    def eligible(self, filters: SearchFilters) -> np.ndarray:
        mask = np.ones(len(self), dtype=bool)
        for key in filters.exclude_keys:
            position = self.key_index.get(key)
            if position is not None:
                mask[position] = False
        if filters.exclude_patient_key is not None:
            code = self.patient_code_of.get(filters.exclude_patient_key)
            if code is not None:
                mask &= self.patient_codes != code
        if filters.modality is not None:
            mask &= self.modality_codes == self.modality_code_of.get(filters.modality, -2)
        params = filters.cypher_params()
        if params["finding"] is not None or params["no_finding"]:
            mask &= self.finding_column(params["finding"], bool(params["no_finding"]))  # type: ignore[arg-type]
        return mask

    def block(self, position: int) -> slice:
        return slice(int(self.block_start[position]), int(self.block_stop[position]))


class VersionGate:
    """Reads the graph version, sharing one read among the requests that arrived before it
    started.

    A request may use a read only if that read *started after the request arrived*: then it
    sees every write committed before the request, so a search never misses an image whose
    ingestion had finished. A request arriving while a read is in flight waits for it to end and
    joins the next one (started by whichever waiting request gets there first). Under N
    concurrent searches this costs about one round trip per round of requests instead of N,
    without serving anything staler than a read of its own would.
    """

    def __init__(self, read: Callable[[], GraphVersion]) -> None:
        self._read = read
        self._changed = threading.Condition()
        self._started = 0  # reads started so far
        self._in_flight = False
        self._completed: tuple[int, GraphVersion] | None = None  # (read number, version)
        self.reads = 0

    def version(self) -> GraphVersion:
        with self._changed:
            arrived_after = self._started  # a read numbered higher started after this arrival
            while True:
                if self._completed is not None and self._completed[0] > arrived_after:
                    return self._completed[1]
                if not self._in_flight:
                    self._in_flight = True
                    self._started += 1
                    number = self._started
                    break
                self._changed.wait()
        try:
            version = self._read()
        except BaseException:
            with self._changed:
                self._in_flight = False
                self._changed.notify_all()
            raise
        with self._changed:
            self._in_flight = False
            self._completed = (number, version)
            self.reads += 1
            self._changed.notify_all()
        return version


class ReadModelCache:
    """One snapshot per process, reloaded when the graph version changes (thread-safe)."""

    def __init__(self, store: GraphStore) -> None:
        self.store = store
        self._lock = threading.Lock()
        self._snapshot: GraphSnapshot | None = None
        self._gate = VersionGate(self._read_version)
        self.loads = 0

    def _read_version(self) -> GraphVersion:
        record = self.store.read_autocommit("search_graph_version")[0]
        run = record["run"]
        return (
            int(record["images"]),
            record["latest"],
            None if run is None else str(run),
            int(record["generation"]),
        )

    def version(self) -> GraphVersion:
        return self._gate.version()

    def invalidate(self) -> None:
        with self._lock:
            self._snapshot = None

    def current(self) -> GraphSnapshot | None:
        """The snapshot loaded last, without a version check (for figures, not for searches)."""
        return self._snapshot

    def get(self, diagnostics: SearchDiagnostics | None = None) -> GraphSnapshot:
        diagnostics = diagnostics or SearchDiagnostics(strategy="read-model")
        with diagnostics.stage("version_check"):
            version = self.version()
        with self._lock:
            if self._snapshot is None or self._snapshot.version != version:
                with diagnostics.stage("load_read_model"):
                    self._snapshot = None  # let the old one go before the new one is built
                    self._snapshot = load_snapshot(self.store, version)
                    self.loads += 1
            return self._snapshot


def load_snapshot(store: GraphStore, version: GraphVersion) -> GraphSnapshot:
    started = time.perf_counter()
    # Lay the rows out community by community as they stream in (no second copy of the matrix):
    # the counts give each community's block; rows of a community that grew meanwhile go to an
    # overflow area and the matrix is re-sorted once (rare: only under concurrent ingestion).
    counts = {
        (NO_COMMUNITY if r["community"] is None else int(r["community"])): int(r["images"])
        for r in store.query("search_community_counts")
    }
    order = sorted(counts, key=lambda c: (c == NO_COMMUNITY, c))
    offsets: dict[int, int] = {}
    total = 0
    for community in order:
        offsets[community] = total
        total += counts[community]
    filled = dict.fromkeys(order, 0)
    capacity = max(total, version[0], 1)
    matrix = np.empty((capacity, EMBEDDING_DIM), dtype=np.float32)
    count = 0
    keys: list[str | None] = [None] * capacity
    communities = np.full(capacity, NO_COMMUNITY, dtype=np.int32)
    patient_codes = np.full(capacity, -1, dtype=np.int32)
    modality_codes = np.full(capacity, -1, dtype=np.int32)
    findings: list[tuple[str, ...]] = [()] * capacity
    probabilities: list[list[float] | None] = [None] * capacity
    patient_code_of: dict[str, int] = {}
    modality_code_of: dict[str, int] = {}
    overflow = total
    with store.driver.session(database=store.database) as session:
        for record in session.run(load_cypher("search_embeddings")):
            community = NO_COMMUNITY if record["community"] is None else int(record["community"])
            if filled.get(community, counts.get(community, 0)) < counts.get(community, 0):
                row = offsets[community] + filled[community]
                filled[community] += 1
            else:
                row = overflow
                overflow += 1
                if row >= matrix.shape[0]:
                    grown = max(matrix.shape[0] * 2, row + 1)
                    matrix = np.resize(matrix, (grown, EMBEDDING_DIM))
                    keys.extend([None] * (grown - len(keys)))
                    findings.extend([()] * (grown - len(findings)))
                    probabilities.extend([None] * (grown - len(probabilities)))
                    communities = _grow(communities, grown, NO_COMMUNITY)
                    patient_codes = _grow(patient_codes, grown, -1)
                    modality_codes = _grow(modality_codes, grown, -1)
            count += 1
            matrix[row] = record["embedding"]
            keys[row] = record["key"]
            communities[row] = community
            patient = record["patient_key"]
            if patient is not None:
                patient_codes[row] = patient_code_of.setdefault(patient, len(patient_code_of))
            modality = record["modality"]
            if modality is not None:
                modality_codes[row] = modality_code_of.setdefault(modality, len(modality_code_of))
            findings[row] = tuple(record["findings"] or ())
            probabilities[row] = record["finding_probabilities"]
    used = np.array([key is not None for key in keys[: max(overflow, total)]], dtype=bool)
    rows = np.flatnonzero(used)
    communities = communities[rows]
    # Images deleted meanwhile leave gaps, images added meanwhile sit in the overflow area:
    # either way, one stable sort by community restores the blocks.
    permutation = np.argsort(np.where(communities < 0, np.iinfo(np.int32).max, communities),
                             kind="stable")  # fmt: skip
    if len(rows) != total or not np.array_equal(permutation, np.arange(len(rows))):
        rows = rows[permutation]
        communities = communities[permutation]
    if len(rows) == matrix.shape[0] and np.array_equal(rows, np.arange(len(rows))):
        matrix = matrix[: len(rows)]
    else:
        matrix = matrix[rows]
    key_array = np.array([keys[i] for i in rows], dtype=str)
    findings = [findings[i] for i in rows]
    finding_probabilities = _probability_matrix([probabilities[i] for i in rows])
    del probabilities
    patient_codes = patient_codes[rows]
    modality_codes = modality_codes[rows]
    del keys
    key_index = {str(key): i for i, key in enumerate(key_array)}

    indptr, neighbours, weights, degree = _load_adjacency(store, key_index)
    sums = store.query("search_region_model")[0]
    entries = sorted(
        (int(cid), float(sigma), int(size or 0))
        for cid, sigma, size in sums["communities"]
        if cid is not None
    )
    community_ids = np.array([e[0] for e in entries], dtype=np.int64)
    sort_key = np.where(communities < 0, np.iinfo(np.int32).max, communities)
    starts = np.searchsorted(sort_key, community_ids, side="left")
    stops = np.searchsorted(sort_key, community_ids, side="right")
    centroids = np.zeros((len(entries), EMBEDDING_DIM), dtype=np.float32)
    for position, (start, stop) in enumerate(zip(starts, stops, strict=True)):
        if stop > start:
            mean = matrix[start:stop].mean(axis=0, dtype=np.float64)
            norm = float(np.linalg.norm(mean))
            if norm > 0:
                centroids[position] = mean / norm
    m = sums["m"]
    return GraphSnapshot(
        version=version,
        keys=key_array,
        matrix=matrix,
        patient_codes=patient_codes,
        patient_code_of=patient_code_of,
        modality_codes=modality_codes,
        modality_code_of=modality_code_of,
        findings=findings,
        community=communities,
        indptr=indptr,
        neighbours=neighbours,
        weights=weights,
        degree=degree,
        community_ids=community_ids,
        sigma_tot=np.array([e[1] for e in entries], dtype=np.float64),
        community_size=np.array([e[2] for e in entries], dtype=np.int64),
        block_start=starts.astype(np.int64),
        block_stop=stops.astype(np.int64),
        centroids=centroids,
        m=None if m is None else float(m),
        run=None if sums["run"] is None else str(sums["run"]),
        load_s=time.perf_counter() - started,
        finding_probabilities=finding_probabilities,
    )


def _probability_matrix(rows: list[list[float] | None]) -> np.ndarray:
    """float32 (N, F), F the most common stored length; other rows (none stored, or another
    checkpoint's findings) are NaN, so re-ranking puts them last."""
    lengths = Counter(len(row) for row in rows if row)
    if not lengths:
        return np.zeros((len(rows), 0), dtype=np.float32)
    width = lengths.most_common(1)[0][0]
    matrix = np.full((len(rows), width), np.nan, dtype=np.float32)
    for position, row in enumerate(rows):
        if row and len(row) == width:
            matrix[position] = row
    return matrix


def _load_adjacency(
    store: GraphStore, key_index: dict[str, int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    sources = array("i")
    targets = array("i")
    edge_weights = array("d")
    degree = np.zeros(len(key_index), dtype=np.float64)
    with store.driver.session(database=store.database) as session:
        for record in session.run(load_cypher("search_adjacency")):
            row = key_index.get(record["key"])
            if row is None:  # added after the embeddings were read: the next version has it
                continue
            total = 0.0
            for other, weight in record["edges"]:
                total += weight
                column = key_index.get(other)
                if column is not None:
                    sources.append(row)
                    targets.append(column)
                    edge_weights.append(weight)
            degree[row] = total
    source = np.frombuffer(sources, dtype=np.int32) if sources else np.zeros(0, np.int32)
    order = np.argsort(source, kind="stable")
    counts = np.bincount(source, minlength=len(key_index))
    indptr = np.zeros(len(key_index) + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    neighbours = np.frombuffer(targets, dtype=np.int32)[order] if targets else source[:0]
    weights = (
        np.frombuffer(edge_weights, dtype=np.float64)[order]
        if edge_weights
        else np.zeros(0, np.float64)
    )
    return indptr, neighbours.astype(np.int32), weights.astype(np.float64), degree


def _grow(values: np.ndarray, size: int, fill: int) -> np.ndarray:
    grown = np.full(size, fill, dtype=values.dtype)
    grown[: len(values)] = values
    return grown

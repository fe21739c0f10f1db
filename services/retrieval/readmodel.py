"""The in-process read model every in-memory strategy searches (``exact``, ``region``,
``community_ranked``): a snapshot of the stored graph, loaded from Neo4j with the Cypher of
``cypher/search_*.cypher`` at a *graph version* (whose generation is the sequence number of the
latest logged change it reflects, services/graph/changes.py).

What it holds (N images, E stored SIMILAR pairs, C communities):

- ``matrix``: float32 (N, 1024), the stored embeddings, laid out community by community so that
  each community's members are one contiguous block (a view, never a copy, when a strategy scores
  them); ``keys``, patient/modality codes and finding columns for the filters;
- ``community``: int32 (N,), the stored ``Image.community`` (-1 = not assigned yet), and per
  community its block ``[start, stop)`` and its stored ``sigma_tot`` and ``size``; each block is
  cut into k-means *scan lists* of ~20 rows, with the unit mean of each list's rows
  (``scan_lists``, services/retrieval/layout.py), the inverted lists a search ranks;
- CSR adjacency of the SIMILAR edges (``indptr`` int64, ``neighbours`` int32, ``weights``
  float64, both directions) and the weighted degrees ``degree`` (float64, the sum of each image's
  stored edge weights, as ``k_i`` is defined in cypher/README.md);
- ``m``, the total weight of the latest finished :ClusteringRun, and that run's id.

Searches never see a snapshot change under them (the one exception: a deleted image's row is
zeroed in the shared matrix, so a search still running on an older snapshot scores it 0); a
change makes a new snapshot that shares the big
arrays (services/retrieval/incremental.py): rows are appended into spare capacity of shared
buffers (``RowBuffers``), which no earlier snapshot reads past its own length; deleted rows are
tombstoned (``alive``); an image's changed edges go to an ``overlay`` over the loaded CSR; rows
appended to a community are its ``extras`` after its block. Which snapshot is current, and how
it follows the stored graph, is services/retrieval/cache.py.
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
from services.retrieval.contract import EMBEDDING_DIM, SearchFilters
from services.retrieval.layout import CommunityLayout, ScanLists, key_runs, split_into_lists

# generation (the latest logged change's sequence number), images, SIMILAR pairs, latest
# ingested_at, latest finished clustering run, the graph's epoch
# (cypher/search_graph_version.cypher)
GraphVersion = tuple[int, int | None, int | None, str | None, str | None, str | None]
NO_COMMUNITY = -1
# Spare rows allocated past a laid-out model, for images appended before the next compaction.
HEADROOM_FRACTION = 0.05
MIN_HEADROOM = 1024


@dataclass
class RowBuffers:
    """Append-only row storage shared by the snapshots of one layout: row r, once written, never
    changes; a newer snapshot writes rows past every older snapshot's length."""

    matrix: np.ndarray  # float32 (capacity, 1024)
    keys: np.ndarray  # str (capacity,)
    probabilities: np.ndarray  # float32 (capacity, F)

    @property
    def capacity(self) -> int:
        return int(self.matrix.shape[0])

    @classmethod
    def allocate(cls, n: int, width: int, key_dtype: np.dtype, findings: int) -> RowBuffers:
        """Empty buffers for n rows of ``width`` floats and their headroom."""
        capacity = n + max(MIN_HEADROOM, int(n * HEADROOM_FRACTION))
        return cls(
            np.empty((capacity, width), dtype=np.float32),
            np.empty(capacity, dtype=f"<U{max(64, key_dtype.itemsize // 4)}"),
            np.full((capacity, findings), np.nan, dtype=np.float32),
        )

    @classmethod
    def with_headroom(
        cls, matrix: np.ndarray, keys: np.ndarray, probabilities: np.ndarray
    ) -> RowBuffers:
        n = len(keys)
        buffers = cls.allocate(n, matrix.shape[1], keys.dtype, probabilities.shape[1])
        buffers.matrix[:n] = matrix
        buffers.keys[:n] = keys
        buffers.probabilities[:n] = probabilities
        return buffers


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
    # --- what incremental changes keep (services/retrieval/incremental.py) ---
    buffers: RowBuffers | None = None  # None: the arrays above are the whole storage
    alive: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))  # False: tombstone
    row_seq: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # change written
    base_rows: int = -1  # rows laid out by community at the last load/compaction (-1: all)
    extras: dict[int, np.ndarray] = field(default_factory=dict)  # position -> appended rows
    overlay: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)  # row edges
    community_alive: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    changed_rows: int = 0  # rows appended or tombstoned since the layout (compaction)
    # Rows where a scan list starts inside a block (services/retrieval/layout.py); the lists
    # are made once per layout and carried over by incremental changes.
    list_cuts: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    scan_lists: ScanLists | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        n = len(self.keys)
        if self.finding_probabilities.shape[0] != n:
            self.finding_probabilities = np.zeros((n, 0), dtype=np.float32)
        if self.buffers is None:
            self.buffers = RowBuffers(self.matrix, self.keys, self.finding_probabilities)
        if len(self.alive) != n:
            self.alive = np.ones(n, dtype=bool)
        if len(self.row_seq) != n:
            # A deletion published with a sequence up to the load's is in the load already.
            self.row_seq = np.full(n, int(self.version[0]), dtype=np.int64)
        if self.base_rows < 0:
            self.base_rows = n
        if len(self.community_alive) != len(self.community_ids):
            self.community_alive = np.ones(len(self.community_ids), dtype=bool)
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
        if self.scan_lists is None:
            self.scan_lists = ScanLists.of(
                self.matrix, self.block_start, self.block_stop, self.list_cuts
            )

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def seq(self) -> int:
        """The latest logged change this snapshot reflects."""
        return int(self.version[0])

    @property
    def live(self) -> int:
        """Images a search may return (rows less tombstones)."""
        return int(np.count_nonzero(self.alive))

    def row_of(self, key: str) -> int | None:
        """The live row of a stored key in this snapshot, or None."""
        row = self.key_index.get(key)
        if row is None or row >= len(self) or not self.alive[row]:
            return None
        return row

    def members(self, position: int) -> slice | np.ndarray:
        """The rows of a community: its block, then the rows appended to it since the layout
        (a slice, a view of the matrix, when there are none)."""
        block = self.block(position)
        extra = self.extras.get(position)
        if extra is None or len(extra) == 0:
            return block
        return np.concatenate([np.arange(block.start, block.stop), extra])

    @property
    def nbytes(self) -> int:
        arrays = (self.matrix, self.indptr, self.neighbours, self.weights, self.degree,
                  self.community, self.patient_codes, self.modality_codes, self.keys,
                  self.finding_probabilities)  # fmt: skip
        lists = 0 if self.scan_lists is None else self.scan_lists.centroids.nbytes
        return int(sum(a.nbytes for a in arrays)) + lists

    def patient_of(self, row: int) -> str | None:
        code = int(self.patient_codes[row])
        return None if code < 0 else self.patient_of_code[code]

    def community_of(self, row: int) -> int | None:
        value = int(self.community[row])
        return None if value == NO_COMMUNITY else value

    def edges_of(self, row: int) -> tuple[np.ndarray, np.ndarray]:
        changed = self.overlay.get(row)
        if changed is not None:
            return changed
        if row >= len(self.indptr) - 1:
            return _NO_ROWS, _NO_WEIGHTS
        start, stop = self.indptr[row], self.indptr[row + 1]
        return self.neighbours[start:stop], self.weights[start:stop]

    def finding_column(self, finding: str | None, no_finding: bool) -> np.ndarray:
        name = NO_FINDING_COLUMN if no_finding else str(finding)
        column = self._finding_columns.get(name)
        if column is None:
            column = finding_matches(name, self.findings)
            self._finding_columns[name] = column
        return column

    def eligible(self, filters: SearchFilters) -> np.ndarray:
        """bool (N,): the rows a search with ``filters`` may return."""
        return self.eligibility(filters)[: len(self)]

    def eligibility(self, filters: SearchFilters) -> Eligibility:
        """The same, answered for the rows a search asks about (O(rows asked), not O(N))."""
        base = self.alive
        if filters.modality is not None:
            base = base & (self.modality_codes == self.modality_code_of.get(filters.modality, -2))
        params = filters.cypher_params()
        if params["finding"] is not None or params["no_finding"]:
            base = base & self.finding_column(params["finding"], bool(params["no_finding"]))  # type: ignore[arg-type]
        excluded = [self.key_index.get(key) for key in filters.exclude_keys]
        excluded_rows = np.array(
            sorted(row for row in excluded if row is not None and row < len(self)), np.int64
        )
        patient_code = None
        if filters.exclude_patient_key is not None:
            patient_code = self.patient_code_of.get(filters.exclude_patient_key)
        return Eligibility(base, excluded_rows, self.patient_codes, patient_code)

    def block(self, position: int) -> slice:
        return slice(int(self.block_start[position]), int(self.block_stop[position]))


@dataclass(frozen=True)
class Eligibility:
    """Which rows a search may return, computed for the rows it looks at: ``eligibility[rows]``
    (an index array or a slice) is a new bool array. A whole-graph mask per search cost
    0.06 ms at 223,648 rows, where a ranked search looks at ~1% of them."""

    base: np.ndarray  # bool (N,), read only: alive, and the modality and finding filters
    excluded_rows: np.ndarray  # int64, ascending: the excluded keys' rows
    patient_codes: np.ndarray  # int (N,)
    patient_code: int | None  # the excluded patient's code; None: no patient excluded

    def __getitem__(self, rows: slice | np.ndarray) -> np.ndarray:
        if isinstance(rows, slice):
            mask = self.base[rows].copy()  # a view of the shared base otherwise
            start = rows.start or 0
            excluded = self.excluded_rows
            dropped = excluded[(excluded >= start) & (excluded < start + len(mask))] - start
        else:
            mask = self.base[rows]
            # One comparison per excluded key (a search excludes one or two): np.isin costs
            # ~14 µs a call here, this ~2.
            dropped = np.concatenate(
                [np.flatnonzero(rows == row) for row in self.excluded_rows.tolist()] or [[]]
            ).astype(np.int64)
        if self.patient_code is not None:
            mask &= self.patient_codes[rows] != self.patient_code
        mask[dropped] = False
        return mask


NO_FINDING_COLUMN = "\x00no-finding"
_NO_ROWS = np.zeros(0, dtype=np.int32)
_NO_WEIGHTS = np.zeros(0, dtype=np.float64)


def finding_matches(name: str, findings: list[tuple[str, ...]]) -> np.ndarray:
    """The bool column of a finding filter (``NO_FINDING_COLUMN``: no positive finding)."""
    if name == NO_FINDING_COLUMN:
        return np.array([not f for f in findings], dtype=bool)
    return np.array([name in f for f in findings], dtype=bool)


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


def load_snapshot(store: GraphStore, version: GraphVersion) -> GraphSnapshot:
    started = time.perf_counter()
    # Lay the rows out community by community as they stream in (no second copy of the matrix):
    # the counts give each community's block; rows of a community that grew meanwhile go to an
    # overflow area and the matrix is re-sorted once (rare: only under concurrent ingestion).
    counts = {
        (NO_COMMUNITY if r["community"] is None else int(r["community"])): int(r["images"])
        for r in store.query("search_community_counts")
    }
    with store.driver.session(database=store.database) as session:
        # Streamed: 1,024 Python floats a community would otherwise pile up before conversion.
        centroids = {
            int(r["community"]): np.asarray(r["centroid"], dtype=np.float32)
            for r in session.run(load_cypher("search_community_centroids"))
        }
    counted = np.array(list(counts), dtype=np.int64)
    layout = CommunityLayout.by_centroids(counted, centroids)
    del centroids
    layout_keys = dict(zip(counts, layout.row_keys(counted).tolist(), strict=True))
    order = sorted(counts, key=lambda c: (layout_keys[c], c))
    offsets: dict[int, int] = {}
    total = 0
    for community in order:
        offsets[community] = total
        total += counts[community]
    filled = dict.fromkeys(order, 0)
    capacity = max(total, version[1] or 0, 1)
    capacity += max(MIN_HEADROOM, int(capacity * HEADROOM_FRACTION))  # for appended rows
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
                    # Not np.resize: it fills the new rows with repeats of the old ones, so the
                    # whole doubled matrix (1.8 GiB at 223,648) is resident at once; here only
                    # the rows written are.
                    larger = np.empty((grown, EMBEDDING_DIM), dtype=np.float32)
                    larger[:row] = matrix[:row]
                    matrix = larger
                    del larger
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
    # either way, one stable sort by the layout restores the blocks.
    sort_key = layout.row_keys(communities)
    permutation = np.argsort(sort_key, kind="stable")
    if len(rows) != total or not np.array_equal(permutation, np.arange(len(rows))):
        rows = rows[permutation]
        communities = communities[permutation]
        sort_key = sort_key[permutation]
    # Each block cut into scan lists; the matrix rows move inside their block, one block at a
    # time, so ``rows`` still addresses the matrix and ``source`` the streamed records.
    runs = key_runs(sort_key, layout.unranked)
    within, list_cuts = split_into_lists(lambda a, b: matrix[rows[a:b]], *runs, len(rows))
    source = rows[within]
    for start, stop in zip(*(r.tolist() for r in runs), strict=True):
        if not np.array_equal(within[start:stop], np.arange(start, stop)):
            matrix[rows[start:stop]] = matrix[source[start:stop]]
    key_array = np.array([keys[i] for i in source], dtype=str)
    finding_probabilities = _probability_matrix([probabilities[i] for i in source])
    del probabilities
    if np.array_equal(rows, np.arange(len(rows))):
        buffers = _buffers_around(matrix, len(rows), key_array, finding_probabilities)
    else:  # rows moved (concurrent writes): one gather straight into new buffers
        # (``matrix[rows]`` first would hold a third matrix; ``mode="clip"`` because take's
        # default mode buffers ``out`` in a temporary copy as well; rows are in range).
        buffers = RowBuffers.allocate(
            len(rows), matrix.shape[1], key_array.dtype, finding_probabilities.shape[1]
        )
        np.take(matrix, rows, axis=0, out=buffers.matrix[: len(rows)], mode="clip")
        buffers.keys[: len(rows)] = key_array
        buffers.probabilities[: len(rows)] = finding_probabilities
    del matrix
    n = len(rows)
    matrix = buffers.matrix[:n]
    findings = [findings[i] for i in source]
    patient_codes = patient_codes[source]
    modality_codes = modality_codes[source]
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
    starts, stops = layout.blocks(sort_key, community_ids)
    m = sums["m"]
    return GraphSnapshot(
        version=version,
        keys=buffers.keys[:n],
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
        m=None if m is None else float(m),
        run=None if sums["run"] is None else str(sums["run"]),
        load_s=time.perf_counter() - started,
        finding_probabilities=buffers.probabilities[:n],
        buffers=buffers,
        list_cuts=list_cuts,
    )


def _buffers_around(
    matrix: np.ndarray, n: int, keys: np.ndarray, probabilities: np.ndarray
) -> RowBuffers:
    """Buffers over a matrix whose first n rows are the model's (the spare rows past them are
    kept as headroom, grown when fewer than the headroom wanted, without copying otherwise)."""
    want = n + max(MIN_HEADROOM, int(n * HEADROOM_FRACTION))
    if matrix.shape[0] < want:
        matrix = np.resize(matrix, (want, matrix.shape[1]))  # one copy, only when short
    capacity = matrix.shape[0]
    key_buffer = np.empty(capacity, dtype=f"<U{max(64, keys.dtype.itemsize // 4)}")
    key_buffer[:n] = keys
    probability_buffer = np.full((capacity, probabilities.shape[1]), np.nan, dtype=np.float32)
    probability_buffer[:n] = probabilities
    return RowBuffers(matrix, key_buffer, probability_buffer)


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

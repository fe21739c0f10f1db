"""Changing a read-model snapshot without reloading it: each function returns a new snapshot
and leaves the one it was given as it was, so searches running on it are never disturbed.

- ``apply_rows``: the stored state of some images (``cypher/search_rows.cypher``) and every
  community's sums after a logged change: new images are appended into the shared buffers' spare
  rows (and their community's ``extras``), deleted ones tombstoned, changed findings, patients,
  modalities and communities updated, each re-read image's edges put in the ``overlay`` with its
  degree, and the sums and ``m`` refreshed. Only the per-row arrays (a few bytes per image) and
  the per-community ones are copied; the matrix and the scan lists never are (a community's
  appended rows are scanned with its first list, whatever their cosine to its lists).
- ``with_tombstones``: deleted keys published in Redis, before the log brings the deletion.
- ``relayout``: one new community-contiguous model from a snapshot, in memory (no Neo4j read of
  the embeddings): for a new partition (a clustering run) or to compact tombstones and appended
  rows. It copies the matrix once (written straight into the new buffers) and cuts each block
  into new scan lists.
- ``regroup``: a new partition over the same rows, without copying the matrix: each community's
  longest run of consecutive rows is its block, the rest its ``extras`` (gathered when scored);
  the blocks are cut where the old lists and blocks were. For a process whose memory limit
  leaves no room for a second matrix.
"""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from services.retrieval.layout import CommunityLayout, ScanLists, key_runs, split_into_lists
from services.retrieval.readmodel import (
    NO_COMMUNITY,
    GraphSnapshot,
    GraphVersion,
    RowBuffers,
    finding_matches,
)

# A clustering run's assignment as ``community_assignment.cypher`` returns it: the stored keys
# and their communities, two parallel sequences.
Assignment = tuple[Sequence[str], Sequence[int]]


class NeedsRebuild(RuntimeError):
    """The change does not fit the snapshot (spare rows used up, a longer key): the caller
    rebuilds instead."""


def with_tombstones(snapshot: GraphSnapshot, entries: Iterable[tuple[str, int]]) -> GraphSnapshot:
    """The snapshot without the keys deleted by change ``seq`` (a row written by a later change,
    the key stored again, stays)."""
    dead = [
        row
        for key, seq in entries
        if (row := snapshot.row_of(key)) is not None and snapshot.row_seq[row] < seq
    ]
    if not dead:
        return snapshot
    changed = copy.copy(snapshot)
    changed.alive = snapshot.alive.copy()
    changed.alive[dead] = False
    changed.unassigned_rows = _unassigned(changed)
    return changed


def apply_rows(
    snapshot: GraphSnapshot,
    keys: Sequence[str],
    records: Sequence[Mapping[str, Any]],
    sums: Mapping[str, Any],
    version: GraphVersion,
) -> GraphSnapshot:
    """The snapshot after the logged changes up to ``version[0]`` that named ``keys``;
    ``records``: those keys' stored state now (a key without a record was deleted), ``sums``:
    ``search_region_model.cypher``'s record. Raises ``NeedsRebuild``."""
    return _Apply(snapshot, version).run(keys, records, sums)


class _Apply:
    def __init__(self, old: GraphSnapshot, version: GraphVersion) -> None:
        self.old = old
        self.seq = int(version[0])
        new = copy.copy(old)
        new.version = version
        n = len(old)
        # Copy-on-write of the per-row and per-community arrays; rows appended go to lists.
        new.alive = old.alive.copy()
        new.row_seq = old.row_seq.copy()
        new.patient_codes = old.patient_codes.copy()
        new.modality_codes = old.modality_codes.copy()
        new.community = old.community.copy()
        new.community_position = old.community_position.copy()
        new.degree = old.degree.copy()
        new.findings = list(old.findings)
        new.extras = dict(old.extras)
        new.overlay = dict(old.overlay)
        new.community_ids = old.community_ids.copy()
        new.sigma_tot = old.sigma_tot.copy()
        new.community_size = old.community_size.copy()
        new.block_start = old.block_start.copy()
        new.block_stop = old.block_stop.copy()
        new.community_alive = old.community_alive.copy()
        new.position_of_community = dict(old.position_of_community)
        new._finding_columns = {}
        self.new = new
        self.n = n
        self.appended: list[Mapping[str, Any]] = []
        self.changed_rows: list[int] = []  # existing rows whose findings changed
        self.edges: dict[int, list[Any]] = {}  # final row -> stored edge list
        self.moved: dict[int, int] = {}  # old row -> new row of the same key
        self.dead: list[int] = []  # rows tombstoned by this change
        self.frozen = False  # the stored partition is newer than this snapshot's

    def run(
        self, keys: Sequence[str], records: Sequence[Mapping[str, Any]], sums: Mapping[str, Any]
    ) -> GraphSnapshot:
        self._sums(sums)
        self._widen_probabilities(records)
        found = {str(record["key"]): record for record in records}
        for key in dict.fromkeys(keys):
            record = found.get(key)
            row = self.old.row_of(key)
            if record is None:
                if row is not None:
                    self._tombstone(row)
            else:
                self._update(key, row, record)
        self._append_rows()
        self._link()
        return self._finish()

    # --- communities -------------------------------------------------------------------------
    def _sums(self, sums: Mapping[str, Any]) -> None:
        new = self.new
        run = None if sums.get("run") is None else str(sums["run"])
        if run != self.old.run:
            # A new clustering run: its sums do not describe this layout's blocks. Keep the old
            # partition's (a new model is being built); new communities count as unassigned.
            self.frozen = True
            return
        new.run = run
        new.m = None if sums.get("m") is None else float(sums["m"])
        stored = {
            int(c): (float(s), int(z or 0)) for c, s, z in sums["communities"] if c is not None
        }
        known = new.position_of_community
        fresh = sorted(set(stored) - known.keys())
        if fresh:
            start = len(new.community_ids)
            for offset, community in enumerate(fresh):
                known[community] = start + offset
            count = len(fresh)
            new.community_ids = np.concatenate([new.community_ids, np.array(fresh, np.int64)])
            new.sigma_tot = np.concatenate([new.sigma_tot, np.zeros(count)])
            new.community_size = np.concatenate([new.community_size, np.zeros(count, np.int64)])
            new.block_start = np.concatenate([new.block_start, np.zeros(count, np.int64)])
            new.block_stop = np.concatenate([new.block_stop, np.zeros(count, np.int64)])
            new.community_alive = np.concatenate([new.community_alive, np.ones(count, bool)])
        ids = new.community_ids
        values = np.array([stored.get(int(c), (0.0, 0)) for c in ids], dtype=np.float64)
        present = np.array([int(c) in stored for c in ids], dtype=bool)
        if len(ids):
            new.sigma_tot = values[:, 0].copy()
            new.community_size = values[:, 1].astype(np.int64)
        new.community_alive = present

    def _position(self, community: int) -> int:
        if (
            community == NO_COMMUNITY
            or self.frozen
            and community not in self.old.position_of_community
        ):
            return -1
        position = self.new.position_of_community.get(community, -1)
        return position if position >= 0 and self.new.community_alive[position] else -1

    def _widen_probabilities(self, records: Sequence[Mapping[str, Any]]) -> None:
        """The first predicted findings in a model that had none (a graph built without a
        checkpoint's predictions, then an ingest with one): a probability column of their
        length, NaN for every earlier row — what a fresh load makes of the same graph
        (``readmodel._probability_matrix``). The matrix and keys stay shared."""
        new = self.new
        if new.buffers.probabilities.shape[1] != 0:
            return
        lengths = Counter(len(r["finding_probabilities"]) for r in records
                          if r["finding_probabilities"])  # fmt: skip
        if not lengths:
            return
        width = lengths.most_common(1)[0][0]
        old = new.buffers
        probabilities = np.full((old.capacity, width), np.nan, dtype=np.float32)
        new.buffers = RowBuffers(old.matrix, old.keys, probabilities)
        new.finding_probabilities = probabilities[: self.n]

    # --- rows --------------------------------------------------------------------------------
    def _tombstone(self, row: int) -> None:
        new = self.new
        new.alive[row] = False
        self.dead.append(row)
        new.changed_rows += 1

    def _update(self, key: str, row: int | None, record: Mapping[str, Any]) -> None:
        new = self.new
        embedding = np.asarray(record["embedding"], dtype=np.float32)
        probabilities = _probabilities(record, new.buffers.probabilities.shape[1])
        community = NO_COMMUNITY if record["community"] is None else int(record["community"])
        same_content = (
            row is not None
            and np.array_equal(new.buffers.matrix[row], embedding)
            and _same_floats(new.buffers.probabilities[row], probabilities)
        )
        # A row in a block stays there: a new community means a new row (like new content).
        moves_block = (
            row is not None and community != int(new.community[row]) and self._in_block(row)
        )
        if row is None or not same_content or moves_block:
            if row is not None:
                self._tombstone(row)
                self.moved[row] = self.n + len(self.appended)
            self.appended.append(record)
            return
        self._describe(row, record)
        if community != int(new.community[row]):  # an appended row changes community
            old_position = int(new.community_position[row])
            if old_position >= 0:
                new.extras[old_position] = new.extras[old_position][new.extras[old_position] != row]
            self._join(row, community)
        self.edges[row] = record["edges"]

    def _in_block(self, row: int) -> bool:
        # Not ``row < base_rows``: after a regroup, appended rows may form a block too.
        new, position = self.new, int(self.new.community_position[row])
        return position >= 0 and new.block_start[position] <= row < new.block_stop[position]

    def _describe(self, row: int, record: Mapping[str, Any]) -> None:
        new = self.new
        patient = record["patient_key"]
        new.patient_codes[row] = -1 if patient is None else _code(new, "patient", patient)
        modality = record["modality"]
        new.modality_codes[row] = -1 if modality is None else _code(new, "modality", modality)
        findings = tuple(record["findings"] or ())
        if findings != new.findings[row]:
            new.findings[row] = findings
            self.changed_rows.append(row)

    def _join(self, row: int, community: int) -> None:
        new = self.new
        new.community[row] = community
        position = self._position(community)
        new.community_position[row] = position
        if position >= 0:
            extra = new.extras.get(position)
            new.extras[position] = np.append(extra if extra is not None else [], row).astype(
                np.int64
            )

    def _append_rows(self) -> None:
        if not self.appended:
            return
        new = self.new
        buffers = new.buffers
        assert buffers is not None
        count = len(self.appended)
        total = self.n + count
        if total > buffers.capacity:
            raise NeedsRebuild("the read model's spare rows are used up")
        width = buffers.probabilities.shape[1]
        for offset, record in enumerate(self.appended):
            key = str(record["key"])
            if len(key) * 4 > buffers.keys.dtype.itemsize:
                raise NeedsRebuild("a key longer than the read model's key column")
            row = self.n + offset
            buffers.matrix[row] = np.asarray(record["embedding"], dtype=np.float32)
            buffers.keys[row] = key
            # Another length than the model's (another checkpoint): none, as a load makes of a
            # length fewer images have.
            buffers.probabilities[row] = _probabilities(record, width)
        new.matrix = buffers.matrix[:total]
        new.keys = buffers.keys[:total]
        new.finding_probabilities = buffers.probabilities[:total]
        new.alive = np.concatenate([new.alive, np.ones(count, bool)])
        new.row_seq = np.concatenate([new.row_seq, np.full(count, self.seq, np.int64)])
        new.patient_codes = np.concatenate([new.patient_codes, np.full(count, -1, np.int32)])
        new.modality_codes = np.concatenate([new.modality_codes, np.full(count, -1, np.int32)])
        new.community = np.concatenate([new.community, np.full(count, NO_COMMUNITY, np.int32)])
        new.community_position = np.concatenate(
            [new.community_position, np.full(count, -1, np.int32)]
        )
        new.degree = np.concatenate([new.degree, np.zeros(count)])
        new.findings.extend([()] * count)
        if len(self.moved):  # keys stored again (new content or block): the index must not
            new.key_index = dict(new.key_index)  # change under older snapshots' searches
        for offset, record in enumerate(self.appended):
            row = self.n + offset
            new.key_index[str(record["key"])] = row
            new.findings[row] = tuple(record["findings"] or ())
            self._describe(row, record)
            community = NO_COMMUNITY if record["community"] is None else int(record["community"])
            self._join(row, community)
            self.edges[row] = record["edges"]
        new.changed_rows += count

    def _link(self) -> None:
        """Edges of every re-read image into the overlay; rows that moved keep their
        neighbours' edges pointing at them."""
        new = self.new
        total = len(new.keys)
        for row, edges in self.edges.items():
            neighbours: list[int] = []
            weights: list[float] = []
            degree = 0.0
            for other, weight in edges:
                degree += float(weight)
                column = new.key_index.get(other)
                if column is not None and column < total and new.alive[column]:
                    neighbours.append(column)
                    weights.append(float(weight))
            new.overlay[row] = (np.array(neighbours, np.int32), np.array(weights, np.float64))
            new.degree[row] = degree
        for old_row, new_row in self.moved.items():
            stale, _ = self.old.edges_of(old_row)
            for neighbour in stale.tolist():
                if neighbour in self.edges or not new.alive[neighbour]:
                    continue
                columns, weights = new.edges_of(neighbour)
                columns = np.where(columns == old_row, new_row, columns).astype(np.int32)
                new.overlay[neighbour] = (columns, weights)

    def _finish(self) -> GraphSnapshot:
        new = self.new
        new.unassigned_rows = _unassigned(new)
        if self.dead:
            # A deleted image's code and predicted findings leave memory now, not at the next
            # compaction (a search still running on an older snapshot scores the row 0).
            new.buffers.matrix[self.dead] = 0.0
            new.buffers.probabilities[self.dead] = np.nan
        for name, column in self.old._finding_columns.items():
            if self.appended or self.changed_rows:
                rows = np.array(self.changed_rows + list(range(self.n, len(new.keys))), np.int64)
                column = np.concatenate([column, np.zeros(len(new.keys) - self.n, bool)])
                column[rows] = finding_matches(name, [new.findings[r] for r in rows.tolist()])
            new._finding_columns[name] = column
        return new


def relayout(
    snapshot: GraphSnapshot,
    assignment: Assignment | None,
    sums: Mapping[str, Any],
    version: GraphVersion | None = None,
) -> GraphSnapshot:
    """A new community-contiguous model of the live rows: communities from ``assignment``
    (None: the snapshot's own) and ``sums`` (``search_region_model``);
    tombstones dropped, the overlay merged into one CSR."""
    live = np.flatnonzero(snapshot.alive)
    if assignment is None:
        communities = snapshot.community[live].astype(np.int64)
    else:
        communities = _communities_by_row(snapshot, assignment)[live]
    layout = CommunityLayout.by_mean_row(communities)
    sort_key = layout.row_keys(communities)
    by_layout = np.argsort(sort_key, kind="stable")
    order = live[by_layout]
    communities = communities[by_layout]
    sort_key = sort_key[by_layout]
    n = len(order)
    runs = key_runs(sort_key, layout.unranked)
    within, list_cuts = split_into_lists(lambda a, b: snapshot.matrix[order[a:b]], *runs, n)
    order = order[within]
    # Gathered straight into the new buffers: a temporary copy of the matrix would make the
    # peak three matrices instead of two.
    buffers = RowBuffers.allocate(
        n, snapshot.matrix.shape[1], snapshot.keys.dtype, snapshot.finding_probabilities.shape[1]
    )
    # mode="clip": take's default mode buffers ``out`` in a temporary (a third matrix).
    np.take(snapshot.matrix, order, axis=0, out=buffers.matrix[:n], mode="clip")
    buffers.keys[:n] = snapshot.keys[order]
    buffers.probabilities[:n] = snapshot.finding_probabilities[order]
    # Every live row's edges (CSR rows, or the overlay's), renumbered.
    renumber = np.full(len(snapshot), -1, dtype=np.int64)
    renumber[order] = np.arange(n)
    base = snapshot.indptr
    base_rows = len(base) - 1
    counts = np.diff(base)
    sources = np.repeat(np.arange(base_rows, dtype=np.int64), counts)
    targets = snapshot.neighbours.astype(np.int64)
    weights = snapshot.weights
    if snapshot.overlay:
        replaced = np.zeros(base_rows, dtype=bool)
        rows = [r for r in snapshot.overlay if r < base_rows]
        replaced[rows] = True
        keep = ~replaced[sources]
        extra = sorted(snapshot.overlay)
        sources = np.concatenate(
            [sources[keep]] + [np.full(len(snapshot.overlay[r][0]), r, np.int64) for r in extra]
        )
        targets = np.concatenate(
            [targets[keep]] + [snapshot.overlay[r][0].astype(np.int64) for r in extra]
        )
        weights = np.concatenate([weights[keep]] + [snapshot.overlay[r][1] for r in extra])
    new_sources = renumber[sources]
    new_targets = renumber[targets]
    kept = (new_sources >= 0) & (new_targets >= 0)
    new_sources, new_targets, weights = new_sources[kept], new_targets[kept], weights[kept]
    by_source = np.argsort(new_sources, kind="stable")
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(new_sources, minlength=n), out=indptr[1:])
    entries = sorted(
        (int(c), float(s), int(z or 0)) for c, s, z in sums["communities"] if c is not None
    )
    community_ids = np.array([e[0] for e in entries], dtype=np.int64)
    starts, stops = layout.blocks(sort_key, community_ids)
    matrix = buffers.matrix[:n]
    patient_codes = snapshot.patient_codes[order]
    findings = [snapshot.findings[r] for r in order.tolist()]
    m = sums.get("m")
    run = sums.get("run")
    rebuilt = GraphSnapshot(
        version=version or snapshot.version,
        keys=buffers.keys[:n],
        matrix=matrix,
        patient_codes=patient_codes,
        patient_code_of=dict(snapshot.patient_code_of),
        modality_codes=snapshot.modality_codes[order],
        modality_code_of=dict(snapshot.modality_code_of),
        findings=findings,
        community=communities.astype(np.int32),
        indptr=indptr,
        neighbours=new_targets[by_source].astype(np.int32),
        weights=weights[by_source].astype(np.float64),
        degree=snapshot.degree[order],
        community_ids=community_ids,
        sigma_tot=np.array([e[1] for e in entries], dtype=np.float64),
        community_size=np.array([e[2] for e in entries], dtype=np.int64),
        block_start=starts.astype(np.int64),
        block_stop=stops.astype(np.int64),
        m=None if m is None else float(m),
        run=None if run is None else str(run),
        finding_probabilities=buffers.probabilities[:n],
        buffers=buffers,
        row_seq=snapshot.row_seq[order],
        list_cuts=list_cuts,
    )
    return rebuilt


def regroup(
    snapshot: GraphSnapshot,
    assignment: Assignment,
    sums: Mapping[str, Any],
    version: GraphVersion | None = None,
) -> GraphSnapshot:
    """The snapshot's rows under a new partition, sharing every row array (matrix, keys,
    CSR, overlay): only the per-row community columns and the per-community arrays are new.

    Each community's members are its longest run of consecutive rows (``block``, scored as one
    product over a view) and the rest (``extras``, gathered): a partition that keeps most of
    the old communities stays almost as fast as a laid-out one, a very different one pays a
    gather per visited community until the next layout."""
    new = copy.copy(snapshot)
    new.version = version or snapshot.version
    n = len(snapshot)
    entries = sorted(
        (int(c), float(s), int(z or 0)) for c, s, z in sums["communities"] if c is not None
    )
    new.community_ids = np.array([e[0] for e in entries], dtype=np.int64)
    new.sigma_tot = np.array([e[1] for e in entries], dtype=np.float64)
    new.community_size = np.array([e[2] for e in entries], dtype=np.int64)
    new.position_of_community = {c: i for i, c in enumerate(new.community_ids.tolist())}
    communities = _communities_by_row(snapshot, assignment)
    new.community = communities.astype(np.int32)
    positions = np.full(n, -1, dtype=np.int64)
    assigned = np.flatnonzero(communities >= 0)
    if len(new.community_ids) and len(assigned):
        found = np.searchsorted(new.community_ids, communities[assigned])
        found = np.minimum(found, len(new.community_ids) - 1)
        known = new.community_ids[found] == communities[assigned]
        positions[assigned[known]] = found[known]
    new.community_position = positions.astype(np.int32)
    count = len(new.community_ids)
    new.block_start = np.zeros(count, dtype=np.int64)
    new.block_stop = np.zeros(count, dtype=np.int64)
    new.extras = {}
    members = np.flatnonzero(positions >= 0)
    members = members[np.argsort(positions[members], kind="stable")]  # rows ascending within
    bounds = np.searchsorted(positions[members], np.arange(count + 1))
    for position in range(count):
        rows = members[bounds[position] : bounds[position + 1]]
        if len(rows) == 0:
            continue
        # Runs of consecutive rows: the longest is the block.
        breaks = np.flatnonzero(np.diff(rows) != 1) + 1
        starts = np.concatenate([[0], breaks])
        stops = np.concatenate([breaks, [len(rows)]])
        longest = int(np.argmax(stops - starts))
        first, last = int(starts[longest]), int(stops[longest])
        new.block_start[position] = rows[first]
        new.block_stop[position] = rows[last - 1] + 1
        rest = np.concatenate([rows[:first], rows[last:]])
        if len(rest):
            new.extras[position] = rest.astype(np.int64)
    new.community_alive = np.ones(count, dtype=bool)
    new.unassigned_rows = _unassigned(new)
    # The old lists and blocks still cut the rows into near neighbours: the new blocks are cut
    # where they were (a block of rows from two old communities: two lists at least).
    new.list_cuts = np.unique(
        np.concatenate([snapshot.list_cuts, snapshot.block_start, snapshot.block_stop])
    )
    new.scan_lists = ScanLists.of(snapshot.matrix, new.block_start, new.block_stop, new.list_cuts)
    m = sums.get("m")
    new.m = None if m is None else float(m)
    new.run = None if sums.get("run") is None else str(sums["run"])
    new._finding_columns = dict(snapshot._finding_columns)
    return new


def _communities_by_row(snapshot: GraphSnapshot, assignment: Assignment) -> np.ndarray:
    """int64 (len(snapshot),): each live row's community in ``assignment`` (NO_COMMUNITY: none,
    or a tombstone).

    Looked up through the snapshot's key index, so neither a copy of the key column (57 MiB of
    fixed-width strings at 223,648 rows) nor a dict of the assignment is made while the old
    model still serves (by arithmetic ~100 MiB at 223,648; the live-load run's peak RSS did not
    move with it, so it was not what set the peak)."""
    keys, communities = assignment
    index = snapshot.key_index
    rows = np.fromiter((index.get(key, -1) for key in keys), dtype=np.int64, count=len(keys))
    by_row = np.full(len(snapshot), NO_COMMUNITY, dtype=np.int64)
    known = rows >= 0
    by_row[rows[known]] = np.asarray(communities, dtype=np.int64)[known]
    by_row[~snapshot.alive] = NO_COMMUNITY
    return by_row


def _unassigned(snapshot: GraphSnapshot) -> np.ndarray:
    return np.flatnonzero((snapshot.community_position < 0) & snapshot.alive)


def _code(snapshot: GraphSnapshot, kind: str, value: str) -> int:
    # The code tables only grow (older snapshots never see codes past their rows).
    table = snapshot.patient_code_of if kind == "patient" else snapshot.modality_code_of
    code = table.get(value)
    if code is None:
        code = len(table)
        table[value] = code
        if kind == "patient":
            snapshot.patient_of_code.append(value)
    return code


def _probabilities(record: Mapping[str, Any], width: int) -> np.ndarray:
    stored = record["finding_probabilities"]
    if stored and len(stored) == width:
        return np.asarray(stored, dtype=np.float32)
    return np.full(width, np.nan, dtype=np.float32)


def _same_floats(a: np.ndarray, b: np.ndarray) -> bool:
    return bool(np.array_equal(a, b, equal_nan=True))

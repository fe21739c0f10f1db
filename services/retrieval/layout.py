"""How the read model lays its rows out: communities with near centroids next to each other,
and each community's block cut into k-means *scan lists*, the inverted lists a search ranks.

A search scores the lists nearest the query (services/retrieval/region.py, ``Probe``). Laid out
in community id order the communities a query needs were ~200 scattered blocks of ~21 rows at
223,648 images (hard set), one product each; laid out so that communities with near centroids
sit next to each other, the same blocks form ~11 runs of adjacent rows, each scored as one
product. The community order is a recursive bisection of the centroids (2-means, split again
until a part holds ``LEAF`` communities): any subtree is one contiguous range of communities.

Inside a block, the rows of each scan list are adjacent (lists in similarity order too), so a
list is a contiguous range and lists of one community that are both near the query are one
product. Everything here is deterministic: the same vectors give the same layout.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

LEAF = 4
TWO_MEANS_ITERATIONS = 4


def similarity_order(vectors: np.ndarray) -> np.ndarray:
    """int64 (C,): a permutation of the rows of ``vectors`` (C, D) in which near rows are near
    in the order."""
    vectors = np.asarray(vectors, dtype=np.float32)
    parts: list[np.ndarray] = []
    stack = [np.arange(len(vectors), dtype=np.int64)]
    while stack:
        indices = stack.pop()
        if len(indices) <= LEAF:
            parts.append(indices)
            continue
        first = _bisect(vectors[indices])
        # The second half goes on the stack first so that the first half is laid out first.
        stack.append(indices[~first])
        stack.append(indices[first])
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def _bisect(vectors: np.ndarray) -> np.ndarray:
    """bool (n,): one side of a 2-means split, seeded by the two rows farthest apart along
    the part's spread; an even split by index when the rows cannot be told apart."""
    mean = vectors.mean(axis=0)
    a = vectors[int(np.argmin(vectors @ mean))]
    b = vectors[int(np.argmin(vectors @ a))]
    side = np.zeros(len(vectors), dtype=bool)
    for _ in range(TWO_MEANS_ITERATIONS):
        side = (vectors @ a) >= (vectors @ b)
        if side.all() or not side.any():
            break
        a, b = vectors[side].mean(axis=0), vectors[~side].mean(axis=0)
    if side.all() or not side.any():
        side = np.arange(len(vectors)) < len(vectors) // 2
    return side


class CommunityLayout:
    """Each community's place in the rows: ``rank`` (0 first); rows of a community the layout
    does not know, and rows with no community, go after every ranked one."""

    def __init__(self, communities_in_order: np.ndarray) -> None:
        communities = np.asarray(communities_in_order, dtype=np.int64)
        by_id = np.argsort(communities, kind="stable")
        self.ids = communities[by_id]
        self.ranks = by_id.astype(np.int64)
        self.unranked = len(communities)

    @classmethod
    def by_centroids(
        cls, communities: np.ndarray, centroids: dict[int, np.ndarray]
    ) -> CommunityLayout:
        """Communities with a centroid in similarity order, then the rest by id."""
        ids = np.unique(np.asarray(communities, dtype=np.int64))
        ids = ids[ids >= 0]
        known = np.array([c for c in ids.tolist() if c in centroids], dtype=np.int64)
        unknown = np.array([c for c in ids.tolist() if c not in centroids], dtype=np.int64)
        if len(known):
            vectors = np.stack([np.asarray(centroids[c], dtype=np.float32) for c in known.tolist()])
            known = known[similarity_order(vectors)]
        return cls(np.concatenate([known, unknown]))

    @classmethod
    def by_mean_row(cls, row_communities: np.ndarray) -> CommunityLayout:
        """Communities in the order of their members' mean row: a new layout keeps the
        locality of the rows it is built from, with no centroid computed."""
        rows = np.flatnonzero(row_communities >= 0)
        ids, inverse = np.unique(row_communities[rows], return_inverse=True)
        mean_row = np.bincount(inverse, weights=rows) / np.bincount(inverse)
        return cls(ids[np.argsort(mean_row, kind="stable")])

    def row_keys(self, row_communities: np.ndarray) -> np.ndarray:
        """int64 per row: its community's rank (``unranked`` for none)."""
        communities = np.asarray(row_communities, dtype=np.int64)
        found = np.minimum(np.searchsorted(self.ids, communities), max(len(self.ids) - 1, 0))
        keys = np.full(len(communities), self.unranked, dtype=np.int64)
        if len(self.ids):
            known = (self.ids[found] == communities) & (communities >= 0)
            keys[known] = self.ranks[found[known]]
        return keys

    def blocks(
        self, sorted_row_keys: np.ndarray, community_ids: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """int64 (C,) ``[start, stop)`` of each community's rows, given the row keys in layout
        order (a community with no rows: an empty block)."""
        keys = self.row_keys(community_ids)
        keys[keys == self.unranked] = -1  # no rows: start == stop
        starts = np.searchsorted(sorted_row_keys, keys, side="left")
        stops = np.searchsorted(sorted_row_keys, keys, side="right")
        return starts.astype(np.int64), stops.astype(np.int64)


# A community's block is cut into k-means lists of about this many rows (the inverted lists a
# search ranks and scans): on the 223,648 hard set a Leiden community holds 11 to 1,537 rows
# (median 21), and a big one scanned whole for the few of its rows near the query wastes most
# of the scan. Scratch probe on that graph, 190 queries, recall@50 of the rows scanned against
# the exact top 50: whole communities 0.921 / 0.985 at 2,048 / 4,096 rows, lists of ~30 rows
# 0.993 at 1,536 rows.
LIST_ROWS = 20
LIST_ITERATIONS = 10
# Below this many lists every list centroid is scored (a few MiB at most).
GROUPED_FROM = 256
# A search scores the centroids of the lists in the nearest groups holding this many times the
# rows it will scan (and at least MIN_GROUPS groups), so that the lists it scans are among them.
# (MIN_GROUPS 3 kept recall@50 on both generated sets at 223,648 where 2 lost it on the hard
# set, 0.995 -> 0.987 at 768 candidates; the centroids read are most of a probe's start.)
GROUP_ROWS_FACTOR = 4
MIN_GROUPS = 3
GROUP_ITERATIONS = 15


def key_runs(sorted_keys: np.ndarray, skip: int) -> tuple[np.ndarray, np.ndarray]:
    """``[start, stop)`` of each run of equal keys in ``sorted_keys``, except runs of ``skip``."""
    n = len(sorted_keys)
    if n == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    breaks = np.flatnonzero(sorted_keys[1:] != sorted_keys[:-1]) + 1
    starts = np.concatenate([[0], breaks]).astype(np.int64)
    stops = np.concatenate([breaks, [n]]).astype(np.int64)
    kept = sorted_keys[starts] != skip
    return starts[kept], stops[kept]


def split_into_lists(
    vectors_of: Callable[[int, int], np.ndarray], starts: np.ndarray, stops: np.ndarray, n: int
) -> tuple[np.ndarray, np.ndarray]:
    """Each block ``[start, stop)`` of rows cut into k-means lists of ~``LIST_ROWS`` rows.

    ``vectors_of(start, stop)`` gives a block's rows (float32 (rows, D), unit). Returns
    ``within``, int64 (n,): the row each position takes (a permutation inside each
    block that puts every list's rows together, lists in similarity order), and ``cuts``, int64
    ascending: the positions where a list other than a block's first starts."""
    within = np.arange(n, dtype=np.int64)
    cuts: list[np.ndarray] = []
    for start, stop in zip(starts.tolist(), stops.tolist(), strict=True):
        if stop - start < 2 * LIST_ROWS:
            continue
        order, sizes = _lists_of(vectors_of(start, stop))
        within[start:stop] = start + order
        cuts.append(start + np.cumsum(sizes)[:-1])
    return within, (np.sort(np.concatenate(cuts)) if cuts else np.zeros(0, np.int64))


def _lists_of(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Spherical k-means of one block (k = rows / LIST_ROWS): the block's rows grouped by list,
    and each list's size."""
    count = max(2, int(round(len(vectors) / LIST_ROWS)))
    labels = _kmeans(vectors, _farthest_first(vectors, count), LIST_ITERATIONS)
    used = np.unique(labels)
    means = np.stack([vectors[labels == label].mean(axis=0) for label in used.tolist()])
    rank = np.empty(int(labels.max()) + 1, dtype=np.int64)
    rank[used[similarity_order(means)]] = np.arange(len(used))
    order = np.argsort(rank[labels], kind="stable")
    return order, np.bincount(rank[labels], minlength=len(used))


def _farthest_first(vectors: np.ndarray, count: int) -> np.ndarray:
    """``count`` rows, each the least similar to those chosen before it (the first: the least
    similar to the mean), as k-means seeds: deterministic, and one seed per tight cluster."""
    chosen = [int(np.argmin(vectors @ vectors.mean(axis=0)))]
    nearest = vectors @ vectors[chosen[0]]
    for _ in range(count - 1):
        chosen.append(int(np.argmin(nearest)))
        np.maximum(nearest, vectors @ vectors[chosen[-1]], out=nearest)
    return vectors[chosen]


def _kmeans(vectors: np.ndarray, seeds: np.ndarray, iterations: int) -> np.ndarray:
    """int64 (n,): each row's nearest centre by cosine after ``iterations`` of spherical
    k-means from ``seeds`` (a centre that loses every row keeps its place)."""
    centres = np.array(seeds, dtype=np.float32)
    labels = np.zeros(len(vectors), dtype=np.int64)
    for _ in range(iterations):
        labels = np.argmax(vectors @ centres.T, axis=1)
        assigned = labels[None, :] == np.arange(len(centres))[:, None]
        sums = assigned.astype(np.float32) @ vectors
        norms = np.linalg.norm(sums, axis=1)
        filled = norms > 0
        centres[filled] = sums[filled] / norms[filled, None]
    return labels


@dataclass(frozen=True)
class ScanLists:
    """The inverted lists a search ranks and scans: each community's block cut at ``cuts``
    (:func:`split_into_lists`), a list's rows one contiguous range. ``first``/``last``: the
    lists of each block position (consecutive ids); positions past ``count`` came after the
    lists were made. From ``GROUPED_FROM`` lists on, a two-level index: ~sqrt(L) k-means groups
    of the list centroids, so a search scores the centroids of the lists in the groups nearest
    the query only (11,144 lists at 223,648 images, hard set: ~420 centroids, 1.7 MiB, read
    instead of 44 MiB). The centroids are stored group by group (``slots``), so a group's are
    one slice of memory, scored without a gather."""

    start: np.ndarray  # int64 (L,), ascending
    stop: np.ndarray  # int64 (L,)
    position: np.ndarray  # int64 (L,): each list's block position
    first: np.ndarray  # int64 (count,)
    last: np.ndarray  # int64 (count,)
    centroids: np.ndarray  # float32 (L, D): unit mean of each list's rows, in slot order
    slots: np.ndarray  # int64 (L,): the list whose centroid each slot holds
    slot_of: np.ndarray  # int64 (L,): each list's slot
    count: int  # block positions the lists were made for
    listless: np.ndarray  # int64: positions under ``count`` whose block was empty then
    group_bounds: np.ndarray | None = None  # int64 (G + 1,): each group's slots; None: no groups
    group_centroids: np.ndarray | None = None  # float32 (G, D)
    group_rows: np.ndarray | None = None  # int64 (G,)

    @classmethod
    def of(
        cls, matrix: np.ndarray, block_start: np.ndarray, block_stop: np.ndarray,
        cuts: np.ndarray,
    ) -> ScanLists:  # fmt: skip
        filled = np.flatnonzero(block_stop > block_start)
        filled = filled[np.argsort(block_start[filled], kind="stable")]
        starts, stops, positions = [], [], []
        for position in filled.tolist():
            start, stop = int(block_start[position]), int(block_stop[position])
            inside = cuts[np.searchsorted(cuts, start, side="right") : np.searchsorted(cuts, stop)]
            bounds = np.concatenate([[start], inside, [stop]])
            starts.append(bounds[:-1])
            stops.append(bounds[1:])
            positions.append(np.full(len(bounds) - 1, position))
        start = np.concatenate(starts).astype(np.int64) if starts else np.zeros(0, np.int64)
        stop = np.concatenate(stops).astype(np.int64) if stops else np.zeros(0, np.int64)
        position = np.concatenate(positions).astype(np.int64) if positions else start.copy()
        count = len(block_start)
        # Lists are in row order, so a block's lists are consecutive ids.
        runs = np.flatnonzero(np.diff(position, prepend=-1) != 0)
        first = np.zeros(count, dtype=np.int64)
        last = np.zeros(count, dtype=np.int64)
        first[position[runs]] = runs
        last[position[runs]] = np.concatenate([runs[1:], [len(position)]])
        centroids = np.zeros((len(start), matrix.shape[1]), dtype=np.float32)
        for i, (a, b) in enumerate(zip(start.tolist(), stop.tolist(), strict=True)):
            mean = matrix[a:b].mean(axis=0, dtype=np.float64)
            norm = float(np.linalg.norm(mean))
            if norm > 0:
                centroids[i] = mean / norm
        identity = np.arange(len(start), dtype=np.int64)
        listless = np.flatnonzero(last == first)
        if len(start) < GROUPED_FROM:
            return cls(start, stop, position, first, last, centroids, identity, identity, count,
                       listless)  # fmt: skip
        groups = int(np.ceil(np.sqrt(len(start))))
        labels = _kmeans(centroids, _farthest_first(centroids, groups), GROUP_ITERATIONS)
        slots = np.argsort(labels, kind="stable")
        slot_of = np.empty_like(slots)
        slot_of[slots] = identity
        bounds = np.searchsorted(labels[slots], np.arange(groups + 1))
        # A group at a time, and the centroids put in slot order in place: the slotted copy and
        # its float64 sums (44 + 88 MiB at 223,648 images) set the API's peak resident memory
        # at the load and at a new partition's regroup.
        unit = np.zeros((groups, centroids.shape[1]), dtype=np.float32)
        edges = bounds.tolist()
        for group in range(groups):
            a, b = edges[group], edges[group + 1]
            if a < b:
                sums = centroids[slots[a:b]].sum(axis=0, dtype=np.float64)
                unit[group] = sums / max(float(np.linalg.norm(sums)), 1e-12)
        sizes = np.add.reduceat(stop[slots] - start[slots], bounds[:-1])
        sizes[bounds[:-1] == bounds[1:]] = 0
        _take_rows_in_place(centroids, slots)
        return cls(start, stop, position, first, last, centroids, slots, slot_of, count,
                   listless, bounds, unit, sizes.astype(np.int64))  # fmt: skip

    def centroids_of(self, lists: np.ndarray) -> np.ndarray:
        return self.centroids[self.slot_of[lists]]

    def score_nearest(self, query: np.ndarray, rows: int | None, out: np.ndarray) -> np.ndarray:
        """Scores into ``out`` (float32 (L,), by list id) the centroids of the lists in the
        groups nearest ``query`` that hold ``rows`` rows (at least MIN_GROUPS groups; every
        list when ``rows`` is None or there are no groups); returns those lists."""
        bounds = self.group_bounds
        if rows is None or bounds is None or self.group_centroids is None:
            out[self.slots] = self.centroids @ query
            return np.arange(len(self.slots), dtype=np.int64)
        assert self.group_rows is not None
        order = np.argsort(-(self.group_centroids @ query), kind="stable")
        enough = int(np.searchsorted(np.cumsum(self.group_rows[order]), rows * GROUP_ROWS_FACTOR))
        chosen = [
            (int(bounds[g]), int(bounds[g + 1])) for g in order[: max(enough + 1, MIN_GROUPS)]
        ]
        for start, stop in chosen:
            out[self.slots[start:stop]] = self.centroids[start:stop] @ query
        return np.concatenate([self.slots[start:stop] for start, stop in chosen])


def _take_rows_in_place(rows: np.ndarray, order: np.ndarray) -> None:
    """``rows[:] = rows[order]`` (``order`` a permutation) with one row of scratch, following
    the permutation's cycles, instead of a second array the size of ``rows``."""
    targets = order.tolist()
    placed = bytearray(len(targets))
    for first in range(len(targets)):
        if placed[first] or targets[first] == first:
            continue
        scratch = rows[first].copy()
        here = first
        while True:
            placed[here] = 1
            source = targets[here]
            if source == first:
                rows[here] = scratch
                break
            rows[here] = rows[source]
            here = source

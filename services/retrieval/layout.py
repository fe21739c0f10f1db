"""The order in which the read model lays its communities out: near centroids, near rows.

A search scores the communities nearest the query (services/retrieval/region.py, ``Probe``).
Laid out in id order those are ~200 scattered blocks of ~21 rows at 223,648 images (hard
set), one product each; laid out so that communities with near centroids sit next to each
other, the same blocks form ~11 runs of adjacent rows, each scored as one product (in-process
on that snapshot, 200 queries: the seed stage 2.24 -> 2.07 ms, community_ranked's p50 2.70 ->
2.49 ms; the rows read, and so most of the time, stay the same).

The order is a recursive bisection of the centroids (2-means, split again until a part holds
``LEAF`` communities): any subtree is one contiguous range of communities, so the nearest
communities of a query, which share subtrees, are mostly adjacent. Deterministic: the same
centroids give the same order.
"""

from __future__ import annotations

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


# Below this many communities every centroid is scored (the whole table is a few MiB at most).
GROUPED_FROM = 256
# A search scores the centroids of the nearest groups holding this many times the rows it
# will scan (and at least MIN_GROUPS groups), so that the communities it scans are among them.
GROUP_ROWS_FACTOR = 4
MIN_GROUPS = 4


@dataclass(frozen=True)
class CentroidGroups:
    """A two-level index over the community centroids: ~sqrt(C) groups of communities that are
    adjacent in the layout (so near each other), each with the unit mean of its members'
    centroids. A search scores the group centroids, then the centroids of the nearest groups
    only: at 2,827 communities ~430 centroids instead of 2,827 (11 MiB read per query)."""

    members: tuple[np.ndarray, ...]  # block positions of each group
    centroids: np.ndarray  # float32 (G, D)
    rows: np.ndarray  # int64 (G,): stored members of each group
    count: int  # block positions covered; later ones (new communities) are always scored

    @classmethod
    def of(
        cls, centroids: np.ndarray, block_start: np.ndarray, sizes: np.ndarray
    ) -> CentroidGroups | None:
        count = len(centroids)
        if count < GROUPED_FROM:
            return None
        in_layout = np.argsort(block_start, kind="stable")
        members = tuple(np.array_split(in_layout, int(np.ceil(np.sqrt(count)))))
        sums = np.stack([centroids[group].sum(axis=0, dtype=np.float64) for group in members])
        norms = np.linalg.norm(sums, axis=1, keepdims=True)
        unit = np.divide(sums, norms, out=np.zeros_like(sums), where=norms > 0)
        rows = np.array([int(sizes[group].sum()) for group in members], dtype=np.int64)
        return cls(members, unit.astype(np.float32), rows, count)

    def nearest(self, query: np.ndarray, rows: int, communities: int) -> np.ndarray:
        """Block positions of the groups nearest ``query`` that hold ``rows`` stored members
        (at least MIN_GROUPS groups), and every position past ``count``."""
        order = np.argsort(-(self.centroids @ query), kind="stable")
        enough = int(np.searchsorted(np.cumsum(self.rows[order]), rows * GROUP_ROWS_FACTOR))
        chosen = order[: max(enough + 1, MIN_GROUPS)]
        later = np.arange(self.count, communities, dtype=np.int64)
        return np.concatenate([*(self.members[g] for g in chosen.tolist()), later])

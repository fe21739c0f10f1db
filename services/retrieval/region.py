"""Strategy ``region``: the paper's Algorithm 1, region growing from the query in its closest
community, computed in the API process over the read model (:mod:`services.retrieval.readmodel`).

Definitions (``m``, ``k_i``, ``sigma_tot`` as in cypher/README.md, all read from the stored
graph and the latest :ClusteringRun into the read model; nothing is recomputed per request):

- The query ``q`` joins the graph with *virtual* edges to its ``n`` nearest eligible images
  (``n`` = ``region_query_edges``, default the graph's kNN ``k``); the weight of each edge is the
  exact cosine, and ties go to the smaller key. ``k_q`` = sum of those weights. Nothing is
  written. The nearest are looked for among the rows of the scan lists (k-means lists inside the
  communities) whose centroids are nearest the query (:class:`Probe`), until at least
  ``region_seed_candidates`` eligible images were scored (0: every image, the exact nearest).
  When the probe covers every image the seed is the exact nearest; otherwise it is an
  inverted-file approximation of it, as the vector index's candidates were before (the
  benchmark reports how often it equals the exact nearest).
- The region ``R`` starts as ``{q}``; ``sigma_R = k_q + sum of k_i over the images in R``;
  ``k_{R,c}`` = weight of the edges (virtual ones included) between R and the members of
  community c; ``k_{j,R}`` = weight of the edges between image j and R (virtual ones included);
  ``k_j`` = j's stored weighted degree (its virtual edge to the query not added).
- Step 5, closest community: the c that maximises the weighted-modularity gain of assigning R
  to c, ``dQ(R, c) = k_{R,c}/m - sigma_R * sigma_tot_c / (2 m^2)`` (for R = {q}:
  ``k_{q,c}/m - sigma_tot_c * k_q / (2 m^2)``), over every stored community not yet visited;
  ties: larger ``k_{R,c}``, then smaller ``sigma_tot_c``, then smaller id.
- Steps 6-8: repeatedly add the eligible image j of c, not yet in R, with the largest
  ``dq(R, j) = k_{j,R}/m - sigma_R * k_j / (2 m^2)`` (the modularity gain of moving j into R);
  ties: larger cosine to the query, then smaller key. After each addition ``sigma_R`` and every
  ``k_{j,R}`` are updated.
- Gains are compared in units of 1/m (``m * dQ``, ``m * dq``: the same argmax); two gains within
  ``TIE_TOLERANCE`` of each other count as tied, so that the order in which weights were summed
  (float rounding, ~1e-16) never decides — float32 weights carry ~1e-7 anyway.
- Until K images are in R (the query does not count). When c has no eligible image left, step 5
  runs again with the grown R over the communities not yet visited (at most
  ``region_max_communities`` visits).

Rank = order of addition. No Neo4j round trip in an API process (``cache.py``); the
community's members are one contiguous block of the read model, so a step is a few vector
operations over that block and the added image's CSR row.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from threadpoolctl import ThreadpoolController

from services.retrieval.cache import ReadModelCache
from services.retrieval.contract import (
    GraphNotReady,
    SearchDiagnostics,
    SearchFilters,
    SearchHits,
    Strategy,
)
from services.retrieval.layout import ScanLists
from services.retrieval.readmodel import NO_COMMUNITY, Eligibility, GraphSnapshot

TIE_TOLERANCE = 1e-9
_BLAS = ThreadpoolController()


@contextmanager
def one_blas_thread() -> Iterator[None]:
    """The region strategies' products are small (a few thousand rows): a second BLAS thread
    costs more in hand-offs than it saves, and several times more on a busy machine (measured:
    4,000 x 1024 rows 1.4 ms on one thread against 5-13 ms on two at load average 10). The limit
    is process-wide while it holds."""
    with _BLAS.limit(limits=1, user_api="blas"):
        yield


# Rows whose float32 score is this close to the n-th best are rescored in float64 before the
# cut, so float32 rounding never changes which images are the nearest.
FLOAT32_SLACK = 1e-4


@dataclass
class Probe:
    """The rows scored so far for one query: float32 cosines, ineligible rows -inf.

    What it ranks and scans are the snapshot's scan lists (services/retrieval/layout.py: each
    community's block cut into k-means lists of ~20 rows), nearest list centroid first. Lists
    that touch in the layout are scored as one product over a view of the matrix; each row is
    scored once; the rows appended to a community since the layout (``extras``) are scored with
    its first list. Rows of no community, communities newer than the lists (rare: the layout is
    remade for every clustering run) and rows joined to a community whose block was empty when
    the lists were made are scored at the start."""

    snapshot: GraphSnapshot
    query: np.ndarray  # float32 (1024,)
    eligible: Eligibility
    lists: ScanLists
    unit_scores: np.ndarray  # float32 (L,): centroid cosine of each ranked list, -inf: not yet
    order: np.ndarray  # ranked lists of live communities, nearest centroid first
    scored: np.ndarray  # bool (L,): every row of the list was scored
    extras_scored: np.ndarray  # bool (C,)
    chunks: list[tuple[np.ndarray, np.ndarray]]  # (rows, cosines), each scored row once
    scanned: int = 0  # eligible images scored
    complete: bool = True  # False: only the lists of the groups nearest the query are ranked

    @classmethod
    def start(
        cls, snapshot: GraphSnapshot, query: np.ndarray, eligible: Eligibility, min_images: int
    ) -> Probe:
        """``min_images``: how many the search will scan (0: all); with groups of lists only
        the centroids of the lists in the groups nearest the query are scored for that."""
        lists = snapshot.scan_lists
        assert lists is not None
        count = len(lists.start)
        unit_scores = np.full(count, -np.inf, dtype=np.float32)
        candidates = lists.score_nearest(query, min_images if min_images > 0 else None,
                                         unit_scores)  # fmt: skip
        probe = cls(snapshot, query, eligible, lists, unit_scores, np.zeros(0, np.int64),
                    np.zeros(count, dtype=bool), np.zeros(len(snapshot.community_ids), bool),
                    [], complete=len(candidates) == count)  # fmt: skip
        probe.order = probe._order(candidates)
        # Rows no list holds: of no community, of a community newer than the lists, or joined
        # to one whose block was empty when the lists were made.
        unlisted = [snapshot.unassigned_rows]
        newer = range(lists.count, len(snapshot.community_ids))
        for position in [*lists.listless.tolist(), *newer]:
            probe.extras_scored[position] = True
            if snapshot.community_alive[position]:
                unlisted.append(_rows(snapshot.members(position)))
        rows = np.concatenate(unlisted)
        if len(rows):
            probe._add(rows, snapshot.matrix[rows] @ query)
        return probe

    def units_of(self, position: int) -> np.ndarray:
        """The lists of a block position (none for a community newer than the lists)."""
        lists = self.lists
        if position < lists.count:
            return np.arange(lists.first[position], lists.last[position], dtype=np.int64)
        return np.zeros(0, dtype=np.int64)

    def _order(self, units: np.ndarray) -> np.ndarray:
        """The units of live communities, nearest centroid first (ties: layout order)."""
        units = np.sort(units[self.snapshot.community_alive[self.lists.position[units]]])
        return units[np.argsort(-self.unit_scores[units], kind="stable")]

    def _complete_order(self) -> None:
        """Every list in the order (the lists of the nearest groups held too few images)."""
        rest = np.flatnonzero(np.isneginf(self.unit_scores))
        self.unit_scores[rest] = self.lists.centroids_of(rest) @ self.query
        self.order = np.concatenate([self.order, self._order(rest)])
        self.complete = True

    def _add(self, rows: np.ndarray, scores: np.ndarray) -> None:
        eligible = self.eligible[rows]
        scores[~eligible] = -np.inf
        self.chunks.append((rows, scores))
        self.scanned += int(np.count_nonzero(eligible))

    def score(self, units: np.ndarray) -> None:
        """Scores every row of these units not scored yet."""
        snapshot = self.snapshot
        new = np.asarray(units, dtype=np.int64)
        new = new[~self.scored[new]]
        if len(new) == 0:
            return
        self.scored[new] = True
        lists = self.lists
        starts, stops, positions = lists.start[new], lists.stop[new], lists.position[new]
        filled = stops > starts
        starts, stops = np.sort(starts[filled]), np.sort(stops[filled])  # units are disjoint
        if len(starts):
            breaks = np.flatnonzero(starts[1:] != stops[:-1]) + 1
            run_starts = starts[np.concatenate([[0], breaks])]
            run_stops = stops[np.concatenate([breaks - 1, [len(stops) - 1]])]
            lengths = run_stops - run_starts
            # One buffer for every run's cosines and one eligibility pass: at ~30 rows a list
            # the runs are many and short, and per-run array overhead would be most of the time.
            offsets = np.cumsum(lengths) - lengths
            rows = _ranges(run_starts, lengths, offsets)
            scores = np.empty(len(rows), dtype=np.float32)
            for start, stop, offset in zip(
                run_starts.tolist(), run_stops.tolist(), offsets.tolist(), strict=True
            ):
                np.dot(
                    snapshot.matrix[start:stop],
                    self.query,
                    out=scores[offset : offset + stop - start],
                )
            self._add(rows, scores)
        positions = np.unique(positions)
        positions = positions[~self.extras_scored[positions]]
        self.extras_scored[positions] = True
        if snapshot.extras:
            extra = [snapshot.extras[p] for p in positions.tolist() if p in snapshot.extras]
            if extra:
                rows = np.concatenate(extra)
                self._add(rows, snapshot.matrix[rows] @ self.query)

    def unscored_eligible(self, position: int) -> int:
        """Eligible members of the community no unit scored yet."""
        units = self.units_of(position)
        units = units[~self.scored[units]]
        lengths = self.lists.stop[units] - self.lists.start[units]
        rows = _ranges(self.lists.start[units], lengths, np.cumsum(lengths) - lengths)
        count = int(np.count_nonzero(self.eligible[rows]))
        extra = self.snapshot.extras.get(position)
        if extra is not None and not self.extras_scored[position]:
            count += int(np.count_nonzero(self.eligible[extra]))
        return count

    def scan_nearest(self, min_images: int, *, nearest_community_first: bool = False) -> None:
        """Scores units in centroid order until ``min_images`` eligible images (0: all), at
        least one unit. ``nearest_community_first``: every list of the nearest list's community
        is scored first, in one product (they are one contiguous block, where list by list they
        would be many short products); its rows count toward ``min_images`` only as its lists
        come up in the order, so the scan still reaches the same lists."""
        if min_images <= 0:
            if not self.complete:
                self._complete_order()
            self.score(self.order)
            return
        counted = self.scanned  # eligible rows met in the order (and the unlisted rows)
        first_list = last_list = 0  # the lists scored first: ids [first_list, last_list)
        if nearest_community_first and len(self.order):
            position = int(self.lists.position[self.order[0]])
            first_list, last_list = int(self.lists.first[position]), int(self.lists.last[position])
            self.score(np.arange(first_list, last_list, dtype=np.int64))
        # Unit sizes estimate how many units are needed; a shortfall (rows not eligible, or a
        # community's rows appended since the layout) takes another batch.
        done = 0
        while counted < min_images or done == 0:
            if done >= len(self.order):
                if self.complete:
                    return
                self._complete_order()
                continue
            rest = self.order[done:]
            need = min_images - counted
            sizes = np.cumsum(self.lists.stop[rest] - self.lists.start[rest])
            take = int(np.searchsorted(sizes, need)) + 1 if need > 0 else 1
            batch = self.order[done : done + take]
            before = self.scanned
            self.score(batch)
            counted += self.scanned - before
            again = batch[(batch >= first_list) & (batch < last_list)]
            counted += int(np.sum(self.lists.stop[again] - self.lists.start[again]))
            done += take

    def community_order(self) -> tuple[np.ndarray, np.ndarray]:
        """Block positions of the ranked units' communities, nearest unit first, and each
        position's best unit cosine (float32 (C,), -inf: none ranked)."""
        positions = self.lists.position[self.order]
        _, first = np.unique(positions, return_index=True)
        first.sort()
        best = np.full(len(self.snapshot.community_ids), -np.inf, dtype=np.float32)
        best[positions[first]] = self.unit_scores[self.order[first]]  # the order is by score
        return positions[first], best

    def candidates(self, since: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Rows and float32 cosines of every eligible image scored so far (in the chunks from
        ``since`` on)."""
        chunks = self.chunks[since:]
        if not chunks:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        all_rows = np.concatenate([rows for rows, _ in chunks])
        all_scores = np.concatenate([scores for _, scores in chunks])
        keep = np.isfinite(all_scores)
        return all_rows[keep], all_scores[keep]


def _ranges(starts: np.ndarray, lengths: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """int64: the rows of the ranges ``[start, start + length)`` one after another
    (``offsets``: each range's place in the result, the cumulative sum of the lengths before
    it)."""
    rows = np.arange(int(lengths.sum()), dtype=np.int64)
    rows += np.repeat(starts - offsets, lengths)
    return rows


def _rows(members: slice | np.ndarray) -> np.ndarray:
    if isinstance(members, slice):
        return np.arange(members.start, members.stop, dtype=np.int64)
    return members


def nearest(
    snapshot: GraphSnapshot, query: np.ndarray, rows: np.ndarray, scores: np.ndarray, n: int
) -> tuple[np.ndarray, np.ndarray]:
    """The n best of ``rows`` by exact (float64) cosine, ties by key: rows and cosines."""
    n = min(n, len(rows))
    if n == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.float64)
    if n < len(rows):
        cut = np.partition(scores, len(scores) - n)[len(scores) - n]
        pick = np.flatnonzero(scores >= cut - FLOAT32_SLACK)
        rows = rows[pick]
    exact = snapshot.matrix[rows].astype(np.float64) @ query.astype(np.float64)
    order = np.lexsort((snapshot.keys[rows], -exact))[:n]
    return rows[order], exact[order]


class RegionGrowth:
    """The growing region R: its images in order, sigma_R, and weights from R to the rest
    (dense arrays over the read model's rows and communities)."""

    def __init__(self, snapshot: GraphSnapshot, rows: np.ndarray, weights: np.ndarray) -> None:
        assert snapshot.m is not None
        self.snapshot = snapshot
        self.m = snapshot.m
        self.images: list[int] = []
        self.in_region = np.zeros(len(snapshot), dtype=bool)
        self.sigma = float(np.sum(weights))
        self.to_image = np.zeros(len(snapshot), dtype=np.float64)  # k_{j,R}, j not in R
        self.to_community = np.zeros(len(snapshot.community_ids), dtype=np.float64)  # k_{R,c}
        self._link(rows, np.asarray(weights, dtype=np.float64))

    def _link(self, rows: np.ndarray, weights: np.ndarray) -> None:
        np.add.at(self.to_image, rows, weights)
        positions = self.snapshot.community_position[rows]
        linked = positions >= 0
        np.add.at(self.to_community, positions[linked], weights[linked])

    def closest_community(self, unvisited: np.ndarray) -> int | None:
        """Step 5 over the block positions marked in ``unvisited``; None when none is left."""
        if not unvisited.any():
            return None
        snapshot = self.snapshot
        k_rc = self.to_community
        gains = k_rc - self.sigma * snapshot.sigma_tot / (2.0 * self.m)
        gains[~unvisited] = -np.inf
        best = float(gains.max())
        tied = np.flatnonzero(gains >= best - TIE_TOLERANCE * max(1.0, abs(best)))
        if len(tied) == 1:
            return int(tied[0])
        order = np.lexsort((snapshot.community_ids[tied], snapshot.sigma_tot[tied], -k_rc[tied]))
        return int(tied[order[0]])

    def add(self, row: int) -> None:
        self.images.append(row)
        self.in_region[row] = True
        self.sigma += float(self.snapshot.degree[row])
        # The edges between R and the newcomer are now inside R.
        inside = float(self.to_image[row])
        self.to_image[row] = 0.0
        position = int(self.snapshot.community_position[row])
        if position >= 0:
            self.to_community[position] -= inside
        neighbours, weights = self.snapshot.edges_of(row)
        outside = ~self.in_region[neighbours]
        self._link(neighbours[outside], weights[outside])

    def grow_in(self, position: int, eligible: Eligibility, query64: np.ndarray, k: int) -> int:
        """Steps 6-8 in one community: adds members until R holds k images or the community has
        no eligible member left; returns how many were added."""
        snapshot = self.snapshot
        members = snapshot.members(position)
        rows = _rows(members)
        available = eligible[members] & ~self.in_region[members]
        if not available.any():
            return 0
        scaled_degree = snapshot.degree[members] / (2.0 * self.m)
        added = 0
        while len(self.images) < k and available.any():
            # m * dq(R, j) for every member; the argmax of dq itself. (A block's k_{j,R} is a
            # view that add() keeps current; appended members are gathered.)
            gains = self.to_image[members] - self.sigma * scaled_degree
            gains[~available] = -np.inf
            best = float(gains.max())
            tied = np.flatnonzero(gains >= best - TIE_TOLERANCE * max(1.0, abs(best)))
            if len(tied) == 1:
                chosen = int(tied[0])
            else:
                cosines = snapshot.matrix[rows[tied]].astype(np.float64) @ query64
                order = np.lexsort((snapshot.keys[rows[tied]], -cosines))
                chosen = int(tied[order[0]])
            available[chosen] = False
            self.add(int(rows[chosen]))
            added += 1
        return added


class SnapshotSearch(ABC):
    """A search over the read model's snapshot (``exact``, ``region``, ``community_ranked``):
    ``search`` runs the strategy's ``_search`` on the snapshot given, or on the current one
    through the cache's deleted check (``ReadModelCache.search_with``)."""

    name: Strategy
    cache: ReadModelCache
    single_blas_thread = False

    def search(
        self,
        query: np.ndarray,
        k: int,
        filters: SearchFilters,
        snapshot: GraphSnapshot | None = None,
    ) -> SearchHits:
        def run(current: GraphSnapshot, diagnostics: SearchDiagnostics) -> SearchHits:
            with one_blas_thread() if self.single_blas_thread else nullcontext():
                return self._search(query, k, filters, current, diagnostics)

        diagnostics = SearchDiagnostics(strategy=self.name.value)
        if snapshot is not None:
            return run(snapshot, diagnostics)
        return self.cache.search_with(diagnostics, run)

    @abstractmethod
    def _search(
        self,
        query: np.ndarray,
        k: int,
        filters: SearchFilters,
        snapshot: GraphSnapshot,
        diagnostics: SearchDiagnostics,
    ) -> SearchHits:
        """The strategy's own search of ``snapshot``."""


class QueryEdgeSearch(SnapshotSearch):
    """What ``region`` and ``community_ranked`` share: a search on one BLAS thread, seeded by
    the query's virtual edges to its nearest eligible images (``seed``)."""

    query_edges: int
    seed_candidates: int
    single_blas_thread = True

    def seed(
        self,
        query: np.ndarray,
        filters: SearchFilters,
        snapshot: GraphSnapshot,
        diagnostics: SearchDiagnostics,
        *,
        nearest_community_first: bool = False,
        keep: int = 0,
    ) -> Seed:
        """The query's virtual edges from a probe of the nearest scan lists.
        ``nearest_community_first``: the probe scores the nearest list's whole community before
        it scans lists (for a search that visits that community anyway). ``keep``: how many of
        the nearest scored images to keep beyond the edges (for a search that ranks them)."""
        check_ready(snapshot)
        diagnostics.database_size = snapshot.live
        with diagnostics.stage("seed"):
            eligible = snapshot.eligibility(filters)
            probe = Probe.start(snapshot, query, eligible, self.seed_candidates)
            probe.scan_nearest(self.seed_candidates,
                               nearest_community_first=nearest_community_first)  # fmt: skip
            rows, cosines = nearest(
                snapshot, query, *probe.candidates(), max(self.query_edges, keep)
            )
        return Seed(eligible, probe, rows[: self.query_edges], cosines[: self.query_edges],
                    rows, cosines, len(probe.chunks))  # fmt: skip


class Seed(NamedTuple):
    eligible: Eligibility
    probe: Probe
    rows: np.ndarray  # int64: the query's virtual edges, nearest first
    weights: np.ndarray  # float64: their cosines
    nearest_rows: np.ndarray  # int64: the ``max(edges, keep)`` nearest scored, nearest first
    nearest_cosines: np.ndarray  # float64
    chunks: int  # the probe's chunks when they were chosen: later ones were scored after


def record_visit(diagnostics: SearchDiagnostics, snapshot: GraphSnapshot, position: int) -> None:
    community = int(snapshot.community_ids[position])
    diagnostics.communities_visited.append(community)
    if diagnostics.community is None:
        diagnostics.community = community
        diagnostics.community_size = int(snapshot.community_size[position])


class RegionGrowingSearch(QueryEdgeSearch):
    name = Strategy.REGION

    def __init__(
        self,
        cache: ReadModelCache,
        *,
        query_edges: int,
        max_communities: int = 32,
        seed_candidates: int = 8192,
    ) -> None:
        self.cache = cache
        self.query_edges = query_edges
        self.max_communities = max_communities
        self.seed_candidates = seed_candidates

    def _search(
        self,
        query: np.ndarray,
        k: int,
        filters: SearchFilters,
        snapshot: GraphSnapshot,
        diagnostics: SearchDiagnostics,
    ) -> SearchHits:
        query = query.astype(np.float32)
        query64 = query.astype(np.float64)
        eligible, probe, rows, weights, *_ = self.seed(query, filters, snapshot, diagnostics)
        region = RegionGrowth(snapshot, rows, weights)
        unvisited = snapshot.community_alive.copy()
        examined = probe.scanned
        with diagnostics.stage("grow"):
            while len(region.images) < k and unvisited.any():
                if len(diagnostics.communities_visited) >= self.max_communities:
                    break
                position = region.closest_community(unvisited)
                assert position is not None
                unvisited[position] = False
                record_visit(diagnostics, snapshot, position)
                examined += probe.unscored_eligible(position)
                region.grow_in(position, eligible, query64, k)
        diagnostics.images_examined = examined
        return hits_of(snapshot, np.array(region.images, dtype=np.int64), query64, diagnostics)


def check_ready(snapshot: GraphSnapshot) -> None:
    if snapshot.m is None or snapshot.m <= 0 or not snapshot.community_alive.any():
        raise GraphNotReady(
            "region search needs a clustering run (communities and total weight m); "
            "run the clustering job first or use strategy 'exact' or 'vector'"
        )


def hits_of(
    snapshot: GraphSnapshot,
    rows: np.ndarray,
    query64: np.ndarray | None,
    diagnostics: SearchDiagnostics,
    cosines: np.ndarray | None = None,
) -> SearchHits:
    """The hits of ``rows``, with their exact cosines: ``cosines`` when the caller has them
    (float64), else computed from ``query64``."""
    if cosines is None:
        assert query64 is not None
        cosines = snapshot.matrix[rows].astype(np.float64) @ query64 if len(rows) else np.zeros(0)
    findings = snapshot.findings
    return SearchHits(
        keys=tuple(snapshot.keys[rows].tolist()),
        cosines=cosines.astype(np.float32),
        communities=tuple(
            None if c == NO_COMMUNITY else c for c in snapshot.community[rows].tolist()
        ),
        findings=tuple([findings[row] for row in rows.tolist()]),
        diagnostics=diagnostics,
    )

"""Strategy ``region``: the paper's Algorithm 1, region growing from the query in its closest
community.

Definitions (``m``, ``k_i``, ``sigma_tot`` as in cypher/README.md, all read from the stored
graph and the latest :ClusteringRun; nothing is recomputed per request):

- The query ``q`` joins the graph with *virtual* edges to its ``n`` nearest eligible images
  (``n`` = ``region_query_edges``, default the graph's kNN ``k``). Candidates come from the vector
  index; the weight of each edge is the exact cosine recomputed from the embeddings, and the ``n``
  kept are the nearest by that cosine. ``k_q`` = sum of those weights. Nothing is written.
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

Rank = order of addition. Round trips: one for the seed (vector index, community sums, m), then
one per visited community (its eligible members, their cosines to the query and edge lists); the
growing itself runs here in numpy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from services.graph.store import GraphStore
from services.retrieval.contract import (
    GraphNotReady,
    SearchDiagnostics,
    SearchFilters,
    SearchHits,
    Strategy,
)

TIE_TOLERANCE = 1e-9


@dataclass(frozen=True)
class CommunitySums:
    id: int
    sigma_tot: float
    size: int


@dataclass(frozen=True)
class Seed:
    images: int  # stored :Image count
    neighbour_keys: tuple[str, ...]  # the query's virtual edges, nearest first
    neighbour_weights: np.ndarray  # float64 exact cosines, same order
    neighbour_communities: tuple[int | None, ...]
    communities: dict[int, CommunitySums]
    m: float | None
    run: str | None
    index_candidates: int  # how many images the vector index scored


@dataclass(frozen=True)
class Members:
    keys: list[str]
    cosines: np.ndarray  # float64
    findings: list[tuple[str, ...]]
    edges: list[list[tuple[str, float, int | None]]]  # per member: (neighbour, weight, community)


class RegionState:
    """The growing region R: its images in order, sigma_R, and weights from R to the rest."""

    def __init__(self, m: float, virtual_edges: dict[str, tuple[float, int | None]]) -> None:
        self.m = m
        self.images: list[str] = []
        self.in_region: set[str] = set()
        self.sigma = float(sum(weight for weight, _ in virtual_edges.values()))
        self.weight_to_image: dict[str, float] = {}
        self.weight_to_community: dict[int, float] = {}
        for key, (weight, community) in virtual_edges.items():
            self._link(key, weight, community)

    def _link(self, key: str, weight: float, community: int | None) -> None:
        self.weight_to_image[key] = self.weight_to_image.get(key, 0.0) + weight
        if community is not None:
            self.weight_to_community[community] = (
                self.weight_to_community.get(community, 0.0) + weight
            )

    def community_gain(self, community: CommunitySums) -> float:
        """``m * dQ(R, c) = k_{R,c} - sigma_R * sigma_tot_c / (2m)``."""
        k_rc = self.weight_to_community.get(community.id, 0.0)
        return k_rc - self.sigma * community.sigma_tot / (2.0 * self.m)

    def closest_community(self, communities: list[CommunitySums]) -> CommunitySums | None:
        if not communities:
            return None
        gains = [self.community_gain(c) for c in communities]
        best = max(gains)
        tied = [c for c, gain in zip(communities, gains, strict=True) if _ties(gain, best)]
        return min(
            tied,
            key=lambda c: (-self.weight_to_community.get(c.id, 0.0), c.sigma_tot, c.id),
        )

    def add(
        self,
        key: str,
        degree: float,
        community: int | None,
        edges: list[tuple[str, float, int | None]],
    ) -> None:
        self.images.append(key)
        self.in_region.add(key)
        self.sigma += degree
        # The edges between R and the newcomer are now inside R.
        inside = self.weight_to_image.pop(key, 0.0)
        if community is not None and community in self.weight_to_community:
            self.weight_to_community[community] -= inside
        for other, weight, other_community in edges:
            if other not in self.in_region:
                self._link(other, weight, other_community)


class RegionGrowingSearch:
    name = Strategy.REGION

    def __init__(
        self,
        store: GraphStore,
        *,
        query_edges: int,
        max_communities: int = 32,
        max_index_candidates: int = 10_000,
    ) -> None:
        self.store = store
        self.query_edges = query_edges
        self.max_communities = max_communities
        self.max_index_candidates = max_index_candidates

    def search(self, query: np.ndarray, k: int, filters: SearchFilters) -> SearchHits:
        diagnostics = SearchDiagnostics(strategy=self.name.value)
        with diagnostics.stage("seed"):
            seed = self.seed(query, filters)
        diagnostics.database_size = seed.images
        diagnostics.images_examined = seed.index_candidates
        if seed.m is None or seed.m <= 0 or not seed.communities:
            raise GraphNotReady(
                "region search needs a clustering run (communities and total weight m); "
                "run the clustering job first or use strategy 'exact' or 'vector'"
            )
        region = RegionState(
            seed.m,
            {
                key: (float(weight), community)
                for key, weight, community in zip(
                    seed.neighbour_keys,
                    seed.neighbour_weights,
                    seed.neighbour_communities,
                    strict=True,
                )
            },
        )
        cosines: dict[str, float] = {}
        findings: dict[str, tuple[str, ...]] = {}
        community_of: dict[str, int] = {}
        unvisited = dict(seed.communities)
        embedding = query.astype(np.float64).tolist()
        while len(region.images) < k and unvisited:
            if len(diagnostics.communities_visited) >= self.max_communities:
                break
            with diagnostics.stage("choose_community"):
                community = region.closest_community(list(unvisited.values()))
            assert community is not None
            del unvisited[community.id]
            diagnostics.communities_visited.append(community.id)
            if diagnostics.community is None:
                diagnostics.community = community.id
                diagnostics.community_size = community.size
            with diagnostics.stage("fetch_members"):
                members = self.members(community.id, embedding, filters)
            diagnostics.images_examined += len(members.keys)
            with diagnostics.stage("grow"):
                added = grow_in_community(region, community.id, members, k)
            for index in added:
                key = members.keys[index]
                cosines[key] = float(members.cosines[index])
                findings[key] = members.findings[index]
                community_of[key] = community.id
        keys = tuple(region.images)
        return SearchHits(
            keys=keys,
            cosines=np.array([cosines[key] for key in keys], dtype=np.float32),
            communities=tuple(community_of[key] for key in keys),
            findings=tuple(findings[key] for key in keys),
            diagnostics=diagnostics,
        )

    # --- round trips ---------------------------------------------------------------------------
    def seed(self, query: np.ndarray, filters: SearchFilters) -> Seed:
        """The query's virtual edges, with escalating index candidates when filters thin them."""
        wanted = self.query_edges
        keep = max(2 * wanted, wanted + 10)
        fetch = keep + len(filters.exclude_keys) + (keep if filters.exclude_patient_key else 0)
        if filters.restrictive:
            fetch *= 8
        embedding = query.astype(np.float64).tolist()
        params = filters.cypher_params()
        while True:
            fetch = min(fetch, self.max_index_candidates)
            record = self.store.query(
                "search_region_seed", embedding=embedding, fetch=fetch, keep=keep, **params
            )[0]
            images = int(record["images"])
            rows = record["neighbours"]
            if len(rows) >= keep or fetch >= min(images, self.max_index_candidates):
                break
            fetch *= 4
        query64 = query.astype(np.float64)
        if rows:
            matrix = np.array([row["embedding"] for row in rows], dtype=np.float64)
            weights = matrix @ query64
        else:
            weights = np.zeros(0, dtype=np.float64)
        order = sorted(range(len(rows)), key=lambda i: (-weights[i], rows[i]["key"]))[:wanted]
        communities = {
            int(cid): CommunitySums(int(cid), float(sigma), int(size or 0))
            for cid, sigma, size in record["communities"]
            if cid is not None
        }
        m = record["m"]
        return Seed(
            images=images,
            neighbour_keys=tuple(rows[i]["key"] for i in order),
            neighbour_weights=np.array([weights[i] for i in order], dtype=np.float64),
            neighbour_communities=tuple(_int_or_none(rows[i]["community"]) for i in order),
            communities=communities,
            m=float(m) if m is not None else None,
            run=None if record["run"] is None else str(record["run"]),
            index_candidates=min(fetch, images),
        )

    def members(self, community: int, embedding: list[float], filters: SearchFilters) -> Members:
        records = self.store.query(
            "search_region_members",
            community=community,
            embedding=embedding,
            **filters.cypher_params(),
        )
        return Members(
            keys=[record["key"] for record in records],
            cosines=np.array([record["cosine"] for record in records], dtype=np.float64),
            findings=[tuple(record["findings"] or ()) for record in records],
            edges=[
                [(other, float(weight), _int_or_none(c)) for other, weight, c in record["edges"]]
                for record in records
            ],
        )


def grow_in_community(region: RegionState, community: int, members: Members, k: int) -> list[int]:
    """Steps 6-8 in one community: adds members to ``region`` until it holds k images or the
    community has no eligible member left; returns the indices (into ``members``) added."""
    count = len(members.keys)
    if count == 0:
        return []
    two_m = 2.0 * region.m
    index_of = {key: i for i, key in enumerate(members.keys)}
    degrees = np.array([sum(w for _, w, _ in edges) for edges in members.edges], dtype=np.float64)
    k_jr = np.array([region.weight_to_image.get(key, 0.0) for key in members.keys])
    available = np.ones(count, dtype=bool)
    added: list[int] = []
    while len(region.images) < k and available.any():
        # m * dq(R, j) for every member; the argmax of dq itself.
        gains = k_jr - region.sigma * degrees / two_m
        gains[~available] = -np.inf
        best_gain = gains.max()
        tied = np.flatnonzero(gains >= best_gain - TIE_TOLERANCE * max(1.0, abs(best_gain)))
        if len(tied) == 1:
            chosen = int(tied[0])
        else:
            chosen = int(min(tied, key=lambda i: (-members.cosines[i], members.keys[i])))
        available[chosen] = False
        added.append(chosen)
        edges = members.edges[chosen]
        region.add(members.keys[chosen], float(degrees[chosen]), community, edges)
        for other, weight, _ in edges:
            position = index_of.get(other)
            if position is not None and available[position]:
                k_jr[position] += weight
    return added


def _ties(gain: float, best: float) -> bool:
    return gain >= best - TIE_TOLERANCE * max(1.0, abs(best))


def _int_or_none(value: object) -> int | None:
    return None if value is None else int(value)  # type: ignore[arg-type]

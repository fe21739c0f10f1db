"""Strategy ``community_ranked``: the paper's communities, cut into scan lists, as the inverted
lists of an IVF index.

1. The query's virtual edges, as in ``region`` (its ``n`` nearest eligible images among the
   scan lists, k-means lists inside the communities, whose centroids are nearest,
   :class:`services.retrieval.region.Probe`), from a scan of at least
   ``ranked_seed_candidates`` eligible images (its nprobe). The probe starts with the whole
   community of the nearest list: step 4 visits it anyway (it is linked to the query, or it is
   the first unlinked one by its nearest list; only ``ranked_max_communities`` linked ones
   before it would leave it out), and its lists are one contiguous block, so it is one product
   instead of many short ones.
2. Communities in Algorithm 1's step-5 order: the modularity gain of assigning the query to the
   community, ``dQ(q, c) = k_{q,c}/m - sigma_tot_c * k_q / (2 m^2)`` (ties: larger ``k_{q,c}``,
   smaller ``sigma_tot_c``, smaller id). The communities the query has no edge to all have
   ``k_{q,c} = 0`` and step 5 would order them by size alone, which says nothing about the
   query: they follow in the order of their nearest scan list's cosine to the query.
3. Every eligible member of a visited community is scored by its exact cosine to the query; the
   answer is the K best of every image scored (the probe's included), by cosine, ties by key.
   (Its nearest lists only would be cheaper, but where a community is one diffuse cluster its
   lists say little: on the easy generated set, the lists holding 512 of a community's ~1,900
   images gave recall@50 0.35.)
4. It visits communities in that order while it could still change the top K: a community is
   visited while fewer than ``ranked_min_communities`` were, or while it is linked to the query
   (``k_{q,c} > 0``) or its nearest list's cosine to the query is within
   ``ranked_centroid_margin`` of the best list's; never more than ``ranked_max_communities``.
   (Cosine bounds from a centroid and a radius are useless in 1024 dimensions — every member's
   noise is nearly orthogonal to every other direction — so the rule is a measured one, not a
   proof: the benchmark reports its recall against ``exact`` and the share of images it
   examined.)

Rank = cosine (like ``exact``). No Neo4j round trip in an API process (the read model follows
the change log in the background, ``services/retrieval/cache.py``).
"""

from __future__ import annotations

import numpy as np

from services.retrieval.cache import ReadModelCache
from services.retrieval.contract import SearchDiagnostics, SearchFilters, SearchHits, Strategy
from services.retrieval.readmodel import GraphSnapshot
from services.retrieval.region import Probe, QueryEdgeSearch, hits_of, nearest, record_visit


class CommunityRankedSearch(QueryEdgeSearch):
    name = Strategy.COMMUNITY_RANKED

    def __init__(
        self,
        cache: ReadModelCache,
        *,
        query_edges: int,
        seed_candidates: int = 4096,
        min_communities: int = 1,
        max_communities: int = 16,
        centroid_margin: float = 0.05,
    ) -> None:
        self.cache = cache
        self.query_edges = query_edges
        self.seed_candidates = seed_candidates
        self.min_communities = min_communities
        self.max_communities = max_communities
        self.centroid_margin = centroid_margin

    def community_order(
        self, probe: Probe, rows: np.ndarray, weights: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Block positions in step-5 order, then the unlinked ones by their nearest list's
        cosine; ``k_{q,c}`` per position; and each position's nearest list cosine."""
        snapshot = probe.snapshot
        assert snapshot.m is not None
        positions = snapshot.community_position[rows]
        linked_rows = positions >= 0
        k_qc = np.bincount(positions[linked_rows], weights[linked_rows],
                           minlength=len(snapshot.community_ids))  # fmt: skip
        linked = np.flatnonzero(k_qc > 0)
        gains = k_qc[linked] - float(np.sum(weights)) * snapshot.sigma_tot[linked] / (
            2.0 * snapshot.m
        )
        linked = linked[
            np.lexsort(
                (snapshot.community_ids[linked], snapshot.sigma_tot[linked], -k_qc[linked],
                 -gains)
            )
        ]  # fmt: skip
        by_centroid, nearest_list = probe.community_order()
        unlinked = by_centroid[k_qc[by_centroid] <= 0]
        return np.concatenate([linked, unlinked]).astype(np.int64), k_qc, nearest_list

    def _search(
        self,
        query: np.ndarray,
        k: int,
        filters: SearchFilters,
        snapshot: GraphSnapshot,
        diagnostics: SearchDiagnostics,
    ) -> SearchHits:
        query = query.astype(np.float32)
        seed = self.seed(
            query, filters, snapshot, diagnostics, nearest_community_first=True, keep=k
        )
        probe = seed.probe
        with diagnostics.stage("rank"):
            order, k_qc, nearest_list = self.community_order(probe, seed.rows, seed.weights)
            best_centroid = float(nearest_list.max()) if len(order) else 0.0
            visits: list[int] = []
            for position in order.tolist():
                if len(visits) >= self.max_communities:
                    break
                near = nearest_list[position] >= best_centroid - self.centroid_margin
                if len(visits) >= self.min_communities and k_qc[position] <= 0 and not near:
                    break
                visits.append(position)
                record_visit(diagnostics, snapshot, position)
            # Which communities are visited does not depend on their scores: one batch.
            probe.score(np.concatenate([probe.units_of(p) for p in visits] or [[]]))
            # The K nearest of everything scored: of the seed's K nearest and the rows scored
            # since (often none: the nearest community was scored in the seed).
            rows, scores = probe.candidates(since=seed.chunks)
            if len(rows):
                rows = np.concatenate([seed.nearest_rows, rows])
                scores = np.concatenate([seed.nearest_cosines.astype(np.float32), scores])
                chosen, cosines = nearest(snapshot, query, rows, scores, k)
            else:
                chosen, cosines = seed.nearest_rows[:k], seed.nearest_cosines[:k]
        diagnostics.images_examined = probe.scanned
        return hits_of(snapshot, chosen, None, diagnostics, cosines)

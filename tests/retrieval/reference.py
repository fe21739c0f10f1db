"""An independent reference implementation of the paper's Algorithm 1, for the tests only.

Written from the paper and the definitions in services/retrieval/README.md, over a networkx graph
and plain dicts; it imports nothing from services.retrieval. It is deliberately naive: every
gain is recomputed from scratch by summing edge weights in the graph that includes the query.

Definitions (stored graph G, total weight m, weighted degree k_v, communities with sigma_c):
- the query node Q gets edges to its n nearest eligible images (exact cosine, ties by key);
- region R = [Q]; sigma_R = sum of Q's edge weights + stored degrees of the images in R;
- closest community: argmax over unvisited c of k_{R,c}/m - sigma_R * sigma_c / (2 m^2), ties by
  larger k_{R,c}, then smaller sigma_c, then smaller id;
- inside c: repeatedly add argmax over eligible j of k_{j,R}/m - sigma_R * k_j / (2 m^2), ties by
  larger cosine, then smaller key; when c has none left, choose the next community with the
  grown R. Gains closer than 1e-9 (in units of 1/m) count as tied.
"""

from __future__ import annotations

import networkx as nx
import numpy as np

QUERY = "\x00query"
TOLERANCE = 1e-9


def reference_region_search(
    graph: nx.Graph,
    community_of: dict[str, int],
    embeddings: dict[str, np.ndarray],
    query: np.ndarray,
    *,
    query_edges: int,
    k: int,
    excluded: set[str] = frozenset(),  # type: ignore[assignment]
) -> list[str]:
    m = sum(weight for _, _, weight in graph.edges(data="weight"))
    degree = {node: sum(w for _, _, w in graph.edges(node, data="weight")) for node in graph}
    for node in embeddings:
        degree.setdefault(node, 0.0)
    sigma: dict[int, float] = {}
    for node, community in community_of.items():
        sigma[community] = sigma.get(community, 0.0) + degree[node]
    eligible = [node for node in embeddings if node not in excluded]
    cosine = {node: float(np.dot(embeddings[node].astype(np.float64), query.astype(np.float64)))
              for node in eligible}  # fmt: skip
    nearest = sorted(eligible, key=lambda node: (-cosine[node], node))[:query_edges]

    with_query = graph.copy()
    with_query.add_nodes_from(embeddings)
    for node in nearest:
        with_query.add_edge(QUERY, node, weight=cosine[node])

    region = [QUERY]
    sigma_region = sum(cosine[node] for node in nearest)
    visited: set[int] = set()
    result: list[str] = []

    def weight_between(node: str, members: list[str]) -> float:
        return sum(
            with_query[node][other]["weight"]
            for other in members
            if with_query.has_edge(node, other)
        )

    while len(result) < k:
        candidates = sorted(set(sigma) - visited)
        if not candidates:
            break

        def k_region_community(c: int) -> float:
            return sum(
                weight_between(node, region)
                for node, cn in community_of.items()
                if cn == c and node not in region
            )

        gains = {
            c: k_region_community(c) / m - sigma_region * sigma[c] / (2 * m * m) for c in candidates
        }
        best = max(gains.values())
        tied = [
            c for c in candidates if gains[c] * m >= best * m - TOLERANCE * max(1.0, abs(best * m))
        ]
        chosen = min(tied, key=lambda c: (-k_region_community(c), sigma[c], c))
        visited.add(chosen)
        pool = [node for node in eligible if community_of.get(node) == chosen]
        while len(result) < k and pool:
            node_gain = {
                j: weight_between(j, region) / m - sigma_region * degree[j] / (2 * m * m)
                for j in pool
            }
            best_j = max(node_gain.values())
            tied_j = [
                j for j in pool
                if node_gain[j] * m >= best_j * m - TOLERANCE * max(1.0, abs(best_j * m))
            ]  # fmt: skip
            added = min(tied_j, key=lambda j: (-cosine[j], j))
            pool.remove(added)
            region.append(added)
            result.append(added)
            sigma_region += degree[added]
    return result


def knn_edges(embeddings: dict[str, np.ndarray], k: int) -> dict[tuple[str, str], float]:
    """Symmetric kNN graph by cosine: a pair is linked when either is among the other's k
    nearest."""
    keys = sorted(embeddings)
    matrix = np.array([embeddings[key] for key in keys], dtype=np.float64)
    similarity = matrix @ matrix.T
    np.fill_diagonal(similarity, -np.inf)
    edges: dict[tuple[str, str], float] = {}
    for i, key in enumerate(keys):
        for j in np.argsort(-similarity[i], kind="stable")[:k]:
            a, b = sorted((key, keys[int(j)]))
            edges[(a, b)] = float(similarity[i, int(j)])
    return edges

"""What must hold after any deletion or relabel, recomputed here from the stored edges and
nodes, independently of services.curation and services.communities."""

from __future__ import annotations

import math
from collections import Counter, defaultdict

import numpy as np

from services.graph.store import GraphStore

NO_FINDING = "No Finding"
TOLERANCE = 1e-6


def graph_problems(store: GraphStore, k: int) -> list[str]:
    """Every broken invariant, in words (empty = the graph is consistent)."""
    problems: list[str] = []
    images = {
        record["key"]: record
        for record in store.run_text(
            "MATCH (i:Image) RETURN i.key AS key, i.community AS community, "
            "i.findings AS findings, i.embedding AS embedding, i.knn_floor AS floor"
        )
    }
    edges = [
        (record["a"], record["b"], float(record["w"]))
        for record in store.run_text(
            "MATCH (a:Image)-[r:SIMILAR]->(b:Image) RETURN a.key AS a, b.key AS b, r.weight AS w"
        )
    ]
    count: Counter[str] = Counter()
    degree: dict[str, float] = defaultdict(float)
    for a, b, weight in edges:
        count[a] += 1
        count[b] += 1
        degree[a] += weight
        degree[b] += weight
    linked = [key for key, image in images.items() if image["floor"] is not None]
    need = min(k, len(linked) - 1)
    short = [key for key in linked if count[key] < need]
    if short:
        problems.append(f"{len(short)} linked images have fewer than {need} SIMILAR edges")
    stale_floor = 0
    weights_of: dict[str, list[float]] = defaultdict(list)
    for a, b, weight in edges:
        weights_of[a].append(weight)
        weights_of[b].append(weight)
    for key in linked:
        ordered = sorted(weights_of[key], reverse=True)
        expected = ordered[k - 1] if len(ordered) >= k else -1.0
        if abs(float(images[key]["floor"]) - expected) > 1e-5:
            stale_floor += 1
    if stale_floor:
        problems.append(f"{stale_floor} images have a knn_floor that is not their k-th weight")
    orphans = store.run_text(
        "MATCH (p:Patient) WHERE NOT EXISTS { (p)-[:HAS_IMAGE]->() } RETURN count(p) AS n"
    )[0]["n"]
    if orphans:
        problems.append(f"{orphans} :Patient nodes have no image")

    run = store.run_text(
        "MATCH (r:ClusteringRun {status: 'finished'}) RETURN r.total_weight_m AS m "
        "ORDER BY r.finished_at DESC LIMIT 1"
    )
    if not run:
        return problems
    community_of = {key: image["community"] for key, image in images.items()}
    m = 0.0
    sigma: dict[int, float] = defaultdict(float)
    internal: dict[int, float] = defaultdict(float)
    for a, b, weight in edges:
        ca, cb = community_of[a], community_of[b]
        if ca is None or cb is None:
            continue
        m += weight
        sigma[ca] += weight
        sigma[cb] += weight
        if ca == cb:
            internal[ca] += weight
    if not math.isclose(float(run[0]["m"]), m, rel_tol=TOLERANCE, abs_tol=TOLERANCE):
        problems.append(f"stored m {run[0]['m']} != recomputed {m}")
    size: Counter[int] = Counter()
    findings: dict[int, Counter[str]] = defaultdict(Counter)
    embedding_sum: dict[int, np.ndarray] = {}
    for image in images.values():
        community = image["community"]
        if community is None:
            continue
        size[community] += 1
        findings[community].update(list(image["findings"] or []) or [NO_FINDING])
        vector = np.asarray(image["embedding"], dtype=np.float64)
        embedding_sum[community] = embedding_sum.get(community, 0) + vector
    stored = {
        record["id"]: record
        for record in store.run_text(
            "MATCH (c:Community) RETURN c.id AS id, c.size AS size, c.sigma_tot AS sigma, "
            "c.internal_weight AS internal, c.centroid AS centroid, "
            "c.finding_names AS names, c.finding_counts AS counts"
        )
    }
    if set(stored) != set(size):
        problems.append(
            f"communities stored {sorted(set(stored) - set(size))} without members, "
            f"members in {sorted(set(size) - set(stored))} without a :Community"
        )
    for community in sorted(set(stored) & set(size)):
        row = stored[community]
        if row["size"] != size[community]:
            problems.append(f"community {community}: size {row['size']} != {size[community]}")
        for name, value, expected in (
            ("sigma_tot", row["sigma"], sigma[community]),
            ("internal_weight", row["internal"], internal[community]),
        ):
            if not math.isclose(float(value), expected, rel_tol=TOLERANCE, abs_tol=TOLERANCE):
                problems.append(f"community {community}: {name} {value} != {expected}")
        histogram = dict(zip(row["names"] or [], row["counts"] or [], strict=True))
        if histogram != dict(findings[community]):
            problems.append(
                f"community {community}: findings {histogram} != {dict(findings[community])}"
            )
        if row["centroid"] is not None:
            mean = embedding_sum[community] / size[community]
            expected_centroid = mean / np.linalg.norm(mean)
            error = float(np.max(np.abs(np.asarray(row["centroid"]) - expected_centroid)))
            if error > 1e-5:
                problems.append(f"community {community}: centroid off by {error:.2e}")
    return problems

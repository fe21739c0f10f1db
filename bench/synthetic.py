"""Generated embeddings for scale benchmarks (the demo set has only 733 real images).

A mixture of von Mises-Fisher-like clusters on the unit sphere in 1024 dimensions: cluster
centres are random unit vectors; each point is its centre plus isotropic Gaussian noise,
renormalised. ``spread`` sets the noise; at the default, cosines within a cluster are about
0.5-0.6 and across clusters about 0, roughly like trained DenseNet features of one finding
group against another. Each point gets the finding set of its cluster (with some noise) and a
patient id, so that retrieval metrics can be computed with same-patient exclusion.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DIMENSIONS = 1024
SCALES = {"10k": 10_000, "100k": 100_000, "chexpert": 223_648}
FINDINGS = (
    "Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
    "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening",
    "Hernia",
)  # fmt: skip


@dataclass(frozen=True)
class SyntheticSet:
    embeddings: np.ndarray  # float32 (n, 1024), unit rows
    cluster: np.ndarray  # int64 (n,), the planted cluster of each point
    findings: list[tuple[str, ...]]  # per point
    patient: np.ndarray  # int64 (n,), ~3.5 images per patient as in CheXpert

    @property
    def keys(self) -> list[str]:
        return [f"syn-{i:07d}" for i in range(len(self.cluster))]


def generate(
    n: int, n_clusters: int | None = None, spread: float = 0.035, seed: int = 0,
    dimensions: int = DIMENSIONS, chunk: int = 50_000,
) -> SyntheticSet:  # fmt: skip
    rng = np.random.default_rng(seed)
    n_clusters = n_clusters or max(8, int(round(np.sqrt(n) / 4)))
    centres = rng.standard_normal((n_clusters, dimensions)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    # Unequal cluster sizes, as in real finding distributions.
    weights = rng.dirichlet(np.full(n_clusters, 2.0))
    cluster = rng.choice(n_clusters, size=n, p=weights).astype(np.int64)
    embeddings = np.empty((n, dimensions), dtype=np.float32)
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        noise = rng.standard_normal((stop - start, dimensions)).astype(np.float32) * spread
        block = centres[cluster[start:stop]] + noise
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        embeddings[start:stop] = block
    cluster_findings = [
        tuple(sorted(rng.choice(FINDINGS, size=rng.integers(0, 3), replace=False).tolist()))
        for _ in range(n_clusters)
    ]
    findings = [
        cluster_findings[c] if rng.random() > 0.1 else cluster_findings[rng.integers(n_clusters)]
        for c in cluster
    ]
    patient = rng.integers(0, max(1, int(n / 3.5)), size=n).astype(np.int64)
    return SyntheticSet(embeddings, cluster, findings, patient)


def generate_hard(
    n: int, seed: int = 0, dimensions: int = DIMENSIONS, chunk: int = 50_000,
    n_groups: int = 2, latent: int = 16, manifold: float = 0.25, noise: float = 0.01,
) -> SyntheticSet:  # fmt: skip
    """A harder set, whose neighbourhoods cross community boundaries.

    ``n_groups`` well-separated *groups* (random unit centres, as in :func:`generate`); inside a
    group the points lie near a ``latent``-dimensional manifold: the centre plus a random linear
    image of a Gaussian latent code with unequal scales per latent direction and per group
    (0.5x-1.5x ``manifold``: unequal, anisotropic spreads), plus a little isotropic noise
    (``noise`` per coordinate). ``cluster`` holds the group: every point's nearest lie in its own
    group (``knn_agreement`` checks it), so the blocked exact kNN per group stays exact.

    Why the number of groups is fixed rather than the group size: modularity keeps a group whole
    once the group is a small enough share of the graph (splitting it gains less than the edges
    the cut loses), so groups of a fixed size (5,000 in the first version) became the
    communities themselves at 10^5 and the set was easy again (0% of the exact top 50 outside
    the query's community). With a fixed count, each group stays a continuous blob holding a
    fixed share of the graph, the clustering has to cut through it at every size, and a query's
    50 nearest often lie across those cuts (the benchmark reports the share per size). The
    price is the blocked kNN: n^2 / n_groups products (about 6 min at 223,648 on 2 cores).
    """
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_groups, dimensions)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    bases = rng.standard_normal((n_groups, latent, dimensions)).astype(np.float32)
    bases /= np.sqrt(dimensions)
    scales = rng.uniform(0.5, 1.5, size=(n_groups, latent)).astype(np.float32) * manifold
    weights = rng.dirichlet(np.full(n_groups, 8.0))
    group = rng.choice(n_groups, size=n, p=weights).astype(np.int64)
    embeddings = np.empty((n, dimensions), dtype=np.float32)
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        g = group[start:stop]
        codes = rng.standard_normal((stop - start, latent)).astype(np.float32) * scales[g]
        block = centres[g] + np.einsum("nl,nld->nd", codes, bases[g])
        block += rng.standard_normal((stop - start, dimensions)).astype(np.float32) * noise
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        embeddings[start:stop] = block
    group_findings = [
        tuple(sorted(rng.choice(FINDINGS, size=rng.integers(0, 3), replace=False).tolist()))
        for _ in range(n_groups)
    ]
    findings = [
        group_findings[c] if rng.random() > 0.1 else group_findings[rng.integers(n_groups)]
        for c in group
    ]
    patient = rng.integers(0, max(1, int(n / 3.5)), size=n).astype(np.int64)
    return SyntheticSet(embeddings, group, findings, patient)

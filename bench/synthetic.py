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
    return SyntheticSet(embeddings, cluster, *_findings_and_patients(rng, cluster, n_clusters))


def generate_hard(
    n: int, seed: int = 0, dimensions: int = DIMENSIONS, chunk: int = 50_000,
    group_size: int = 5_000, latent: int = 24, manifold: float = 0.25, sub_size: int = 20,
    sub_spread: float = 0.5, noise: float = 0.002,
) -> SyntheticSet:  # fmt: skip
    """A harder set, whose neighbourhoods cross community boundaries: hierarchical clusters with
    sub-centres near each other, unequal and anisotropic spreads.

    Well-separated *groups* of about ``group_size`` points (random unit centres, as in
    :func:`generate`). Inside a group, *sub-centres* (one per ~``sub_size`` points) lie on a
    ``latent``-dimensional linear manifold through the centre, with unequal scales per latent
    direction and per group (0.5x-1.5x ``manifold``); each point sits around its sub-centre at
    ``sub_spread`` times those scales, plus a little isotropic noise (``noise`` per coordinate).
    Neighbouring sub-clusters overlap, so a point's 10 nearest are mostly its own sub-cluster's
    while its 50 nearest spread over several; the clustering cannot follow both, and about half
    of a query's exact top 50 lie outside its community (the benchmark reports the share per
    size). ``cluster`` holds the group: every point's nearest lie in its own group
    (``knn_agreement`` checks it), so the blocked exact kNN per group stays exact and cheap.

    Why this shape (measured with Leiden on the kNN graph, k = 10, before it was adopted): a
    first version with one continuous 16-dimensional blob per group of 5,000 had its groups
    kept whole by modularity at 10^5 (0% outside); with a fixed two groups, Leiden cut each into
    a few communities of 7-14% of the graph (26% outside at 10^5), too coarse for any community
    probe to be cheap. Sub-clusters give thousands of communities of a few dozen to a few
    thousand images, with 47-52% of the exact top 50 outside at 10^4, 10^5 and 223,648.
    """
    rng = np.random.default_rng(seed)
    n_groups = max(2, int(round(n / group_size)))
    centres = rng.standard_normal((n_groups, dimensions)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    bases = rng.standard_normal((n_groups, latent, dimensions)).astype(np.float32)
    bases /= np.sqrt(dimensions)
    scales = rng.uniform(0.5, 1.5, size=(n_groups, latent)).astype(np.float32) * manifold
    weights = rng.dirichlet(np.full(n_groups, 8.0))
    group = rng.choice(n_groups, size=n, p=weights).astype(np.int64)
    members = np.bincount(group, minlength=n_groups)
    subs = np.maximum(1, members // sub_size)
    first_sub = np.concatenate([[0], np.cumsum(subs)[:-1]])
    sub_group = np.repeat(np.arange(n_groups), subs)
    sub_codes = rng.standard_normal((int(subs.sum()), latent)).astype(np.float32)
    sub_codes *= scales[sub_group]
    sub = first_sub[group] + (rng.random(n) * subs[group]).astype(np.int64)
    embeddings = np.empty((n, dimensions), dtype=np.float32)
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        g = group[start:stop]
        codes = sub_codes[sub[start:stop]] + (
            rng.standard_normal((stop - start, latent)).astype(np.float32) * scales[g] * sub_spread
        )
        block = centres[g] + np.einsum("nl,nld->nd", codes, bases[g])
        block += rng.standard_normal((stop - start, dimensions)).astype(np.float32) * noise
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        embeddings[start:stop] = block
    return SyntheticSet(embeddings, group, *_findings_and_patients(rng, group, n_groups))


def _findings_and_patients(
    rng: np.random.Generator, cluster: np.ndarray, n_clusters: int
) -> tuple[list[tuple[str, ...]], np.ndarray]:
    """Each cluster's finding set (0-2 findings), taken by a point with probability 0.9, else a
    random cluster's; patient ids at ~3.5 images per patient."""
    cluster_findings = [
        tuple(sorted(rng.choice(FINDINGS, size=rng.integers(0, 3), replace=False).tolist()))
        for _ in range(n_clusters)
    ]
    findings = [
        cluster_findings[c] if rng.random() > 0.1 else cluster_findings[rng.integers(n_clusters)]
        for c in cluster
    ]
    n = len(cluster)
    patient = rng.integers(0, max(1, int(n / 3.5)), size=n).astype(np.int64)
    return findings, patient

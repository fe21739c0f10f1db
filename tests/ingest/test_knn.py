"""The exact kNN, the symmetric edge set and the bulk/incremental rule, against plain numpy."""

from __future__ import annotations

import numpy as np
import pytest

from services.ingest.edges import choose_mode
from services.ingest.knn import block_size_for, exact_knn, knn_floor, symmetric_edges


def unit_rows(n: int, d: int = 32, seed: int = 0) -> np.ndarray:
    rows = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def reference(matrix: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    similarity = matrix.astype(np.float64) @ matrix.T.astype(np.float64)
    np.fill_diagonal(similarity, -np.inf)
    order = np.argsort(-similarity, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(similarity, order, axis=1)


@pytest.mark.parametrize(
    ("n", "k", "block_mib"),
    [(2, 5, 8), (7, 3, 8), (300, 10, 8), (1500, 10, 1), (1000, 1, 1), (999, 30, 1)],
)
def test_exact_knn_matches_numpy(n: int, k: int, block_mib: int) -> None:
    matrix = unit_rows(n)
    assert block_mib > 1 or block_size_for(n, block_mib) < n, "several blocks are exercised"
    indices, cosines = exact_knn(matrix, k, block_mib=block_mib, device="cpu")
    expected_indices, expected_cosines = reference(matrix, min(k, n - 1))
    assert indices.dtype == np.int64 and cosines.dtype == np.float32
    assert indices.shape == cosines.shape == (n, min(k, n - 1))
    np.testing.assert_allclose(cosines, expected_cosines, atol=1e-5)
    assert (indices == np.arange(n)[:, None]).sum() == 0, "never its own neighbour"
    # Same sets of neighbours (random data: no ties).
    assert all(set(a) == set(b) for a, b in zip(indices, expected_indices, strict=True))


def test_exact_knn_degenerate_sizes() -> None:
    for n in (0, 1):
        indices, cosines = exact_knn(unit_rows(max(n, 1))[:n], 10, device="cpu")
        assert indices.shape == cosines.shape == (n, 0)
    with pytest.raises(ValueError, match="k must be at least 1"):
        exact_knn(unit_rows(3), 0)


def test_symmetric_edges_one_pair_each_smaller_first_with_min_cosine() -> None:
    matrix = unit_rows(200, d=8, seed=3)
    indices, cosines = exact_knn(matrix, 5, device="cpu")
    edges = symmetric_edges(indices, cosines)
    pairs = set(zip(edges.smaller.tolist(), edges.larger.tolist(), strict=True))
    assert len(pairs) == len(edges) and all(a < b for a, b in pairs)
    expected = {(min(i, int(j)), max(i, int(j))) for i in range(200) for j in indices[i]}
    assert pairs == expected
    similarity = matrix @ matrix.T
    np.testing.assert_allclose(edges.cosine, similarity[edges.smaller, edges.larger], atol=1e-6)

    cut = float(np.median(cosines))
    kept = symmetric_edges(indices, cosines, min_cosine=cut)
    assert kept.cosine.min() >= cut
    assert len(kept) < len(edges)
    assert {(a, b) for a, b, w in zip(edges.smaller, edges.larger, edges.cosine, strict=True)
            if w >= cut} == set(zip(kept.smaller, kept.larger, strict=True))  # fmt: skip


def test_knn_floor_is_kth_cosine_or_minus_one() -> None:
    cosines = np.array([[0.9, 0.8, 0.7], [0.5, 0.4, 0.3]], dtype=np.float32)
    assert knn_floor(cosines, 3).tolist() == pytest.approx([0.7, 0.3])
    assert knn_floor(cosines, 4).tolist() == [-1.0, -1.0]


@pytest.mark.parametrize(
    ("pending", "linked", "requested", "mode"),
    [
        (733, 0, "auto", "bulk"),  # nothing linked yet
        (50, 683, "auto", "incremental"),  # 7% new
        (100, 683, "auto", "bulk"),  # 15% new > 10%
        (0, 733, "auto", "none"),  # nothing to do
        (0, 733, "bulk", "bulk"),  # forced rebuild
        (50, 683, "bulk", "bulk"),
        (500, 10, "incremental", "incremental"),
    ],
)
def test_bulk_or_incremental_rule(pending: int, linked: int, requested: str, mode: str) -> None:
    assert choose_mode(pending, linked, 0.1, requested) == mode

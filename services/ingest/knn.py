"""Exact k-nearest neighbours by cosine, in blocks of matrix products, and the symmetric edge set.

Embeddings are L2-unit rows, so the cosine is the dot product. ``exact_knn`` walks the upper
triangle of the (n, n) similarity matrix in square blocks: each block ``E_I @ E_J.T`` is computed
once and serves both the rows of I (its rows) and the rows of J (its columns), so the work is
n^2 d instead of 2 n^2 d multiply-adds, and memory stays at one block plus the (n, k) running
answer. Torch runs it on CUDA when present, else on the CPU (BLAS threads).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

MIB = 1024 * 1024


@dataclass(frozen=True)
class SymmetricEdges:
    """Unordered pairs as row indices with ``smaller < larger``, and their cosines."""

    smaller: np.ndarray  # int64 (m,)
    larger: np.ndarray  # int64 (m,)
    cosine: np.ndarray  # float32 (m,)

    def __len__(self) -> int:
        return len(self.cosine)


def pick_device(device: str | None = None) -> str:
    import torch

    if device:
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def block_size_for(n: int, block_mib: int) -> int:
    """Side of a square float32 similarity block of at most ``block_mib`` MiB."""
    side = int(math.sqrt(block_mib * MIB / 4))
    return max(64, min(side, max(n, 1)))


def exact_knn(
    embeddings: np.ndarray, k: int, *, block_mib: int = 256, device: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Each row's k most cosine-similar other rows, exactly.

    Returns ``indices`` int64 (n, k') and ``cosines`` float32 (n, k'), best first, with
    ``k' = min(k, n - 1)``; a row is never its own neighbour.
    """
    import torch

    if embeddings.ndim != 2:
        raise ValueError(f"embeddings must be (n, d), got shape {embeddings.shape}")
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    n = embeddings.shape[0]
    k_eff = min(k, n - 1) if n > 0 else 0
    if k_eff <= 0:
        return np.zeros((n, 0), dtype=np.int64), np.zeros((n, 0), dtype=np.float32)

    target = torch.device(pick_device(device))
    matrix = torch.from_numpy(np.ascontiguousarray(embeddings, dtype=np.float32)).to(target)
    best_cos = torch.full((n, k_eff), -math.inf, dtype=torch.float32, device=target)
    best_idx = torch.full((n, k_eff), -1, dtype=torch.int64, device=target)
    side = block_size_for(n, block_mib)
    starts = list(range(0, n, side))
    with torch.inference_mode():
        for row_start in starts:
            row_stop = min(n, row_start + side)
            rows = matrix[row_start:row_stop]
            for col_start in starts:
                if col_start < row_start:
                    continue  # the lower triangle was seen as the transpose of an upper block
                col_stop = min(n, col_start + side)
                block = rows @ matrix[col_start:col_stop].T
                if col_start == row_start:
                    block.fill_diagonal_(-math.inf)
                _merge(best_cos, best_idx, row_start, row_stop, block, col_start, k_eff)
                if col_start != row_start:
                    _merge(best_cos, best_idx, col_start, col_stop, block.T, row_start, k_eff)
    return best_idx.cpu().numpy(), best_cos.cpu().numpy()


def _merge(
    best_cos: object, best_idx: object, start: int, stop: int, block: object, offset: int, k: int
) -> None:
    """Fold one block's candidates (columns offset..) into rows start..stop's running top-k."""
    import torch

    take = min(k, block.shape[1])
    values, columns = torch.topk(block, take, dim=1)
    merged_cos = torch.cat([best_cos[start:stop], values], dim=1)
    merged_idx = torch.cat([best_idx[start:stop], columns + offset], dim=1)
    top_cos, order = torch.topk(merged_cos, k, dim=1)
    best_cos[start:stop] = top_cos
    best_idx[start:stop] = torch.gather(merged_idx, 1, order)


def symmetric_edges(
    indices: np.ndarray, cosines: np.ndarray, min_cosine: float = -1.0
) -> SymmetricEdges:
    """The symmetrised kNN graph: a pair is linked when either row lists the other.

    Pairs below ``min_cosine`` are dropped. Each unordered pair appears once, smaller index
    first; callers order rows by key so that this is also "smaller key -> larger key".
    """
    n, k = indices.shape
    if n == 0 or k == 0:
        empty = np.zeros(0, dtype=np.int64)
        return SymmetricEdges(empty, empty.copy(), np.zeros(0, dtype=np.float32))
    sources = np.repeat(np.arange(n, dtype=np.int64), k)
    targets = indices.reshape(-1).astype(np.int64)
    weights = cosines.reshape(-1).astype(np.float32)
    keep = (targets >= 0) & (weights >= min_cosine) & (targets != sources)
    sources, targets, weights = sources[keep], targets[keep], weights[keep]
    smaller = np.minimum(sources, targets)
    larger = np.maximum(sources, targets)
    # One code per unordered pair; np.unique keeps the first occurrence's weight.
    codes = smaller * n + larger
    _, first = np.unique(codes, return_index=True)
    return SymmetricEdges(smaller[first], larger[first], weights[first])


def knn_floor(cosines: np.ndarray, k: int) -> np.ndarray:
    """Each row's k-th neighbour cosine, or -1 where the row has fewer than k neighbours.

    A new image belongs among an existing image's k nearest exactly when its cosine to it is at
    least this floor; incremental ingest uses it to add the reciprocal edges.
    """
    n = cosines.shape[0]
    if cosines.shape[1] < k:
        return np.full(n, -1.0, dtype=np.float32)
    return cosines[:, k - 1].astype(np.float32)

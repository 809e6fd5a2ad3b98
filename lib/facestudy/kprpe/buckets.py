"""iRPE "product" relative-position bucketing for any patch grid (chapter 3, METHODS.md §1.2).

The piecewise index function g maps an integer offset x (in patch units) to a bucket coordinate:
``g(x) = round(x)`` if ``|x| <= alpha``, else
``sign(x) * min(beta, round(alpha + ln(|x|/alpha) / ln(gamma/alpha) * (beta - alpha)))`` truncated to an
integer. With ``ratio`` r: alpha = r, beta = 2r, gamma = 8r. For the released r = 1.9:
|x| <= 1 -> x, |x| in {2, 3} -> ±2, |x| >= 4 -> ±3, i.e. 7 values per axis and 49 product buckets.
The bucket of query patch i and key patch j is ``I(i, j) = S * (g(Δrow) + b) + (g(Δcol) + b)`` with
Δ = pos_i - pos_j, b = int(beta) and S = 2b + 1.
"""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch

from ..errors import ParameterError


def piecewise_params(ratio: float = 1.9) -> tuple[float, float, float]:
    """(alpha, beta, gamma) = (ratio, 2·ratio, 8·ratio) as in iRPE/CVLface (§1.2)."""
    if ratio <= 0:
        raise ParameterError(f"kprpe: ratio must be > 0, got {ratio}")
    return 1.0 * ratio, 2.0 * ratio, 8.0 * ratio


def piecewise_index(x: np.ndarray | int, alpha: float, beta: float, gamma: float) -> np.ndarray:
    """The iRPE piecewise index g(x) applied elementwise to integer offsets (chapter 3, §1.2)."""
    x = np.asarray(x, dtype=np.float64)
    ax = np.abs(x)
    out = np.empty(x.shape, dtype=np.int64)
    near = ax <= alpha
    out[near] = np.round(x[near]).astype(np.int64)  # numpy rounds half to even, like torch.round
    far = ~near
    mag = alpha + np.log(ax[far] / alpha) / math.log(gamma / alpha) * (beta - alpha)
    mag = np.minimum(np.round(mag), beta)
    out[far] = np.trunc(np.sign(x[far]) * mag).astype(np.int64)
    return out


def num_buckets(ratio: float = 1.9) -> int:
    """Number of product buckets (2·int(beta) + 1)² — 49 for ratio 1.9."""
    _, beta, _ = piecewise_params(ratio)
    return (2 * int(beta) + 1) ** 2


@lru_cache(maxsize=32)
def _bucket_table(grid_h: int, grid_w: int, ratio: float) -> np.ndarray:
    alpha, beta, gamma = piecewise_params(ratio)
    b = int(beta)
    side = 2 * b + 1
    rows, cols = np.meshgrid(np.arange(grid_h), np.arange(grid_w), indexing="ij")
    pos = np.stack([rows.ravel(), cols.ravel()], axis=1)  # token n = row * W + col
    diff = pos[:, None, :] - pos[None, :, :]  # (N, N, 2): query - key
    r = piecewise_index(diff[..., 0], alpha, beta, gamma) + b
    c = piecewise_index(diff[..., 1], alpha, beta, gamma) + b
    table = r * side + c
    table.setflags(write=False)
    return table


def bucket_table(grid: int | tuple[int, int], ratio: float = 1.9) -> torch.Tensor:
    """(N, N) long tensor of bucket ids I(i, j) for a ``grid`` of patches (row-major tokens), §1.2."""
    gh, gw = (grid, grid) if isinstance(grid, int) else (int(grid[0]), int(grid[1]))
    if gh <= 0 or gw <= 0:
        raise ParameterError(f"kprpe: grid must be positive, got {grid!r}")
    return torch.from_numpy(_bucket_table(gh, gw, float(ratio)).copy())


def bucket_offsets(ratio: float = 1.9) -> np.ndarray:
    """For each bucket id, its (g_row, g_col) coordinate: (num_buckets, 2) — for plotting offset maps."""
    _, beta, _ = piecewise_params(ratio)
    b = int(beta)
    side = 2 * b + 1
    ids = np.arange(side * side)
    return np.stack([ids // side - b, ids % side - b], axis=1)

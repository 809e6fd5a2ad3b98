"""Microscale test of chapter 1 ("Attributes shape the embedding space"): invariance energy.

For one identity and one attribute ``a`` we have curves ``c`` along which only ``a`` moves (three lattice
steps 0, 1, 2). The midpoint embedding ``x_c = e(step 1)`` forms a point cloud and the central difference
``v_c = e(step 2) - e(step 0)`` a vector field on it. The invariance energy is

    E_a = mean_c  mean_{c' in N(c)}  [1 - cos(v_c, v_c')]

with ``N(c)`` the ``k = 10`` nearest neighbours of ``x_c`` in embedding space (self excluded). A coherent
field (E near 0) means the model moves every face the same way when ``a`` changes: it *encodes* ``a``.
E near 1 means the directions are unrelated, as for random vectors: the model is *invariant* to ``a`` up to
noise. The epsilon-ball and inverse-distance-weighted neighbourhoods of the official code are options
(METHODS.md section 4.3 and ambiguity 15).
"""
from __future__ import annotations

from itertools import combinations
from typing import Sequence

import numpy as np
import pandas as pd
from scipy.stats import mannwhitneyu

from ..errors import ParameterError
from .macroscale import pairwise_distances

NEIGHBOURHOODS = ("knn", "ball", "idw")


def central_differences(curves: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(points, vectors) from curve embeddings of shape (C, 3, D): x_c = e1, v_c = e2 - e0. Chapter 1."""
    curves = np.asarray(curves, dtype=np.float64)
    if curves.ndim != 3 or curves.shape[1] != 3:
        raise ParameterError(f"curves must have shape (n_curves, 3, dim) (steps 0, 1, 2); got {curves.shape}")
    return curves[:, 1], curves[:, 2] - curves[:, 0]


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)


def curve_energies(points: np.ndarray, vectors: np.ndarray, *, neighbourhood: str = "knn", k: int = 10,
                   metric: str = "cosine", eps: float = 0.6, max_neighbours: int = 100, n_ref_pairs: int = 10000,
                   seed: int = 0) -> np.ndarray:
    """Per-curve energy ``mean_{c' in N(c)} [1 - cos(v_c, v_c')]`` (NaN where N(c) is empty). Chapter 1.

    ``neighbourhood``:
      - ``knn``: the ``k`` nearest midpoints (self excluded; ``k`` is capped at ``C - 1``);
      - ``ball``: midpoints within ``eps * d_ref`` where ``d_ref`` is the mean distance of up to
        ``n_ref_pairs`` random pairs of midpoints; self excluded (the official script includes it, a quirk
        we do not copy); at most ``max_neighbours`` kept, chosen at random;
      - ``idw``: all other curves weighted by ``1 / distance`` (weight 0 at distance 0).
    ``metric`` is the distance between midpoints: ``cosine`` for angular models, ``euclidean`` for
    FaceNet-like ones. The direction distance is always ``1 - cos``.
    """
    points = np.asarray(points, dtype=np.float64)
    vectors = np.asarray(vectors, dtype=np.float64)
    if points.shape != vectors.shape or points.ndim != 2:
        raise ParameterError(f"points {points.shape} and vectors {vectors.shape} must both be (n_curves, dim)")
    if neighbourhood not in NEIGHBOURHOODS:
        raise ParameterError(f"unknown neighbourhood {neighbourhood!r}; valid: {', '.join(NEIGHBOURHOODS)}")
    n = len(points)
    if n < 2:
        return np.full(n, np.nan)
    dist = pairwise_distances(points, points, metric)
    np.fill_diagonal(dist, np.inf)
    u = _unit(vectors)
    dirdist = 1.0 - u @ u.T
    if neighbourhood == "knn":
        if k < 1:
            raise ParameterError(f"k must be >= 1, got {k}")
        kk = min(k, n - 1)
        nn = np.argpartition(dist, kk - 1, axis=1)[:, :kk]
        return np.take_along_axis(dirdist, nn, axis=1).mean(1)
    if neighbourhood == "ball":
        if eps <= 0:
            raise ParameterError(f"eps must be > 0, got {eps}")
        rng = np.random.default_rng(seed)
        m = min(n_ref_pairs, n * (n - 1) // 2)
        i = rng.integers(0, n, 4 * m)
        j = rng.integers(0, n, 4 * m)
        ok = i != j
        d_ref = float(dist[i[ok][:m], j[ok][:m]].mean())
        out = np.full(n, np.nan)
        for c in range(n):
            nb = np.flatnonzero(dist[c] <= eps * d_ref)
            if len(nb) > max_neighbours:
                nb = rng.choice(nb, max_neighbours, replace=False)
            if len(nb):
                out[c] = dirdist[c, nb].mean()
        return out
    # idw
    finite = np.isfinite(dist) & (dist > 0)
    w = np.where(finite, 1.0 / np.where(finite, dist, 1.0), 0.0)
    sw = w.sum(1)
    return np.where(sw > 0, (w * dirdist).sum(1) / np.where(sw > 0, sw, 1.0), np.nan)


def invariance_energy(curves: np.ndarray, **kw) -> float:
    """E_a for one identity and attribute from curve embeddings (C, 3, D); ``kw`` as :func:`curve_energies`."""
    points, vectors = central_differences(curves)
    e = curve_energies(points, vectors, **kw)
    return float(np.nanmean(e)) if np.isfinite(e).any() else float("nan")


def energy_table(embeddings: np.ndarray, curves: pd.DataFrame, **kw) -> pd.DataFrame:
    """Energy per (identity, attribute) from a flat embedding array and its curve table. Chapter 1.

    ``curves`` has one row per image with columns ``identity, attribute, curve, step`` (step in 0, 1, 2)
    and ``row`` (index into ``embeddings``), as returned by the lattice builders of this subpackage.
    Returns columns ``identity, attribute, energy, n_curves, move``; ``move`` is the mean cosine distance
    between a curve's step-0 and step-2 embeddings (how *far* the attribute moves a face; the energy says how
    *coherently*).
    """
    need = {"identity", "attribute", "curve", "step", "row"}
    if not need <= set(curves.columns):
        raise ParameterError(f"curve table lacks columns {sorted(need - set(curves.columns))}")
    embeddings = np.asarray(embeddings)
    rows = []
    for (ident, attr), g in curves.groupby(["identity", "attribute"], sort=False):
        piv = g.pivot(index="curve", columns="step", values="row")
        if list(piv.columns) != [0, 1, 2] or piv.isna().any().any():
            raise ParameterError(f"identity {ident}, attribute {attr}: every curve needs steps 0, 1 and 2")
        idx = piv.to_numpy(dtype=int)
        e = invariance_energy(embeddings[idx], **kw)
        a, b = embeddings[idx[:, 0]], embeddings[idx[:, 2]]
        cos = (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
        rows.append({"identity": ident, "attribute": attr, "energy": e, "n_curves": len(idx),
                     "move": float(np.mean(1.0 - cos))})
    return pd.DataFrame(rows)


def mannwhitney_table(table: pd.DataFrame, order: Sequence[str] | None = None, *,
                      adjacent_only: bool = False) -> pd.DataFrame:
    """Two-sided Mann-Whitney U tests between attributes' per-identity energies. Chapter 1.

    ``table`` as returned by :func:`energy_table`; ``order`` the attributes to compare (default: sorted by
    median energy). ``adjacent_only`` compares neighbours in ``order`` only (as the paper's violin plots);
    otherwise all pairs. Columns: ``a, b, median_a, median_b, U, p``.
    """
    groups = {a: g["energy"].dropna().to_numpy() for a, g in table.groupby("attribute")}
    if order is None:
        order = sorted(groups, key=lambda a: np.median(groups[a]) if len(groups[a]) else np.inf)
    pairs = list(zip(order[:-1], order[1:], strict=True)) if adjacent_only else list(combinations(order, 2))
    rows = []
    for a, b in pairs:
        xa, xb = groups.get(a, np.array([])), groups.get(b, np.array([]))
        if len(xa) == 0 or len(xb) == 0:
            u, p = np.nan, np.nan
        else:
            r = mannwhitneyu(xa, xb, alternative="two-sided")
            u, p = float(r.statistic), float(r.pvalue)
        rows.append({"a": a, "b": b, "median_a": float(np.median(xa)) if len(xa) else np.nan,
                     "median_b": float(np.median(xb)) if len(xb) else np.nan, "U": u, "p": p})
    return pd.DataFrame(rows)


def toy_field(noise: float, n_side: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A 2-D toy field for chapter 1's first energy figure: points on a jittered ``n_side`` x ``n_side`` grid
    and unit arrows that all point right when ``noise = 0`` and whose angles spread uniformly over
    ``noise * [-pi, pi]`` otherwise (``noise = 1``: random directions, energy near 1). Returns (points, vectors)."""
    if not 0.0 <= noise <= 1.0:
        raise ParameterError(f"noise must be in [0, 1], got {noise}")
    rng = np.random.default_rng(seed)
    g = np.stack(np.meshgrid(np.arange(n_side), np.arange(n_side)), -1).reshape(-1, 2).astype(float)
    points = g + rng.uniform(-0.2, 0.2, g.shape)
    ang = noise * rng.uniform(-np.pi, np.pi, len(points))
    return points, np.stack([np.cos(ang), np.sin(ang)], 1)

"""Attribute entropies and their link to the KS ranking (chapter 1, "Attributes shape the embedding space").

An attribute that is constant for a person (e.g. ``Male``) has low *intra-identity* entropy and, if it is
spread across people, high *inter-identity* entropy; the paper relates the KS aggregates to both
(METHODS.md section 4.2 step 5-6).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

from ..errors import ParameterError


def _shannon(counts: np.ndarray) -> float:
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def intra_entropy(labels: Sequence[int], values: Sequence[int]) -> float:
    """Mean over identities of the Shannon entropy (natural log) of the attribute's value counts. Chapter 1.

    Only identities with at least two images carry information and are used; rows with label -1 are ignored.
    """
    labels = np.asarray(labels)
    values = np.asarray(values) > 0
    keep = labels >= 0
    labels, values = labels[keep], values[keep]
    ids, inv, counts = np.unique(labels, return_inverse=True, return_counts=True)
    pos = np.bincount(inv, weights=values.astype(float), minlength=len(ids))
    multi = counts >= 2
    if not multi.any():
        return float("nan")
    ent = [_shannon(np.array([p, c - p])) for p, c in zip(pos[multi], counts[multi], strict=True)]
    return float(np.mean(ent))


def inter_entropy(labels: Sequence[int], values: Sequence[int], bandwidth: float = 0.1,
                  n_points: int = 101) -> float:
    """Entropy of a Gaussian KDE of the per-identity mean attribute value (in [-1, 1]). Chapter 1.

    The KDE (bandwidth ``bandwidth`` in attribute units) is evaluated on ``n_points`` points in [-1, 1],
    normalised to a probability vector and its Shannon entropy (natural log) returned.
    """
    if bandwidth <= 0:
        raise ParameterError(f"bandwidth must be > 0, got {bandwidth}")
    labels = np.asarray(labels)
    v = np.where(np.asarray(values) > 0, 1.0, -1.0)
    keep = labels >= 0
    labels, v = labels[keep], v[keep]
    ids, inv = np.unique(labels, return_inverse=True)
    means = np.bincount(inv, weights=v) / np.bincount(inv)
    grid = np.linspace(-1.0, 1.0, n_points)
    dens = np.exp(-0.5 * ((grid[:, None] - means[None, :]) / bandwidth) ** 2).sum(1)
    return _shannon(dens)


def attribute_entropies(labels: Sequence[int], attributes: pd.DataFrame) -> pd.DataFrame:
    """One row per attribute column: ``intra_entropy``, ``inter_entropy``, ``prevalence``. Chapter 1."""
    rows = []
    for col in attributes.columns:
        vals = attributes[col].to_numpy()
        rows.append({"attribute": str(col), "intra_entropy": intra_entropy(labels, vals),
                     "inter_entropy": inter_entropy(labels, vals), "prevalence": float((vals > 0).mean())})
    return pd.DataFrame(rows)


def spearman_table(ks: pd.DataFrame, entropies: pd.DataFrame,
                   aggregates: Sequence[str] = ("ks_max", "ks_mean", "ks_weighted")) -> pd.DataFrame:
    """Spearman correlation (rho, p) of each KS aggregate with intra- and inter-entropy. Chapter 1."""
    merged = ks.merge(entropies, on="attribute")
    rows = []
    for agg in aggregates:
        for ent in ("intra_entropy", "inter_entropy"):
            sub = merged[[agg, ent]].dropna()
            if len(sub) < 3:
                rho, p = float("nan"), float("nan")
            else:
                r = spearmanr(sub[agg], sub[ent])
                rho, p = float(r.statistic), float(r.pvalue)
            rows.append({"aggregate": agg, "entropy": ent, "rho": rho, "p": p, "n": len(sub)})
    return pd.DataFrame(rows)


def ranking_agreement(table: pd.DataFrame) -> pd.DataFrame:
    """Spearman rho between the columns (models) of an attribute x model table of KS values. Chapter 1."""
    cols = list(table.columns)
    out = pd.DataFrame(np.eye(len(cols)), index=cols, columns=cols)
    for i, a in enumerate(cols):
        for b in cols[i + 1:]:
            sub = table[[a, b]].dropna()
            rho = float(spearmanr(sub[a], sub[b]).statistic) if len(sub) >= 3 else float("nan")
            out.loc[a, b] = out.loc[b, a] = rho
    return out

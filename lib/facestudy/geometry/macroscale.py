"""Macroscale test of chapter 1 ("Attributes shape the embedding space"): the KS protocol across identities.

For each binary attribute ``a`` we keep one image per identity among the images with ``a = +1`` (set X+)
and one per identity among the images with ``a = -1`` (set X-), ``n = min(n_max, |X+|, |X-|)`` of each.
Three lists of distances follow: within+ (pairs of X+), within- (pairs of X-) and cross (X+ x X-). If the
attribute does not shape inter-identity distances, all three come from the same distribution; the
two-sample Kolmogorov-Smirnov statistics stat+ = KS(within+, cross) and stat- = KS(within-, cross) measure
how far they are from it (METHODS.md section 4.2).

Beyond the paper we add a multiple-testing correction over the attributes (Holm or Benjamini-Hochberg) and
basic bootstrap confidence intervals of the KS statistics (resampling identities).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd
from scipy.stats import ks_2samp

from ..errors import ParameterError

METRICS = ("cosine", "euclidean")


# ------------------------------------------------------------------------------------------ sampler
def one_per_identity(labels: Sequence[int], mask: Sequence[bool], rng: np.random.Generator) -> np.ndarray:
    """Indices of one randomly chosen image per identity among the rows where ``mask`` is true.

    Chapter 1 (macroscale sampler). Rows with label ``-1`` (unknown identity) are never used, since we
    cannot prove they belong to distinct people. The returned indices are in random order.
    """
    labels = np.asarray(labels)
    mask = np.asarray(mask, dtype=bool)
    if labels.shape != mask.shape:
        raise ParameterError(f"labels ({labels.shape}) and mask ({mask.shape}) must have the same length")
    rows = np.flatnonzero(mask & (labels >= 0))
    rows = rows[rng.permutation(len(rows))]
    _, first = np.unique(labels[rows], return_index=True)
    chosen = rows[first]
    return chosen[rng.permutation(len(chosen))]


def modality_samples(labels: Sequence[int], values: Sequence[int], n_max: int = 500,
                     seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Row indices (X+, X-) for one binary attribute: one image per identity per modality, equal sizes.

    Chapter 1. ``values`` holds +1 / -1 (or 1 / 0 / True / False) per image. Both sets have
    ``n = min(n_max, |X+|, |X-|)`` rows. An identity may appear once in X+ and once in X- (as in the
    paper), never twice within one modality.
    """
    values = np.asarray(values)
    if n_max < 2:
        raise ParameterError(f"n_max must be >= 2 (it sets the size of each modality), got {n_max}")
    pos = values > 0
    rng = np.random.default_rng(seed)
    xp = one_per_identity(labels, pos, rng)
    xm = one_per_identity(labels, ~pos, rng)
    n = min(n_max, len(xp), len(xm))
    return xp[:n], xm[:n]


# ------------------------------------------------------------------------------------------ distances
def pairwise_distances(a: np.ndarray, b: np.ndarray, metric: str = "cosine") -> np.ndarray:
    """Dense distance matrix between rows of ``a`` and ``b`` (chapter 1): ``cosine`` = 1 - cos, or ``euclidean``."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if metric == "cosine":
        an = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
        bn = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
        return 1.0 - an @ bn.T
    if metric == "euclidean":
        sq = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
        return np.sqrt(np.maximum(sq, 0.0))
    raise ParameterError(f"unknown metric {metric!r}; valid metrics: {', '.join(METRICS)}")


def distance_lists(emb_pos: np.ndarray, emb_neg: np.ndarray,
                   metric: str = "cosine") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(within+, within-, cross) distance lists: i < j pairs inside each set, all n+ x n- cross pairs."""
    dp = pairwise_distances(emb_pos, emb_pos, metric)
    dm = pairwise_distances(emb_neg, emb_neg, metric)
    dc = pairwise_distances(emb_pos, emb_neg, metric)
    iu_p = np.triu_indices(len(emb_pos), k=1)
    iu_m = np.triu_indices(len(emb_neg), k=1)
    return dp[iu_p], dm[iu_m], dc.ravel()


def ks_statistic(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Two-sample KS statistic and p-value (``scipy.stats.ks_2samp``, two-sided). Chapter 1.

    The p-value uses the asymptotic distribution (``method="asymp"``): scipy's default switches to the exact
    one below 10,000 samples, which is very slow for distance lists of thousands of pairs. For the paper's
    n = 500 (over 10^5 pairs) scipy's default is asymptotic too. Note that the pairs of a distance list are
    not independent (each image appears in many pairs), so these p-values are optimistic; the bootstrap
    CIs of :func:`attribute_ks` resample identities and are the honest uncertainty.
    """
    if len(x) == 0 or len(y) == 0:
        return float("nan"), float("nan")
    res = ks_2samp(x, y, method="asymp")
    return float(res.statistic), float(res.pvalue)


# ------------------------------------------------------------------------------------------ correction
def adjust_pvalues(pvalues: Sequence[float], method: str = "holm") -> np.ndarray:
    """Multiple-testing correction (chapter 1): ``holm`` (family-wise) or ``bh`` (false discovery rate).

    NaN p-values are kept as NaN and excluded from the family.
    """
    p = np.asarray(pvalues, dtype=float)
    out = np.full_like(p, np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    m = len(ok)
    if m == 0:
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    ps = p[order]
    if method == "holm":
        adj = np.maximum.accumulate(np.minimum((m - np.arange(m)) * ps, 1.0))
    elif method == "bh":
        adj = ps * m / np.arange(1, m + 1)
        adj = np.minimum.accumulate(adj[::-1])[::-1]
        adj = np.minimum(adj, 1.0)
    else:
        raise ParameterError(f"unknown correction {method!r}; valid: holm, bh")
    out[order] = adj
    return out


# ------------------------------------------------------------------------------------------ per attribute
@dataclass
class KSResult:
    """KS outcome of one attribute: statistics, p-values, sizes and optional bootstrap CIs."""

    attribute: str
    n: int
    stat_pos: float
    p_pos: float
    stat_neg: float
    p_neg: float
    count_pos: int
    count_neg: int
    ci_pos: tuple[float, float] = (float("nan"), float("nan"))
    ci_neg: tuple[float, float] = (float("nan"), float("nan"))
    ci_max: tuple[float, float] = (float("nan"), float("nan"))


def attribute_ks(embeddings: np.ndarray, labels: Sequence[int], values: Sequence[int], *,
                 attribute: str = "", metric: str = "cosine", n_max: int = 500, seed: int = 0,
                 n_boot: int = 0, min_n: int = 10) -> KSResult:
    """The KS protocol of chapter 1 for one attribute.

    ``n_boot > 0`` adds basic bootstrap 95 % CIs of stat+, stat- and max(stat+, stat-), resampling the
    chosen identities of each modality with replacement (the distance lists are rebuilt from the resampled
    rows, dropping a row paired with its own copy). Attributes with fewer than ``min_n`` identities
    in a modality get NaN statistics.
    """
    embeddings = np.asarray(embeddings)
    values = np.asarray(values)
    xp, xm = modality_samples(labels, values, n_max=n_max, seed=seed)
    count_pos, count_neg = int((values > 0).sum()), int((values <= 0).sum())
    n = len(xp)
    if n < min_n:
        nan = float("nan")
        return KSResult(attribute, n, nan, nan, nan, nan, count_pos, count_neg)
    ep, em = embeddings[xp], embeddings[xm]
    wp, wm, cr = distance_lists(ep, em, metric)
    sp, pp = ks_statistic(wp, cr)
    sm, pm = ks_statistic(wm, cr)
    res = KSResult(attribute, n, sp, pp, sm, pm, count_pos, count_neg)
    if n_boot > 0:
        rng = np.random.default_rng(seed + 7919)
        iu = np.triu_indices(n, k=1)
        ks_p = _WeightedKS(wp, cr)
        ks_m = _WeightedKS(wm, cr)
        boots = np.empty((n_boot, 2))
        for b in range(n_boot):
            cp = np.bincount(rng.integers(0, n, n), minlength=n).astype(np.float64)
            cm = np.bincount(rng.integers(0, n, n), minlength=n).astype(np.float64)
            cross_w = np.outer(cp, cm).ravel()
            boots[b, 0] = ks_p(cp[iu[0]] * cp[iu[1]], cross_w)
            boots[b, 1] = ks_m(cm[iu[0]] * cm[iu[1]], cross_w)
        res.ci_pos = _basic_ci(sp, boots[:, 0])
        res.ci_neg = _basic_ci(sm, boots[:, 1])
        res.ci_max = _basic_ci(max(sp, sm), boots.max(1))
    return res


def _basic_ci(estimate: float, boots: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Basic (reverse-percentile) bootstrap interval: 2 * estimate - upper/lower quantiles.

    The KS statistic is biased upwards under resampling (duplicated rows only add noise, and noise only
    raises a maximum distance); the basic interval corrects that first-order bias, where the plain
    percentile interval would exclude 0 even for an attribute with no effect.
    """
    a = (1 - level) / 2
    lo, hi = np.quantile(boots, [a, 1 - a])
    return float(2 * estimate - hi), float(2 * estimate - lo)


class _WeightedKS:
    """KS statistic between two weighted samples whose values are fixed (only the weights change).

    Bootstrapping identities re-weights the original pairs: a pair (i, j) appears count_i * count_j times,
    and a row paired with its own copy is not a pair of two identities (it gets no weight, because only
    i < j within pairs and the cross pairs carry weights). Sorting once and taking weighted cumulative sums
    per replicate makes each replicate O(pairs) instead of a sort.
    """

    def __init__(self, x: np.ndarray, y: np.ndarray) -> None:
        vals = np.concatenate([x, y])
        self.order = np.argsort(vals, kind="stable")
        self.is_x = self.order < len(x)
        v = vals[self.order]
        self.last = np.append(v[1:] != v[:-1], True)  # evaluate the ECDFs at the end of each run of ties

    def __call__(self, wx: np.ndarray, wy: np.ndarray) -> float:
        w = np.concatenate([wx, wy])[self.order]
        fx = np.cumsum(np.where(self.is_x, w, 0.0))
        fy = np.cumsum(np.where(self.is_x, 0.0, w))
        if fx[-1] <= 0 or fy[-1] <= 0:
            return float("nan")
        return float(np.abs(fx / fx[-1] - fy / fy[-1])[self.last].max())


def macroscale_ks(embeddings: np.ndarray, labels: Sequence[int], attributes: pd.DataFrame, *,
                  metric: str = "cosine", n_max: int = 500, seed: int = 0, n_boot: int = 0,
                  correction: str = "holm", min_n: int = 10,
                  boot_attributes: Sequence[str] | None = None) -> pd.DataFrame:
    """KS protocol for every column of ``attributes`` (values +1 / -1): one row per attribute. Chapter 1.

    ``boot_attributes`` limits the ``n_boot`` bootstrap CIs to those attributes (None = all): at the
    paper's n = 500 one replicate re-weights ~375 k distances twice, so 200 replicates of 40 attributes
    would dominate a CPU run; the claims need CIs for the named attributes only.

    Columns: ``attribute, n, stat_pos, p_pos, stat_neg, p_neg, count_pos, count_neg``, the aggregates
    ``ks_max, ks_mean, ks_weighted`` (see :func:`aggregate`), ``p_min`` (the smaller p-value of the two
    tests), ``p_adj`` (``p_min`` corrected over attributes with ``correction`` after a Bonferroni factor 2
    for the two tests per attribute), ``significant`` (``p_adj < 0.05``) and, with ``n_boot``, CI columns.
    """
    embeddings = np.asarray(embeddings)
    if len(embeddings) != len(attributes) or len(embeddings) != len(labels):
        raise ParameterError(
            f"embeddings ({len(embeddings)}), labels ({len(labels)}) and attributes ({len(attributes)}) "
            "must describe the same images, one row each")
    rows = []
    for k, col in enumerate(attributes.columns):
        r = attribute_ks(embeddings, labels, attributes[col].to_numpy(), attribute=str(col), metric=metric,
                         n_max=n_max, seed=seed + 1000 * k, min_n=min_n,
                         n_boot=n_boot if boot_attributes is None or str(col) in set(boot_attributes) else 0)
        rows.append({
            "attribute": r.attribute, "n": r.n, "stat_pos": r.stat_pos, "p_pos": r.p_pos,
            "stat_neg": r.stat_neg, "p_neg": r.p_neg, "count_pos": r.count_pos, "count_neg": r.count_neg,
            "ci_max_low": r.ci_max[0], "ci_max_high": r.ci_max[1],
            "ci_pos_low": r.ci_pos[0], "ci_pos_high": r.ci_pos[1],
            "ci_neg_low": r.ci_neg[0], "ci_neg_high": r.ci_neg[1],
        })
    df = pd.DataFrame(rows)
    df = pd.concat([df, aggregate(df)], axis=1)
    df["p_min"] = np.minimum(np.fmin(df["p_pos"], df["p_neg"]) * 2.0, 1.0)
    df["p_adj"] = adjust_pvalues(df["p_min"].to_numpy(), correction)
    df["significant"] = df["p_adj"] < 0.05
    if n_boot <= 0:
        df = df.drop(columns=[c for c in df.columns if c.startswith("ci_")])
    return df


def aggregate(df: pd.DataFrame) -> pd.DataFrame:
    """Per-attribute aggregates of (stat+, stat-) used in chapter 1.

    ``ks_max`` = max, ``ks_mean`` = mean, ``ks_weighted`` = sum over modalities of
    count_mod * stat_mod / (count+ + count-) (the paper's count-weighted sum, normalised by the total count
    so that it stays in [0, 1]; the normalisation does not change rankings within a model).
    """
    sp, sm = df["stat_pos"].to_numpy(float), df["stat_neg"].to_numpy(float)
    cp, cm = df["count_pos"].to_numpy(float), df["count_neg"].to_numpy(float)
    total = np.maximum(cp + cm, 1.0)
    return pd.DataFrame({
        "ks_max": np.fmax(sp, sm),
        "ks_mean": (sp + sm) / 2.0,
        "ks_weighted": (cp * sp + cm * sm) / total,
    }, index=df.index)


def ks_gap(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float, float]:
    """Where the KS statistic of ``x`` against ``y`` sits: (statistic, distance d*, F_x(d*), F_y(d*)).

    Chapter 1's ECDF figure marks this vertical gap between the two empirical CDFs; the statistic equals
    ``scipy.stats.ks_2samp(x, y).statistic``.
    """
    x, y = np.sort(np.asarray(x, float)), np.sort(np.asarray(y, float))
    if len(x) == 0 or len(y) == 0:
        raise ParameterError("ks_gap needs two non-empty samples")
    grid = np.concatenate([x, y])
    fx = np.searchsorted(x, grid, side="right") / len(x)
    fy = np.searchsorted(y, grid, side="right") / len(y)
    i = int(np.argmax(np.abs(fx - fy)))
    return float(abs(fx[i] - fy[i])), float(grid[i]), float(fx[i]), float(fy[i])


def equal_n_ks(embeddings: np.ndarray, labels: Sequence[int], attributes: pd.DataFrame, *, n: int = 30,
               reps: int = 50, metric: str = "cosine", seed: int = 0) -> pd.DataFrame:
    """KS max of every attribute at one common size ``n`` per modality, averaged over ``reps`` random draws.

    Chapter 1. Why: under no effect the KS statistic of two distance lists sits near ``c / sqrt(n)``, and the
    paper's ``n = min(500, |X+|, |X-|)`` depends on the attribute's prevalence, which also sets its
    entropies. Rare attributes then get both larger null KS values and lower entropies, so KS and entropy
    correlate negatively even with shuffled attribute labels (we measured rho ~ -0.5 on CelebA with a
    shuffled control). At a common ``n`` the null level is the same for every attribute, and a correlation
    with entropy is about the attributes, not their sample sizes. Attributes with fewer than ``n``
    identities in a modality get NaN. Columns: ``attribute, n, ks_max, ks_sd, reps``.
    """
    embeddings = np.asarray(embeddings)
    if n < 2 or reps < 1:
        raise ParameterError(f"equal_n_ks needs n >= 2 and reps >= 1, got n={n}, reps={reps}")
    if len(embeddings) != len(attributes) or len(embeddings) != len(labels):
        raise ParameterError("embeddings, labels and attributes must describe the same images, one row each")
    rows = []
    for k, col in enumerate(attributes.columns):
        vals = attributes[col].to_numpy()
        got = []
        for r in range(reps):
            xp, xm = modality_samples(labels, vals, n_max=n, seed=seed + 1000 * k + 7919 * (r + 1))
            if len(xp) < n:
                break
            wp, wm, cr = distance_lists(embeddings[xp], embeddings[xm], metric)
            got.append(max(ks_statistic(wp, cr)[0], ks_statistic(wm, cr)[0]))
        ok = len(got) == reps
        rows.append({"attribute": str(col), "n": n if ok else 0,
                     "ks_max": float(np.mean(got)) if ok else float("nan"),
                     "ks_sd": float(np.std(got, ddof=1)) if ok and reps > 1 else float("nan"), "reps": len(got)})
    return pd.DataFrame(rows)

"""facestudy.eval: the verification protocol, ROC / TAR@FAR, identification and the embedding cache
(chapter 0b, "The real models in this book", explains the protocol; every chapter reports with it).

Verification follows LFW View 2: pairs carry a ``fold`` (0..9); for each fold the threshold that maximises
accuracy on the other nine folds is applied to it; we report the mean +- std of the ten fold accuracies.
Scores are cosine similarities (higher = more likely the same person); a pair is called "same" when its
score is above the threshold.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch

from ..errors import DataError, ParameterError

FARS: tuple[float, ...] = (1e-4, 1e-3, 1e-2, 1e-1)


@dataclass
class VerificationResult:
    """Outcome of :func:`verification`. Accuracies are fractions (0..1)."""

    accuracy: float
    accuracy_std: float
    fold_accuracies: np.ndarray
    threshold: float
    thresholds: np.ndarray
    auc: float
    fpr: np.ndarray
    tpr: np.ndarray
    tar_at_far: dict[float, float]
    scores: np.ndarray
    same: np.ndarray
    extra: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, float]:
        out = {"accuracy": self.accuracy, "accuracy_std": self.accuracy_std, "threshold": self.threshold,
               "auc": self.auc}
        out.update({f"tar@far={f:g}": v for f, v in self.tar_at_far.items()})
        return out

    def __repr__(self) -> str:
        return (f"VerificationResult(accuracy={100 * self.accuracy:.2f} +- {100 * self.accuracy_std:.2f} %, "
                f"threshold={self.threshold:.3f}, auc={self.auc:.4f}, n_pairs={len(self.scores)})")


def _best_threshold(scores: np.ndarray, same: np.ndarray) -> tuple[float, float]:
    """Threshold maximising accuracy of ``score > thr`` (midpoint between neighbouring scores)."""
    order = np.argsort(scores, kind="mergesort")
    s, y = scores[order], same[order]
    n = len(s)
    # threshold placed just below s[k] (k = 0..n): predicted same for items k..n-1
    neg_below = np.concatenate([[0], np.cumsum(~y)])  # correct rejections among items < k
    pos_above = np.concatenate([[0], np.cumsum(y[::-1])])[::-1]  # correct accepts among items >= k
    acc = (neg_below + pos_above) / n
    # only cut between distinct scores
    valid = np.ones(n + 1, bool)
    valid[1:n] = s[1:] != s[:-1]
    acc = np.where(valid, acc, -1)
    k = int(np.argmax(acc))
    if k == 0:
        thr = s[0] - 1e-6
    elif k == n:
        thr = s[-1] + 1e-6
    else:
        thr = 0.5 * (s[k - 1] + s[k])
    return float(thr), float(acc[k])


def pair_scores(embeddings: Any, pairs: pd.DataFrame) -> np.ndarray:
    """Cosine similarity of each pair's rows ``a`` and ``b`` of an (N, D) embedding matrix."""
    e = torch.as_tensor(np.asarray(embeddings) if not isinstance(embeddings, torch.Tensor) else embeddings)
    e = torch.nn.functional.normalize(e.float(), dim=1)
    a = torch.as_tensor(pairs["a"].to_numpy(np.int64).copy())
    b = torch.as_tensor(pairs["b"].to_numpy(np.int64).copy())
    if len(a) and (int(max(a.max(), b.max())) >= len(e) or int(min(a.min(), b.min())) < 0):
        raise ParameterError(f"pairs index rows up to {int(max(a.max(), b.max()))} but there are only "
                             f"{len(e)} embeddings")
    return (e[a] * e[b]).sum(1).numpy().astype(np.float64)


def verification(embeddings_or_scores: Any, pairs: pd.DataFrame, n_folds: int = 10,
                 fars: Sequence[float] = FARS) -> VerificationResult:
    """The 10-fold verification protocol on (N, D) embeddings (rows indexed by ``pairs.a/b``) or on one
    score per pair (1-D). ``pairs`` needs ``same`` and, for embeddings, ``a`` and ``b``; ``fold`` is used
    when present, else pairs are split into ``n_folds`` contiguous folds."""
    from sklearn.metrics import roc_auc_score, roc_curve

    if not isinstance(pairs, pd.DataFrame) or "same" not in pairs.columns:
        raise ParameterError("pairs must be a DataFrame with columns a, b, same (and fold)")
    x = embeddings_or_scores
    arr = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if arr.ndim == 1:
        if len(arr) != len(pairs):
            raise ParameterError(f"got {len(arr)} scores for {len(pairs)} pairs")
        scores = arr.astype(np.float64)
    elif arr.ndim == 2:
        scores = pair_scores(arr, pairs)
    else:
        raise ParameterError(f"embeddings_or_scores must be (N, D) or (n_pairs,), got shape {arr.shape}")
    same = pairs["same"].to_numpy().astype(bool)
    if same.all() or (~same).all():
        raise ParameterError("verification needs both genuine (same=True) and impostor (same=False) pairs")
    if not np.isfinite(scores).all():
        raise ParameterError("verification scores contain NaN/inf; check the embeddings")
    if "fold" in pairs.columns:
        folds = pairs["fold"].to_numpy().astype(int)
    else:
        if int(n_folds) < 2:
            raise ParameterError(f"verification: n_folds must be >= 2 (the threshold of each fold is chosen on "
                                 f"the others), got {n_folds}")
        folds = (np.arange(len(pairs)) * n_folds) // max(len(pairs), 1)
    uniq = np.unique(folds)
    accs, thrs = [], []
    if len(uniq) < 2:
        raise ParameterError(
            f"verification: all {len(pairs)} pairs are in one fold (fold={uniq[0] if len(uniq) else '-'}), so the "
            f"threshold would be chosen on the very pairs it is tested on (a self-thresholded accuracy with "
            f"+- 0.00); give the pairs >= 2 folds (read_lfw_pairs splits a one-fold file into 10), or drop the "
            f"'fold' column to split them into n_folds={n_folds} contiguous folds")
    else:
        for f in uniq:
            test = folds == f
            thr, _ = _best_threshold(scores[~test], same[~test])
            accs.append(float(((scores[test] > thr) == same[test]).mean()))
            thrs.append(thr)
    fpr, tpr, _ = roc_curve(same, scores)
    tar = {}
    for far in fars:
        ok = fpr <= far
        tar[float(far)] = float(tpr[ok].max()) if ok.any() else 0.0
    accs_a = np.asarray(accs)
    return VerificationResult(
        accuracy=float(accs_a.mean()), accuracy_std=float(accs_a.std()), fold_accuracies=accs_a,
        threshold=float(np.mean(thrs)), thresholds=np.asarray(thrs), auc=float(roc_auc_score(same, scores)),
        fpr=fpr, tpr=tpr, tar_at_far=tar, scores=scores, same=same,
        extra={"n_pairs": len(scores), "n_impostors": int((~same).sum()), "n_genuine": int(same.sum())})


# --------------------------------------------------------------------------------------- embeddings
def _cache_dir() -> Path:
    try:
        from .. import data as fdata

        if hasattr(fdata, "cache_dir"):
            return Path(fdata.cache_dir())
    except Exception:  # noqa: BLE001 - data layer optional here
        pass
    return Path(os.environ.get("FACESTUDY_CACHE", Path.home() / ".cache" / "facestudy"))


def faceset_hash(faceset: Any) -> str:
    """sha1 of a FaceSet's images, labels and landmarks when it has them (its content identity for caches:
    keypoint models such as chapter 3's KP-RPE train and embed with the landmarks)."""
    h = hashlib.sha1()
    h.update(str(faceset.images.shape).encode())
    h.update(np.ascontiguousarray(faceset.images).tobytes())
    h.update(np.ascontiguousarray(faceset.labels).tobytes())
    landmarks = getattr(faceset, "landmarks", None)
    if landmarks is not None:
        h.update(np.ascontiguousarray(landmarks, dtype=np.float64).tobytes())
    return h.hexdigest()[:16]


def model_key(model: Any) -> str:
    """model name + weights tag + weights hash: what an embedding depends on besides the data."""
    return f"{getattr(model, 'name', type(model).__name__)}-{getattr(model, 'weights_tag', '')}-" \
           f"{model.weights_hash()}"


def embed_cached(model: Any, faceset: Any, key: str | None = None, flip: bool = False,
                 batch_size: int = 256, normalize: bool = True, progress: Any = None) -> torch.Tensor:
    """``model.embed(faceset.images)``, cached on disk under ``<cache>/embeddings/``.

    ``progress`` (optional) is passed to ``model.embed`` when the embeddings are computed.

    The key joins (``key`` or model name + weights hash), (dataset name + content hash) and the
    preprocessing (model input / crop / normalisation, flip, normalize), so a changed weight, image or
    setting never returns a stale result.
    """
    mk = key if key is not None else model_key(model)
    parts = [mk, f"{faceset.name}-{faceset_hash(faceset)}", model.preprocess_signature(),
             f"flip={flip};norm={normalize}"]
    digest = hashlib.sha1("|".join(parts).encode()).hexdigest()[:20]
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in f"{mk}_{faceset.name}")[:80]
    path = _cache_dir() / "embeddings" / f"{safe}_{digest}.pt"
    if path.exists():
        try:
            emb = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(emb, torch.Tensor) or emb.ndim != 2 or len(emb) != len(faceset):
                raise ValueError(f"holds {type(emb).__name__} {tuple(getattr(emb, 'shape', ()))}, expected "
                                 f"({len(faceset)}, D) embeddings")
            return emb
        except Exception as exc:  # noqa: BLE001 - a corrupt cache file is reported by path and recomputed
            from ..data.store import _warn_rebuild

            _warn_rebuild(path, exc, "embedding cache")
    kw = {"progress": progress} if progress is not None else {}
    emb = model.embed(faceset.images, batch_size=batch_size, flip=flip, normalize=normalize, **kw)
    from ..data.store import atomic_path, clean_temps

    clean_temps(path.parent)
    try:
        with atomic_path(path) as tmp:
            torch.save(emb, tmp)
    except DataError as exc:  # a read-only or full cache: the embeddings are still right, only not kept
        import warnings

        warnings.warn(f"embeddings not cached: {exc}", stacklevel=2)
    return emb


def evaluate_pairs(model: Any, faceset: Any, pairs: pd.DataFrame, flip: bool = True, batch_size: int = 256,
                   cache: bool = False) -> VerificationResult:
    """Embed the faces the pairs use (flip-sum by default) and run :func:`verification`."""
    if len(pairs) == 0:
        raise ParameterError("evaluate_pairs got no pairs")
    used = np.unique(np.concatenate([pairs["a"].to_numpy(), pairs["b"].to_numpy()]).astype(np.int64))
    if used.max() >= len(faceset) or used.min() < 0:
        raise ParameterError(f"pairs index rows up to {used.max()} but faceset {faceset.name!r} has "
                             f"{len(faceset)} images")
    if cache:
        emb_all = embed_cached(model, faceset, flip=flip, batch_size=batch_size)
        emb = emb_all[torch.as_tensor(used)]
    else:
        emb = model.embed(faceset.images[used], batch_size=batch_size, flip=flip)
    remap = np.full(len(faceset), -1, np.int64)
    remap[used] = np.arange(len(used))
    local = pairs.assign(a=remap[pairs["a"].to_numpy()], b=remap[pairs["b"].to_numpy()])
    return verification(emb, local)


def identification(gallery_emb: Any, gallery_labels: Any, probe_emb: Any, probe_labels: Any,
                   ranks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """Closed-set identification: each probe's identities ranked by their best gallery score (cosine).

    Returns ``{"rank1": ..., "rank5": ..., "n_probes": ..., "n_identities": ...}``; probes whose identity
    has no gallery image are left out (their count is ``n_unmatched``).
    """
    g = torch.nn.functional.normalize(torch.as_tensor(np.asarray(gallery_emb), dtype=torch.float32), dim=1)
    p = torch.nn.functional.normalize(torch.as_tensor(np.asarray(probe_emb), dtype=torch.float32), dim=1)
    gl, pl = np.asarray(gallery_labels), np.asarray(probe_labels)
    if len(g) != len(gl) or len(p) != len(pl):
        raise ParameterError("identification: embeddings and labels differ in length")
    ids, ginv = np.unique(gl, return_inverse=True)
    keep = np.isin(pl, ids)
    if not keep.any():
        raise DataError("identification: no probe identity appears in the gallery")
    sim = p[torch.as_tensor(keep)] @ g.T  # (P, G)
    best = torch.full((sim.shape[0], len(ids)), -2.0)
    best = best.scatter_reduce(1, torch.as_tensor(ginv).expand(sim.shape[0], -1), sim, reduce="amax")
    true = torch.as_tensor(np.searchsorted(ids, pl[keep]))
    true_score = best[torch.arange(len(true)), true]
    rank = (best > true_score[:, None]).sum(1)  # 0 = correct identity ranked first
    out = {f"rank{k}": float((rank < k).float().mean()) for k in ranks}
    out.update({"n_probes": int(keep.sum()), "n_unmatched": int((~keep).sum()), "n_identities": len(ids)})
    return out


# --------------------------------------------------------------------------------------- plots
def plot_roc(results: dict[str, VerificationResult], ax: Any = None, log: bool = True) -> Any:
    """ROC curves (TAR vs FAR) of several results on one axis."""
    import matplotlib.pyplot as plt

    ax = ax or plt.gca()
    for name, r in results.items():
        ax.plot(np.clip(r.fpr, 1e-5, 1), r.tpr, label=f"{name} (AUC {r.auc:.4f})")
    if log:
        ax.set_xscale("log")
    ax.set_xlabel("false accept rate (FAR)")
    ax.set_ylabel("true accept rate (TAR)")
    ax.legend(loc="lower right")
    return ax


def plot_scores(result: VerificationResult, ax: Any = None, bins: int = 60, title: str = "") -> Any:
    """Genuine / impostor score histograms with the chosen threshold."""
    import matplotlib.pyplot as plt

    ax = ax or plt.gca()
    lo, hi = float(result.scores.min()), float(result.scores.max())
    edges = np.linspace(lo, hi, bins + 1)
    ax.hist(result.scores[result.same], bins=edges, alpha=0.6, density=True, label="genuine")
    ax.hist(result.scores[~result.same], bins=edges, alpha=0.6, density=True, label="impostor")
    ax.axvline(result.threshold, color="k", ls="--", lw=1, label=f"threshold {result.threshold:.3f}")
    ax.set_xlabel("cosine similarity")
    ax.set_ylabel("density")
    if title:
        ax.set_title(title)
    ax.legend()
    return ax

"""Identity consistency, diversity and coverage of synthetic face sets (chapter 2, UIFace §2.5).

* intra-class identity similarity: mean pairwise cosine similarity of FR embeddings within an identity;
* genuine / impostor score distributions (the paper's Fig. 5);
* diversity, with a documented **LPIPS substitute**: LPIPS needs ImageNet VGG/AlexNet weights we do not
  have, so :func:`feature_diversity` applies the LPIPS recipe (unit-normalise each spatial feature vector
  over channels, squared difference, spatial mean, mean over layers; uniform layer weights instead of
  LPIPS's learned ones) to *early-layer features of the real face-recognition model*; :func:`pixel_diversity`
  adds a model-free number (mean absolute pixel difference);
* Improved Recall (Kynkäänniemi et al. 2019) with K = 10 in any feature space;
* the greedy cosine filter that makes synthetic identity contexts distinct.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ParameterError


def _as_tensor(x) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x).float()


def _groups(labels) -> list[np.ndarray]:
    labels = np.asarray(labels)
    return [np.flatnonzero(labels == u) for u in np.unique(labels)]


def intra_class_similarity(emb, labels) -> np.ndarray:
    """Per identity: the mean pairwise cosine similarity of its embeddings (identities with >= 2 images)."""
    e = F.normalize(_as_tensor(emb), dim=1)
    out = []
    for idx in _groups(labels):
        if len(idx) < 2:
            continue
        s = e[idx] @ e[idx].T
        iu = torch.triu_indices(len(idx), len(idx), 1)
        out.append(float(s[iu[0], iu[1]].mean()))
    return np.asarray(out)


def genuine_impostor(emb, labels, *, max_impostor: int = 20000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Cosine scores of all same-identity pairs and of (up to ``max_impostor``) random different-identity pairs."""
    e = F.normalize(_as_tensor(emb), dim=1)
    labels = np.asarray(labels)
    s = (e @ e.T).numpy()
    iu = np.triu_indices(len(labels), 1)
    same = labels[iu[0]] == labels[iu[1]]
    gen = s[iu][same]
    imp = s[iu][~same]
    if len(imp) > max_impostor:
        imp = np.random.default_rng(seed).choice(imp, max_impostor, replace=False)
    return gen, imp


def lpips_like_distance(fa: dict[str, torch.Tensor], fb: dict[str, torch.Tensor]) -> torch.Tensor:
    """LPIPS recipe with uniform layer weights on feature dicts {layer: (N, C, H, W)} -> (N,) distances."""
    dists = []
    for k in fa:
        a = F.normalize(fa[k].float(), dim=1)
        b = F.normalize(fb[k].float(), dim=1)
        dists.append((a - b).pow(2).sum(1).mean(dim=(-2, -1)))
    return torch.stack(dists).mean(0)


def feature_diversity(features: dict[str, torch.Tensor], labels, *, max_pairs: int = 45,
                      seed: int = 0) -> np.ndarray:
    """Per identity: mean LPIPS-substitute distance over (up to ``max_pairs``) same-identity image pairs."""
    rng = np.random.default_rng(seed)
    out = []
    for idx in _groups(labels):
        if len(idx) < 2:
            continue
        i, j = np.triu_indices(len(idx), 1)
        if len(i) > max_pairs:
            keep = rng.choice(len(i), max_pairs, replace=False)
            i, j = i[keep], j[keep]
        a = {k: v[idx[i]] for k, v in features.items()}
        b = {k: v[idx[j]] for k, v in features.items()}
        out.append(float(lpips_like_distance(a, b).mean()))
    return np.asarray(out)


def pixel_diversity(images, labels) -> np.ndarray:
    """Per identity: mean absolute pixel difference (0..1 scale) over all same-identity pairs."""
    x = torch.as_tensor(np.asarray(images)).float().flatten(1) / 255.0
    out = []
    for idx in _groups(labels):
        if len(idx) < 2:
            continue
        d = torch.cdist(x[idx], x[idx], p=1) / x.shape[1]
        iu = torch.triu_indices(len(idx), len(idx), 1)
        out.append(float(d[iu[0], iu[1]].mean()))
    return np.asarray(out)


def improved_recall(real, fake, k: int = 10) -> float:
    """Improved Recall (K = ``k``): the fraction of real features inside the generated-set manifold.

    The manifold is the union of balls around each generated feature with radius its distance to its k-th
    nearest generated neighbour (itself excluded).
    """
    r, f = _as_tensor(real), _as_tensor(fake)
    if len(f) <= k:
        raise ParameterError(f"improved_recall needs more than k={k} generated samples, got {len(f)}")
    dff = torch.cdist(f, f)
    radius = dff.kthvalue(k + 1, dim=1).values  # +1: the zero distance to itself
    drf = torch.cdist(r, f)
    return float((drf <= radius[None]).any(dim=1).float().mean())


def filter_contexts(emb, threshold: float = 0.3) -> np.ndarray:
    """Greedy cosine filter (DCFace-style, §2.5): keep a candidate only if its similarity to every kept one
    is below ``threshold``. Returns the kept indices in candidate order."""
    e = F.normalize(_as_tensor(emb), dim=1)
    kept: list[int] = []
    for i in range(len(e)):
        if not kept or float((e[kept] @ e[i]).max()) < threshold:
            kept.append(i)
    return np.asarray(kept, dtype=np.int64)


def farthest_point(emb, n: int, *, start: int = 0) -> np.ndarray:
    """Greedy farthest-point selection of ``n`` mutually dissimilar embeddings (cosine): a fallback when
    :func:`filter_contexts` keeps fewer identities than needed."""
    e = F.normalize(_as_tensor(emb), dim=1)
    n = min(n, len(e))
    chosen = [start]
    best = e @ e[start]
    for _ in range(n - 1):
        best_masked = best.clone()
        best_masked[chosen] = float("inf")
        i = int(best_masked.argmin())
        chosen.append(i)
        best = torch.maximum(best, e @ e[i])
    return np.asarray(chosen, dtype=np.int64)

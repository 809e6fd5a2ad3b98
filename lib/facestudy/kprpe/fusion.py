"""Landmark-quality feature re-weighting and template fusion (chapter 3, METHODS.md §1.5).

Each image's feature is rescaled by a quality ``clip(s_ldmk · s_det, 1e-6, 1)`` where
``s_ldmk = clip((h − clip(NME, 0, h)) / h + 1e-6, 0, 1)`` (h = 0.2) and NME is the mean distance of the
predicted normalised landmarks to the ArcFace template. Templates are then the sum of features, so the
norms act as fusion weights. Compared with plain averaging of unit features and with the classical
norm-weighted fusion (unnormalised features summed).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ParameterError
from .keypoints import TEMPLATE_NORM

FUSIONS: tuple[str, ...] = ("average", "norm", "landmark")


def nme(keypoints, reference=TEMPLATE_NORM) -> np.ndarray:
    """Mean Euclidean distance of normalised landmarks (N, 5, 2) to the reference (5, 2) (§1.5)."""
    kp = np.asarray(keypoints, dtype=np.float64)
    if kp.ndim != 3 or kp.shape[1:] != (5, 2):
        raise ParameterError(f"nme: keypoints must be (N, 5, 2) normalised landmarks, got {kp.shape}")
    return np.linalg.norm(kp - np.asarray(reference, dtype=np.float64)[None], axis=-1).mean(axis=1)


def landmark_quality(keypoints, det_score=None, h: float = 0.2) -> np.ndarray:
    """Quality weight per image: ``clip(s_ldmk · s_det, 1e-6, 1)`` (§1.5, the paper's "h = 0.2")."""
    if h <= 0:
        raise ParameterError(f"landmark_quality: h must be > 0, got {h}")
    e = nme(keypoints)
    s = np.clip((h - np.clip(e, 0, h)) / h + 1e-6, 0, 1)
    if det_score is not None:
        s = s * np.asarray(det_score, dtype=np.float64)
    return np.clip(s, 1e-6, 1.0)


def fuse_templates(features, template_ids, method: str = "average", quality=None) -> tuple[torch.Tensor, np.ndarray]:
    """Fuse image features (N, D) into one unit-norm vector per template (chapter 3, §1.5).

    ``average``: mean of L2-normalised features; ``norm``: sum of raw (unnormalised) features, so feature
    norms weight the images; ``landmark``: sum of unit features scaled by ``quality`` (see
    :func:`landmark_quality`). Returns (templates (T, D), template ids in order).
    """
    if method not in FUSIONS:
        raise ParameterError(f"unknown fusion {method!r}; valid: {', '.join(FUSIONS)}")
    f = torch.as_tensor(np.asarray(features), dtype=torch.float32)
    ids = np.asarray(template_ids)
    if len(ids) != len(f):
        raise ParameterError(f"fuse_templates: {len(f)} features but {len(ids)} template ids")
    if method == "landmark":
        if quality is None:
            raise ParameterError("fuse_templates(method='landmark') needs quality=landmark_quality(...)")
        w = torch.as_tensor(np.asarray(quality), dtype=torch.float32).view(-1, 1)
        f = F.normalize(f, dim=1) * w
    elif method == "average":
        f = F.normalize(f, dim=1)
    uniq, inv = np.unique(ids, return_inverse=True)
    out = torch.zeros(len(uniq), f.shape[1])
    out.index_add_(0, torch.as_tensor(inv), f)
    return F.normalize(out, dim=1), uniq

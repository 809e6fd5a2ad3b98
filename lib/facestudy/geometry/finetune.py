"""Fine-tuning helpers of chapter 1 ("Attributes shape the embedding space"): attribute augmentation and
cache keys. The loss-family models are heads on the frozen real trunk (:mod:`.heads`).

*Fine-tuning validation* (our definition; the official repository does not contain it, METHODS.md 4.4):
start from a trained model ("vanilla"), fine-tune it for a few epochs (i) with random augmentation along
attribute ``a`` and (ii) without augmentation (the "control", so that the mere extra training is not
credited to the augmentation). Then compare the invariance energy E_a of (i) against (ii) per identity
(prediction: it rises, i.e. more invariance) and the energies of the other attributes (prediction: they stay
near).
"""
from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np
import torch

from ..errors import ParameterError
from . import imageops


# ------------------------------------------------------------------------------------------- augmentation
class AttributeAugment:
    """Random shift along one low-level attribute, applied to a uint8 NHWC batch. Chapter 1.

    Each image is shifted with probability ``p`` by a value drawn uniformly in ``strength`` times the op's
    range (:data:`facestudy.geometry.imageops.RANGES`). Seeded: the same call sequence repeats exactly.
    Accepts numpy or torch uint8, NHWC or NCHW, and returns the same type and layout.
    """

    def __init__(self, attribute: str, p: float = 0.8, strength: float = 1.0, seed: int = 0) -> None:
        if attribute not in imageops.RANGES:
            raise ParameterError(f"unknown augmentation attribute {attribute!r}; valid: {', '.join(imageops.OPS)}")
        if not 0.0 <= p <= 1.0:
            raise ParameterError(f"augmentation probability p must be in [0, 1], got {p}")
        self.attribute, self.p, self.strength = attribute, float(p), float(strength)
        self.rng = np.random.default_rng(seed)

    def values(self, n: int) -> np.ndarray:
        lo, hi, _ = imageops.RANGES[self.attribute]
        neutral = 0.0 if lo < 0 < hi else lo
        v = neutral + self.strength * self.rng.uniform(lo - neutral, hi - neutral, n)
        return np.where(self.rng.random(n) < self.p, v, neutral)

    def __call__(self, images: Any) -> Any:
        is_torch = isinstance(images, torch.Tensor)
        x = images.cpu().numpy() if is_torch else np.asarray(images)
        nchw = x.ndim == 4 and x.shape[1] == 3 and x.shape[-1] != 3
        if nchw:
            x = x.transpose(0, 2, 3, 1)
        out = imageops.apply(np.ascontiguousarray(x), self.attribute, self.values(len(x)))
        if nchw:
            out = out.transpose(0, 3, 1, 2)
        out = np.ascontiguousarray(out)
        return torch.from_numpy(out).to(images.device) if is_torch else out


# ------------------------------------------------------------------------------------------- caching
def cache_key(config: dict[str, Any]) -> str:
    """Hash of a JSON-able config (sorted keys)."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]

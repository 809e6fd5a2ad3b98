"""The frozen-trunk feature cache: one shared home for "the real MobileFaceNet up to a late layer" features.

Chapters 1, 3 and 5 train small parts (loss heads, token blocks, distilled tails) on top of the *frozen*
real MobileFaceNet. Its trunk is by far the expensive part of a forward pass, and it does not change while
those parts train, so its output for every image is computed once and cached on disk (fp16 by default:
a 7x7x512 map is 50 kB per image) together with the model's own embedding from the same pass.

The cache key joins everything the features depend on: model name + weights hash, the layer, the face
set's content hash (images, labels, landmarks), the model's preprocessing, the flip and an optional
deterministic augmentation's name (chapter 3 caches misaligned / low-resolution copies this way). A
changed weight, image, layer or augmentation never returns a stale result; a damaged cache file is
reported by path and recomputed.

    feats = trunk_features(model, faceset, layer="conv_sep")    # TrunkFeatures
    feats.features   # (N, C, H, W) torch tensor, fp16
    feats.embedding  # (N, D) raw (unnormalised) embedding of the full model, fp32
    tail = model.tail("conv_sep")   # trainable copy of the rest of the network: tail(features) -> embedding
"""
from __future__ import annotations

import hashlib
import os
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from ..errors import ParameterError

#: bump when what is stored changes
TRUNK_CACHE_VERSION = 1


@dataclass
class TrunkFeatures:
    """Cached output of :func:`trunk_features`."""

    features: torch.Tensor  # (N, C, H, W), dtype as requested (fp16 by default)
    embedding: torch.Tensor  # (N, D) raw embedding of the whole model (fp32), same forward pass
    layer: str
    key: str

    def __len__(self) -> int:
        return len(self.features)


def _key(model: Any, faceset: Any, layer: str, flip: bool, augment_name: str, dtype: torch.dtype) -> str:
    from . import faceset_hash, model_key

    parts = [f"v{TRUNK_CACHE_VERSION}", model_key(model), layer, f"{faceset.name}-{faceset_hash(faceset)}",
             model.preprocess_signature(), f"flip={flip}", f"aug={augment_name}", str(dtype)]
    return hashlib.sha1("|".join(parts).encode()).hexdigest()[:20]


def trunk_features(model: Any, faceset: Any, layer: str = "conv_sep", *, flip: bool = False,
                   augment: tuple[str, Callable[[np.ndarray], np.ndarray]] | None = None,
                   batch_size: int = 128, dtype: torch.dtype = torch.float16,
                   cache: bool = True) -> TrunkFeatures:
    """Features of ``layer`` (and the full embedding) of a frozen ``model`` for every image of ``faceset``.

    ``augment`` = ``(name, fn)``: ``fn`` maps a uint8 NHWC batch to a uint8 NHWC batch *deterministically*
    (the name enters the cache key, so two different augmentations must have two names). ``flip`` mirrors
    every image (for flip-sum evaluation compute both and add the tails' outputs).
    """
    if layer not in model.layer_names():
        raise ParameterError(f"trunk_features: unknown layer {layer!r} for {model.name}; "
                             f"see model.layer_names() (e.g. 'conv_sep', 'blocks.10')")
    aug_name, aug_fn = augment if augment is not None else ("none", None)
    key = _key(model, faceset, layer, flip, aug_name, dtype)
    from . import _cache_dir

    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in f"{model.name}_{faceset.name}_{layer}")[:80]
    path = _cache_dir() / "trunk" / f"{safe}_{key}.pt"
    if cache and path.exists():
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
            feats, emb = blob["features"], blob["embedding"]
            if len(feats) == len(faceset) == len(emb):
                return TrunkFeatures(feats, emb, layer, key)
            raise ValueError(f"{len(feats)} rows for {len(faceset)} images")
        except Exception as e:  # noqa: BLE001 - a damaged cache file is said and recomputed
            warnings.warn(f"trunk feature cache {path} is damaged ({e}); recomputing it", stacklevel=2)
            path.unlink(missing_ok=True)
    feats_parts, emb_parts = [], []
    images = faceset.images
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            chunk = np.asarray(images[i:i + batch_size])
            if aug_fn is not None:
                chunk = aug_fn(chunk)
                if chunk.dtype != np.uint8:
                    raise ParameterError(f"trunk_features: augment {aug_name!r} must return uint8 images")
            if flip:
                chunk = np.ascontiguousarray(chunk[:, :, ::-1])
            out = model.features(chunk, [layer, "embedding"], batch_size=len(chunk))
            feats_parts.append(out[layer].to(dtype))
            emb_parts.append(out["embedding"].float())
    feats = torch.cat(feats_parts) if feats_parts else torch.zeros(0)
    emb = torch.cat(emb_parts) if emb_parts else torch.zeros(0, model.embedding_dim)
    if cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        try:
            torch.save({"features": feats, "embedding": emb}, tmp)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    return TrunkFeatures(feats, emb, layer, key)

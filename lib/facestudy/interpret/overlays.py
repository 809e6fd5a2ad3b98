"""Overlay edits on real faces for feature ablation (chapter 4, Table 7 analogue).

Real photos cannot be edited exactly, so we *add* an occluder placed from the 5 landmarks and measure
what it does to the SAE code: :func:`add_mask` pastes a texture cut from insightface's bundled
``mask_*.jpg`` over the lower face, :func:`add_sunglasses` draws dark lenses on the eyes.
"""
from __future__ import annotations

import os

import numpy as np

from ..errors import DataError, ParameterError


def insightface_mask(color: str = "blue") -> np.ndarray:
    """One of insightface's bundled mask photos (``mask_{black,blue,green,white}.jpg``) as uint8 RGB.

    The file is found without importing insightface (whose import is slow)."""
    import importlib.util

    from PIL import Image

    spec = importlib.util.find_spec("insightface")
    if spec is None or spec.origin is None:
        raise DataError("insightface is not installed; pip install insightface (it bundles the mask images)")
    path = os.path.join(os.path.dirname(spec.origin), "data", "images", f"mask_{color}.jpg")
    if not os.path.exists(path):
        raise DataError(f"{path} not found; valid colours are black, blue, green, white (insightface >= 0.7)")
    return np.asarray(Image.open(path).convert("RGB"))


def _check(images: np.ndarray, landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    images = np.asarray(images)
    landmarks = np.asarray(landmarks, dtype=np.float32)
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ParameterError(f"overlay: images must be uint8 (N, H, W, 3), got {images.dtype} {images.shape}")
    if landmarks.shape != (len(images), 5, 2):
        raise ParameterError(f"overlay: landmarks must be (N, 5, 2) pixels, got {landmarks.shape}")
    return images, landmarks


def _resize_nn(img: np.ndarray, h: int, w: int) -> np.ndarray:
    ys = np.clip((np.arange(h) + 0.5) * img.shape[0] / h, 0, img.shape[0] - 1).astype(int)
    xs = np.clip((np.arange(w) + 0.5) * img.shape[1] / w, 0, img.shape[1] - 1).astype(int)
    return img[ys][:, xs]


def add_mask(images: np.ndarray, landmarks: np.ndarray, texture: np.ndarray | None = None) -> np.ndarray:
    """Cover the lower face (from just below the nose tip's upper half to below the mouth) with a
    surgical-mask texture; the region is a rounded shape sized by the inter-eye distance."""
    images, landmarks = _check(images, landmarks)
    tex = insightface_mask("blue") if texture is None else np.asarray(texture)
    th, tw = tex.shape[:2]
    tex = tex[int(0.2 * th):int(0.8 * th), int(0.2 * tw):int(0.8 * tw)]
    out = images.copy()
    h, w = images.shape[1:3]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    for i, lm in enumerate(landmarks):
        le, re, nose, lm_, rm = lm
        eye_d = float(np.linalg.norm(re - le))
        top = nose[1] - 0.25 * eye_d
        mouth_y = 0.5 * (lm_[1] + rm[1])
        bottom = mouth_y + 0.75 * eye_d
        cx = 0.5 * (lm_[0] + rm[0])
        half_w = 1.05 * eye_d
        cy = 0.5 * (top + bottom)
        half_h = 0.5 * (bottom - top)
        # superellipse: flat top and sides, rounded corners
        region = (np.abs((xx - cx) / half_w) ** 4 + np.abs((yy - cy) / half_h) ** 4) <= 1.0
        y0, y1 = int(max(0, np.floor(top))), int(min(h, np.ceil(bottom)))
        x0, x1 = int(max(0, np.floor(cx - half_w))), int(min(w, np.ceil(cx + half_w)))
        if y1 <= y0 or x1 <= x0:
            continue
        patch = _resize_nn(tex, y1 - y0, x1 - x0)
        sub = region[y0:y1, x0:x1]
        out[i, y0:y1, x0:x1][sub] = patch[sub]
    return out


def add_sunglasses(images: np.ndarray, landmarks: np.ndarray, color: tuple[int, int, int] = (20, 20, 24)
                   ) -> np.ndarray:
    """Draw dark elliptical lenses on both eyes and a bridge between them (from the eye landmarks)."""
    images, landmarks = _check(images, landmarks)
    out = images.copy()
    h, w = images.shape[1:3]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    col = np.asarray(color, dtype=np.uint8)
    for i, lm in enumerate(landmarks):
        le, re = lm[0], lm[1]
        eye_d = float(np.linalg.norm(re - le))
        rx, ry = 0.36 * eye_d, 0.26 * eye_d
        region = np.zeros((h, w), bool)
        for e in (le, re):
            region |= ((xx - e[0]) / rx) ** 2 + ((yy - e[1]) / ry) ** 2 <= 1.0
        mid_y = 0.5 * (le[1] + re[1])
        region |= (np.abs(yy - mid_y + 0.1 * eye_d) <= max(1.0, 0.04 * eye_d)) & (xx >= le[0]) & (xx <= re[0])
        out[i][region] = col
    return out

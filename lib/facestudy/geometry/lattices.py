"""Curve lattices for the microscale test of chapter 1 ("Attributes shape the embedding space").

A *curve* is three images of one identity (steps 0, 1, 2) along which exactly one attribute moves by a
fixed half-step on each side of a centre value, while everything else (source photo, other attributes)
stays fixed. Many curves per identity, each at a random centre and random values of the other attributes,
form the point cloud on which the invariance energy is computed (see :mod:`facestudy.geometry.energy`).

The paper builds its lattices with GAN-Control; we use (a) real photos with the low-level image ops of
:mod:`facestudy.geometry.imageops` and (b) the synthetic world (:mod:`facestudy.faceworld`), whose
renderer controls pose, age, hair colour, illumination, expression and eyeglasses exactly.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

from ..errors import ParameterError
from . import imageops


def _table(rows: list[dict[str, Any]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["identity", "attribute", "curve", "step", "value", "source", "row"])


def image_op_curves(images: np.ndarray, identities: Sequence[int], attributes: Sequence[str] = imageops.OPS, *,
                    n_curves: int = 30, seed: int = 0, context: float = 0.5,
                    ranges: dict[str, tuple[float, float, float]] | None = None) -> tuple[np.ndarray, pd.DataFrame]:
    """Real-face lattices: ``n_curves`` curves per (identity, attribute) built with image ops. Chapter 1.

    For each curve we draw a source photo of the identity, a centre value of the moving attribute in its
    range (kept ``step`` away from the ends), and values of every *other* op uniformly in ``context`` times
    its range (the "rest of the lattice"). Steps 0, 1, 2 then set the moving attribute to centre - step,
    centre, centre + step. Returns (uint8 NHWC images, curve table with columns
    ``identity, attribute, curve, step, value, source, row``).
    """
    ranges = dict(imageops.RANGES if ranges is None else ranges)
    images = np.asarray(images)
    identities = np.asarray(identities)
    if len(images) != len(identities):
        raise ParameterError(f"images ({len(images)}) and identities ({len(identities)}) differ in length")
    for a in attributes:
        if a not in ranges:
            raise ParameterError(f"unknown lattice attribute {a!r}; valid: {', '.join(ranges)}")
    if n_curves < 2:
        raise ParameterError(f"n_curves must be >= 2 (the energy compares neighbouring curves), got {n_curves}")
    rng = np.random.default_rng(seed)
    ops = list(ranges)
    sources, params, rows = [], {op: [] for op in ops}, []
    for ident in np.unique(identities):
        pool = np.flatnonzero(identities == ident)
        for attr in attributes:
            lo, hi, step = ranges[attr]
            for c in range(n_curves):
                src = int(rng.choice(pool))
                ctx = {}
                for op in ops:
                    olo, ohi, _ = ranges[op]
                    mid = (olo + ohi) / 2.0
                    ctx[op] = mid + context * rng.uniform(olo - mid, ohi - mid)
                centre = rng.uniform(lo + step, hi - step)
                for s in range(3):
                    value = centre + (s - 1) * step
                    rows.append({"identity": int(ident), "attribute": attr, "curve": c, "step": s,
                                 "value": value, "source": src, "row": len(sources)})
                    sources.append(src)
                    for op in ops:
                        params[op].append(value if op == attr else ctx[op])
    out = _apply_in_chunks(images, np.asarray(sources), {op: np.asarray(v) for op, v in params.items()})
    return out, _table(rows)


def _apply_in_chunks(images: np.ndarray, sources: np.ndarray, params: dict[str, np.ndarray],
                     chunk: int = 256) -> np.ndarray:
    out = np.empty((len(sources), *images.shape[1:]), np.uint8)
    for i in range(0, len(sources), chunk):
        sl = slice(i, i + chunk)
        out[sl] = imageops.apply_many(images[sources[sl]], {op: v[sl] for op, v in params.items()})
    return out


def world_curves(render_many: Callable[[np.ndarray, list[dict[str, float]]], np.ndarray],
                 identities: Sequence[int], attributes: dict[str, tuple[float, float, float]], *,
                 n_curves: int = 30, seed: int = 0, context: float = 0.5,
                 discrete: Sequence[str] = ()) -> tuple[np.ndarray, pd.DataFrame]:
    """Lattices from any batch renderer ``render_many(identity_per_image, settings_per_image) -> uint8 NHWC``.

    Chapter 1. ``attributes`` maps each attribute to ``(low, high, step)``. Every curve draws context values
    of every *other* attribute (uniform in ``context`` times its range around the range's middle, or the
    low / high end at random for the on/off attributes in ``discrete``), so that the point cloud of an
    identity spans the rest of the lattice; the moving attribute takes centre - step, centre, centre + step.
    All images are rendered in one call, so the renderer can batch
    (:func:`facestudy.geometry.world.synthetic_curves` wires it to :func:`facestudy.faceworld.render`).
    """
    if n_curves < 2:
        raise ParameterError(f"n_curves must be >= 2 (the energy compares neighbouring curves), got {n_curves}")
    rng = np.random.default_rng(seed)
    who, settings, rows = [], [], []
    for ident in identities:
        for attr, (lo, hi, step) in attributes.items():
            if hi - lo < 2 * step - 1e-9:
                raise ParameterError(f"attribute {attr!r}: range [{lo}, {hi}] is shorter than two steps of {step}")
            for c in range(n_curves):
                base = {}
                for other, (olo, ohi, _) in attributes.items():
                    if other == attr:
                        continue
                    if other in discrete:
                        base[other] = float(rng.choice([olo, ohi]))
                    else:
                        mid = (olo + ohi) / 2.0
                        base[other] = mid + context * rng.uniform(olo - mid, ohi - mid)
                centre = rng.uniform(lo + step, hi - step)
                for s in range(3):
                    value = centre + (s - 1) * step
                    rows.append({"identity": int(ident), "attribute": attr, "curve": c, "step": s, "value": value,
                                 "source": -1, "row": len(settings)})
                    who.append(int(ident))
                    settings.append({**base, attr: value})
    images = np.asarray(render_many(np.asarray(who), settings))
    if images.dtype != np.uint8 or len(images) != len(settings):
        raise ParameterError(f"render_many must return {len(settings)} uint8 images, got {images.shape} {images.dtype}")
    return images, _table(rows)

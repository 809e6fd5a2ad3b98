"""Synthetic-world lattices for the microscale test of chapter 1 ("Attributes shape the embedding space").

The paper moves one attribute of a GAN-Control face at a time. Our synthetic world (:mod:`facestudy.faceworld`)
renders faces from exact attributes, so a curve is exact: only the named attribute changes between its three
images. Rendered lattices are cached under ``<cache>/geometry/lattices/`` keyed by their configuration.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from ..errors import ParameterError
from .finetune import cache_key
from .lattices import world_curves

#: lattice attribute -> (faceworld Attributes field, low, high, half-step)
WORLD_ATTRIBUTES: dict[str, tuple[str, float, float, float]] = {
    "yaw": ("yaw", -40.0, 40.0, 10.0),
    "pitch": ("pitch", -24.0, 24.0, 8.0),
    "age": ("age", 0.0, 1.0, 0.15),
    "hair_colour": ("hair_color", 0.05, 0.95, 0.12),
    "illumination": ("light_azimuth", -70.0, 70.0, 20.0),
    "expression": ("smile", 0.0, 1.0, 0.15),
    "eyeglasses": ("eyeglasses", 0.0, 1.0, 0.5),
    "brightness": ("brightness", -0.25, 0.25, 0.08),
    "contrast": ("contrast", 0.6, 1.4, 0.12),
    "hue": ("hue", -30.0, 30.0, 8.0),
}
#: the paper's two groups (METHODS.md 4.3, the official code's lists): five high-level attributes (head
#: angle = yaw here, age, hair colour, illumination, expression) and three low-level image attributes
HIGH_LEVEL: tuple[str, ...] = ("yaw", "age", "hair_colour", "illumination", "expression")
LOW_LEVEL: tuple[str, ...] = ("brightness", "contrast", "hue")
#: attributes our renderer adds beyond the paper's eight (in neither group)
EXTRA: tuple[str, ...] = ("pitch", "eyeglasses")
DISCRETE: tuple[str, ...] = ("eyeglasses",)


def synthetic_curves(n_identities: int, attributes: tuple[str, ...] = HIGH_LEVEL + LOW_LEVEL, *,
                     n_curves: int = 12, size: int = 112, seed: int = 0, identity_seed: int = 1000,
                     context: float = 0.5, cache: bool = True) -> tuple[np.ndarray, pd.DataFrame]:
    """Exact one-attribute curves of ``n_identities`` synthetic identities. Chapter 1.

    Identities come from :func:`facestudy.faceworld.sample_identities` (``identity_seed``, disjoint from
    the training identities when the training set uses another seed). Returns (uint8 NHWC images, curve
    table as :func:`facestudy.geometry.lattices.image_op_curves`).
    """
    from .. import data as fdata
    from .. import faceworld

    bad = [a for a in attributes if a not in WORLD_ATTRIBUTES]
    if bad:
        raise ParameterError(f"unknown synthetic lattice attribute(s) {bad}; valid: {', '.join(WORLD_ATTRIBUTES)}")
    spec = {a: WORLD_ATTRIBUTES[a][1:] for a in attributes}
    key = cache_key({"n": n_identities, "attrs": list(attributes), "spec": spec, "curves": n_curves, "size": size,
                     "seed": seed, "id_seed": identity_seed, "context": context, "v": 2})
    path = fdata.cache_dir() / "geometry" / "lattices" / f"world-{key}.npz"
    if cache and path.exists():
        with np.load(path, allow_pickle=False) as z:
            images = z["images"]
            table = pd.DataFrame({c: z[f"t_{c}"] for c in ("identity", "attribute", "curve", "step", "value",
                                                            "source", "row")})
        table["attribute"] = table["attribute"].astype(str)
        return images, table
    ids = faceworld.sample_identities(n_identities, seed=identity_seed)

    def render_many(who: np.ndarray, settings: list[dict[str, float]]) -> np.ndarray:
        specs = [faceworld.Attributes(**{WORLD_ATTRIBUTES[k][0]: float(v) for k, v in s.items()}) for s in settings]
        images, _, _ = faceworld.render(ids[who], specs, size=size)
        return images

    images, table = world_curves(render_many, range(n_identities), spec, n_curves=n_curves, seed=seed,
                                 context=context, discrete=[a for a in DISCRETE if a in attributes])
    if cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp.npz")
        # text columns as fixed-width unicode: an object array would need pickle to load back
        cols = {f"t_{c}": (table[c].to_numpy(dtype=str) if table[c].dtype.kind not in "biuf" else table[c].to_numpy())
                for c in table.columns}
        np.savez(tmp, images=images, **cols)
        tmp.replace(path)
    return images, table


#: binary attributes read off a synthetic FaceSet's meta (the macroscale fallback without CelebA):
#: name -> (meta column, threshold, direction); value +1 when ``direction * (x - threshold) > 0``
WORLD_BINARY: dict[str, tuple[str, float, int]] = {
    "Eyeglasses": ("eyeglasses", 0.5, 1), "Sunglasses": ("sunglasses", 0.5, 1), "Smiling": ("smile", 0.3, 1),
    "Mouth_Open": ("mouth_open", 0.3, 1), "Beard": ("beard", 0.2, 1), "Mustache": ("moustache", 0.5, 1),
    "Hat": ("hat", 0.5, 1), "Old": ("age", 0.25, 1), "Yaw_Right": ("yaw", 0.0, 1), "Looks_Up": ("pitch", 0.0, 1),
    "Light_From_Right": ("light_azimuth", 0.0, 1), "Bright": ("brightness", 0.0, 1), "Warm_Hue": ("hue", 0.0, 1),
    "Blurry": ("blur", 0.5, 1), "Low_Res": ("resolution", 0.9, -1),
}


def world_binary_attributes(meta: pd.DataFrame) -> pd.DataFrame:
    """+1 / -1 attribute table from a synthetic FaceSet's meta (chapter 1 fallback for CelebA's 40 labels)."""
    cols = {}
    for name, (col, thr, sign) in WORLD_BINARY.items():
        if col in meta.columns:
            cols[name] = np.where(sign * (meta[col].to_numpy(float) - thr) > 0, 1, -1)
    if not cols:
        raise ParameterError("the FaceSet's meta has none of the synthetic attributes "
                             f"{sorted({c for c, _, _ in WORLD_BINARY.values()})}; was it made by faceworld?")
    return pd.DataFrame(cols)

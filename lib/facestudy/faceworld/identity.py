"""Identities of the synthetic face world (chapter 00a, "The synthetic face world").

An identity is a vector of shape and appearance parameters drawn from a seed: head and jaw shape, face
proportions (eye spacing and size, nose length / width, mouth width, brow ridge, cheeks, chin), skin
tone, eye colour, eyebrows, hair style and colour. Everything that does not change between photos of a
person lives here; everything that does lives in :class:`~facestudy.faceworld.attributes.Attributes`.
Identity ``k`` of seed ``s`` is the same person whatever ``n`` is (each is drawn from its own stream).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..errors import ParameterError

#: Scalar identity parameters and their sampling ranges (uniform unless noted in sample_identities).
PARAMS: dict[str, tuple[float, float]] = {
    "head_w": (0.70, 0.84),     # cranium half-width
    "head_h": (0.92, 1.04),     # cranium half-height
    "head_d": (0.86, 0.98),     # cranium half-depth
    "face_w": (0.56, 0.72),     # face / jaw ellipsoid half-width
    "face_h": (0.80, 0.96),     # face half-height
    "face_d": (0.62, 0.76),     # face half-depth
    "jaw_w": (0.22, 0.42),      # chin ellipsoid half-width (narrow chin .. square jaw)
    "chin_len": (-0.06, 0.08),  # chin drop
    "cheek": (0.0, 1.0),        # cheek fullness (face width)
    "eye_sp": (0.29, 0.35),     # half distance between eye centres
    "eye_y": (0.10, 0.20),      # eye height
    "eye_r": (0.095, 0.125),    # eyeball radius
    "eye_open": (0.55, 0.95),   # lid opening
    "eye_tilt": (-0.25, 0.25),  # canthal tilt
    "nose_len": (0.30, 0.42),   # eyes -> nose tip (vertical)
    "nose_w": (0.07, 0.11),     # nose half-width
    "nose_d": (0.12, 0.20),     # nose protrusion
    "mouth_w": (0.22, 0.30),    # half mouth width
    "mouth_dy": (0.66, 0.80),   # eyes -> mouth (vertical)
    "lip_t": (0.025, 0.055),    # lip thickness
    "brow_h": (0.10, 0.15),     # brow height above eye
    "brow_t": (0.035, 0.065),   # brow thickness
    "brow_arch": (-0.01, 0.06),
    "brow_ridge": (0.0, 1.0),   # deep-set eyes (socket shadow)
    "ear_size": (0.8, 1.2),
    "skin_l": (0.0, 1.0),       # skin tone: dark .. light
    "skin_warm": (0.0, 1.0),    # olive .. rosy
    "iris_hue": (0.0, 1.0),     # dark brown .. hazel .. green .. blue .. grey
    "hair_col": (0.0, 1.0),     # natural palette position (see Attributes.hair_color)
    "hair_style": (0.0, 5.0),   # 0 buzz cut, 1 short, 2 medium, 3 long, 4 fringe (integer part)
    "hair_vol": (0.03, 0.12),   # hair thickness over the cranium
    "hairline": (0.50, 0.68),   # forehead hairline height
    "part": (-1.0, 1.0),        # side parting
    "lip_col": (0.0, 1.0),
    "tex_u": (0.0, 1.0),        # offsets into the shared noise texture (skin / hair detail)
    "tex_v": (0.0, 1.0),
    "blush": (0.0, 1.0),        # rosy skin tint
}

PARAM_NAMES: tuple[str, ...] = tuple(PARAMS)


@dataclass
class Identities:
    """``n`` identities (chapter 00a): a (n, P) float array of parameters named by :data:`PARAM_NAMES`.

    Indexable (``ids[3]``, ``ids[[0, 5]]``, ``ids[2:4]`` give Identities) and ``len(ids)`` works.
    ``names`` are stable strings ``"syn<seed>_<k>"``.
    """

    params: np.ndarray
    names: list[str]
    seed: int = 0

    def __post_init__(self) -> None:
        self.params = np.asarray(self.params, dtype=np.float64)
        if self.params.ndim != 2 or self.params.shape[1] != len(PARAM_NAMES):
            raise ParameterError(f"Identities.params must have shape (n, {len(PARAM_NAMES)}), "
                                 f"got {self.params.shape}")
        if len(self.names) != len(self.params):
            raise ParameterError("Identities: one name per identity is required")

    def __len__(self) -> int:
        return len(self.params)

    def __getitem__(self, idx) -> "Identities":
        if isinstance(idx, (int, np.integer)):
            if not -len(self) <= idx < len(self):
                raise IndexError(f"identity {idx} out of range for {len(self)} identities")
            idx = [int(idx)]
        sel = np.arange(len(self))[idx]
        sel = np.atleast_1d(sel)
        return Identities(self.params[sel], [self.names[i] for i in sel], self.seed)

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]

    def column(self, name: str) -> np.ndarray:
        """(n,) values of parameter ``name``."""
        try:
            return self.params[:, PARAM_NAMES.index(name)]
        except ValueError:
            raise ParameterError(f"unknown identity parameter {name!r}; valid: {', '.join(PARAM_NAMES)}") from None

    def repeat(self, k: int) -> "Identities":
        """Each identity repeated ``k`` times in a row (for rendering k images per identity)."""
        idx = np.repeat(np.arange(len(self)), k)
        return self[idx]

    def replace(self, **values: float | Sequence[float]) -> "Identities":
        """A copy with some parameters set (to study one identity factor at a time)."""
        p = self.params.copy()
        for k, v in values.items():
            if k not in PARAMS:
                raise ParameterError(f"unknown identity parameter {k!r}; valid: {', '.join(PARAM_NAMES)}")
            p[:, PARAM_NAMES.index(k)] = v
        return Identities(p, list(self.names), self.seed)

    def __repr__(self) -> str:
        return f"Identities(n={len(self)}, seed={self.seed})"


def sample_identities(n: int, seed: int = 0) -> Identities:
    """``n`` random identities from ``seed`` (chapter 00a). Identity k is identical for any ``n > k``."""
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 0:
        raise ParameterError(f"sample_identities: n must be a non-negative int, got {n!r}")
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
        raise ParameterError(f"sample_identities: seed must be an int, got {seed!r}")
    rows = []
    for k in range(int(n)):
        rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, int(k), 7])
        lo = np.array([v[0] for v in PARAMS.values()])
        hi = np.array([v[1] for v in PARAMS.values()])
        u = rng.random(len(PARAMS))
        row = lo + u * (hi - lo)
        # discrete / skewed choices
        i = PARAM_NAMES.index
        row[i("hair_style")] = rng.choice([0, 1, 1, 1, 2, 2, 3, 3, 4]) + 0.5
        row[i("hair_col")] = rng.choice([0.05, 0.15, 0.3, 0.4, 0.55, 0.7, 0.82, 0.92]) + rng.uniform(-.05, .05)
        row[i("hair_col")] = np.clip(row[i("hair_col")], 0, 1)
        # lighter skin goes with lighter hair / eyes more often (not always)
        if row[i("skin_l")] < 0.35:
            row[i("hair_col")] = min(row[i("hair_col")], rng.uniform(0.0, 0.35))
            row[i("iris_hue")] = rng.uniform(0.0, 0.3)
        rows.append(row)
    params = np.array(rows, dtype=np.float64).reshape(int(n), len(PARAMS))
    return Identities(params, [f"syn{int(seed)}_{k}" for k in range(int(n))], int(seed))

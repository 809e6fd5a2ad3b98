"""Per-image attributes of the synthetic face world (chapter 00a, "The synthetic face world").

Every image is (identity, :class:`Attributes`). Attributes carry exact ground truth: pose, light,
expression, age, accessories, background and image-level photometric changes. The defaults are neutral
(frontal, front light, no expression, no accessories, plain background, no image change), so
``Attributes()`` is the canonical "passport photo" of an identity.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from typing import Any, Iterable, Sequence

import numpy as np

from ..errors import ParameterError


@dataclass(frozen=True)
class Attributes:
    """One image's attributes (chapter 00a). Angles in degrees; amounts in [0, 1] unless noted.

    Pose: ``yaw`` (+ turns the face towards the image's right, ±90), ``pitch`` (+ looks up, ±60),
    ``roll`` (+ tilts counter-clockwise as displayed, ±90).
    Light (camera frame): ``light_azimuth`` (+ comes from the image's right), ``light_elevation``
    (+ from above), ``light_intensity`` (directional, >= 0), ``ambient`` (>= 0).
    Expression: ``smile``, ``mouth_open``, ``eyes_closed`` in [0, 1]. ``age`` in [0, 1] (0 young adult,
    1 old: wrinkles, grey hair). ``hair_color``: -1 keeps the identity's own, otherwise a position on the
    natural palette 0 black .. 0.35 brown .. 0.55 auburn .. 0.8 blond .. 1 platinum.
    Accessories in [0, 1] (0 absent, 1 full): ``eyeglasses``, ``sunglasses``, ``beard``, ``moustache``,
    ``hat``, ``mask``. ``background``: 0 plain grey, k > 0 a procedural backdrop drawn from seed k.
    Image level: ``brightness`` (additive, fraction of full range, ±1), ``contrast`` (factor, 1 neutral),
    ``hue`` (degrees), ``blur`` (Gaussian sigma in px of a 112-px image), ``resolution`` (fraction of the
    output size the image was captured at, (0, 1]; 1 = full).
    """

    yaw: float = 0.0
    pitch: float = 0.0
    roll: float = 0.0
    light_azimuth: float = 0.0
    light_elevation: float = 20.0
    light_intensity: float = 0.6
    ambient: float = 0.45
    smile: float = 0.0
    mouth_open: float = 0.0
    eyes_closed: float = 0.0
    age: float = 0.0
    hair_color: float = -1.0
    eyeglasses: float = 0.0
    sunglasses: float = 0.0
    beard: float = 0.0
    moustache: float = 0.0
    hat: float = 0.0
    mask: float = 0.0
    background: int = 0
    brightness: float = 0.0
    contrast: float = 1.0
    hue: float = 0.0
    blur: float = 0.0
    resolution: float = 1.0

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            lo, hi = RANGES[f.name]
            if f.type in ("int", int):
                if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
                    raise ParameterError(f"Attributes.{f.name} must be an int, got {v!r}")
                object.__setattr__(self, f.name, int(v))
            else:
                if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
                    raise ParameterError(f"Attributes.{f.name} must be a number, got {v!r}")
                object.__setattr__(self, f.name, float(v))
            v = getattr(self, f.name)
            if not np.isfinite(v) or v < lo or v > hi:
                raise ParameterError(f"Attributes.{f.name}={v!r} is out of range [{lo}, {hi}]")
            if f.name == "hair_color" and v < 0 and v != -1.0:
                raise ParameterError("Attributes.hair_color must be -1 (identity's own) or in [0, 1]")
        if self.resolution <= 0:
            raise ParameterError("Attributes.resolution must be > 0 (fraction of the output size)")

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


ATTRIBUTE_NAMES: tuple[str, ...] = (
    "yaw", "pitch", "roll", "light_azimuth", "light_elevation", "light_intensity", "ambient", "smile",
    "mouth_open", "eyes_closed", "age", "hair_color", "eyeglasses", "sunglasses", "beard", "moustache",
    "hat", "mask", "background", "brightness", "contrast", "hue", "blur", "resolution",
)

#: Valid range of every attribute (inclusive).
RANGES: dict[str, tuple[float, float]] = {
    "yaw": (-90, 90), "pitch": (-60, 60), "roll": (-90, 90),
    "light_azimuth": (-180, 180), "light_elevation": (-90, 90), "light_intensity": (0, 3), "ambient": (0, 2),
    "smile": (0, 1), "mouth_open": (0, 1), "eyes_closed": (0, 1), "age": (0, 1), "hair_color": (-1, 1),
    "eyeglasses": (0, 1), "sunglasses": (0, 1), "beard": (0, 1), "moustache": (0, 1), "hat": (0, 1),
    "mask": (0, 1), "background": (0, 2**31 - 1), "brightness": (-1, 1), "contrast": (0, 4),
    "hue": (-180, 180), "blur": (0, 8), "resolution": (0.05, 1),
}

#: Attributes that are on/off accessories (lattices over them go 0 -> 1).
ACCESSORIES: tuple[str, ...] = ("eyeglasses", "sunglasses", "beard", "moustache", "hat", "mask")

#: A sensible sweep per attribute, used by the book's lattices (chapter 00a) and by chapter 4.
SWEEPS: dict[str, tuple[float, ...]] = {
    "yaw": (-60, -30, 0, 30, 60), "pitch": (-30, -15, 0, 15, 30), "roll": (-30, -15, 0, 15, 30),
    "light_azimuth": (-90, -45, 0, 45, 90), "light_elevation": (-40, -10, 20, 50, 80),
    "light_intensity": (0.0, 0.3, 0.6, 1.0, 1.4), "ambient": (0.15, 0.3, 0.45, 0.7, 0.9),
    "smile": (0, .25, .5, .75, 1), "mouth_open": (0, .25, .5, .75, 1), "eyes_closed": (0, .25, .5, .75, 1),
    "age": (0, .25, .5, .75, 1), "hair_color": (0, .25, .5, .75, 1),
    "eyeglasses": (0, 1), "sunglasses": (0, 1), "beard": (0, .5, 1), "moustache": (0, 1), "hat": (0, 1),
    "mask": (0, 1), "background": (0, 1, 2, 3, 4), "brightness": (-.3, -.15, 0, .15, .3),
    "contrast": (.5, .75, 1, 1.25, 1.5), "hue": (-40, -20, 0, 20, 40), "blur": (0, .75, 1.5, 2.5, 4),
    "resolution": (.15, .25, .4, .6, 1),
}

NUISANCE_MODES: tuple[str, ...] = ("none", "frontal", "pose", "default", "strong")


def edit(spec: Attributes | Sequence[Attributes], **changes: Any) -> Attributes | list[Attributes]:
    """Exact semantic edit (chapter 00a): the same image spec with only ``changes`` applied.

    ``edit(a, eyeglasses=0)`` removes glasses, ``edit(a, beard=1)`` adds a beard; everything else is
    untouched, so ``render`` of the edited spec differs from the original only where the edit acts.
    Accepts one :class:`Attributes` or a sequence of them (then returns a list).
    """
    bad = [k for k in changes if k not in ATTRIBUTE_NAMES]
    if bad:
        raise ParameterError(f"edit: unknown attribute(s) {bad}; valid attributes: {', '.join(ATTRIBUTE_NAMES)}")
    if isinstance(spec, Attributes):
        return dataclasses.replace(spec, **changes)
    if isinstance(spec, (list, tuple)) and all(isinstance(s, Attributes) for s in spec):
        return [dataclasses.replace(s, **changes) for s in spec]
    raise ParameterError(f"edit: expected an Attributes or a list of Attributes, got {type(spec).__name__}")


def _tri(rng: np.random.Generator, n: int, lo: float, hi: float) -> np.ndarray:
    return rng.uniform(lo, hi, n) * 0.5 + rng.uniform(lo, hi, n) * 0.5


def random_attributes(n: int, seed: int, nuisance: str = "default") -> list[Attributes]:
    """``n`` random attribute sets (chapter 00a). ``nuisance`` sets how much varies:

    ``none`` all neutral; ``frontal`` near-frontal (|yaw| <= 10) with mild light changes; ``pose`` only
    pose varies (yaw ±60, pitch ±30, roll ±15); ``default`` moderate pose (yaw ±45), light, expression, age,
    occasional accessories, backgrounds and mild image changes; ``strong`` the full ranges of issue 4
    (yaw ±60, pitch ±30) with frequent accessories and stronger image changes.
    """
    if nuisance not in NUISANCE_MODES:
        raise ParameterError(f"unknown nuisance {nuisance!r}; valid: {', '.join(NUISANCE_MODES)}")
    if not isinstance(n, (int, np.integer)) or n < 0:
        raise ParameterError(f"random_attributes: n must be a non-negative int, got {n!r}")
    rng = np.random.default_rng([int(seed), 4242])
    cols: dict[str, np.ndarray] = {}
    if nuisance == "none":
        return [Attributes() for _ in range(n)]
    if nuisance == "frontal":
        cols = dict(yaw=rng.uniform(-10, 10, n), pitch=rng.uniform(-6, 6, n), roll=rng.uniform(-5, 5, n),
                    light_azimuth=rng.uniform(-30, 30, n), light_elevation=rng.uniform(5, 40, n),
                    background=rng.integers(0, 1000, n))
    elif nuisance == "pose":
        cols = dict(yaw=rng.uniform(-60, 60, n), pitch=rng.uniform(-30, 30, n), roll=rng.uniform(-15, 15, n))
    else:
        strong = nuisance == "strong"
        k = 1.0 if strong else 0.6
        p = 0.25 if strong else 0.1
        cols = dict(
            yaw=_tri(rng, n, -60 if strong else -45, 60 if strong else 45),
            pitch=_tri(rng, n, -30 if strong else -20, 30 if strong else 20),
            roll=rng.uniform(-20 * k, 20 * k, n),
            light_azimuth=rng.uniform(-90 * k, 90 * k, n), light_elevation=rng.uniform(-20, 70, n),
            light_intensity=rng.uniform(0.35, 1.0, n), ambient=rng.uniform(0.3, 0.7, n),
            smile=np.where(rng.random(n) < 0.4, rng.uniform(0, 1, n), 0),
            mouth_open=np.where(rng.random(n) < 0.25, rng.uniform(0, k, n), 0),
            eyes_closed=np.where(rng.random(n) < 0.1, rng.uniform(0, 1, n), 0),
            age=np.where(rng.random(n) < 0.3, rng.uniform(0, 0.6 * k, n), 0),
            eyeglasses=(rng.random(n) < p).astype(float), sunglasses=(rng.random(n) < p * 0.4).astype(float),
            beard=np.where(rng.random(n) < p, rng.uniform(0.4, 1, n), 0),
            moustache=(rng.random(n) < p).astype(float), hat=(rng.random(n) < p * 0.6).astype(float),
            mask=(rng.random(n) < p * 0.4).astype(float), background=rng.integers(0, 100000, n),
            brightness=rng.uniform(-0.15 * k, 0.15 * k, n), contrast=rng.uniform(1 - 0.3 * k, 1 + 0.3 * k, n),
            hue=rng.uniform(-12 * k, 12 * k, n), blur=np.where(rng.random(n) < 0.3, rng.uniform(0, 1.5 * k, n), 0),
            resolution=np.where(rng.random(n) < 0.2, rng.uniform(0.35, 1, n), 1.0),
        )
        # sunglasses and eyeglasses together are odd; keep the sunglasses
        cols["eyeglasses"] = np.where(cols["sunglasses"] > 0, 0, cols["eyeglasses"])
    out = []
    for i in range(n):
        out.append(Attributes(**{k: (int(v[i]) if k == "background" else float(v[i])) for k, v in cols.items()}))
    return out


def stack(attributes: Attributes | Iterable[Attributes], n: int | None = None) -> dict[str, np.ndarray]:
    """Columns (name -> (n,) array) of a list of Attributes; one Attributes is broadcast to ``n``."""
    if isinstance(attributes, Attributes):
        attributes = [attributes] * (1 if n is None else n)
    attributes = list(attributes)
    for a in attributes:
        if not isinstance(a, Attributes):
            raise ParameterError(f"attributes must be Attributes objects, got {type(a).__name__}")
    return {name: np.array([getattr(a, name) for a in attributes],
                           dtype=np.int64 if name == "background" else np.float64)
            for name in ATTRIBUTE_NAMES}

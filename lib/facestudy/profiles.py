"""Profiles: one notebook parameter (``profile``) mapped to concrete sizes, per chapter, in ONE table.

``smoke``   tests; each chapter <= 60 s on 2 CPU cores, synthetic and tiny.
``default`` the book on a 2-core CPU; each chapter <= 8 min.
``gpu``     a workshop GPU (bigger models, longer training).
``paper``   the paper's protocol, given the real datasets / checkpoints a user supplies.

Every chapter's sizes live in :data:`TABLE` below; notebooks never hard-code sizes. A notebook calls
:func:`resolve` (through :func:`facestudy.runtime.start`) before doing any work, so an unknown profile or
an unknown override fails at once with the list of valid choices.
"""
from __future__ import annotations

from typing import Any

from .errors import ParameterError

PROFILES: tuple[str, ...] = ("smoke", "default", "gpu", "paper")


class Config(dict):
    """A resolved profile: a dict whose keys are also attributes (``cfg.n_identities``)."""

    def __getattr__(self, key: str) -> Any:
        try:
            return self[key]
        except KeyError:
            raise AttributeError(key) from None

    def __setattr__(self, key: str, value: Any) -> None:
        self[key] = value


# ---------------------------------------------------------------------------------------------------
# THE table. One entry per chapter: "base" holds keys shared by all profiles, then one dict per profile
# overriding them. Every key a profile may set must appear in "base" (that is how unknown overrides are
# caught). Keep comments next to the keys: they are the documentation of the sizes.
# ---------------------------------------------------------------------------------------------------
TABLE: dict[str, dict[str, dict[str, Any]]] = {
    "00_setup": {
        "base": {"n_render": 16, "image_size": 112},
        "smoke": {"n_render": 8},
        "default": {},
        "gpu": {},
        "paper": {},
    },
    "00a_faceworld": {"base": {}, "smoke": {}, "default": {}, "gpu": {}, "paper": {}},
    "00b_models": {"base": {}, "smoke": {}, "default": {}, "gpu": {}, "paper": {}},
    # --- chapter sections below are owned by each chapter's subpackage -------------------------------
    "01_geometry": {"base": {}, "smoke": {}, "default": {}, "gpu": {}, "paper": {}},
    "02_uiface": {"base": {}, "smoke": {}, "default": {}, "gpu": {}, "paper": {}},
    "03_kprpe": {"base": {}, "smoke": {}, "default": {}, "gpu": {}, "paper": {}},
    "04_facemint": {"base": {}, "smoke": {}, "default": {}, "gpu": {}, "paper": {}},
    "05_distillation": {"base": {}, "smoke": {}, "default": {}, "gpu": {}, "paper": {}},
}


def chapters() -> list[str]:
    return list(TABLE)


def resolve(chapter: str, profile: str, **overrides: Any) -> Config:
    """Concrete sizes for ``chapter`` at ``profile``, with ``overrides`` applied on top.

    Raises :class:`ParameterError` naming the valid choices for an unknown chapter, profile or key, or an
    override whose type does not match the table's value.
    """
    if chapter not in TABLE:
        raise ParameterError(f"unknown chapter {chapter!r}; valid chapters: {', '.join(TABLE)}")
    if profile not in PROFILES:
        raise ParameterError(
            f"unknown profile {profile!r} for chapter {chapter}; valid profiles: {', '.join(PROFILES)}"
        )
    entry = TABLE[chapter]
    cfg = Config(entry.get("base", {}))
    for key, value in entry.get(profile, {}).items():
        if key not in cfg:
            raise ParameterError(f"profile table bug: {chapter}/{profile} sets {key!r}, which is not in base")
        cfg[key] = value
    for key, value in overrides.items():
        if key not in cfg:
            valid = ", ".join(sorted(cfg)) or "(none)"
            raise ParameterError(f"unknown setting {key!r} for chapter {chapter}; valid settings: {valid}")
        cfg[key] = _coerce(chapter, key, value, cfg[key])
    cfg["profile"] = profile
    cfg["chapter"] = chapter
    return cfg


def _coerce(chapter: str, key: str, value: Any, reference: Any) -> Any:
    if reference is None or value is None:
        return value
    kind = type(reference)
    if isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
        return value
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind in (list, tuple) and isinstance(value, (list, tuple)):
        return kind(value)
    raise ParameterError(
        f"setting {key!r} of chapter {chapter} must be {kind.__name__} (like {reference!r}), got {value!r}"
    )

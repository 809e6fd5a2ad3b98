"""Sparse autoencoders of chapter 4 (FaceMINT): one file per variant, a config dataclass each, one registry.

>>> sae = create("topk", d_in=128, expansion=8, k=16)
"""
from __future__ import annotations

from typing import Any

from ...errors import ParameterError
from . import metrics  # noqa: F401
from .base import BaseSAE, SAEConfig, geometric_median  # noqa: F401
from .gated import GatedConfig, GatedSAE
from .jumprelu import JumpReLUConfig, JumpReLUSAE, jumprelu, rectangle, step  # noqa: F401
from .pca import PCA  # noqa: F401
from .topk import TopKConfig, TopKSAE
from .train import TrainResult, train_many, train_sae  # noqa: F401
from .vanilla import VanillaConfig, VanillaSAE

REGISTRY: dict[str, tuple[type[SAEConfig], type[BaseSAE]]] = {}


def register(name: str, config_cls: type[SAEConfig], sae_cls: type[BaseSAE]) -> None:
    """Add an SAE variant to the registry (chapter 4)."""
    REGISTRY[name] = (config_cls, sae_cls)


register("vanilla", VanillaConfig, VanillaSAE)
register("gated", GatedConfig, GatedSAE)
register("topk", TopKConfig, TopKSAE)
register("jumprelu", JumpReLUConfig, JumpReLUSAE)


def make_config(kind: str, **kw: Any) -> SAEConfig:
    """The config dataclass of ``kind`` with ``kw`` set; unknown kinds or fields raise ParameterError."""
    if kind not in REGISTRY:
        raise ParameterError(f"unknown SAE kind {kind!r}; valid kinds: {', '.join(REGISTRY)}")
    cls = REGISTRY[kind][0]
    valid = set(cls.__dataclass_fields__)
    bad = set(kw) - valid
    if bad:
        raise ParameterError(f"unknown setting(s) {sorted(bad)} for SAE kind {kind!r}; valid: {sorted(valid)}")
    cfg = cls(**kw)
    cfg.validate()
    return cfg


def create(kind: str | SAEConfig, **kw: Any) -> BaseSAE:
    """Build an SAE from a kind name and settings, or from a config instance (chapter 4)."""
    if isinstance(kind, SAEConfig):
        cfg = kind
        sae_cls = next(s for c, s in REGISTRY.values() if type(cfg) is c)
    else:
        cfg = make_config(kind, **kw)
        sae_cls = REGISTRY[kind][1]
    return sae_cls(cfg)

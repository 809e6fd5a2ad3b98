"""facestudy.models: the FaceModel interface, a registry of trainable backbones and the real pretrained
models (chapter 0b, "The real models in this book").

``create(name, **kw)`` builds a randomly initialised backbone; ``pretrained(name)`` loads real weights from
the data root; ``available()`` lists what exists.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

from ..errors import DataError, ParameterError
from .base import FaceModel, n_parameters, to_nchw_float  # noqa: F401
from .iresnet import IResNet, iresnet  # noqa: F401
from .mobilefacenet import MobileFaceNet, load_casia, load_mxnet  # noqa: F401
from .mxnet_params import read_params  # noqa: F401
from .smallcnn import SmallCNN  # noqa: F401


def _vit(**kw: Any) -> FaceModel:
    from . import vit  # written by the KP-RPE chapter; imported lazily

    factory = getattr(vit, "create", None) or getattr(vit, "ViT", None)
    if factory is None:
        raise ParameterError("facestudy.models.vit defines neither create() nor ViT; cannot build 'vit'")
    return factory(**kw)


BUILDERS: dict[str, Callable[..., FaceModel]] = {
    "mobilefacenet": MobileFaceNet,
    "iresnet18": lambda **kw: iresnet(18, **kw),
    "iresnet34": lambda **kw: iresnet(34, **kw),
    "iresnet50": lambda **kw: iresnet(50, **kw),
    "iresnet100": lambda **kw: iresnet(100, **kw),
    "smallcnn": SmallCNN,
    "vit": _vit,
}

# real checkpoints: manifest name -> (files, loader, published LFW %, our measured LFW %)
PRETRAINED: dict[str, dict[str, Any]] = {
    "mobilefacenet-ms1m": {
        "files": ("model-0000.params", "model-symbol.json"),
        "load": lambda p: load_mxnet(p[0], p[1]),
        "published_lfw": 99.47, "note": "InsightFace MobileFaceNet, MS1M-refine, ArcFace; LFW from its train.log",
    },
    "mobilefacenet-casia": {
        "files": ("068.ckpt",),
        "load": lambda p: load_casia(p[0]),
        "published_lfw": None, "note": "Xiaoccer MobileFaceNet_Pytorch, CASIA-WebFace, ArcFace",
    },
}


def create(name: str, **kw: Any) -> FaceModel:
    """A randomly initialised backbone by name: mobilefacenet, iresnet18/34/50/100, smallcnn, vit."""
    if name not in BUILDERS:
        raise ParameterError(f"unknown model {name!r}; valid models: {', '.join(BUILDERS)}")
    try:
        return BUILDERS[name](**kw)
    except TypeError as e:
        raise ParameterError(f"bad arguments for model {name!r}: {e}") from e


def _locate(name: str, file: str) -> Path:
    """A verified weights path: facestudy.data.locate on the manifest (``mobilefacenet_ms1m``, file
    ``models/<name>/<file>``) when the data layer knows it, else ``<data root>/models/<name>/<file>``."""
    rel = f"models/{name}/{file}"
    roots: list[Path] = []
    try:
        from .. import data as fdata
    except Exception:  # noqa: BLE001 - the data layer may be mid-rewrite; fall back to the env variable
        fdata = None
    if fdata is not None and hasattr(fdata, "locate") and hasattr(fdata, "manifests"):
        try:
            known = fdata.manifests()
        except DataError:
            known = {}
        for mname in (name.replace("-", "_"), name):
            if mname in known:
                return Path(fdata.locate(mname, rel))  # DataError here is actionable: let it through
    if fdata is not None and hasattr(fdata, "roots"):
        try:
            roots += [Path(r) for r in fdata.roots()]
        except Exception:  # noqa: BLE001
            pass
    env = os.environ.get("FACESTUDY_DATA", "")
    roots += [Path(r) for r in env.split(os.pathsep) if r]
    for root in roots:
        if (root / rel).exists():
            return root / rel
    raise DataError(f"weights file {rel} not found under the data root(s) {[str(r) for r in roots]}; "
                    f"set FACESTUDY_DATA (or the notebook's data_root) to the folder that holds {rel}")


def pretrained(name: str) -> FaceModel:
    """A real pretrained face model in eval mode: ``mobilefacenet-ms1m`` or ``mobilefacenet-casia``."""
    if name not in PRETRAINED:
        raise ParameterError(f"unknown pretrained model {name!r}; valid: {', '.join(PRETRAINED)}")
    spec = PRETRAINED[name]
    paths = [_locate(name, f) for f in spec["files"]]
    return spec["load"](paths)


def available() -> dict[str, list[str]]:
    """``{"create": [...], "pretrained": [names whose files are present]}``."""
    present = []
    for name, spec in PRETRAINED.items():
        try:
            [_locate(name, f) for f in spec["files"]]
            present.append(name)
        except DataError:
            pass
    return {"create": list(BUILDERS), "pretrained": present}

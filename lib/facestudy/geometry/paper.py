"""The paper profile's models for chapter 1 ("Attributes shape the embedding space").

The paper studies FaceNet, ArcFace R18/R50, AdaFace R18 and SphereFaceR checkpoints (METHODS.md 4.1). They are
not redistributable; a user puts them where the ``fr_checkpoints`` manifest says and this module loads them.
A missing file raises :class:`~facestudy.errors.DataError` naming the file and the manifest. The manifest
describes arcface_torch IResNet-50/100 files (read into :class:`~facestudy.models.iresnet.IResNet`) and
AdaFace's IR-101 Lightning checkpoint (read into :class:`~facestudy.models.irnet.IRNet`, AdaFace's own layout,
BGR input); a FaceNet (Inception-ResNet-v1) checkpoint has no loader here, so the paper profile's Euclidean
model is the softmax head trained in the chapter.
"""
from __future__ import annotations

import pickle

import torch

from ..errors import DataError, ParameterError

#: name -> (file in the fr_checkpoints manifest, architecture, metric, state-dict key prefix to strip);
#: architecture "iresnetN" = arcface_torch layout, "irN" = AdaFace / CVLface IR layout
PAPER_MODELS: dict[str, tuple[str, str, str, str]] = {
    "arcface_r50": ("checkpoints/arcface_iresnet50.pth", "iresnet50", "cosine", ""),
    "arcface_r100": ("checkpoints/arcface_iresnet100.pth", "iresnet100", "cosine", ""),
    "adaface_r100": ("checkpoints/adaface_ir101_webface4m.ckpt", "ir100", "cosine", "model."),
}


def require(names: list[str] | tuple[str, ...]) -> None:
    """Fail at once (DataError naming the file) if any paper checkpoint in ``names`` is absent. Chapter 1."""
    from .. import data as fdata

    for name in names:
        if name not in PAPER_MODELS:
            raise ParameterError(f"unknown paper model {name!r}; valid: {', '.join(PAPER_MODELS)}")
        file = PAPER_MODELS[name][0]
        try:
            fdata.locate("fr_checkpoints", file)
        except DataError as e:
            raise DataError(f"chapter 1's paper profile needs the user-supplied checkpoint {file} (manifest "
                            f"data_manifests/fr_checkpoints.yaml), or run profile='default'. {e}") from e


def load_paper_model(name: str) -> torch.nn.Module:
    """A user-supplied checkpoint as a FaceModel (chapter 1, paper profile)."""
    from .. import data as fdata
    from .. import models

    if name not in PAPER_MODELS:
        raise ParameterError(f"unknown paper model {name!r}; valid: {', '.join(PAPER_MODELS)}")
    file, arch, _, prefix = PAPER_MODELS[name]
    require([name])
    path = fdata.locate("fr_checkpoints", file)
    from ..models.iresnet import load_arcface_state

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:  # e.g. a Lightning .ckpt whose hyper-parameters pickle foreign classes
        raise DataError(
            f"{path} holds objects other than tensors ({str(e).splitlines()[0][:160]}); facestudy never unpickles "
            "code. Re-save only its weights once, where you trust the file (load it with torch.load's weights-only "
            "check off, then torch.save({'state_dict': ckpt['state_dict']}, same path)), and update its sha256 in "
            "data_manifests/fr_checkpoints.yaml") from None
    except Exception as e:  # a truncated file, or one that is not a weights-only pickle
        raise DataError(f"{path} cannot be read as a state dict ({type(e).__name__}: {str(e)[:160]}); is this "
                        "the checkpoint the manifest describes?") from None
    # strict: every key with its shape, nothing foreign (a renamed key is an error, not half a model)
    if arch.startswith("iresnet"):
        model = load_arcface_state(models.create(arch, embedding_dim=512), state, str(path), prefix)
    else:
        from ..models.irnet import IRNet

        model = load_arcface_state(IRNet(int(arch[2:])), state, str(path), prefix, layout="AdaFace IR")
    model.weights_tag = name
    return model.eval()

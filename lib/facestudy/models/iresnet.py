"""IResNet-18/34/50/100 (Deng et al., ArcFace) with insightface ``arcface_torch`` state-dict keys, so a
user's official ``.pth`` loads with ``load_state_dict`` (chapter 0b; the KD chapter uses them as teachers).

Keys: ``conv1, bn1, prelu, layer{1..4}.{i}.{bn1,conv1,bn2,prelu,conv2,bn3,downsample.0,downsample.1},
bn2, fc, features``. Input normalisation ``(x / 255 - 0.5) / 0.5`` on RGB, as in arcface_torch.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Sequence

import torch
from torch import nn

from ..errors import ParameterError
from .base import FaceModel, _as_size

LAYERS: dict[int, tuple[int, int, int, int]] = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 14, 3),
                                                100: (3, 13, 30, 3)}


class IBasicBlock(nn.Module):
    """BN -> conv3x3 -> BN -> PReLU -> conv3x3 (stride) -> BN, plus the (downsampled) input."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes, eps=1e-5)
        self.conv1 = nn.Conv2d(inplanes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes, eps=1e-5)
        self.prelu = nn.PReLU(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes, eps=1e-5)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride, bias=False),
                                            nn.BatchNorm2d(planes, eps=1e-5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        return out + (self.downsample(x) if self.downsample is not None else x)


class IResNet(FaceModel):
    """The arcface_torch IResNet; ``width`` scales the channels (1.0 = official) for CPU experiments."""

    def __init__(self, layers: Sequence[int], embedding_dim: int = 512, input_size: int | Sequence[int] = 112,
                 dropout: float = 0.0, width: float = 1.0, name: str = "iresnet") -> None:
        size = _as_size(input_size)
        if size[0] % 16 or size[1] % 16:
            raise ParameterError(f"IResNet input_size must be divisible by 16, got {size}")
        super().__init__(input_size=size, embedding_dim=embedding_dim, pixel_mean=127.5, pixel_std=127.5,
                         name=name)
        chans = [max(8, int(round(c * width))) for c in (64, 128, 256, 512)]
        self.conv1 = nn.Conv2d(3, chans[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(chans[0], eps=1e-5)
        self.prelu = nn.PReLU(chans[0])
        inplanes = chans[0]
        for li, (n, planes) in enumerate(zip(layers, chans, strict=True), start=1):
            blocks = []
            for i in range(n):
                blocks.append(IBasicBlock(inplanes, planes, 2 if i == 0 else 1))
                inplanes = planes
            setattr(self, f"layer{li}", nn.Sequential(*blocks))
        self.bn2 = nn.BatchNorm2d(inplanes, eps=1e-5)
        self.dropout = nn.Dropout(p=dropout)
        self.fc = nn.Linear(inplanes * (size[0] // 16) * (size[1] // 16), embedding_dim)
        # registered as "features" (the official key) but read through _modules, because FaceModel.features
        # is the layer-access method
        self._modules["features"] = nn.BatchNorm1d(embedding_dim, eps=1e-5)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0, 0.1)
            elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        self._modules["features"].weight.requires_grad = False

    def forward(self, x: torch.Tensor, keypoints: torch.Tensor | None = None) -> torch.Tensor:
        x = self.prelu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.dropout(self.bn2(x).flatten(1))
        return self._modules["features"](self.fc(x))


def iresnet(depth: int, **kw) -> IResNet:
    """IResNet-``depth`` (18, 34, 50 or 100)."""
    if depth not in LAYERS:
        raise ParameterError(f"IResNet depth must be one of {sorted(LAYERS)}, got {depth}")
    kw.setdefault("name", f"iresnet{depth}")
    return IResNet(LAYERS[depth], **kw)


def load_arcface_state(model: nn.Module, state: Mapping[str, Any], source: str = "state dict",
                       prefix: str = "", layout: str = "arcface_torch IResNet") -> nn.Module:
    """Load a released state dict into ``model`` strictly (the ``paper`` profile's reader; ``layout`` names
    the key layout in errors: arcface_torch IResNet, or AdaFace IR for :class:`~facestudy.models.irnet.IRNet`).

    ``state`` may wrap the weights under ``state_dict`` (a Lightning ``.ckpt``); keys starting with
    ``prefix`` (e.g. ``"model."``) are taken with it stripped, a DataParallel ``module.`` prefix is dropped.
    Every key of the model must be there with its shape (only BatchNorm's ``num_batches_tracked`` counters may
    be absent) and no foreign key may be left over: anything else is a DataError naming the keys and
    ``source``, so a renamed or truncated checkpoint never loads half its weights silently."""
    from ..errors import DataError

    if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping):
        raise DataError(f"{source}: holds a {type(state).__name__}, not an {layout} state dict")
    if prefix:
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
    want = model.state_dict()
    missing = [k for k in want if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in want]
    shapes = [f"{k} {tuple(state[k].shape)} (model: {tuple(want[k].shape)})" for k in want
              if k in state and tuple(getattr(state[k], "shape", ())) != tuple(want[k].shape)]
    if missing or unexpected or shapes:
        parts = [f"{len(missing)} missing (e.g. {', '.join(missing[:3])})" if missing else "",
                 f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})" if unexpected else "",
                 f"{len(shapes)} of another shape (e.g. {'; '.join(shapes[:2])})" if shapes else ""]
        raise DataError(f"{source} does not fit {model.name} ({layout} keys): "
                        f"{'; '.join(p for p in parts if p)}; supply an {layout} state dict of this "
                        f"depth (see data_manifests/fr_checkpoints.yaml)")
    model.load_state_dict(state, strict=False)
    return model

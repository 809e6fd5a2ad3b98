"""MobileFaceNet (Chen et al. 2018), trainable and loadable from the two real checkpoints (chapter 0b).

One module serves three uses:

- training from scratch (``width`` multiplier, ``embedding_dim``, ``input_size``);
- InsightFace's MS1M MobileFaceNet from MXNet ``model-0000.params`` (:func:`load_mxnet`): the symbol graph
  is ``conv_1 -> conv_2_dw -> dconv_23, res_3 x4 -> dconv_34, res_4 x6 -> dconv_45, res_5 x2 -> conv_6sep
  -> conv_6dw7_7 -> pre_fc1 (FC + bias) -> fc1 (BatchNorm, fixed gamma)``; MXNet BatchNorm's default
  epsilon is 1e-3 (fc1: 2e-5); the input normalisation ``(x - 127.5) * 0.0078125`` is our preprocess;
- the CASIA-WebFace MobileFaceNet from ``068.ckpt`` (:func:`load_casia`), 112x96 input.

The FC + bias + BatchNorm head equals a bias-free linear layer + BatchNorm whose running mean absorbs the
bias, so both checkpoints map onto the same modules.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from ..errors import DataError, ParameterError
from .base import FaceModel, _as_size
from .mxnet_params import read_params

# (expansion t, output channels c, repeats n, first stride s), as in the paper's Table 1
SETTING: tuple[tuple[int, int, int, int], ...] = ((2, 64, 5, 2), (4, 128, 1, 2), (2, 128, 6, 1),
                                                   (4, 128, 1, 2), (2, 128, 2, 1))


def _ch(c: int, width: float) -> int:
    return max(8, int(round(c * width / 8.0)) * 8)


class ConvBN(nn.Sequential):
    """Conv (no bias) -> BatchNorm -> PReLU (or nothing when ``act=False``)."""

    def __init__(self, cin: int, cout: int, kernel: int | tuple[int, int] = 1, stride: int = 1,
                 padding: int = 0, groups: int = 1, act: bool = True, eps: float = 1e-5) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride, padding, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=eps)
        self.act = nn.PReLU(cout) if act else nn.Identity()


class Bottleneck(nn.Module):
    """Inverted residual: 1x1 expand -> 3x3 depthwise (stride) -> 1x1 linear projection (+ skip)."""

    def __init__(self, cin: int, cout: int, stride: int, t: int, eps: float = 1e-5) -> None:
        super().__init__()
        hidden = cin * t
        self.expand = ConvBN(cin, hidden, 1, eps=eps)
        self.dw = ConvBN(hidden, hidden, 3, stride, 1, groups=hidden, eps=eps)
        self.project = ConvBN(hidden, cout, 1, act=False, eps=eps)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.dw(self.expand(x)))
        return x + y if self.residual else y


class MobileFaceNet(FaceModel):
    """MobileFaceNet backbone + GDC head -> ``embedding_dim`` (raw, unnormalised) embedding.

    Layer names for :meth:`features`: ``conv1``, ``conv2_dw``, ``blocks.0`` ... ``blocks.14``,
    ``conv_sep``, ``gdc``, ``fc``, ``emb_bn``.
    """

    def __init__(self, embedding_dim: int = 128, width: float = 1.0, input_size: int | Sequence[int] = 112,
                 bn_eps: float = 1e-5, emb_eps: float = 1e-5, setting: Sequence[Sequence[int]] = SETTING,
                 pixel_mean: float = 127.5, pixel_std: float = 128.0,
                 crop: tuple[int, int, int, int] | None = None, name: str = "mobilefacenet") -> None:
        size = _as_size(input_size)
        if size[0] % 16 or size[1] % 16:
            raise ParameterError(f"MobileFaceNet input_size must be divisible by 16, got {size}")
        super().__init__(input_size=size, embedding_dim=embedding_dim, pixel_mean=pixel_mean,
                         pixel_std=pixel_std, crop=crop, name=name)
        c64, c512 = _ch(64, width), _ch(512, width)
        self.width = width
        self.conv1 = ConvBN(3, c64, 3, 2, 1, eps=bn_eps)
        self.conv2_dw = ConvBN(c64, c64, 3, 1, 1, groups=c64, eps=bn_eps)
        blocks, cin = [], c64
        for t, c, n, s in setting:
            cout = _ch(c, width)
            for i in range(n):
                blocks.append(Bottleneck(cin, cout, s if i == 0 else 1, t, eps=bn_eps))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.conv_sep = ConvBN(cin, c512, 1, eps=bn_eps)
        self.gdc = ConvBN(c512, c512, (size[0] // 16, size[1] // 16), groups=c512, act=False, eps=bn_eps)
        self.fc = nn.Linear(c512, embedding_dim, bias=False)
        self.emb_bn = nn.BatchNorm1d(embedding_dim, eps=emb_eps)
        self._init()

    def _init(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.01)

    def forward(self, x: torch.Tensor, keypoints: torch.Tensor | None = None) -> torch.Tensor:
        x = self.blocks(self.conv2_dw(self.conv1(x)))
        x = self.gdc(self.conv_sep(x)).flatten(1)
        return self.emb_bn(self.fc(x))

    def tail(self, after: str = "conv_sep") -> nn.Module:
        """A trainable copy of the network *after* layer ``after`` (its output -> raw embedding).

        ``after`` is ``"conv_sep"`` (tail = GDC + FC + BatchNorm, the 7x7x512 map -> embedding) or
        ``"blocks.N"`` (tail = blocks N+1.. + conv_sep + GDC + FC + BatchNorm). Chapters 1, 3 and 5 train
        such tails on features cached by :func:`facestudy.eval.trunk.trunk_features` (the frozen trunk).
        """
        import copy

        n_blocks = len(self.blocks)
        if after == "conv_sep":
            start = n_blocks
            parts: list[nn.Module] = []
        elif after.startswith("blocks.") and after[7:].isdigit() and int(after[7:]) < n_blocks:
            start = int(after[7:]) + 1
            parts = [copy.deepcopy(self.blocks[i]) for i in range(start, n_blocks)] + [copy.deepcopy(self.conv_sep)]
        else:
            raise ParameterError(f"tail(after={after!r}): valid layers are 'conv_sep' and 'blocks.0' .. "
                                 f"'blocks.{n_blocks - 1}'")
        return _Tail(nn.Sequential(*parts), copy.deepcopy(self.gdc), copy.deepcopy(self.fc),
                     copy.deepcopy(self.emb_bn))


class _Tail(nn.Module):
    """The end of a MobileFaceNet: (optional blocks) -> GDC -> flatten -> FC -> BatchNorm (raw embedding)."""

    def __init__(self, body: nn.Module, gdc: nn.Module, fc: nn.Module, emb_bn: nn.Module) -> None:
        super().__init__()
        self.body, self.gdc, self.fc, self.emb_bn = body, gdc, fc, emb_bn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.emb_bn(self.fc(self.gdc(self.body(x)).flatten(1)))


# ------------------------------------------------------------------------------------- MXNet (MS1M)
_MX_BLOCKS = (["dconv_23"] + [f"res_3_block{i}" for i in range(4)] + ["dconv_34"]
              + [f"res_4_block{i}" for i in range(6)] + ["dconv_45"] + [f"res_5_block{i}" for i in range(2)])


def _mx_convbn(prefix: str, ours: str, act: bool = True) -> dict[str, str]:
    m = {f"{prefix}_conv2d_weight": f"{ours}.conv.weight",
         f"{prefix}_batchnorm_gamma": f"{ours}.bn.weight", f"{prefix}_batchnorm_beta": f"{ours}.bn.bias",
         f"{prefix}_batchnorm_moving_mean": f"{ours}.bn.running_mean",
         f"{prefix}_batchnorm_moving_var": f"{ours}.bn.running_var"}
    if act:
        m[f"{prefix}_relu_gamma"] = f"{ours}.act.weight"
    return m


def mxnet_name_map() -> dict[str, str]:
    """MXNet parameter name (without ``arg:``/``aux:``) -> our state-dict key (MS1M MobileFaceNet)."""
    m = {}
    m.update(_mx_convbn("conv_1", "conv1"))
    m.update(_mx_convbn("conv_2_dw", "conv2_dw"))
    for i, p in enumerate(_MX_BLOCKS):
        m.update(_mx_convbn(f"{p}_conv_sep", f"blocks.{i}.expand"))
        m.update(_mx_convbn(f"{p}_conv_dw", f"blocks.{i}.dw"))
        m.update(_mx_convbn(f"{p}_conv_proj", f"blocks.{i}.project", act=False))
    m.update(_mx_convbn("conv_6sep", "conv_sep"))
    m.update(_mx_convbn("conv_6dw7_7", "gdc", act=False))
    m.update({"fc1_weight": "fc.weight", "fc1_beta": "emb_bn.bias", "fc1_moving_mean": "emb_bn.running_mean",
              "fc1_moving_var": "emb_bn.running_var"})
    return m


def _check_symbol(symbol: Path) -> None:
    """The symbol graph must be the MobileFaceNet we map (same conv names, fc1 fixed-gamma BN)."""
    try:
        nodes = json.loads(symbol.read_text())["nodes"]
    except (OSError, ValueError, KeyError) as e:
        raise DataError(f"{symbol}: cannot read MXNet symbol JSON ({e}); re-download model-symbol.json") from e
    ops = {n["name"]: n for n in nodes}
    want = ["_minusscalar0", "_mulscalar0", "conv_1_conv2d", "conv_6dw7_7_conv2d", "pre_fc1", "fc1"]
    missing = [w for w in want if w not in ops]
    if missing:
        raise DataError(f"{symbol}: not the InsightFace MobileFaceNet graph (missing nodes {missing})")
    attrs = ops["_mulscalar0"].get("attrs", ops["_mulscalar0"].get("param", {}))
    if abs(float(attrs.get("scalar", 0)) - 0.0078125) > 1e-9:
        raise DataError(f"{symbol}: unexpected input scale {attrs.get('scalar')} (expected 0.0078125)")


def load_mxnet(params: str | Path, symbol: str | Path | None = None) -> MobileFaceNet:
    """The InsightFace MS1M MobileFaceNet (128-d) from its MXNet files (chapter 0b)."""
    params = Path(params)
    if symbol is not None:
        _check_symbol(Path(symbol))
    raw = {k.split(":", 1)[-1]: v for k, v in read_params(params).items()}
    model = MobileFaceNet(embedding_dim=128, width=1.0, input_size=112, bn_eps=1e-3, emb_eps=2e-5,
                          pixel_mean=127.5, pixel_std=128.0, name="mobilefacenet-ms1m")
    sd = model.state_dict()
    names = mxnet_name_map()
    new = {}
    for mx, ours in names.items():
        if mx not in raw:
            raise DataError(f"{params}: parameter {mx!r} missing; not the InsightFace MobileFaceNet checkpoint")
        arr = torch.from_numpy(np.ascontiguousarray(raw[mx])).float()
        if arr.shape != sd[ours].shape:
            raise DataError(f"{params}: {mx} has shape {tuple(arr.shape)}, expected {tuple(sd[ours].shape)}")
        new[ours] = arr
    # pre_fc1 bias folds into the BatchNorm's running mean; fix_gamma=True means gamma == 1
    new["emb_bn.running_mean"] = new["emb_bn.running_mean"] - torch.from_numpy(raw["pre_fc1_bias"]).float()
    new["emb_bn.weight"] = torch.ones(128)
    unused = set(raw) - set(names) - {"pre_fc1_bias", "fc1_gamma"}
    if unused:
        raise DataError(f"{params}: unexpected parameters {sorted(unused)[:5]}; not the checkpoint we map")
    for k in sd:
        if k.endswith("num_batches_tracked"):
            new[k] = sd[k]
    model.load_state_dict(new, strict=True)
    model.weights_tag = "mobilefacenet-ms1m"
    return model.eval()


# ------------------------------------------------------------------------------------- CASIA (torch)
def casia_key_map(keys: Sequence[str]) -> dict[str, str]:
    """``068.ckpt`` state-dict key -> our key (Xiaoccer/MobileFaceNet_Pytorch naming)."""
    sub = {"0": "expand.conv", "1": "expand.bn", "2": "expand.act", "3": "dw.conv", "4": "dw.bn",
           "5": "dw.act", "6": "project.conv", "7": "project.bn"}
    out = {}
    for k in keys:
        parts = k.split(".")
        if parts[0] == "blocks":
            ours = f"blocks.{parts[1]}.{sub[parts[3]]}.{parts[4]}"
        else:
            head = {"conv1": "conv1", "dw_conv1": "conv2_dw", "conv2": "conv_sep", "linear7": "gdc"}
            if parts[0] in head:
                ours = ".".join([head[parts[0]], {"prelu": "act"}.get(parts[1], parts[1]), *parts[2:]])
            elif parts[0] == "linear1":
                ours = ("fc.weight" if parts[1] == "conv" else "emb_bn." + ".".join(parts[2:]))
            else:
                raise DataError(f"068.ckpt: unexpected key {k!r}; not the CASIA MobileFaceNet checkpoint")
        out[k] = ours
    return out


def load_casia(ckpt: str | Path) -> MobileFaceNet:
    """The CASIA-WebFace MobileFaceNet (128-d, 112x96 = columns 8..103 of a 112x112 face)."""
    ckpt = Path(ckpt)
    try:
        obj = torch.load(ckpt, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means a bad file
        raise DataError(f"{ckpt}: cannot load with torch.load(weights_only=True) ({e}); re-download it") from e
    state = obj.get("net_state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict):
        raise DataError(f"{ckpt}: expected a dict with 'net_state_dict'")
    model = MobileFaceNet(embedding_dim=128, width=1.0, input_size=(112, 96), bn_eps=1e-5, emb_eps=1e-5,
                          pixel_mean=127.5, pixel_std=128.0, crop=(112, 112, 0, 8), name="mobilefacenet-casia")
    sd = model.state_dict()
    new = {}
    for k, ours in casia_key_map(list(state)).items():
        v = state[k]
        if ours == "fc.weight":
            v = v.reshape(v.shape[0], v.shape[1])
        if ours not in sd or tuple(v.shape) != tuple(sd[ours].shape):
            raise DataError(f"{ckpt}: key {k} (shape {tuple(v.shape)}) does not fit our MobileFaceNet")
        new[ours] = v
    model.load_state_dict(new, strict=True)
    model.weights_tag = "mobilefacenet-casia"
    return model.eval()

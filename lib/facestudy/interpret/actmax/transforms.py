"""Random image transforms applied before the model at each act-max step (chapter 4, METHODS §3.6).

Each transform is a callable ``(x NCHW, generator) -> x``; :func:`standard_transforms` is Lucid's set:
pad 12 (0.5), jitter 8, scale 0.90-1.10, rotate -10..10 degrees (plus five extra 0 entries), jitter 4.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

Transform = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


def _choice(values: Sequence[float], g: torch.Generator) -> float:
    return float(values[int(torch.randint(len(values), (1,), generator=g))])


def pad(width: int, value: float = 0.5) -> Transform:
    def t(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        return F.pad(x, (width,) * 4, value=value)
    return t


def jitter(d: int) -> Transform:
    """Random crop that shifts the image by an integer offset in [0, d)."""
    def t(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        if d <= 1:
            return x
        dy, dx = (int(v) for v in torch.randint(d, (2,), generator=g))
        h, w = x.shape[-2:]
        return x[..., dy:h - d + dy + 1, dx:w - d + dx + 1]
    return t


def _affine(x: torch.Tensor, scale: float, angle_deg: float) -> torch.Tensor:
    a = math.radians(angle_deg)
    cos, sin = math.cos(a) / scale, math.sin(a) / scale
    theta = torch.tensor([[cos, -sin, 0.0], [sin, cos, 0.0]], dtype=x.dtype, device=x.device)
    grid = F.affine_grid(theta.expand(len(x), 2, 3), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def random_scale(scales: Sequence[float]) -> Transform:
    def t(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        return _affine(x, _choice(scales, g), 0.0)
    return t


def random_rotate(angles: Sequence[float]) -> Transform:
    def t(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        return _affine(x, 1.0, _choice(angles, g))
    return t


def compose(transforms: Sequence[Transform]) -> Transform:
    def t(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        for tr in transforms:
            x = tr(x, g)
        return x
    return t


def standard_transforms() -> list[Transform]:
    """Lucid/Lucent's standard set, in order."""
    return [pad(12), jitter(8), random_scale([1 + (i - 5) / 50 for i in range(11)]),
            random_rotate(list(range(-10, 11)) + [0] * 5), jitter(4)]

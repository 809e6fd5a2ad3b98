"""Low-level image attributes as differentiable torch ops (chapter 1, "Attributes shape the embedding space").

Each op takes a uint8 NHWC batch (numpy or torch) and one value per image and returns uint8 NHWC numpy.
The values are in "attribute units" chosen so that 0 is the identity transform:

=============  ==========================================================  ==============
op             value                                                       neutral
=============  ==========================================================  ==============
illumination   azimuth of a point light, degrees (relit Lambertian proxy)  0
brightness     additive offset, fraction of full scale                     0
contrast       log of the contrast factor around the image's mean grey     0
hue            rotation of the chroma plane (YIQ), in turns                0
blur           Gaussian sigma in pixels (at the image's size)              0
roll           in-plane rotation about the centre, degrees                 0
scale          log zoom about the centre (positive = zoom in)              0
=============  ==========================================================  ==============

They serve the real-face lattices of the microscale test and the fine-tuning augmentations.

``illumination`` is the one *high-level* attribute of the paper (METHODS.md §4.3) that a photo allows: it
relights an aligned face as if its surface were an ellipsoid lit by a frontal ambient term plus a point light at
the given azimuth (positive = from the image's right), dividing out the frontal shading. It is a proxy (no real
normals, no cast shadows), but unlike brightness it changes the face side by side, as a turned lamp does.
"""
from __future__ import annotations

import math
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ParameterError

OPS: tuple[str, ...] = ("illumination", "brightness", "contrast", "hue", "blur", "roll", "scale")

# (low, high, step) per op: the range a lattice centre may take and the half-step of a curve.
RANGES: dict[str, tuple[float, float, float]] = {
    "illumination": (-60.0, 60.0, 15.0),
    "brightness": (-0.25, 0.25, 0.08),
    "contrast": (-0.5, 0.5, 0.15),
    "hue": (-0.12, 0.12, 0.04),
    "blur": (0.0, 2.0, 0.5),
    "roll": (-25.0, 25.0, 8.0),
    "scale": (-0.2, 0.2, 0.07),
}


def _to_float(images) -> torch.Tensor:
    x = torch.as_tensor(np.asarray(images) if not isinstance(images, torch.Tensor) else images)
    if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[-1] != 3:
        raise ParameterError(f"images must be uint8 NHWC RGB, got dtype {x.dtype} shape {tuple(x.shape)}")
    return x.permute(0, 3, 1, 2).float() / 255.0


def _to_uint8(x: torch.Tensor) -> np.ndarray:
    return (x.clamp(0, 1) * 255.0).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


def _values(values, n: int) -> torch.Tensor:
    v = torch.as_tensor(np.broadcast_to(np.asarray(values, dtype=np.float32), (n,)).copy())
    return v


# the aligned face (ArcFace 112-px template) as an ellipse in [-1, 1]^2 image coordinates: centre, half-axes
_FACE_ELLIPSE = (0.0, 0.1, 0.66, 0.95)
_AMBIENT = 0.35


def _face_normals(h: int, w: int) -> torch.Tensor:
    """Unit normals (3, h, w) of an ellipsoid over the face ellipse; outside it, the rim's normal."""
    cx, cy, ax, ay = _FACE_ELLIPSE
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    u, v = (xx - cx) / ax, (yy - cy) / ay
    r = torch.sqrt(u**2 + v**2).clamp_min(1e-6)
    scale = torch.where(r > 0.97, 0.97 / r, torch.ones_like(r))  # clamp to just inside the rim
    u, v = u * scale, v * scale
    n = torch.stack([u, v, torch.sqrt((1 - u**2 - v**2).clamp_min(0))])
    return n / n.norm(dim=0, keepdim=True)


def _illumination(x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    n = _face_normals(x.shape[2], x.shape[3])
    a = v * math.pi / 180.0
    light = torch.stack([torch.sin(a), torch.zeros_like(a), torch.cos(a)], 1)  # (N, 3)
    shade = _AMBIENT + (1 - _AMBIENT) * torch.einsum("nc,chw->nhw", light, n).clamp_min(0)
    front = _AMBIENT + (1 - _AMBIENT) * n[2].clamp_min(0)
    return x * (shade / front).unsqueeze(1)


def _brightness(x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return x + v.view(-1, 1, 1, 1)


def _contrast(x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    grey = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).mean(dim=(1, 2)).view(-1, 1, 1, 1)
    return grey + (x - grey) * torch.exp(v).view(-1, 1, 1, 1)


_RGB2YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_YIQ2RGB = torch.linalg.inv(_RGB2YIQ)


def _hue(x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    yiq = torch.einsum("ij,njhw->nihw", _RGB2YIQ, x)
    theta = 2 * math.pi * v
    c, s = torch.cos(theta).view(-1, 1, 1), torch.sin(theta).view(-1, 1, 1)
    i, q = yiq[:, 1], yiq[:, 2]
    yiq = torch.stack([yiq[:, 0], c * i - s * q, s * i + c * q], dim=1)
    return torch.einsum("ij,njhw->nihw", _YIQ2RGB, yiq)


def _blur(x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Per-image Gaussian blur as one grouped convolution (each image gets its own separable kernel)."""
    smax = float(v.max()) if len(v) else 0.0
    if smax <= 1e-3:
        return x
    n, c, h, w = x.shape
    r = max(1, int(math.ceil(3 * smax)))
    t = torch.arange(-r, r + 1, dtype=torch.float32)
    s = v.clamp_min(1e-3).view(-1, 1)
    k = torch.exp(-0.5 * (t.view(1, -1) / s) ** 2)
    k = k / k.sum(1, keepdim=True)
    k = k.repeat_interleave(c, dim=0)  # (n*c, 2r+1)
    xs = F.pad(x.reshape(1, n * c, h, w), (r, r, r, r), mode="replicate")
    xs = F.conv2d(xs, k.view(n * c, 1, 1, -1), groups=n * c)
    xs = F.conv2d(xs, k.view(n * c, 1, -1, 1), groups=n * c)
    out = xs.view(n, c, h, w)
    sharp = (v <= 1e-3).view(-1, 1, 1, 1)
    return torch.where(sharp, x, out)


def _affine(x: torch.Tensor, angle_deg: torch.Tensor, log_zoom: torch.Tensor) -> torch.Tensor:
    a = angle_deg * math.pi / 180.0
    z = torch.exp(-log_zoom)  # sampling grid shrinks when we zoom in
    cos, sin = torch.cos(a) * z, torch.sin(a) * z
    theta = torch.zeros(len(x), 2, 3)
    theta[:, 0, 0], theta[:, 0, 1] = cos, -sin
    theta[:, 1, 0], theta[:, 1, 1] = sin, cos
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _roll(x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return _affine(x, v, torch.zeros_like(v))


def _scale(x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return _affine(x, torch.zeros_like(v), v)


_FUNCS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "illumination": _illumination, "brightness": _brightness, "contrast": _contrast, "hue": _hue, "blur": _blur,
    "roll": _roll, "scale": _scale,
}


def apply(images, op: str, values) -> np.ndarray:
    """Apply one low-level attribute ``op`` with one value per image (or a scalar). Chapter 1."""
    return apply_many(images, {op: values})


def apply_many(images, params: Mapping[str, Sequence[float] | float], order: Sequence[str] = OPS) -> np.ndarray:
    """Apply several ops in the fixed order ``order`` (colour first, then blur, then geometry). Chapter 1."""
    for op in params:
        if op not in _FUNCS:
            raise ParameterError(f"unknown image op {op!r}; valid ops: {', '.join(OPS)}")
    x = _to_float(images)
    n = len(x)
    if n == 0:
        return np.zeros((0, *np.asarray(images).shape[1:]), np.uint8)
    for op in order:
        if op in params:
            x = _FUNCS[op](x, _values(params[op], n)).clamp(0, 1)
    return _to_uint8(x)

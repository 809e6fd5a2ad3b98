"""Differentiable image parameterisations for activation maximisation (chapter 4, METHODS §3.6).

Each is an ``nn.Module`` whose ``forward()`` returns a batch (B, C, H, W) in [0, 1] with C = 3, or C = 4
when ``alpha=True`` (the 4th channel is the opacity). Registry: :data:`PARAMETERISATIONS`.

* :class:`PixelParam` - RGB pixel logits N(0, 0.01), sigmoid (optionally colour-decorrelated);
* :class:`FFTParam` - a 1/f-scaled Fourier spectrum, irfft2 (norm='ortho') / 4, colour decorrelation, sigmoid;
* :class:`CPPNParam` - a compositional pattern-producing network on a coordinate grid;
* :class:`DIPParam` - a deep-image-prior skip net fed with fixed noise.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ...errors import ParameterError

COLOR_CORRELATION_SQRT = torch.tensor([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]])
COLOR_NORM = COLOR_CORRELATION_SQRT / COLOR_CORRELATION_SQRT.norm(dim=0).max()


def decorrelate_colors(t: torch.Tensor) -> torch.Tensor:
    """Per-pixel rgb = t . C_norm^T on the first 3 channels (Lucid's colour decorrelation)."""
    rgb = torch.einsum("bchw,dc->bdhw", t[:, :3], COLOR_NORM.to(t))
    return torch.cat([rgb, t[:, 3:]], 1)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class PixelParam(nn.Module):
    """RGB(A) pixel logits, N(0, sd), squashed with a sigmoid."""

    def __init__(self, h: int, w: int, batch: int = 1, alpha: bool = False, sd: float = 0.01,
                 decorrelate: bool = False, seed: int = 0):
        super().__init__()
        c = 4 if alpha else 3
        self.decorrelate = decorrelate
        self.logits = nn.Parameter(torch.randn(batch, c, h, w, generator=_gen(seed)) * sd)

    def forward(self) -> torch.Tensor:
        t = decorrelate_colors(self.logits) if self.decorrelate else self.logits
        return torch.sigmoid(t)


def fft_scale(h: int, w: int, decay_power: float = 1.0) -> torch.Tensor:
    """1 / max(f, 1/max(h, w)) ** decay_power on the rfft2 grid (shape (h, w//2 + 1))."""
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    f = np.sqrt(fx ** 2 + fy ** 2)
    return torch.tensor(1.0 / np.maximum(f, 1.0 / max(h, w)) ** decay_power, dtype=torch.float32)


def fft_image(spectrum: torch.Tensor, scale: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Spatial image from a (B, C, H, W//2+1, 2) real/imag spectrum, scaled, irfft2 'ortho', / 4."""
    z = torch.view_as_complex(spectrum.contiguous()) * scale
    return torch.fft.irfft2(z, s=(h, w), norm="ortho")[..., :h, :w] / 4.0


class FFTParam(nn.Module):
    """Fourier-basis parameterisation with 1/f^decay scaling and colour decorrelation (Lucid)."""

    def __init__(self, h: int, w: int, batch: int = 1, alpha: bool = False, sd: float = 0.01,
                 decay_power: float = 1.0, decorrelate: bool = True, seed: int = 0):
        super().__init__()
        c = 4 if alpha else 3
        self.h, self.w, self.decorrelate = h, w, decorrelate
        self.spectrum = nn.Parameter(torch.randn(batch, c, h, w // 2 + 1, 2, generator=_gen(seed)) * sd)
        self.register_buffer("scale", fft_scale(h, w, decay_power))

    def forward(self) -> torch.Tensor:
        t = fft_image(self.spectrum, self.scale, self.h, self.w)
        if self.decorrelate:
            t = decorrelate_colors(t)
        return torch.sigmoid(t)


def random_fft_background(batch: int, h: int, w: int, generator: torch.Generator, sd: float = 0.2,
                          decay_power: float = 1.5) -> torch.Tensor:
    """A fresh random FFT image (Lucid's background for transparent optimisation)."""
    spec = torch.randn(batch, 3, h, w // 2 + 1, 2, generator=generator) * sd
    return torch.sigmoid(decorrelate_colors(fft_image(spec, fft_scale(h, w, decay_power), h, w)))


class CompositeActivation(nn.Module):
    """[atan(x) / 0.67, atan(x)^2 / 0.6] (doubles the channels)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = torch.atan(x)
        return torch.cat([a / 0.67, a * a / 0.6], 1)


class CPPNParam(nn.Module):
    """CPPN: 1x1 convolutions over a [-sqrt3, sqrt3]^2 coordinate grid, composite activations, last layer
    zero-initialised, sigmoid output. One network per batch element."""

    def __init__(self, h: int, w: int, batch: int = 1, alpha: bool = False, n_layers: int = 8,
                 hidden: int = 24, seed: int = 0):
        super().__init__()
        r = math.sqrt(3.0)
        ys = torch.linspace(-r, r, h)
        xs = torch.linspace(-r, r, w)
        grid = torch.stack(torch.meshgrid(ys, xs, indexing="ij"))[None]
        self.register_buffer("grid", grid)
        c_out = 4 if alpha else 3
        g = _gen(seed)
        self.nets = nn.ModuleList()
        for _ in range(batch):
            layers: list[nn.Module] = []
            c_in = 2
            for _ in range(n_layers):
                conv = nn.Conv2d(c_in, hidden, 1)
                with torch.no_grad():
                    conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) * math.sqrt(1.0 / c_in))
                    conv.bias.zero_()
                layers += [conv, CompositeActivation()]
                c_in = 2 * hidden
            last = nn.Conv2d(c_in, c_out, 1)
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)
            layers += [last, nn.Sigmoid()]
            self.nets.append(nn.Sequential(*layers))

    def forward(self) -> torch.Tensor:
        return torch.cat([net(self.grid) for net in self.nets])


def _conv_bn(c_in: int, c_out: int, k: int, stride: int = 1) -> nn.Sequential:
    pad = (k - 1) // 2
    layers: list[nn.Module] = []
    if pad:
        layers.append(nn.ReflectionPad2d(pad))
    layers += [nn.Conv2d(c_in, c_out, k, stride=stride), nn.BatchNorm2d(c_out), nn.LeakyReLU(0.2)]
    return nn.Sequential(*layers)


class SkipNet(nn.Module):
    """Deep-image-prior ``skip`` network: stride-2 3x3 down convs, bilinear x2 up, 1x1 up convs,
    4-channel skips, Conv-BN-LeakyReLU(0.2) with reflection padding, sigmoid output."""

    def __init__(self, c_in: int = 32, c_out: int = 3, channels: int = 128, skip: int = 4, scales: int = 5):
        super().__init__()
        self.down = nn.ModuleList()
        self.skips = nn.ModuleList()
        self.up = nn.ModuleList()
        c = c_in
        for _ in range(scales):
            self.skips.append(_conv_bn(c, skip, 1))
            self.down.append(nn.Sequential(_conv_bn(c, channels, 3, stride=2), _conv_bn(channels, channels, 3)))
            c = channels
        for _ in range(scales):
            self.up.append(nn.Sequential(nn.BatchNorm2d(channels + skip), _conv_bn(channels + skip, channels, 3),
                                         _conv_bn(channels, channels, 1)))
        self.out = nn.Conv2d(channels, c_out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for skip, down in zip(self.skips, self.down, strict=True):
            skips.append(skip(x))
            x = down(x)
        for up, s in zip(self.up, reversed(skips), strict=True):
            x = F.interpolate(x, size=s.shape[-2:], mode="bilinear", align_corners=False)
            x = up(torch.cat([x, s], 1))
        return torch.sigmoid(self.out(x))


class DIPParam(nn.Module):
    """Deep image prior: a :class:`SkipNet` on fixed uniform noise x 0.1; ``noise_reg`` (sigma = 1/30 in
    the denoising notebook) perturbs the input each training-mode call."""

    def __init__(self, h: int, w: int, batch: int = 1, alpha: bool = False, channels: int = 128,
                 scales: int = 5, input_channels: int = 32, noise_reg: float = 1.0 / 30, seed: int = 0):
        super().__init__()
        if min(h, w) < 2 ** scales:
            raise ParameterError(f"DIP with {scales} scales needs images of at least {2 ** scales} px, got {h}x{w}")
        g = _gen(seed)
        torch.manual_seed(seed)
        self.net = SkipNet(input_channels, 4 if alpha else 3, channels, 4, scales)
        self.register_buffer("noise", torch.rand(batch, input_channels, h, w, generator=g) * 0.1)
        self.noise_reg = noise_reg
        self._g = _gen(seed + 1)

    def forward(self) -> torch.Tensor:
        z = self.noise
        if self.training and self.noise_reg > 0:
            z = z + torch.randn(z.shape, generator=self._g).to(z) * self.noise_reg
        return self.net(z)


PARAMETERISATIONS = {"rgb": PixelParam, "fft": FFTParam, "cppn": CPPNParam, "dip": DIPParam}


def make(name: str, h: int, w: int, batch: int = 1, alpha: bool = False, seed: int = 0, **kw) -> nn.Module:
    """Build a parameterisation by name ('rgb' | 'fft' | 'cppn' | 'dip'), chapter 4."""
    if name not in PARAMETERISATIONS:
        raise ParameterError(f"unknown parameterisation {name!r}; valid: {', '.join(PARAMETERISATIONS)}")
    return PARAMETERISATIONS[name](h, w, batch=batch, alpha=alpha, seed=seed, **kw)

"""Activation-maximisation objectives (chapter 4, METHODS §3.6), composable with + - * like lucent's.

An :class:`Objective` maps a dict of activations ``{layer name: tensor}`` to one scalar to **maximise**.
The special names ``"input"`` (the image being optimised, NCHW in [0, 1]) and ``"embedding"`` (the FR
model's raw output) are always available. Regularisers (:func:`l1`, :func:`l2`, :func:`tv`) return
penalties, so subtract them with positive weights: ``channel("conv_2", 3) - 1e-4 * tv()``.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from ...errors import ParameterError

Acts = dict[str, torch.Tensor]


class Objective:
    """A differentiable scalar of activations; ``a + b``, ``a - b``, ``2 * a``, ``a * b`` compose."""

    def __init__(self, fn: Callable[[Acts], torch.Tensor], name: str, layers: tuple[str, ...] = ()):
        self.fn, self.name, self.layers = fn, name, tuple(dict.fromkeys(layers))

    def __call__(self, acts: Acts) -> torch.Tensor:
        missing = [n for n in self.layers if n not in acts]
        if missing:
            raise ParameterError(f"objective {self.name!r} needs activations of {missing}")
        return self.fn(acts)

    def _combine(self, other, op: str) -> "Objective":
        if isinstance(other, Objective):
            f, g = self.fn, other.fn
            fns = {"+": lambda a: f(a) + g(a), "-": lambda a: f(a) - g(a), "*": lambda a: f(a) * g(a)}
            return Objective(fns[op], f"({self.name} {op} {other.name})", self.layers + other.layers)
        if isinstance(other, (int, float)):
            c, f = float(other), self.fn
            fns = {"+": lambda a: f(a) + c, "-": lambda a: f(a) - c, "*": lambda a: f(a) * c}
            return Objective(fns[op], f"({self.name} {op} {c:g})", self.layers)
        return NotImplemented

    def __add__(self, other):
        return self._combine(other, "+")

    def __radd__(self, other):
        return self._combine(other, "+")

    def __sub__(self, other):
        return self._combine(other, "-")

    def __rsub__(self, other):
        return (-self)._combine(other, "+")

    def __mul__(self, other):
        return self._combine(other, "*")

    def __rmul__(self, other):
        return self._combine(other, "*")

    def __neg__(self):
        return self._combine(-1.0, "*")

    def __repr__(self) -> str:
        return f"Objective({self.name})"


def _check_unit(t: torch.Tensor, n: int, layer: str) -> None:
    if not 0 <= n < t.shape[1]:
        raise ParameterError(f"unit {n} out of range for layer {layer!r} with {t.shape[1]} channels/units")


def channel(layer: str, n: int) -> Objective:
    """Mean activation of channel ``n`` of ``layer`` (over space and batch)."""
    def fn(a: Acts) -> torch.Tensor:
        t = a[layer]
        _check_unit(t, n, layer)
        return t[:, n].mean()
    return Objective(fn, f"channel({layer}:{n})", (layer,))


def neuron(layer: str, n: int, x: int | None = None, y: int | None = None) -> Objective:
    """Unit ``n`` of a 1-D layer (e.g. one embedding dimension), or the (centre / given) spatial position
    of channel ``n`` of a conv layer."""
    def fn(a: Acts) -> torch.Tensor:
        t = a[layer]
        _check_unit(t, n, layer)
        if t.ndim == 2:
            return t[:, n].mean()
        yy = t.shape[2] // 2 if y is None else y
        xx = t.shape[3] // 2 if x is None else x
        return t[:, n, yy, xx].mean()
    return Objective(fn, f"neuron({layer}:{n})", (layer,))


def layer(layer_name: str) -> Objective:
    """'DeepDream' objective: mean squared activation of a whole layer."""
    return Objective(lambda a: a[layer_name].pow(2).mean(), f"layer({layer_name})", (layer_name,))


def direction(layer_name: str, vec: torch.Tensor) -> Objective:
    """Cosine similarity between ``vec`` and the layer's activation (a template direction for
    ``"embedding"``; channel-wise at every position for conv layers)."""
    v = torch.as_tensor(vec, dtype=torch.float32).flatten()

    def fn(a: Acts) -> torch.Tensor:
        t = a[layer_name]
        if t.shape[1] != len(v):
            raise ParameterError(f"direction has {len(v)} entries but layer {layer_name!r} has {t.shape[1]}")
        vv = v.to(t.device).view(1, -1, *([1] * (t.ndim - 2)))
        return F.cosine_similarity(t, vv.expand_as(t), dim=1).mean()
    return Objective(fn, f"direction({layer_name})", (layer_name,))


def sae_latent(sae, i: int, layer_name: str = "embedding", normalize: bool = True,
               preactivation: bool = True) -> Objective:
    """Latent ``i`` of an SAE trained on (L2-normalised when ``normalize``) activations of ``layer_name``.

    ``preactivation=True`` maximises the latent's encoder pre-activation, which has a gradient even while
    the (Top-K / JumpReLU / gated) latent is switched off; False maximises the latent value f_i itself.
    """
    if not 0 <= i < sae.n_latents:
        raise ParameterError(f"SAE latent {i} out of range (the SAE has {sae.n_latents} latents)")

    def fn(a: Acts) -> torch.Tensor:
        t = a[layer_name].flatten(1)
        if normalize:
            t = F.normalize(t, dim=1)
        if preactivation:
            return sae.preactivation(t)[:, i].mean()
        return sae.encode(t)[:, i].mean()
    return Objective(fn, f"sae_latent({layer_name}:{i})", (layer_name,))


def l1(layer_name: str = "input", constant: float = 0.0) -> Objective:
    """Penalty sum |T - c| (subtract it)."""
    return Objective(lambda a: (a[layer_name] - constant).abs().sum(), f"L1({layer_name})", (layer_name,))


def l2(layer_name: str = "input", constant: float = 0.0, eps: float = 1e-6) -> Objective:
    """Penalty sqrt(eps + sum (T - c)^2) (subtract it)."""
    return Objective(lambda a: (eps + (a[layer_name] - constant).pow(2).sum()).sqrt(), f"L2({layer_name})",
                     (layer_name,))


def tv(layer_name: str = "input") -> Objective:
    """Total variation penalty: sum of absolute neighbour differences (subtract it)."""
    def fn(a: Acts) -> torch.Tensor:
        t = a[layer_name]
        return (t[..., 1:, :] - t[..., :-1, :]).abs().sum() + (t[..., :, 1:] - t[..., :, :-1]).abs().sum()
    return Objective(fn, f"TV({layer_name})", (layer_name,))


def diversity(layer_name: str) -> Objective:
    """Lucid's diversity term -(1/B) sum_{i != j} <G_i, G_j> of Frobenius-normalised per-image Gram
    matrices (for 1-D layers the normalised outer product of the embedding); add it with a weight."""
    def fn(a: Acts) -> torch.Tensor:
        t = a[layer_name]
        b = t.shape[0]
        feats = t.flatten(2) if t.ndim > 2 else t.unsqueeze(-1)
        gram = feats @ feats.transpose(1, 2)
        gram = gram / gram.flatten(1).norm(dim=1).clamp_min(1e-12).view(b, 1, 1)
        flat = gram.flatten(1)
        sims = flat @ flat.T
        return -(sims.sum() - sims.diagonal().sum()) / b
    return Objective(fn, f"diversity({layer_name})", (layer_name,))

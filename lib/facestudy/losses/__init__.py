"""facestudy.losses: classification heads for face recognition (chapter 0b introduces them; chapter 3 uses
AdaFace, chapter 5 SphereFace2).

Every head is an ``nn.Module`` holding the class weights: ``head(embeddings, labels) -> loss`` (scalar) and
``head.logits(embeddings, labels) -> (B, n_classes)`` (the margin-adjusted, scaled logits the loss is
computed from; with ``labels=None``: no margin). Embeddings are the raw backbone outputs; heads normalise
them where the method says so (AdaFace also reads their norms).

- ``softmax``: a plain linear classifier with bias + cross-entropy.
- ``combined``: target logit ``s * (psi(m1 * theta + m2) - m3)`` (insightface's combined margin), where
  ``psi`` = cos on [0, pi] and SphereFace's monotone extension ``(-1)^k cos(t) - 2k`` beyond;
  ``sphereface`` = (m1=1.35, 0, 0), ``arcface`` = (1, 0.5, 0), ``cosface`` = (1, 0, 0.35); s = 64.
- ``adaface``: METHODS.md section 1.6 (m=0.4, h=0.333, s=64, EMA norm statistics alpha=0.01, init 20/100).
- ``sphereface2``: METHODS.md section 5.1 (binary one-vs-all, lambda=0.7, r=40, m=0.4, t=3, lw=50,
  bias initialised to balance the initial loss).
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ParameterError

_EPS = 1e-7


def _check(emb: torch.Tensor, labels: torch.Tensor | None, n_classes: int, dim: int) -> None:
    if emb.ndim != 2 or emb.shape[1] != dim:
        raise ParameterError(f"head expects embeddings of shape (B, {dim}), got {tuple(emb.shape)}")
    if labels is not None:
        if labels.shape != (emb.shape[0],):
            raise ParameterError(f"labels must have shape ({emb.shape[0]},), got {tuple(labels.shape)}")
        if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= n_classes):
            raise ParameterError(f"labels must lie in 0..{n_classes - 1} (n_classes={n_classes}); got "
                                 f"{int(labels.min())}..{int(labels.max())}. Relabel the FaceSet "
                                 f"(faceset.relabel()) or raise n_classes")


class Head(nn.Module):
    """Base: a weight matrix (n_classes, D) and the cosine between normalised embeddings and weights."""

    def __init__(self, embedding_dim: int, n_classes: int) -> None:
        super().__init__()
        if embedding_dim < 1 or n_classes < 2:
            raise ParameterError(f"a head needs embedding_dim >= 1 and n_classes >= 2, got "
                                 f"{embedding_dim}, {n_classes}")
        self.embedding_dim, self.n_classes = int(embedding_dim), int(n_classes)
        self.weight = nn.Parameter(torch.empty(n_classes, embedding_dim))
        nn.init.normal_(self.weight, std=0.01)

    def cosine(self, emb: torch.Tensor) -> torch.Tensor:
        return F.linear(F.normalize(emb.float(), dim=1), F.normalize(self.weight.float(), dim=1)).clamp(-1, 1)

    def logits(self, emb: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, emb: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self.logits(emb, labels), labels)


class SoftmaxHead(Head):
    """Plain softmax: ``W f + b`` on the raw embedding, cross-entropy."""

    def __init__(self, embedding_dim: int, n_classes: int) -> None:
        super().__init__(embedding_dim, n_classes)
        self.bias = nn.Parameter(torch.zeros(n_classes))

    def logits(self, emb: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        _check(emb, labels, self.n_classes, self.embedding_dim)
        return F.linear(emb.float(), self.weight.float(), self.bias.float())


def psi(t: torch.Tensor) -> torch.Tensor:
    """cos(t) on [0, pi], continued monotonically as ``(-1)^k cos(t) - 2k`` (k = floor(t / pi))."""
    k = torch.floor(t / math.pi).clamp(min=0)
    sign = 1.0 - 2.0 * torch.remainder(k, 2)
    return sign * torch.cos(t) - 2.0 * k


class CombinedMarginHead(Head):
    """``s * (psi(m1 theta_y + m2) - m3)`` for the target class, ``s * cos theta_j`` for the others."""

    def __init__(self, embedding_dim: int, n_classes: int, m1: float = 1.0, m2: float = 0.5, m3: float = 0.0,
                 s: float = 64.0) -> None:
        super().__init__(embedding_dim, n_classes)
        if m1 < 1.0 or m2 < 0 or m3 < 0 or s <= 0:
            raise ParameterError(f"combined margin needs m1 >= 1, m2 >= 0, m3 >= 0, s > 0; got "
                                 f"m1={m1}, m2={m2}, m3={m3}, s={s}")
        self.m1, self.m2, self.m3, self.s = float(m1), float(m2), float(m3), float(s)

    def logits(self, emb: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        _check(emb, labels, self.n_classes, self.embedding_dim)
        cos = self.cosine(emb)
        if labels is None:
            return self.s * cos
        idx = torch.arange(len(labels), device=cos.device)
        cos_y = cos[idx, labels].clamp(-1 + _EPS, 1 - _EPS)
        target = psi(self.m1 * torch.acos(cos_y) + self.m2) - self.m3
        out = cos.clone()
        out[idx, labels] = target
        return self.s * out


class AdaFaceHead(Head):
    """AdaFace (Kim et al. 2022): an image-quality-adaptive margin driven by the feature norm.

    ``z = clip(h (||f|| - mu) / (sigma + 1e-3), -1, 1)``; target logit ``s [cos(theta_y - m z) - (m + m z)]``.
    mu / sigma are EMA buffers (alpha = 0.01, init 20 / 100) updated in training mode only.
    ``straight_through=True`` applies the margin without gradient (CVLface); default differentiable.
    """

    def __init__(self, embedding_dim: int, n_classes: int, m: float = 0.4, h: float = 0.333, s: float = 64.0,
                 t_alpha: float = 0.01, straight_through: bool = False) -> None:
        super().__init__(embedding_dim, n_classes)
        self.m, self.h, self.s, self.t_alpha = float(m), float(h), float(s), float(t_alpha)
        self.straight_through = bool(straight_through)
        self.register_buffer("batch_mean", torch.tensor(20.0))
        self.register_buffer("batch_std", torch.tensor(100.0))

    def margin_scaler(self, emb: torch.Tensor, update: bool) -> torch.Tensor:
        norms = emb.detach().float().norm(dim=1).clamp(0.001, 100)
        if update and len(norms) > 1:
            with torch.no_grad():
                a = self.t_alpha
                self.batch_mean.mul_(1 - a).add_(a * norms.mean())
                self.batch_std.mul_(1 - a).add_(a * norms.std())
        z = (norms - self.batch_mean) / (self.batch_std + 1e-3) * self.h
        return z.clamp(-1, 1)

    def logits(self, emb: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        _check(emb, labels, self.n_classes, self.embedding_dim)
        cos = self.cosine(emb)
        if labels is None:
            return self.s * cos
        z = self.margin_scaler(emb, update=self.training)
        idx = torch.arange(len(labels), device=cos.device)
        cos_y = cos[idx, labels].clamp(-1 + 1e-3, 1 - 1e-3)
        theta = torch.acos(cos_y)
        theta_m = (theta - self.m * z).clamp(1e-3, math.pi - 1e-3)
        target = torch.cos(theta_m) - (self.m + self.m * z)
        if self.straight_through:
            target = cos_y + (target - cos_y).detach()
        out = cos.clone()
        out[idx, labels] = target
        return self.s * out


class SphereFace2Head(Head):
    """SphereFace2 (Wen et al. 2022): binary one-vs-all classification with a straight-through margin.

    logits ``r (cos + d) + b`` with ``d = g~(cos) - cos`` computed without gradient, ``g(z) = 2((z+1)/2)^t - 1``,
    ``g~ = g - m`` for the target, ``+ m`` otherwise; loss = weighted BCE (lambda target, 1-lambda others)
    x ``lw N / r``, mean over the B x N entries. ``b`` is a learnable scalar initialised so the initial
    loss is balanced (METHODS.md 5.1).
    """

    def __init__(self, embedding_dim: int, n_classes: int, lamb: float = 0.7, r: float = 40.0, m: float = 0.4,
                 t: float = 3.0, lw: float = 50.0) -> None:
        super().__init__(embedding_dim, n_classes)
        if not 0 < lamb < 1:
            raise ParameterError(f"sphereface2 lamb must lie in (0, 1), got {lamb}")
        self.lamb, self.r, self.m, self.t, self.lw = float(lamb), float(r), float(m), float(t), float(lw)
        nn.init.xavier_normal_(self.weight)
        self.bias = nn.Parameter(torch.tensor(self.initial_bias(n_classes, lamb, r, m, t)))

    @staticmethod
    def initial_bias(n_classes: int, lamb: float, r: float, m: float, t: float) -> float:
        """b0 = log(2z) - a_i - log(1 - z + sqrt((1 - z)^2 + 4 z e^(a_y - a_i))), z = lamb/((1-lamb)(N-1))."""
        z = lamb / ((1 - lamb) * (n_classes - 1))
        a_y = r * (2 * 0.5 ** t - 1 - m)
        a_i = r * (2 * 0.5 ** t - 1 + m)
        return math.log(2 * z) - a_i - math.log(1 - z + math.sqrt((1 - z) ** 2 + 4 * z * math.exp(a_y - a_i)))

    def g(self, z: torch.Tensor) -> torch.Tensor:
        return 2 * ((z + 1) / 2) ** self.t - 1

    def logits(self, emb: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        _check(emb, labels, self.n_classes, self.embedding_dim)
        if self.training:
            with torch.no_grad():  # weights renormalised in place each step, as in opensphere
                self.weight.data = F.normalize(self.weight.data, dim=1)
        cos = self.cosine(emb)
        with torch.no_grad():
            d = self.g(cos) - cos
            if labels is not None:
                sign = -torch.ones_like(cos)
                sign[torch.arange(len(labels), device=cos.device), labels] = 1.0
                d = d - self.m * sign
            else:
                d = torch.zeros_like(cos)
        return self.r * (cos + d) + self.bias

    def forward(self, emb: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits = self.logits(emb, labels)
        onehot = F.one_hot(labels, self.n_classes).to(logits.dtype)
        weight = self.lamb * onehot + (1 - self.lamb) * (1 - onehot)
        bce = F.binary_cross_entropy_with_logits(logits, onehot, weight=weight, reduction="mean")
        return bce * self.lw * self.n_classes / self.r


HEADS: dict[str, Any] = {
    "softmax": lambda d, n, **kw: SoftmaxHead(d, n, **kw),
    "combined": lambda d, n, **kw: CombinedMarginHead(d, n, **kw),
    "sphereface": lambda d, n, **kw: CombinedMarginHead(d, n, **{"m1": 1.35, "m2": 0.0, "m3": 0.0, **kw}),
    "arcface": lambda d, n, **kw: CombinedMarginHead(d, n, **{"m1": 1.0, "m2": 0.5, "m3": 0.0, **kw}),
    "cosface": lambda d, n, **kw: CombinedMarginHead(d, n, **{"m1": 1.0, "m2": 0.0, "m3": 0.35, **kw}),
    "adaface": lambda d, n, **kw: AdaFaceHead(d, n, **kw),
    "sphereface2": lambda d, n, **kw: SphereFace2Head(d, n, **kw),
}


def make_head(name: str, embedding_dim: int, n_classes: int, **kw: Any) -> Head:
    """A classification head by name: softmax, sphereface, arcface, cosface, combined, adaface, sphereface2."""
    if name not in HEADS:
        raise ParameterError(f"unknown head {name!r}; valid heads: {', '.join(HEADS)}")
    try:
        return HEADS[name](int(embedding_dim), int(n_classes), **kw)
    except TypeError as e:
        raise ParameterError(f"bad arguments for head {name!r}: {e}") from e

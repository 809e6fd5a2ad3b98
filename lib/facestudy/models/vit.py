"""The face Vision Transformer of chapter 3 (KP-RPE), METHODS.md §1.1.

A plain ViT as used by CVLface for 112×112 faces, sized down to CPU scale by its arguments:

* patch embedding ``Conv2d(3, dim, patch, stride=patch)``; tokens flattened row-major (token = row·W + col);
* **no CLS token**; a learned absolute position embedding (trunc-normal, std 0.02);
* pre-norm blocks ``x += DropPath(Attn(LN(x)))``, ``x += DropPath(MLP(LN(x)))`` with a **ReLU6** MLP and a
  qkv projection **without bias**;
* final LayerNorm, then the *flatten* head: all N·dim token features -> Linear (no bias) -> BatchNorm1d ->
  Linear (no bias) -> BatchNorm1d (eps 2e-5) -> the embedding.

The attention-bias hook: every block asks the optional ``rpe`` module (chapter 3's
:class:`facestudy.kprpe.IRPE` / :class:`facestudy.kprpe.KPRPE`, or anything with the same three methods) for
an additive bias of shape (B, heads, N, N) on the attention logits, and optionally for a term added to the
attention output (iRPE on values). The rpe module sees the keypoints passed to ``forward(x, keypoints)``.

The FR-core registry builds it with ``facestudy.models.create("vit", **kw)``, which calls :func:`build_vit`.
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Protocol

import numpy as np
import torch
from torch import nn

from ..errors import ParameterError
from .base import FaceModel


class AttentionBiasModule(Protocol):
    """What the ViT asks of a position-encoding module (chapter 3: iRPE, KP-RPE).

    ``prepare`` runs once per forward pass (e.g. KP-RPE's keypoint network f(P)); ``logits_bias`` returns
    the additive (B, H, N, N) bias of block ``layer`` (or None); ``value_term`` returns a (B, H, N, d) term
    added to the attention output (or None).
    """

    def prepare(self, tokens: torch.Tensor, grid: tuple[int, int], keypoints: torch.Tensor | None) -> Any: ...

    def logits_bias(self, layer: int, q: torch.Tensor, k: torch.Tensor, state: Any) -> torch.Tensor | None: ...

    def value_term(self, layer: int, attn: torch.Tensor, state: Any) -> torch.Tensor | None: ...


class DropPath(nn.Module):
    """Stochastic depth (per sample); identity in eval mode or at rate 0."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep


class Attention(nn.Module):
    """Multi-head self-attention with an additive logits bias (chapter 3's attention-bias hook)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ParameterError(f"vit: dim={dim} must be divisible by heads={heads}")
        self.heads = heads
        self.head_dim = dim // heads
        self.scale = self.head_dim ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim)
        self.last_attention: torch.Tensor | None = None
        self.keep_attention = False
        self.knockout: str | None = None  # None | "zero" | "uniform" (set through attention_knockout)

    def forward(self, x: torch.Tensor,
                bias: torch.Tensor | Callable[[torch.Tensor, torch.Tensor], torch.Tensor | None] | None = None,
                value_fn: Callable[[torch.Tensor], torch.Tensor | None] | None = None) -> torch.Tensor:
        """``bias``: a (B or 1, H or 1, N, N) tensor, or a callable ``(q_scaled, k) -> tensor | None``."""
        B, N, C = x.shape
        if self.knockout == "zero":  # the whole attention branch removed: the block keeps only its MLP
            return torch.zeros_like(x)
        qkv = self.qkv(x).reshape(B, N, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0] * self.scale, qkv[1], qkv[2]
        if self.knockout == "uniform":  # every query attends equally to every key: no bias, no content
            return self.proj(v.mean(2, keepdim=True).expand_as(v).transpose(1, 2).reshape(B, N, C))
        logits = q @ k.transpose(-2, -1)
        if callable(bias):
            bias = bias(q, k)
        if bias is not None:
            logits = logits + bias
        attn = logits.softmax(dim=-1)
        if self.keep_attention:
            self.last_attention = attn.detach()
        out = attn @ v
        if value_fn is not None:
            extra = value_fn(attn)
            if extra is not None:
                out = out + extra
        return self.proj(out.transpose(1, 2).reshape(B, N, C))


@contextlib.contextmanager
def attention_knockout(model: nn.Module, mode: str = "zero"):
    """Within the ``with`` block every :class:`Attention` of ``model`` is knocked out: ``"zero"`` removes the
    attention branch (each block keeps its residual and MLP), ``"uniform"`` replaces every attention map by
    the uniform one (no position bias, no content routing). Restores the model on exit, even after an error.

    The diagnostic behind chapter 3's question "does this model route information through attention at all?":
    a position encoding (iRPE, KP-RPE) acts only through attention, so if knocking attention out costs nothing,
    no position encoding can help."""
    if mode not in ("zero", "uniform"):
        raise ParameterError(f"attention_knockout: mode must be 'zero' or 'uniform', got {mode!r}")
    mods = [m for m in model.modules() if isinstance(m, Attention)]
    if not mods:
        raise ParameterError(f"attention_knockout: {type(model).__name__} has no vit.Attention module")
    old = [m.knockout for m in mods]
    for m in mods:
        m.knockout = mode
    try:
        yield model
    finally:
        for m, o in zip(mods, old, strict=True):
            m.knockout = o


class Block(nn.Module):
    """Pre-norm transformer block with a ReLU6 MLP."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, drop_path: float) -> None:
        super().__init__()
        hidden = int(round(dim * mlp_ratio))
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU6(), nn.Linear(hidden, dim))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor, bias=None, value_fn=None) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), bias=bias, value_fn=value_fn))
        return x + self.drop_path(self.mlp(self.norm2(x)))


def _pair(v: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    if isinstance(v, (tuple, list)):
        if len(v) != 2:
            raise ParameterError(f"vit: input_size must be an int or (height, width), got {v!r}")
        return int(v[0]), int(v[1])
    return int(v), int(v)


class FaceViT(FaceModel):
    """Face ViT of chapter 3 (METHODS.md §1.1); ``forward(x, keypoints=None) -> (B, embedding_dim)``.

    ``x`` is a float batch already preprocessed (B, 3, H, W) (:meth:`preprocess`: (pixels − 127.5)/127.5,
    i.e. CVLface's (x/255 − 0.5)/0.5), or a uint8 batch (NCHW or NHWC), which is preprocessed first.
    ``keypoints`` (B, K, 2) are (x, y) normalised to [0, 1] by the input's width and height
    (``preprocess_keypoints`` of pixel landmarks); only an ``rpe`` module uses them. ``uses_keypoints`` is
    true when the rpe module is KP-RPE, so the FR-core trainer and ``embed`` pass keypoints.
    """

    def __init__(self, input_size: int | tuple[int, int] = 112, patch: int = 8, dim: int = 512, depth: int = 12,
                 heads: int = 8, mlp_ratio: float = 5.0, embedding_dim: int = 512, drop_path: float = 0.0,
                 rpe: nn.Module | None = None, name: str = "vit") -> None:
        h, w = _pair(input_size)
        super().__init__(input_size=(h, w), embedding_dim=int(embedding_dim), pixel_mean=127.5,
                         pixel_std=127.5, name=name)
        for key, val in (("patch", patch), ("dim", dim), ("depth", depth), ("heads", heads),
                         ("embedding_dim", embedding_dim)):
            if int(val) <= 0:
                raise ParameterError(f"vit: {key} must be a positive integer, got {val!r}")
        if h % patch or w % patch:
            raise ParameterError(f"vit: input_size {(h, w)} must be a multiple of patch={patch}")
        self.patch = patch
        self.grid = (h // patch, w // patch)
        self.num_tokens = self.grid[0] * self.grid[1]
        self.dim, self.depth, self.heads = dim, depth, heads
        self.patch_embed = nn.Conv2d(3, dim, kernel_size=patch, stride=patch)
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_tokens, dim))
        rates = [float(r) for r in np.linspace(0.0, drop_path, depth)] if depth > 1 else [drop_path]
        self.blocks = nn.ModuleList([Block(dim, heads, mlp_ratio, rates[i]) for i in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Sequential(
            nn.Linear(self.num_tokens * dim, embedding_dim, bias=False),
            nn.BatchNorm1d(embedding_dim, eps=2e-5),
            nn.Linear(embedding_dim, embedding_dim, bias=False),
            nn.BatchNorm1d(embedding_dim, eps=2e-5),
        )
        self._init_weights()
        self.rpe = rpe  # registered after init so that rpe modules keep their own (zero) initialisation

    @property
    def uses_keypoints(self) -> bool:  # type: ignore[override]
        """True when the rpe module consumes keypoints (KP-RPE): the trainer / embed then pass them."""
        return bool(getattr(self.rpe, "uses_keypoints", False))

    # ------------------------------------------------------------------ construction helpers
    def _init_weights(self) -> None:
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def no_weight_decay(self) -> set[str]:
        """Parameter names CVLface excludes from weight decay (position embedding), §1.7."""
        return {"pos_embed"}

    # ------------------------------------------------------------------ forward
    def forward_tokens(self, x: torch.Tensor, keypoints: torch.Tensor | None = None) -> torch.Tensor:
        """Token features after the final LayerNorm: (B, N, dim)."""
        if x.dtype == torch.uint8:
            x = self.preprocess(x)
        elif tuple(x.shape[-2:]) != tuple(self.input_size):
            raise ParameterError(f"vit: expected a preprocessed batch at {tuple(self.input_size)}, got "
                                 f"{tuple(x.shape)}; call model.preprocess(images) first")
        if keypoints is not None:
            keypoints = torch.as_tensor(keypoints, dtype=x.dtype, device=x.device)
            if keypoints.ndim != 3 or keypoints.shape[0] != x.shape[0] or keypoints.shape[-1] != 2:
                raise ParameterError(f"vit: keypoints must be (B={x.shape[0]}, K, 2) normalised to [0, 1], "
                                     f"got {tuple(keypoints.shape)}")
        t = self.patch_embed(x).flatten(2).transpose(1, 2) + self.pos_embed
        state = self.rpe.prepare(t, self.grid, keypoints) if self.rpe is not None else None
        for layer, block in enumerate(self.blocks):
            if self.rpe is None:
                t = block(t)
            else:
                t = block(t, bias=_bound(self.rpe.logits_bias, layer, state),
                          value_fn=_bound_value(self.rpe.value_term, layer, state))
        return self.norm(t)

    def forward(self, x: torch.Tensor, keypoints: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(self.forward_tokens(x, keypoints).flatten(1))


def _bound(fn, layer: int, state):
    return lambda q, k: fn(layer, q, k, state)


def _bound_value(fn, layer: int, state):
    return lambda attn: fn(layer, attn, state)


def build_vit(input_size: int | tuple[int, int] = 112, patch: int = 8, dim: int = 512, depth: int = 12,
              heads: int = 8, mlp_ratio: float = 5.0, embedding_dim: int = 512, drop_path: float = 0.0,
              rpe: str | nn.Module | None = None, rpe_kwargs: dict[str, Any] | None = None,
              name: str | None = None) -> FaceViT:
    """Build the chapter-3 face ViT (the FR-core registry's ``create("vit", **kw)`` calls this).

    ``rpe``: None (plain ViT), ``"irpe"`` (iRPE contextual product, §1.2), ``"kprpe"`` (KP-RPE,
    ``ctx_type`` in ``rpe_kwargs``, default ``rel_keypoint_splithead_unshared``, §1.3), or a module.
    The paper's sizes: ``build_vit(112, 8, 512, 24, 16, 3.0, drop_path=0.1)`` (base),
    ``build_vit(112, 8, 512, 12, 8, 5.0, drop_path=0.1)`` (small).
    """
    h, w = _pair(input_size)
    if h % patch or w % patch:
        raise ParameterError(f"vit: input_size {(h, w)} must be a multiple of patch={patch}")
    grid = (h // patch, w // patch)
    kw = dict(rpe_kwargs or {})
    if rpe is not None and rpe != "none" and not isinstance(rpe, nn.Module) and rpe not in ("irpe", "kprpe"):
        raise ParameterError(f"vit: unknown rpe {rpe!r}; valid: None, 'irpe', 'kprpe' or an nn.Module")
    label = name or ("vit" if rpe is None or rpe == "none" else
                     f"vit+{rpe if isinstance(rpe, str) else type(rpe).__name__}")
    # the ViT is built first, so its random initialisation does not depend on the rpe module
    model = FaceViT(input_size=(h, w), patch=patch, dim=dim, depth=depth, heads=heads, mlp_ratio=mlp_ratio,
                    embedding_dim=embedding_dim, drop_path=drop_path, rpe=None, name=label)
    if isinstance(rpe, nn.Module):
        model.rpe = rpe
    elif rpe == "irpe":
        from ..kprpe.rpe import IRPE

        model.rpe = IRPE(grid=grid, head_dim=dim // heads, heads=heads, depth=depth, **kw)
    elif rpe == "kprpe":
        from ..kprpe.rpe import KPRPE

        model.rpe = KPRPE(grid=grid, heads=heads, depth=depth, **kw)
    return model


create = build_vit  # the registry's name for the factory (facestudy.models.create("vit", **kw))


def count_parameters(model: nn.Module) -> int:
    """Number of parameters (chapter 3's overhead table)."""
    return int(sum(p.numel() for p in model.parameters()))


__all__ = ["FaceViT", "create", "Attention", "Block", "DropPath", "build_vit", "count_parameters",
           "AttentionBiasModule"]

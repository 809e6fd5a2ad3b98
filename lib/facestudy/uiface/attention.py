"""Attention injection and cross-attention maps as diffusers attention processors (chapter 2, UIFace §2.4).

One :class:`AttentionControl` object is shared by a :class:`UIFaceAttnProcessor` in every attention
module of the UNet. The processors are installed and restored by the context manager
:func:`attention_control`, so the UNet is untouched outside the ``with`` block.

With every switch off, a processor computes exactly what diffusers' stock ``AttnProcessor`` computes
(explicit logits with ``baddbmm``, softmax, ``bmm``): ``tests/test_uiface_attention.py`` checks that the
outputs are bit-identical.

Switches (the batch is ``[unconditional half; conditional half]`` when ``paired`` is on):

* ``inject_self``: the conditional half's self-attention *logits* are replaced by the unconditional
  half's (the empty-context pass decides *where* each position looks: layout and pose come from it).
* ``match_cross``: the conditional half's cross-attention logits are standardised per query row (mean and
  unbiased std over the context tokens) and re-scaled to ``(1-w)·stat_cond + w·stat_uncond`` with
  ``w = match_weight`` (0.5 in the paper).
* ``record_cross``: cross-attention logits of the conditional half (or the whole batch when not paired)
  are kept, layer by layer, to build the aggregated map A_t of :func:`cross_attention_map`.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Iterator

import torch
import torch.nn.functional as F


@dataclass
class AttentionControl:
    """Shared switches and recordings of the UIFace attention processors (chapter 2)."""

    inject_self: bool = False
    match_cross: bool = False
    match_weight: float = 0.5
    paired: bool = False
    record_cross: bool = False
    cross_logits: list[tuple[int, torch.Tensor]] = field(default_factory=list)  # (heads, logits)

    def reset(self) -> None:
        self.cross_logits = []

    def configure(self, *, inject_self: bool = False, match_cross: bool = False, paired: bool = False,
                  record_cross: bool = False) -> None:
        self.inject_self, self.match_cross, self.paired, self.record_cross = (
            inject_self, match_cross, paired, record_cross)
        self.cross_logits = []


def match_statistics(cond: torch.Tensor, uncond: torch.Tensor, weight: float = 0.5,
                     eps: float = 1e-6) -> torch.Tensor:
    """Cross-attention statistics matching (UIFace §2.4): re-standardise ``cond`` logits per query row.

    ``cond``/``uncond``: logits (..., n_keys). Returns ``(cond - μc)/σc · σ* + μ*`` with
    ``μ* = (1-w)μc + wμu`` and ``σ* = (1-w)σc + wσu`` (unbiased std over keys, as torch.std in the code).
    """
    mu_c, sd_c = cond.mean(-1, keepdim=True), cond.std(-1, keepdim=True)
    mu_u, sd_u = uncond.mean(-1, keepdim=True), uncond.std(-1, keepdim=True)
    mu_t = (1 - weight) * mu_c + weight * mu_u
    sd_t = (1 - weight) * sd_c + weight * sd_u
    return (cond - mu_c) / (sd_c + eps) * sd_t + mu_t


class UIFaceAttnProcessor:
    """A diffusers attention processor with UIFace's injection switches (chapter 2).

    Mirrors ``diffusers.models.attention_processor.AttnProcessor`` step by step; the switches of the shared
    :class:`AttentionControl` act on the logits between ``baddbmm`` and ``softmax``.
    """

    def __init__(self, control: AttentionControl, name: str = "") -> None:
        self.control = control
        self.name = name

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None, *args,
                 **kwargs) -> torch.Tensor:
        ctrl = self.control
        is_cross = encoder_hidden_states is not None
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)
        batch_size, sequence_length, _ = (
            hidden_states.shape if encoder_hidden_states is None else encoder_hidden_states.shape
        )
        attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)
        query = attn.head_to_batch_dim(query)
        key = attn.head_to_batch_dim(key)
        value = attn.head_to_batch_dim(value)

        # ---- logits exactly as Attention.get_attention_scores computes them
        dtype = query.dtype
        if attn.upcast_attention:
            query, key = query.float(), key.float()
        if attention_mask is None:
            base = torch.empty(query.shape[0], query.shape[1], key.shape[1], dtype=query.dtype,
                               device=query.device)
            scores = torch.baddbmm(base, query, key.transpose(-1, -2), beta=0, alpha=attn.scale)
        else:
            scores = torch.baddbmm(attention_mask, query, key.transpose(-1, -2), beta=1, alpha=attn.scale)
        if attn.upcast_softmax:
            scores = scores.float()

        # ---- UIFace switches
        if ctrl.paired and (ctrl.inject_self or ctrl.match_cross or ctrl.record_cross):
            half = scores.shape[0] // 2
            if not is_cross and ctrl.inject_self:
                scores = torch.cat([scores[:half], scores[:half]], dim=0)
            elif is_cross and ctrl.match_cross:
                scores = torch.cat([scores[:half], match_statistics(scores[half:], scores[:half],
                                                                    ctrl.match_weight)], dim=0)
            if is_cross and ctrl.record_cross:
                ctrl.cross_logits.append((attn.heads, scores[half:].detach()))
        elif is_cross and ctrl.record_cross:
            ctrl.cross_logits.append((attn.heads, scores.detach()))

        attention_probs = scores.softmax(dim=-1).to(dtype)
        hidden_states = torch.bmm(attention_probs, value)
        hidden_states = attn.batch_to_head_dim(hidden_states)
        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


@contextlib.contextmanager
def attention_control(unet, control: AttentionControl | None = None) -> Iterator[AttentionControl]:
    """Install :class:`UIFaceAttnProcessor` in every attention module of ``unet``; restore on exit.

    ``unet`` is a diffusers model (``UNet2DConditionModel``) or a :class:`~facestudy.uiface.model.
    UIFaceGenerator` (its ``.unet`` is used). Yields the shared :class:`AttentionControl`.
    """
    net = getattr(unet, "unet", unet)
    saved = net.attn_processors
    ctrl = control or AttentionControl()
    net.set_attn_processor({name: UIFaceAttnProcessor(ctrl, name) for name in saved})
    try:
        yield ctrl
    finally:
        net.set_attn_processor(saved)


def cross_attention_map(records: list[tuple[int, torch.Tensor]], size: int) -> torch.Tensor:
    """Aggregated, normalised cross-attention map A_t (UIFace ``get_attn_map``, §2.4), shape (B, size, size).

    Per layer with logits (B·heads, h·w, K): softmax over the *spatial* axis, mean over keys and heads,
    divide by the per-sample maximum, bilinear upsampling to ``size`` and clamp to [0, 1]; then the mean
    over layers and a per-sample min–max normalisation.
    """
    if not records:
        raise ValueError("no cross-attention logits were recorded (record_cross was off or the UNet has no "
                         "cross-attention)")
    maps = []
    for heads, logits in records:
        bh, hw, _ = logits.shape
        side = int(round(math.sqrt(hw)))
        p = logits.float().softmax(dim=1).mean(dim=2)  # (B*heads, hw)
        p = p.view(bh // heads, heads, hw).mean(dim=1)
        p = p / p.amax(dim=1, keepdim=True).clamp_min(1e-12)
        p = F.interpolate(p.view(-1, 1, side, side), size=(size, size), mode="bilinear", align_corners=False)
        maps.append(p.clamp(0, 1)[:, 0])
    a = torch.stack(maps).mean(0)
    lo = a.flatten(1).amin(1)[:, None, None]
    hi = a.flatten(1).amax(1)[:, None, None]
    return (a - lo) / (hi - lo).clamp_min(1e-12)


def map_change(a_now: torch.Tensor, a_prev: torch.Tensor) -> torch.Tensor:
    """d_t = mean |A_t − A_{t+Δ}| per sample (the official code calls it "rmse"; it is a MAE)."""
    return (a_now - a_prev).abs().flatten(1).mean(1)

"""Gated sparse autoencoder, Rajamanoharan et al. 2024a (chapter 4, METHODS §3.2).

x~ = x - b_dec; pi_gate = W_gate x~ + b_gate; pi_mag = (exp(r_mag) * W_gate) x~ + b_mag;
f = 1[pi_gate > 0] * ReLU(pi_mag); x_hat = W_dec f + b_dec.

Loss = ||x - x_hat||^2 + lambda ||ReLU(pi_gate)||_1 + ||x - (sg(W_dec) ReLU(pi_gate) + sg(b_dec))||^2: the
auxiliary term reconstructs through a *frozen* decoder (dictionary_learning / the paper, not SAELens). The
Heaviside gate passes no gradient; the gate path learns through the L1 and auxiliary terms only.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from ...errors import ParameterError
from .base import BaseSAE, SAEConfig, mse_sum


@dataclass
class GatedConfig(SAEConfig):
    """Gated SAE settings (chapter 4). Defaults from dictionary_learning: Adam betas (0, 0.999), lambda 0.1."""

    l1_coeff: float = 0.1
    betas: tuple[float, float] = (0.0, 0.999)

    kind: ClassVar[str] = "gated"

    def validate(self) -> None:
        super().validate()
        if self.l1_coeff < 0:
            raise ParameterError(f"GatedConfig.l1_coeff must be >= 0, got {self.l1_coeff}")


class GatedSAE(BaseSAE):
    """Gated SAE with weight-tied gate/magnitude encoders and a frozen-decoder auxiliary loss (chapter 4)."""

    encoder_name = "W_gate"

    def __init__(self, config: GatedConfig):
        super().__init__(config)
        m = config.m
        self.W_gate = nn.Parameter(self.W_dec.detach().T.clone())
        self.b_gate = nn.Parameter(torch.zeros(m))
        self.r_mag = nn.Parameter(torch.zeros(m))
        self.b_mag = nn.Parameter(torch.zeros(m))

    def _pre(self, xs):
        xt = xs - self.b_dec
        pi_gate = xt @ self.W_gate.T + self.b_gate
        pi_mag = (xt @ self.W_gate.T) * torch.exp(self.r_mag) + self.b_mag
        return pi_gate, pi_mag

    def _encode(self, xs):
        pi_gate, pi_mag = self._pre(xs)
        f = (pi_gate > 0).to(xs.dtype) * torch.relu(pi_mag)
        return f, {"pi_gate": pi_gate, "pi_mag": pi_mag}

    def _loss(self, xs, sparsity_scale):
        pi_gate, pi_mag = self._pre(xs)
        f = (pi_gate > 0).to(xs.dtype) * torch.relu(pi_mag)
        xh = self.decode_scaled(f)
        g = torch.relu(pi_gate)
        mse = mse_sum(xs, xh)
        l1 = g.sum(-1).mean()
        aux = mse_sum(xs, g @ self.W_dec.detach().T + self.b_dec.detach())
        loss = mse + sparsity_scale * self.config.l1_coeff * l1 + aux
        return loss, {"mse": float(mse.detach()), "sparsity": float(l1.detach()), "aux": float(aux.detach())}

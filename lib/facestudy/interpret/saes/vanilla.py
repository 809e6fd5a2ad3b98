"""Vanilla (ReLU) sparse autoencoder, Bricken et al. 2023 (chapter 4, METHODS §3.1).

f = ReLU(W_enc (x - b_dec) + b_enc), x_hat = W_dec f + b_dec.

``convention="bricken"`` (default): loss = mean ||x - x_hat||^2 + lambda * mean ||f||_1 with unit-norm
decoder columns (ConstrainedAdam). ``convention="april"`` (Anthropic's April-2024 update): no norm
constraint, decoder columns initialised to norm ``decoder_init_norm`` and the penalty weights each latent by
its decoder norm, lambda * mean sum_i f_i ||d_i||.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from ...errors import ParameterError
from .base import BaseSAE, SAEConfig, mse_sum


@dataclass
class VanillaConfig(SAEConfig):
    """Vanilla SAE settings (chapter 4): ``l1_coeff`` is lambda; ``convention`` 'bricken' | 'april'."""

    l1_coeff: float = 0.1
    convention: str = "bricken"
    decoder_init_norm: float = 0.1

    kind: ClassVar[str] = "vanilla"

    def validate(self) -> None:
        super().validate()
        if self.convention not in ("bricken", "april"):
            raise ParameterError(f"VanillaConfig.convention must be 'bricken' or 'april', got {self.convention!r}")
        if self.l1_coeff < 0:
            raise ParameterError(f"VanillaConfig.l1_coeff must be >= 0, got {self.l1_coeff}")


class VanillaSAE(BaseSAE):
    """ReLU SAE with an L1 penalty (chapter 4)."""

    def __init__(self, config: VanillaConfig):
        super().__init__(config)
        self.unit_norm_decoder = config.convention == "bricken"
        with torch.no_grad():
            if config.convention == "april":
                self.W_dec.mul_(config.decoder_init_norm)
        self.W_enc = nn.Parameter(self.W_dec.detach().T.clone())
        self.b_enc = nn.Parameter(torch.zeros(config.m))

    def _encode(self, xs):
        pre = (xs - self.b_dec) @ self.W_enc.T + self.b_enc
        return torch.relu(pre), {"pre": pre}

    def _loss(self, xs, sparsity_scale):
        f, _ = self._encode(xs)
        xh = self.decode_scaled(f)
        mse = mse_sum(xs, xh)
        if self.config.convention == "april":
            sparsity = (f * self.decoder_norms).sum(-1).mean()
        else:
            sparsity = f.sum(-1).mean()
        loss = mse + sparsity_scale * self.config.l1_coeff * sparsity
        return loss, {"mse": float(mse.detach()), "sparsity": float(sparsity.detach())}

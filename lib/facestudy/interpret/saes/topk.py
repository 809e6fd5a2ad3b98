"""TopK sparse autoencoder, Gao et al. 2024 (chapter 4, METHODS §3.3).

z = ReLU(TopK_k(W_enc (x - b_pre) + b_lat)), x_hat = W_dec z + b_pre (``b_pre`` is ``b_dec``).

Loss = mse_scale * MSE(x_hat, x) + alpha * L_aux with mse_scale = 1 / mean((x - batch mean)^2) and
L_aux = NMSE(W_dec z_aux, e), e = x - sg(x_hat), where z_aux keeps the top-k_aux pre-activations among
*dead* latents (not fired, value > 1e-3, for ``dead_after`` inputs) and k_aux = min(d/2, #dead)
(METHODS recommendation 12); alpha = 1/32. Tied init (W_enc = W_dec^T, unit columns), b_pre = geometric
median of the data, unit-norm decoder with the parallel gradient projected out.

OpenAI's per-input standardisation (``normalize=True``) is replaced here by the trainer's global input
scaling: face templates are L2-normalised, so every template already has the same norm and (nearly) the
same per-dimension spread.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from ...errors import ParameterError
from .base import BaseSAE, SAEConfig, geometric_median


@dataclass
class TopKConfig(SAEConfig):
    """TopK SAE settings (chapter 4). ``k`` active latents; ``aux_coeff`` alpha; ``dead_after`` inputs."""

    k: int = 16
    aux_coeff: float = 1.0 / 32
    k_aux: int | None = None  # None: d_in // 2
    dead_after: int = 20_000
    fire_threshold: float = 1e-3
    lr: float = 1e-3
    adam_eps: float = 6.25e-10

    kind: ClassVar[str] = "topk"

    def validate(self) -> None:
        super().validate()
        if not 1 <= self.k <= self.m:
            raise ParameterError(f"TopKConfig.k must be in [1, {self.m}] (the number of latents), got {self.k}")


class TopKSAE(BaseSAE):
    """TopK SAE with the AuxK loss on dead latents (chapter 4)."""

    def __init__(self, config: TopKConfig):
        super().__init__(config)
        self.W_enc = nn.Parameter(self.W_dec.detach().T.clone())
        self.b_enc = nn.Parameter(torch.zeros(config.m))
        self.register_buffer("inputs_since_fired", torch.zeros(config.m, dtype=torch.long))

    def _pre(self, xs):
        return (xs - self.b_dec) @ self.W_enc.T + self.b_enc

    @staticmethod
    def _topk(pre: torch.Tensor, k: int) -> torch.Tensor:
        vals, idx = pre.topk(k, dim=-1)
        return torch.zeros_like(pre).scatter(-1, idx, torch.relu(vals))

    def _encode(self, xs):
        pre = self._pre(xs)
        return self._topk(pre, self.config.k), {"pre": pre}

    @torch.no_grad()
    def init_from_data(self, xs: torch.Tensor) -> None:
        """b_pre = geometric median of <= 32,768 inputs; encoder rescaled so reconstructions of random
        inputs of the data's typical norm keep that norm on average."""
        xs = xs[:32768]
        self.b_dec.copy_(geometric_median(xs))
        typical = (xs - self.b_dec).norm(dim=1).mean()
        g = torch.Generator().manual_seed(self.config.seed + 1)
        r = torch.randn(256, self.d_in, generator=g)
        r = r / r.norm(dim=1, keepdim=True) * typical
        rec = self._topk(r @ self.W_enc.T, self.config.k) @ self.W_dec.T
        ratio = rec.norm(dim=1).mean() / typical
        if ratio > 0:
            self.W_enc.div_(ratio)

    @property
    def dead_mask(self) -> torch.Tensor:
        return self.inputs_since_fired >= self.config.dead_after

    def _loss(self, xs, sparsity_scale):
        cfg = self.config
        pre = self._pre(xs)
        z = self._topk(pre, cfg.k)
        xh = self.decode_scaled(z)
        var = (xs - xs.mean(0)).pow(2).mean().clamp_min(1e-12)
        mse = (xh - xs).pow(2).mean() / var
        parts = {"mse": float((xh - xs).pow(2).sum(-1).mean().detach()), "nmse": float(mse.detach())}
        loss = mse
        if self.training:
            with torch.no_grad():
                fired = (z > cfg.fire_threshold).any(0)
                self.inputs_since_fired.add_(len(xs))
                self.inputs_since_fired[fired] = 0
        dead = self.dead_mask
        n_dead = int(dead.sum())
        parts["n_dead"] = float(n_dead)
        if n_dead > 0 and cfg.aux_coeff > 0:
            k_aux = min(cfg.k_aux or self.d_in // 2, n_dead)
            pre_dead = pre.masked_fill(~dead, float("-inf"))
            z_aux = self._topk(pre_dead, k_aux)
            e = (xs - xh).detach()
            e_hat = z_aux @ self.W_dec.T
            denom = (e - e.mean(0)).pow(2).sum(-1).mean().clamp_min(1e-12)
            aux = (e_hat - e).pow(2).sum(-1).mean() / denom
            aux = torch.nan_to_num(aux, nan=0.0)
            loss = loss + cfg.aux_coeff * aux
            parts["aux"] = float(aux.detach())
        return loss, parts

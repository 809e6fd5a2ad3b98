"""JumpReLU sparse autoencoder, Rajamanoharan et al. 2024b (chapter 4, METHODS §3.4).

pi = W_enc x + b_enc (the paper does not subtract b_dec first; ``apply_b_dec_to_input`` turns it on),
f = JumpReLU_theta(pi) = pi * H(pi - theta) with a per-latent threshold theta > 0 (stored as log theta),
x_hat = W_dec f + b_dec. Loss = ||x - x_hat||^2 + lambda * sum_i H(pi_i - theta_i) (an L0 penalty).

The threshold learns through straight-through estimators with the rectangle kernel
K(u) = 1[|u| < 1/2] and bandwidth eps (paper values eps = theta0 = 0.001):

* d JumpReLU / d theta = -(theta / eps) K((pi - theta) / eps)
* d H(pi - theta) / d theta = -(1 / eps) K((pi - theta) / eps)
* d JumpReLU / d pi = H(pi - theta), d H / d pi = 0.

(overcomplete's extra 1/eps factor is *not* copied.) Decoder columns stay unit-norm (dictionary_learning)
and inputs are scaled to unit mean norm by default.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from ...errors import ParameterError
from .base import BaseSAE, SAEConfig, mse_sum


def rectangle(u: torch.Tensor) -> torch.Tensor:
    """Rectangle kernel K(u) = 1[|u| < 1/2] (chapter 4)."""
    return (u.abs() < 0.5).to(u.dtype)


class JumpReLUFunction(torch.autograd.Function):
    """JumpReLU_theta(pi) with the rectangle-kernel pseudo-derivative for theta (chapter 4)."""

    @staticmethod
    def forward(ctx, pi: torch.Tensor, theta: torch.Tensor, eps: float):  # type: ignore[override]
        ctx.save_for_backward(pi, theta)
        ctx.eps = eps
        return pi * (pi > theta).to(pi.dtype)

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        pi, theta = ctx.saved_tensors
        eps = ctx.eps
        grad_pi = grad_out * (pi > theta).to(pi.dtype)
        grad_theta = -(theta / eps) * rectangle((pi - theta) / eps) * grad_out
        grad_theta = _sum_to(grad_theta, theta.shape)
        return grad_pi, grad_theta, None


class StepFunction(torch.autograd.Function):
    """Heaviside H(pi - theta) with the rectangle-kernel pseudo-derivative for theta (chapter 4)."""

    @staticmethod
    def forward(ctx, pi: torch.Tensor, theta: torch.Tensor, eps: float):  # type: ignore[override]
        ctx.save_for_backward(pi, theta)
        ctx.eps = eps
        return (pi > theta).to(pi.dtype)

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        pi, theta = ctx.saved_tensors
        eps = ctx.eps
        grad_theta = -(1.0 / eps) * rectangle((pi - theta) / eps) * grad_out
        return torch.zeros_like(pi), _sum_to(grad_theta, theta.shape), None


def _sum_to(g: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    while g.ndim > len(shape):
        g = g.sum(0)
    return g


def jumprelu(pi: torch.Tensor, theta: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    """JumpReLU with straight-through threshold gradients (chapter 4)."""
    return JumpReLUFunction.apply(pi, theta, eps)


def step(pi: torch.Tensor, theta: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    """Heaviside step H(pi - theta) with straight-through threshold gradients (chapter 4)."""
    return StepFunction.apply(pi, theta, eps)


@dataclass
class JumpReLUConfig(SAEConfig):
    """JumpReLU settings (chapter 4): ``l0_coeff`` lambda, ``bandwidth`` eps, ``theta0`` initial threshold."""

    l0_coeff: float = 1e-3
    bandwidth: float = 1e-3
    theta0: float = 1e-3
    apply_b_dec_to_input: bool = False
    #: learning-rate multiplier of log(theta): the paper's thresholds move over ~10^5 steps at lr 7e-5; with a
    #: few thousand steps they need a larger step to leave theta0 at all (1.0 = the paper's single lr)
    threshold_lr_mult: float = 1.0
    input_norm: str = "unit"
    betas: tuple[float, float] = (0.0, 0.999)

    kind: ClassVar[str] = "jumprelu"

    def validate(self) -> None:
        super().validate()
        if self.bandwidth <= 0 or self.theta0 <= 0:
            raise ParameterError(f"JumpReLUConfig: bandwidth and theta0 must be > 0, got "
                                 f"{self.bandwidth}, {self.theta0}")
        if self.threshold_lr_mult <= 0:
            raise ParameterError(f"JumpReLUConfig.threshold_lr_mult must be > 0, got {self.threshold_lr_mult}")
        if self.l0_coeff < 0:
            raise ParameterError(f"JumpReLUConfig.l0_coeff must be >= 0, got {self.l0_coeff}")


class JumpReLUSAE(BaseSAE):
    """JumpReLU SAE trained with an L0 penalty through rectangle straight-through estimators (chapter 4)."""

    def __init__(self, config: JumpReLUConfig):
        super().__init__(config)
        m = config.m
        self.W_enc = nn.Parameter(self.W_dec.detach().T.clone())
        self.b_enc = nn.Parameter(torch.zeros(m))
        self.log_threshold = nn.Parameter(torch.full((m,), math.log(config.theta0)))

    def param_groups(self, lr: float) -> list[dict]:
        rest = [p for n, p in self.named_parameters() if n != "log_threshold"]
        return [{"params": rest, "lr": lr},
                {"params": [self.log_threshold], "lr": lr * self.config.threshold_lr_mult}]

    @property
    def threshold(self) -> torch.Tensor:
        return self.log_threshold.exp()

    def _pre(self, xs):
        if self.config.apply_b_dec_to_input:
            xs = xs - self.b_dec
        return xs @ self.W_enc.T + self.b_enc

    def _encode(self, xs):
        pi = self._pre(xs)
        return jumprelu(pi, self.threshold, self.config.bandwidth), {"pre": pi}

    def _loss(self, xs, sparsity_scale):
        pi = self._pre(xs)
        theta = self.threshold
        f = jumprelu(pi, theta, self.config.bandwidth)
        xh = self.decode_scaled(f)
        mse = mse_sum(xs, xh)
        l0 = step(pi, theta, self.config.bandwidth).sum(-1).mean()
        loss = mse + sparsity_scale * self.config.l0_coeff * l0
        return loss, {"mse": float(mse.detach()), "sparsity": float(l0.detach())}

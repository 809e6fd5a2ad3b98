"""Pure-function SAE metrics (chapter 4, METHODS §3.5). Inputs are tensors; outputs are floats/tensors."""
from __future__ import annotations

import torch


def l0(f: torch.Tensor, threshold: float = 0.0) -> float:
    """Mean over inputs of the number of active latents, #{i : f_i > threshold}."""
    return float((f.abs() > threshold).sum(-1).float().mean())


def l1(f: torch.Tensor) -> float:
    """Mean over inputs of sum_i |f_i|."""
    return float(f.abs().sum(-1).mean())


def firing_counts(f: torch.Tensor, threshold: float = 0.0) -> torch.Tensor:
    """How many inputs activate each latent (value > threshold): shape (M,)."""
    return (f > threshold).sum(0)


def density(f: torch.Tensor, threshold: float = 0.0) -> torch.Tensor:
    """Fraction of inputs activating each unit (the Fig. 3 density; value > threshold)."""
    return (f > threshold).float().mean(0)


def alive_percent(f: torch.Tensor, threshold: float = 0.0) -> float:
    """% alive: 100 * (1 - #dead / M), a latent being dead if it never fires on ``f`` (overcomplete)."""
    return float(100.0 * (firing_counts(f, threshold) > 0).float().mean())


def mse(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    """Mean over inputs of ||x - x_hat||^2."""
    return float((x - x_hat).pow(2).sum(-1).mean())


def nmse(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    """Mean of ||x - x_hat||^2 / ||x||^2 (OpenAI)."""
    return float(((x - x_hat).pow(2).sum(-1) / x.pow(2).sum(-1).clamp_min(1e-12)).mean())


def explained_variance(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    """1 - sum ||x - x_hat||^2 / sum ||x - x_bar||^2 with the per-dimension mean x_bar (SAELens)."""
    resid = (x - x_hat).pow(2).sum()
    total = (x - x.mean(0)).pow(2).sum().clamp_min(1e-12)
    return float(1.0 - resid / total)


def cosine_fidelity(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    """Mean cosine similarity between inputs and reconstructions (how well templates keep identity)."""
    return float(torch.nn.functional.cosine_similarity(x, x_hat, dim=-1).mean())


def summary(x: torch.Tensor, x_hat: torch.Tensor, f: torch.Tensor) -> dict[str, float]:
    """All metrics of chapter 4's tables in one dict."""
    return {"L0": l0(f), "L1": l1(f), "alive_%": alive_percent(f), "MSE": mse(x, x_hat),
            "NMSE": nmse(x, x_hat), "EV": explained_variance(x, x_hat), "cos": cosine_fidelity(x, x_hat)}

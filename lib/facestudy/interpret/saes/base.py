"""Shared machinery of every sparse autoencoder (chapter 4, FaceMINT, METHODS §3.1-3.5).

Notation follows METHODS §3: an input x in R^d, latents f in R^M, ``W_enc`` (M, d), ``W_dec`` (d, M) whose
*columns* d_i are the dictionary atoms, ``b_dec`` (d,), ``b_enc`` (M,). Every SAE here

* owns an ``input_scale`` buffer (set by :func:`facestudy.interpret.saes.train.train_sae`) so that callers
  pass raw templates and get raw reconstructions back;
* exposes ``encode(x) -> f``, ``decode(f) -> x_hat``, ``forward(x) -> (x_hat, f)`` and
  ``loss(x, sparsity_scale) -> (loss, parts)``;
* says whether its decoder columns are constrained to unit norm (``unit_norm_decoder``); the trainer then
  projects the parallel gradient out before each Adam step and renormalises after it.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from ...errors import ParameterError


@dataclass
class SAEConfig:
    """Sizes and optimiser settings shared by all SAE variants (chapter 4).

    ``expansion`` sets M = expansion * d_in unless ``n_latents`` is given. ``input_norm`` is the input
    scaling convention: ``"sqrt_d"`` rescales inputs so that E||x|| = sqrt(d) (Anthropic / SAELens),
    ``"unit"`` so that E||x|| = 1 (the JumpReLU paper's unit mean-squared-norm convention).
    """

    d_in: int = 128
    expansion: int = 8
    n_latents: int | None = None
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    input_norm: str = "sqrt_d"
    lr_warmup: int = 100
    sparsity_warmup: int = 0
    seed: int = 0
    #: dead-latent resampling (dictionary_learning / Bricken et al.): every ``resample_every`` steps the
    #: latents that did not fire in that window are re-initialised towards badly reconstructed inputs
    #: (0 = off; TopK uses its AuxK loss instead)
    resample_every: int = 0

    kind: ClassVar[str] = "base"

    @property
    def m(self) -> int:
        return int(self.n_latents) if self.n_latents else int(self.expansion * self.d_in)

    def validate(self) -> None:
        if self.d_in < 1:
            raise ParameterError(f"SAE config: d_in must be >= 1, got {self.d_in}")
        if self.m < 1:
            raise ParameterError(f"SAE config: the number of latents must be >= 1, got {self.m} "
                                 "(set expansion or n_latents)")
        if self.lr <= 0:
            raise ParameterError(f"SAE config: lr must be > 0, got {self.lr}")
        if self.resample_every < 0:
            raise ParameterError(f"SAE config: resample_every must be >= 0, got {self.resample_every}")
        if self.input_norm not in ("sqrt_d", "unit", "none"):
            raise ParameterError(f"SAE config: input_norm must be 'sqrt_d', 'unit' or 'none', "
                                 f"got {self.input_norm!r}")

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["kind"] = self.kind
        d["m"] = self.m
        return d


def unit_columns(w: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """``w`` (d, M) with every column scaled to unit L2 norm."""
    return w / w.norm(dim=0, keepdim=True).clamp_min(eps)


@torch.no_grad()
def renorm_columns_(w: torch.Tensor) -> None:
    """In place: decoder columns back to unit norm (after an optimiser step; chapter 4)."""
    w.copy_(unit_columns(w))


@torch.no_grad()
def remove_parallel_grad_(w: torch.Tensor) -> None:
    """In place: drop the part of ``w.grad`` parallel to each (unit) column of ``w`` (ConstrainedAdam)."""
    if w.grad is None:
        return
    u = unit_columns(w)
    w.grad.sub_(u * (w.grad * u).sum(dim=0, keepdim=True))


def geometric_median(x: torch.Tensor, iters: int = 100, tol: float = 1e-6) -> torch.Tensor:
    """Geometric median of the rows of ``x`` by Weiszfeld's algorithm (TopK pre-bias init, chapter 4)."""
    x = x.detach().double()
    y = x.mean(0)
    for _ in range(iters):
        d = (x - y).norm(dim=1).clamp_min(1e-12)
        w = 1.0 / d
        y_new = (w[:, None] * x).sum(0) / w.sum()
        if (y_new - y).norm() < tol * (1 + y.norm()):
            y = y_new
            break
        y = y_new
    return y.float()


class BaseSAE(nn.Module):
    """Common parts of every SAE (chapter 4). Subclasses implement ``_encode``, ``_loss`` and ``init``."""

    unit_norm_decoder: bool = True

    def __init__(self, config: SAEConfig):
        super().__init__()
        config.validate()
        self.config = config
        d, m = config.d_in, config.m
        self.d_in, self.n_latents = d, m
        g = torch.Generator().manual_seed(config.seed)
        w = unit_columns(torch.randn(d, m, generator=g))
        self.W_dec = nn.Parameter(w)
        self.b_dec = nn.Parameter(torch.zeros(d))
        self.register_buffer("input_scale", torch.tensor(1.0))

    # ---------------------------------------------------------------------------------- interface
    def _encode(self, xs: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError

    def _loss(self, xs: torch.Tensor, sparsity_scale: float) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError

    def decode_scaled(self, f: torch.Tensor) -> torch.Tensor:
        return f @ self.W_dec.T + self.b_dec

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Latent code f (N, M) of raw inputs x (N, d)."""
        self._check(x)
        return self._encode(x * self.input_scale)[0]

    def preactivation(self, x: torch.Tensor) -> torch.Tensor:
        """Encoder pre-activation of raw inputs (the gate pre-activation for gated SAEs); act-max uses it."""
        self._check(x)
        _, info = self._encode(x * self.input_scale)
        return info["pre"] if "pre" in info else info["pi_gate"]

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        """Reconstruction in the raw input space."""
        return self.decode_scaled(f) / self.input_scale

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.encode(x)
        return self.decode(f), f

    def loss(self, x: torch.Tensor, sparsity_scale: float = 1.0) -> tuple[torch.Tensor, dict[str, float]]:
        """Training loss on raw inputs; ``sparsity_scale`` in [0, 1] implements the sparsity warm-up."""
        self._check(x)
        return self._loss(x * self.input_scale, sparsity_scale)

    def after_step(self) -> None:
        """Called by the trainer after each optimiser step (renormalise constrained decoders)."""
        if self.unit_norm_decoder:
            renorm_columns_(self.W_dec)

    def before_step(self) -> None:
        """Called by the trainer after backward, before the step (project out the parallel gradient)."""
        if self.unit_norm_decoder:
            remove_parallel_grad_(self.W_dec)

    def init_from_data(self, x: torch.Tensor) -> None:
        """Data-dependent initialisation (default: nothing). ``x`` are raw inputs, already scaled."""

    def param_groups(self, lr: float) -> list[dict]:
        """Optimiser parameter groups (each with its own ``lr``); one group by default."""
        return [{"params": list(self.parameters()), "lr": lr}]

    #: name of the encoder weight (rows = latents) that :meth:`resample_` re-initialises
    encoder_name: str = "W_enc"

    @torch.no_grad()
    def resample_(self, dead: torch.Tensor, xs: torch.Tensor, generator: torch.Generator | None = None
                  ) -> dict[str, torch.Tensor]:
        """Re-initialise ``dead`` latents (bool (M,)) from scaled inputs ``xs`` (dictionary_learning's recipe):
        inputs are drawn with probability proportional to their squared reconstruction error; the decoder
        column becomes the (centred) input, normalised; the encoder row the same direction times 0.2 x the
        mean norm of the alive encoder rows; the latent's encoder bias 0. Returns the touched parameters and
        the latent indices so the trainer can reset their optimiser state."""
        idx = torch.nonzero(dead).flatten()
        if len(idx) == 0 or len(xs) == 0:
            return {}
        f, _ = self._encode(xs)
        err = (xs - self.decode_scaled(f)).pow(2).sum(-1).clamp_min(1e-12)
        pick = torch.multinomial(err.cpu(), len(idx), replacement=len(idx) > len(xs),
                                 generator=generator).to(xs.device)
        v = xs[pick] - self.b_dec
        v = v / v.norm(dim=1, keepdim=True).clamp_min(1e-8)
        enc = getattr(self, self.encoder_name)
        alive = ~dead
        scale = 0.2 * (enc[alive].norm(dim=1).mean() if alive.any() else torch.tensor(1.0))
        self.W_dec[:, idx] = v.T * (self.W_dec[:, alive].norm(dim=0).mean() if not self.unit_norm_decoder
                                   and alive.any() else 1.0)
        enc[idx] = v * scale
        touched = {self.encoder_name: idx, "W_dec": idx}
        for bias in ("b_enc", "b_gate", "b_mag", "r_mag"):
            if hasattr(self, bias):
                getattr(self, bias)[idx] = 0.0
                touched[bias] = idx
        return touched

    @property
    def decoder_norms(self) -> torch.Tensor:
        return self.W_dec.norm(dim=0)

    def _check(self, x: torch.Tensor) -> None:
        if x.ndim != 2 or x.shape[1] != self.d_in:
            raise ParameterError(f"{type(self).__name__}: inputs must have shape (N, {self.d_in}), "
                                 f"got {tuple(x.shape)}")

    def extra_repr(self) -> str:
        return f"d_in={self.d_in}, n_latents={self.n_latents}"


def mse_sum(x: torch.Tensor, xh: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of the squared L2 error (sum over dimensions)."""
    return (x - xh).pow(2).sum(-1).mean()


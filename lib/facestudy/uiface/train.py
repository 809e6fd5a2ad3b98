"""The one diffusion trainer of the book (chapter 2, UIFace §2.3): DDPM training, EMA, checkpoint + resume.

Face-recognition training lives in :func:`facestudy.train.fit`; this loop exists because a diffusion model
has no classification head: it learns ``MSE(target, UNet(x_t, t, tokens))`` with t ~ U{0..T-1}, where the
target is ε (the paper), v or x₀ as the generator's ``config.prediction`` says (see
:meth:`DDPMSchedule.target`; v/x₀ fit far faster at high noise, which a CPU-sized run needs). Each step
re-seeds torch's global generator with ``seed`` and the step index, so batches, timesteps, noise, flips,
context partial dropout and empty-context draws are the same whether a run is resumed or not.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from ..errors import DataError, ParameterError
from .model import UIFaceGenerator
from .sampling import DDPMSchedule


class EMA:
    """Exponential moving average of the weights with the warm-up of UIFace/IDiff-Face's ``utils/ema.py``.

    decay(step) = min(max_decay, 1 − (1 + step / inv_gamma) ** −power)   (inv_gamma 1, power 0.75, max 0.9999).
    """

    def __init__(self, model: torch.nn.Module, inv_gamma: float = 1.0, power: float = 0.75,
                 max_decay: float = 0.9999) -> None:
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.inv_gamma, self.power, self.max_decay = inv_gamma, power, max_decay
        self.step = 0

    def decay(self) -> float:
        value = 1 - (1 + self.step / self.inv_gamma) ** -self.power
        return float(min(self.max_decay, max(0.0, value)))

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        d = self.decay()
        for pe, p in zip(self.model.parameters(), model.parameters(), strict=True):
            pe.mul_(d).add_(p.detach(), alpha=1 - d)
        for be, b in zip(self.model.buffers(), model.buffers(), strict=True):
            be.copy_(b)
        self.step += 1


@dataclass
class DiffusionHistory:
    """Loss per step and timing of a chapter 2 training loop (:func:`train_diffusion`, and the autoencoder's)."""

    loss: list[float] = field(default_factory=list)
    seconds: float = 0.0
    resumed_from: int = 0
    steps: int = 0
    total_seconds: float = 0.0  # training seconds over every call that built this checkpoint (the cold cost)


def train_diffusion(gen: UIFaceGenerator, images: torch.Tensor, identity: torch.Tensor, *, steps: int,
                    batch_size: int = 32, lr: float = 1e-4, device: torch.device | str = "cpu", seed: int = 0,
                    restart_period: int = 10_000, flip: bool = True, checkpoint: str | Path | None = None,
                    checkpoint_every: int = 200, schedule: DDPMSchedule | None = None,
                    ema: EMA | None = None, lr_schedule: str = "restarts",
                    warmup: int = 0, progress=None) -> tuple[EMA, DiffusionHistory]:
    """Train ``gen`` on ``images`` (float NCHW in [-1, 1], or a latent generator's scaled autoencoder latents)
    conditioned on ``identity`` (N, embed_dim).

    Adam; ``lr_schedule="restarts"``: CosineAnnealingWarmRestarts(T₀ = ``restart_period``) stepped every
    iteration, as in the paper; ``"cosine"``: one cosine decay from ``lr`` to 0 over ``steps`` (a short CPU
    run). Either way the first ``warmup`` steps ramp the rate up linearly. ``progress(step, steps, loss)`` is
    called after every step when given (the prepare stage's progress bar).
    With ``checkpoint`` set, the state (model, EMA, optimiser, scheduler, step, losses) is saved every
    ``checkpoint_every`` steps and at the end; a later call with the same path resumes from it (and returns
    at once when it already reached ``steps``). Returns the EMA and the loss history.
    """
    c, side = gen.config.sample_channels, gen.config.sample_size
    if images.ndim != 4 or tuple(images.shape[1:]) != (c, side, side):
        what = "latents" if gen.config.latent_channels else "images"
        raise ParameterError(f"train_diffusion: this generator denoises {what} of shape (N, {c}, {side}, {side}); "
                             f"got {tuple(images.shape)}")
    if len(images) != len(identity):
        raise ParameterError(f"train_diffusion: {len(images)} images but {len(identity)} identity embeddings")
    if lr_schedule not in ("restarts", "cosine") or warmup < 0:
        raise ParameterError(f"train_diffusion: lr_schedule must be 'restarts' or 'cosine' and warmup >= 0 "
                             f"(got {lr_schedule!r}, {warmup})")
    if steps < 0 or batch_size < 1:
        raise ParameterError(f"train_diffusion: steps must be >= 0 and batch_size >= 1 (got {steps}, {batch_size})")
    device = torch.device(device)
    sched = schedule or DDPMSchedule()
    gen.to(device).train()
    ema = ema or EMA(gen)
    ema.model.to(device)
    opt = torch.optim.Adam(gen.parameters(), lr=lr)
    lr_sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_factor(lr_schedule, steps, warmup, restart_period))
    hist = DiffusionHistory()
    step = 0
    path = Path(checkpoint) if checkpoint else None
    state = None
    if path is not None:
        from ..train import load_checkpoint

        state = load_checkpoint(path, map_location=device, what="diffusion checkpoint")  # weights_only=True
    if state is not None:
        if state.get("config") != gen.config_dict():
            raise DataError(f"diffusion checkpoint {path} was trained with another generator config; delete it "
                            f"or use another checkpoint path")
        gen.load_state_dict(state["model"])
        ema.model.load_state_dict(state["ema"])
        ema.step = state["ema_step"]
        opt.load_state_dict(state["opt"])
        lr_sched.load_state_dict(state["lr_sched"])
        step = state["step"]
        hist.loss = list(state["loss"])
        hist.resumed_from = step
        prior = float(state.get("seconds", 0.0))
    else:
        prior = 0.0
    images = images.to(device)
    identity = identity.to(device).float()
    n = len(images)
    start = time.perf_counter()
    while step < steps:
        torch.manual_seed(seed * 1_000_003 + step)
        idx = torch.randint(0, n, (batch_size,))
        x0 = images[idx.to(device)]
        if flip:
            mask = torch.rand(batch_size) < 0.5
            x0 = torch.where(mask.to(device)[:, None, None, None], x0.flip(-1), x0)
        t = torch.randint(0, sched.T, (batch_size,)).to(device)
        noise = torch.randn(x0.shape).to(device)
        tokens = gen.context(identity[idx.to(device)])
        pred = gen(sched.q_sample(x0, t, noise), t, tokens)
        loss = F.mse_loss(pred, sched.target(x0, t, noise, gen.config.prediction))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        lr_sched.step()
        ema.update(gen)
        hist.loss.append(float(loss.detach()))
        step += 1
        if progress is not None:
            progress(step, steps, hist.loss[-1])
        if path is not None and (step % checkpoint_every == 0 or step == steps):
            _save(path, gen, ema, opt, lr_sched, step, hist.loss, prior + time.perf_counter() - start)
    hist.seconds = time.perf_counter() - start
    hist.total_seconds = prior + hist.seconds
    hist.steps = step
    gen.eval()
    return ema, hist


def _lr_factor(kind: str, steps: int, warmup: int, restart_period: int):
    """Multiplier of the base rate at step k (linear warm-up, then cosine restarts or one cosine decay)."""
    def factor(k: int) -> float:
        w = min(1.0, (k + 1) / warmup) if warmup > 0 else 1.0
        if kind == "cosine":
            span = max(1, steps - warmup)
            return w * 0.5 * (1 + math.cos(math.pi * min(1.0, max(0, k - warmup) / span)))
        return w * 0.5 * (1 + math.cos(math.pi * (k % max(1, restart_period)) / max(1, restart_period)))
    return factor


def _save(path: Path, gen: UIFaceGenerator, ema: EMA, opt, lr_sched, step: int, loss: list[float],
          seconds: float = 0.0) -> None:
    from ..train import _atomic_save

    _atomic_save({"config": gen.config_dict(), "model": gen.state_dict(), "ema": ema.model.state_dict(),
                  "ema_step": ema.step, "opt": opt.state_dict(), "lr_sched": lr_sched.state_dict(), "step": step,
                  "loss": [float(v) for v in loss], "seconds": float(seconds)}, path)

"""The first stage of UIFace's latent diffusion: a face autoencoder trained by the project (chapter 2).

UIFace (METHODS.md §2.1–2.2) runs its UNet in the 3×32×32 latent of an LDM VQ-f4 autoencoder of 128-px faces.
Those weights are not redistributed, so the book trains its own *f4* autoencoder on the real aligned faces
it has (CelebA-id299 + CelebA-10k): an image of S×S pixels becomes a latent of C×(S/4)×(S/4) and back.

Shape (same down-factor as the paper, far fewer channels, no vector quantisation, no GAN loss — a CPU
budget):

    encoder   PixelUnshuffle(2) → conv → residual block → PixelUnshuffle(2) → conv → residual block → 1×1 → C
    decoder   conv → 2 residual blocks → conv → PixelShuffle(2) → residual block → conv → PixelShuffle(2)

Loss: L1 reconstruction of the decoded latent plus a small L2 pull of the latent to zero (a KL-like
regulariser that keeps its scale bounded); with ``latent_noise`` the decoder sees the latent plus Gaussian noise,
which makes it robust to the errors a denoiser leaves (a VAE's smoothness without its sampling). After
training, ``scale`` is set to 1 / std of the training latents (LDM's
``scale_factor``), so the diffusion model sees unit-variance latents: :meth:`encode` returns scaled latents,
:meth:`decode` takes scaled latents.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import DataError, ParameterError
from .train import DiffusionHistory


@dataclass
class AutoencoderConfig:
    """Sizes of the face autoencoder (chapter 2). ``factor`` is fixed at 4 (the paper's VQ-f4)."""

    image_size: int = 32
    latent_channels: int = 8
    channels: tuple[int, int] = (32, 64)
    norm_groups: int = 8
    extra: dict = field(default_factory=dict)

    factor = 4

    def __post_init__(self) -> None:
        self.channels = tuple(int(c) for c in self.channels)
        if len(self.channels) != 2 or min(self.channels) < 1:
            raise ParameterError(f"uiface autoencoder: ae_channels must be two positive widths (one per "
                                 f"resolution); got {self.channels}")
        if any(c % self.norm_groups for c in self.channels):
            raise ParameterError(f"uiface autoencoder: ae_channels {self.channels} must be divisible by "
                                 f"norm_groups {self.norm_groups}")
        if self.image_size % self.factor or self.image_size < self.factor:
            raise ParameterError(f"uiface autoencoder: image_size {self.image_size} must be a multiple of 4 "
                                 f"(the autoencoder is f4)")
        if self.latent_channels < 1:
            raise ParameterError(f"uiface autoencoder: latent_channels must be >= 1, got {self.latent_channels}")

    @property
    def latent_size(self) -> int:
        return self.image_size // self.factor


class _Res(nn.Module):
    def __init__(self, c: int, groups: int) -> None:
        super().__init__()
        self.f = nn.Sequential(nn.GroupNorm(groups, c), nn.SiLU(), nn.Conv2d(c, c, 3, padding=1),
                               nn.GroupNorm(groups, c), nn.SiLU(), nn.Conv2d(c, c, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.f(x)


class FaceAutoencoder(nn.Module):
    """f4 face autoencoder: float NCHW images in [-1, 1] ↔ scaled latents (N, C, S/4, S/4) (chapter 2)."""

    def __init__(self, config: AutoencoderConfig | None = None) -> None:
        super().__init__()
        cfg = config or AutoencoderConfig()
        self.config = cfg
        c1, c2 = cfg.channels
        g, z = cfg.norm_groups, cfg.latent_channels
        self.encoder = nn.Sequential(
            nn.PixelUnshuffle(2), nn.Conv2d(12, c1, 3, padding=1), _Res(c1, g),
            nn.PixelUnshuffle(2), nn.Conv2d(4 * c1, c2, 3, padding=1), _Res(c2, g),
            nn.GroupNorm(g, c2), nn.SiLU(), nn.Conv2d(c2, z, 1))
        self.decoder = nn.Sequential(
            nn.Conv2d(z, c2, 3, padding=1), _Res(c2, g), _Res(c2, g),
            nn.Conv2d(c2, 4 * c1, 3, padding=1), nn.PixelShuffle(2), _Res(c1, g),
            nn.GroupNorm(g, c1), nn.SiLU(), nn.Conv2d(c1, 12, 3, padding=1), nn.PixelShuffle(2))
        self.register_buffer("scale", torch.ones(()))

    def _check(self, x: torch.Tensor, channels: int, size: int, what: str) -> None:
        if x.ndim != 4 or x.shape[1] != channels or x.shape[-1] != size or x.shape[-2] != size:
            raise ParameterError(f"autoencoder {what} must be (N, {channels}, {size}, {size}); got {tuple(x.shape)}")

    def encode_raw(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x, 3, self.config.image_size, "input images")
        return self.encoder(x)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] -> latents scaled to unit variance (what the diffusion UNet sees)."""
        return self.encode_raw(x) * self.scale

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Scaled latents -> images (not clamped; callers clamp to [-1, 1])."""
        self._check(z, self.config.latent_channels, self.config.latent_size, "latents")
        return self.decoder(z / self.scale)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.encode_raw(x)
        return self.decoder(z), z

    @torch.no_grad()
    def encode_all(self, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """Scaled latents of every image, in batches, in eval mode."""
        self.eval()
        return torch.cat([self.encode(images[i:i + batch_size]) for i in range(0, len(images), batch_size)])

    @torch.no_grad()
    def decode_all(self, latents: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        self.eval()
        return torch.cat([self.decode(latents[i:i + batch_size]).clamp(-1, 1)
                          for i in range(0, len(latents), batch_size)])

    def config_dict(self) -> dict:
        return asdict(self.config)


#: the autoencoder's training record is the denoiser's: loss per step, seconds, resumed_from, steps, total_seconds
AutoencoderHistory = DiffusionHistory


def train_autoencoder(ae: FaceAutoencoder, images: torch.Tensor, *, steps: int, batch_size: int = 64,
                      lr: float = 2e-3, latent_l2: float = 1e-4, latent_noise: float = 0.0, seed: int = 0,
                      flip: bool = True,
                      checkpoint: str | Path | None = None, checkpoint_every: int = 200,
                      progress=None) -> AutoencoderHistory:
    """Train ``ae`` on ``images`` (float NCHW in [-1, 1]) with L1 + ``latent_l2``·mean(z²), Adam, one-cycle LR.

    ``latent_noise`` σ > 0 decodes z + σ·std(z)·ε instead of z (ε ~ N(0, 1), std over the batch, not
    back-propagated): the decoder learns to map slightly-off latents to clean faces, as a VAE's does. Without
    it, the small errors a denoiser leaves in its latent decode to blocky 4×4-pixel artefacts.

    Each step re-seeds torch with ``seed`` and the step index (batches and flips identical when resumed).
    With ``checkpoint`` set the state is saved every ``checkpoint_every`` steps and at the end, and a later call
    resumes from it (or returns at once when finished). At the end ``ae.scale`` = 1 / std of the latents of
    (up to 2,048 of) the training images. ``progress(step, steps, loss)`` is called every step when given.
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise ParameterError(f"train_autoencoder: images must be float (N, 3, H, W); got {tuple(images.shape)}")
    if steps < 0 or batch_size < 1:
        raise ParameterError(f"train_autoencoder: steps must be >= 0 and batch_size >= 1 (got {steps}, {batch_size})")
    opt = torch.optim.Adam(ae.parameters(), lr=lr)
    warm = max(1, steps // 20)

    def factor(k: int) -> float:  # linear warm-up, then one cosine decay
        if k < warm:
            return (k + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (k - warm) / max(1, steps - warm))))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    hist = AutoencoderHistory()
    path = Path(checkpoint) if checkpoint else None
    step, prior = 0, 0.0
    if path is not None:
        from ..train import load_checkpoint

        state = load_checkpoint(path, map_location="cpu", what="autoencoder checkpoint")  # weights_only=True
        if state is not None:
            if state.get("config") != ae.config_dict():
                raise DataError(f"autoencoder checkpoint {path} was trained with another config; delete it or "
                                f"use another cache")
            ae.load_state_dict(state["model"])
            opt.load_state_dict(state["opt"])
            sched.load_state_dict(state["sched"])
            step, hist.loss, hist.resumed_from = state["step"], list(state["loss"]), state["step"]
            prior = float(state.get("seconds", 0.0))
    n = len(images)
    ae.train()
    start = time.perf_counter()
    while step < steps:
        torch.manual_seed(seed * 1_000_003 + step)
        x = images[torch.randint(0, n, (batch_size,))].float()
        if flip:
            mask = torch.rand(batch_size) < 0.5
            x = torch.where(mask[:, None, None, None], x.flip(-1), x)
        z = ae.encode_raw(x)
        zn = z + latent_noise * z.detach().std() * torch.randn_like(z) if latent_noise > 0 else z
        rec = ae.decoder(zn)
        loss = F.l1_loss(rec, x) + latent_l2 * z.pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        hist.loss.append(float(loss.detach()))
        step += 1
        if progress is not None:
            progress(step, steps, hist.loss[-1])
        if path is not None and step < steps and step % checkpoint_every == 0:
            _save(path, ae, opt, sched, step, hist.loss, prior + time.perf_counter() - start)
    if hist.resumed_from < steps or float(ae.scale) == 1.0:
        with torch.no_grad():
            g = torch.Generator().manual_seed(seed)
            pick = torch.randperm(n, generator=g)[:2048]
            ae.eval()
            z = torch.cat([ae.encode_raw(images[pick[i:i + 256]].float()) for i in range(0, len(pick), 256)])
            ae.scale.fill_(1.0 / float(z.std().clamp_min(1e-6)))
    hist.seconds = time.perf_counter() - start
    hist.total_seconds = prior + hist.seconds
    if path is not None and hist.resumed_from < steps:
        _save(path, ae, opt, sched, step, hist.loss, hist.total_seconds)
    hist.steps = step
    ae.eval()
    return hist


def _save(path: Path, ae: FaceAutoencoder, opt, sched, step: int, loss: list[float], seconds: float) -> None:
    from ..train import _atomic_save

    _atomic_save({"config": ae.config_dict(), "model": ae.state_dict(), "opt": opt.state_dict(),
                  "sched": sched.state_dict(), "step": step, "loss": [float(v) for v in loss],
                  "seconds": float(seconds)}, path)

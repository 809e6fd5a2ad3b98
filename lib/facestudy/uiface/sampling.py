"""DDPM schedule and UIFace's DDIM samplers (chapter 2, METHODS.md §2.3–2.4).

Modes (all DDIM with η = 0, ``steps`` = 50 by default, timesteps 980, 960, …, 0 — standard DDIM, not the
official code's off-by-one):

``baseline``   identity-conditioned at every step, classifier-free guidance ε = (1+w)ε_c − wε_u.
``interval``   the Fig. 2 study: identity context only for ``lo <= t < hi`` (with CFG), empty context outside.
``two_stage``  fixed boundary: empty context for t >= t0, then identity with CFG (t0 = 500).
``adaptive``   per-sample boundary: empty context until the cross-attention map A_t stops changing
               (d_t < th after having been >= th, see :func:`adaptive_switch_index`), identity context
               without CFG from the next step on, and every sample conditioned with CFG once t < t0.
``inject=True`` adds attention injection to any mode: the unconditional and conditional passes run as one
batch ``[e; c]``; the conditional half re-uses the unconditional self-attention logits (every conditioned
step) and, in CFG steps, matches its cross-attention statistics to the unconditional ones.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import ParameterError
from .attention import AttentionControl, attention_control, cross_attention_map, map_change
from .model import UIFaceGenerator, model_to_images

MODES = ("baseline", "interval", "two_stage", "adaptive")


class DDPMSchedule:
    """Linear-β DDPM schedule (T = 1000, β from 1e-4 to 0.02) shared by training and sampling (chapter 2)."""

    def __init__(self, T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> None:
        self.T = T
        self.betas = torch.linspace(beta_start, beta_end, T, dtype=torch.float64)
        self.alphas_cumprod = torch.cumprod(1.0 - self.betas, 0)

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = √ᾱ_t x₀ + √(1−ᾱ_t) ε."""
        a = self.alphas_cumprod.to(x0.device)[t].float().view(-1, 1, 1, 1)
        return a.sqrt() * x0 + (1 - a).sqrt() * noise

    def target(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, prediction: str) -> torch.Tensor:
        """The regression target of training for ``prediction`` ("epsilon" | "v_prediction" | "sample")."""
        if prediction == "epsilon":
            return noise
        if prediction == "sample":
            return x0
        if prediction == "v_prediction":
            a = self.alphas_cumprod.to(x0.device)[t].float().view(-1, 1, 1, 1)
            return a.sqrt() * noise - (1 - a).sqrt() * x0
        raise ParameterError(f"unknown prediction type {prediction!r}; use epsilon, v_prediction or sample")

    def split(self, x: torch.Tensor, out: torch.Tensor, a: float, prediction: str
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """(x̂₀, ε̂) from the model output ``out`` at x_t with ᾱ_t = ``a`` (DDIM needs both; chapter 2).

        The three targets are affine in each other at fixed (x_t, t), so classifier-free guidance may combine
        raw outputs before this conversion and gives the same result as combining ε̂.
        """
        sa, sb = math.sqrt(a), math.sqrt(1 - a)
        if prediction == "epsilon":
            return (x - sb * out) / sa, out
        if prediction == "v_prediction":
            return sa * x - sb * out, sb * x + sa * out
        if prediction == "sample":
            return out, (x - sa * out) / sb
        raise ParameterError(f"unknown prediction type {prediction!r}; use epsilon, v_prediction or sample")

    def ddim_timesteps(self, steps: int) -> list[int]:
        """Descending DDIM timesteps; 50 steps of T = 1000 gives 980, 960, …, 20, 0."""
        if not 1 <= steps <= self.T:
            raise ParameterError(f"ddim steps must lie in [1, {self.T}], got {steps}")
        skip = self.T // steps
        return list(range(0, self.T, skip))[::-1][:steps]

    def alpha(self, t: int) -> float:
        return 1.0 if t < 0 else float(self.alphas_cumprod[t])


def adaptive_switch_index(d: list[float] | np.ndarray, th: float, *, require_rise: bool = True) -> int | None:
    """Index of the step where the adaptive rule switches to the identity context (UIFace §2.4).

    ``d`` is the per-step map change d_t (NaN where undefined, e.g. the first step). The rule picks the
    first step with ``d < th`` **after** one with ``d >= th`` (``require_rise=True``, our reading: the
    first comparisons of near-noise maps can be spuriously small); ``require_rise=False`` is the official
    code's "first step below th". Returns None when the rule never fires.
    """
    armed = not require_rise
    for i, v in enumerate(d):
        if v is None or not math.isfinite(float(v)):
            continue
        if v >= th:
            armed = True
        elif armed:
            return i
    return None


@dataclass
class SamplerConfig:
    """One sampling mode of chapter 2 (see the module docstring)."""

    mode: str = "baseline"
    steps: int = 50
    guidance: float = 1.0  # w in ε = (1+w)ε_c − wε_u (the paper's cfg_scale = 1)
    t0: int = 500  # fixed stage boundary; the floor of the adaptive one (step_th)
    th: float = 0.005  # adaptive threshold on d_t
    require_rise: bool = True
    interval: tuple[int, int] = (0, 1000)  # identity context for lo <= t < hi (mode "interval")
    inject: bool = False
    match_weight: float = 0.5
    clip_x0: bool = True
    record_maps: bool = False  # record A_t / d_t at every step (adaptive mode always records)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ParameterError(f"unknown sampling mode {self.mode!r}; valid modes: {', '.join(MODES)}")
        if self.guidance < 0:
            raise ParameterError(f"guidance w must be >= 0, got {self.guidance}")


@dataclass
class SampleResult:
    """Images and bookkeeping of one sampling run (chapter 2)."""

    images: torch.Tensor  # uint8 NHWC
    t0: np.ndarray  # per-sample effective stage boundary (timestep)
    d: np.ndarray  # (N, steps) map change d_t, NaN where not recorded
    maps: torch.Tensor | None  # (n_keep, steps, S, S) A_t of the first samples, if recorded
    timesteps: list[int]
    seconds: float
    unet_evals: int  # UNet sample-evaluations (a batch of B counts B)
    extra: dict = field(default_factory=dict)

    @property
    def seconds_per_image(self) -> float:
        return self.seconds / max(len(self.images), 1)


@torch.no_grad()
def sample(gen: UIFaceGenerator, identity: torch.Tensor, config: SamplerConfig | None = None, *,
           seed: int = 0, batch_size: int = 64, schedule: DDPMSchedule | None = None,
           keep_maps: int = 0, device: torch.device | str = "cpu") -> SampleResult:
    """Sample one image per row of ``identity`` (N, embed_dim) with the chosen UIFace mode (chapter 2).

    The initial noise of sample ``i`` depends only on ``seed`` and ``i``, so every mode starts from the
    same x_T for the same row: grids of different modes compare like with like.
    """
    cfg = config or SamplerConfig()
    if cfg.mode == "adaptive" and cfg.th < 0:
        raise ParameterError(f"the adaptive sampler needs a threshold th >= 0 (got {cfg.th}); calibrate it first "
                             f"(uiface.pipeline.calibrate_threshold) or pass the paper's 0.005")
    sched = schedule or DDPMSchedule()
    device = torch.device(device)
    gen = gen.to(device).eval()
    n = identity.shape[0]
    size = gen.config.sample_size
    g = torch.Generator().manual_seed(int(seed))
    noise = torch.randn(n, gen.config.sample_channels, size, size, generator=g)
    ts = sched.ddim_timesteps(cfg.steps)
    images, t0s, ds, maps_keep = [], [], [], []
    evals = 0
    start = time.perf_counter()
    with attention_control(gen) as ctrl:
        for lo in range(0, n, batch_size):
            hi = min(n, lo + batch_size)
            out = _sample_batch(gen, identity[lo:hi].to(device), noise[lo:hi].to(device), cfg, sched, ts, ctrl,
                                keep=max(0, min(keep_maps - lo, hi - lo)))
            images.append(model_to_images(gen.to_pixels(out["x"])))
            t0s.append(out["t0"])
            ds.append(out["d"])
            if out["maps"] is not None:
                maps_keep.append(out["maps"])
            evals += out["evals"]
    seconds = time.perf_counter() - start
    return SampleResult(images=torch.cat(images), t0=np.concatenate(t0s), d=np.concatenate(ds),
                        maps=torch.cat(maps_keep) if maps_keep else None, timesteps=ts, seconds=seconds,
                        unet_evals=evals)


def _sample_batch(gen: UIFaceGenerator, ident: torch.Tensor, x: torch.Tensor, cfg: SamplerConfig,
                  sched: DDPMSchedule, ts: list[int], ctrl: AttentionControl, keep: int) -> dict:
    b = x.shape[0]
    c_tok = gen.context(ident)  # eval mode: no CPD, no empty substitution
    e_tok = gen.context.empty_tokens(b)
    adaptive = cfg.mode == "adaptive"
    record = adaptive or cfg.record_maps
    switched = torch.zeros(b, dtype=torch.bool, device=x.device)
    armed = torch.full((b,), not cfg.require_rise, dtype=torch.bool, device=x.device)
    t0 = np.full(b, cfg.t0 if adaptive else (cfg.t0 if cfg.mode == "two_stage" else -1), dtype=np.int64)
    d = np.full((b, len(ts)), np.nan)
    maps = torch.zeros(keep, len(ts), gen.config.image_size, gen.config.image_size) if keep and record else None
    prev_map = None
    evals = 0
    skip = ts[0] - ts[1] if len(ts) > 1 else sched.T
    for i, t in enumerate(ts):
        tt = torch.full((b,), t, device=x.device, dtype=torch.long)
        # --- what this step computes
        if cfg.mode == "baseline":
            kind = "cfg"
        elif cfg.mode == "interval":
            kind = "cfg" if cfg.interval[0] <= t < cfg.interval[1] else "uncond"
        elif cfg.mode == "two_stage":
            kind = "cfg" if t < cfg.t0 else "uncond"
        else:  # adaptive
            kind = "cfg" if t < cfg.t0 else "stage1"
        if kind == "cfg" and cfg.guidance == 0 and not cfg.inject:
            kind = "cond"
        if kind == "uncond":
            ctrl.configure(record_cross=record)
            eps = gen(x, tt, e_tok)
            evals += b
        elif kind == "cond":
            ctrl.configure(record_cross=record)
            eps = gen(x, tt, c_tok)
            evals += b
        elif kind == "stage1":
            tok = torch.where(switched[:, None, None], c_tok, e_tok)
            if cfg.inject and bool(switched.any()):
                ctrl.configure(inject_self=True, paired=True, record_cross=record)
                eps = gen(torch.cat([x, x]), torch.cat([tt, tt]), torch.cat([e_tok, tok]))[b:]
                evals += 2 * b
            else:  # without injection the unconditional pass equals the unswitched samples' own pass
                ctrl.configure(record_cross=record)
                eps = gen(x, tt, tok)
                evals += b
        else:  # cfg
            ctrl.configure(inject_self=cfg.inject, match_cross=cfg.inject, paired=True, record_cross=record)
            ctrl.match_weight = cfg.match_weight
            out = gen(torch.cat([x, x]), torch.cat([tt, tt]), torch.cat([e_tok, c_tok]))
            eps_u, eps_c = out[:b], out[b:]
            eps = (1 + cfg.guidance) * eps_c - cfg.guidance * eps_u
            evals += 2 * b
        # --- adaptive bookkeeping on the recorded cross-attention maps
        if record:
            a_t = cross_attention_map(ctrl.cross_logits, gen.config.image_size)
            if maps is not None:
                maps[:, i] = a_t[:keep].cpu()
            if prev_map is not None:
                d_t = map_change(a_t, prev_map)
                d[:, i] = d_t.cpu().numpy()
                if adaptive and kind == "stage1":
                    below = d_t < cfg.th
                    fire = below & armed & ~switched
                    armed |= d_t >= cfg.th
                    t0[fire.cpu().numpy()] = t
                    switched |= fire
            prev_map = a_t
        ctrl.reset()
        # --- DDIM update (η = 0); ``eps`` holds the (guided) raw model output until split into (x̂₀, ε̂)
        a_now, a_next = sched.alpha(t), sched.alpha(t - skip)
        x0, eps = sched.split(x, eps, a_now, gen.config.prediction)
        if cfg.clip_x0:  # pixels live in [-1, 1]; unit-variance latents are clipped at ±4 (5e-5 of N(0, 1))
            bound = 4.0 if gen.config.latent_channels else 1.0
            x0 = x0.clamp(-bound, bound)
            eps = (x - math.sqrt(a_now) * x0) / math.sqrt(1 - a_now)
        x = math.sqrt(a_next) * x0 + math.sqrt(1 - a_next) * eps
    return {"x": x, "t0": t0, "d": d, "maps": maps, "evals": evals}

"""The act-max loop and the "faceness" score (chapter 4, METHODS §3.6)."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ...errors import ParameterError
from .objectives import Objective
from .params import random_fft_background
from .transforms import Transform, compose, standard_transforms


@dataclass
class RenderResult:
    """Optimised images (uint8 NHWC, alpha composited on grey), opacity maps, objective per step."""

    images: np.ndarray
    alpha: np.ndarray | None
    history: list[float]
    seconds: float
    steps: int
    info: dict = field(default_factory=dict)

    @property
    def steps_per_s(self) -> float:
        return self.steps / max(self.seconds, 1e-9)


def _activations(model, x: torch.Tensor, layers: Sequence[str]) -> dict[str, torch.Tensor]:
    wanted = [n for n in layers if n != "input"]
    acts = model.features(x, wanted, grad=True) if wanted else {}
    acts["input"] = x
    return acts


def evaluate(model, objective: Objective, images: torch.Tensor) -> float:
    """Objective value of a float NCHW [0, 1] batch without transforms (no gradient)."""
    with torch.no_grad():
        return float(objective(_activations(model, images, objective.layers)))


def render(model, objective: Objective, param: torch.nn.Module, *, steps: int = 128, lr: float = 0.05,
           transforms: Sequence[Transform] | None = None, seed: int = 0,
           log_every: int = 1, threads: int | None = 1) -> RenderResult:
    """Maximise ``objective`` of ``model`` (a FaceModel: ``features(x, layers, grad=True)``) over the
    image produced by ``param`` with Adam, applying ``transforms`` (default: the standard set) each step.

    With a 4-channel (alpha) parameterisation, each step composites the image over a fresh random FFT
    background and uses Lucid's transparency loss
    -obj * (1 - mean alpha_full) * 0.5 - obj * (1 - mean alpha_crop).

    ``threads`` caps torch's CPU threads during the loop (restored afterwards; None = unchanged): the
    single-image steps are small, and on a shared 2-core CPU one thread was 2-6x faster than two.
    """
    from ...runtime import torch_threads

    with torch_threads(threads):
        return _render(model, objective, param, steps=steps, lr=lr, transforms=transforms, seed=seed,
                       log_every=log_every)


def _render(model, objective: Objective, param: torch.nn.Module, *, steps: int, lr: float,
            transforms: Sequence[Transform] | None, seed: int, log_every: int) -> RenderResult:
    if steps < 1:
        raise ParameterError(f"render: steps must be >= 1, got {steps}")
    tf = compose(standard_transforms() if transforms is None else list(transforms))
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    for p in model.parameters():
        p.requires_grad_(False)
    param.train()
    opt = torch.optim.Adam(param.parameters(), lr=lr)
    history: list[float] = []
    t0 = time.perf_counter()
    for it in range(steps):
        img = param()
        if img.shape[1] == 4:
            rgb, a = img[:, :3], img[:, 3:]
            bg = random_fft_background(len(img), img.shape[2], img.shape[3], g).to(img)
            comp = torch.cat([rgb * a + bg * (1 - a), a], 1)
            out = tf(comp, g)
            x, a_crop = out[:, :3], out[:, 3:]
            obj = objective(_activations(model, x, objective.layers))
            loss = -obj * (1 - a.mean()) * 0.5 - obj * (1 - a_crop.mean())
        else:
            x = tf(img, g)
            obj = objective(_activations(model, x, objective.layers))
            loss = -obj
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if it % log_every == 0 or it == steps - 1:
            history.append(float(obj.detach()))
    seconds = time.perf_counter() - t0
    param.eval()
    with torch.no_grad():
        img = param().cpu()
    alpha = None
    if img.shape[1] == 4:
        alpha = img[:, 3].numpy()
        img = img[:, :3] * img[:, 3:] + 0.5 * (1 - img[:, 3:])
    images = (img.clamp(0, 1).permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    return RenderResult(images=images, alpha=alpha, history=history, seconds=seconds, steps=steps)


@dataclass
class RenderJob:
    """One act-max run for :func:`render_many`: maximise ``objective`` over ``param`` with Adam at ``lr``;
    ``seed`` seeds its transform draws exactly as :func:`render` seeds them."""

    objective: Objective
    param: torch.nn.Module
    seed: int = 0
    lr: float = 0.05


def render_many(model, jobs: Sequence[RenderJob], *, steps: int = 128,
                transforms: Sequence[Transform] | None = None, log_every: int = 1,
                threads: int | None = None, spin: bool = False) -> list[RenderResult]:
    """Run independent act-max jobs in lock-step, the model seeing all their images as one batch.

    Each job keeps its own parameters, Adam state (one parameter group each), learning rate and transform
    generator, seeded as :func:`render` seeds it, and its loss only reads its own rows of the activations.
    With the model in eval mode the rows do not interact, so every job follows the run :func:`render` would
    make for it alone (equal up to floating point; tested). What changes is the cost: one forward and
    backward pass of a batch instead of one per job, which on a CPU amortises the model's per-call overhead
    (chapter 4's converged F5 comparison runs its 12 jobs this way). All jobs must give images of one shape;
    4-channel (alpha) parameterisations use :func:`render`.
    Returns one :class:`RenderResult` per job, in order; ``seconds`` is the shared wall time of the loop.

    ``spin=True`` (a CPU model) runs the loop in a worker process whose OpenMP threads spin-wait
    (:func:`facestudy.runtime.in_spinning_process`: 1.85x faster on an idle 2-core CPU); the jobs' parameter
    modules in this process then keep their initial values, and only the returned results carry the images.
    """
    if steps < 1:
        raise ParameterError(f"render_many: steps must be >= 1, got {steps}")
    if not jobs:
        raise ParameterError("render_many: no jobs given")
    if model.training:
        raise ParameterError("render_many: put the model in eval mode first (in train mode BatchNorm would mix "
                             "the jobs' images)")
    on_cpu = all(p.device.type == "cpu" for p in model.parameters())
    if spin and on_cpu:
        from ...runtime import in_spinning_process

        return in_spinning_process(_render_many_threads, model, list(jobs), steps=steps, transforms=transforms,
                                   log_every=log_every, threads=threads)
    return _render_many_threads(model, list(jobs), steps=steps, transforms=transforms, log_every=log_every,
                                threads=threads)


def _render_many_threads(model, jobs: list[RenderJob], *, steps: int, transforms, log_every: int,
                         threads: int | None) -> list[RenderResult]:
    from ...runtime import torch_threads

    with torch_threads(threads):
        return _render_many(model, jobs, steps=steps, transforms=transforms, log_every=log_every)


def _render_many(model, jobs: list[RenderJob], *, steps: int, transforms, log_every: int) -> list[RenderResult]:
    tf = compose(standard_transforms() if transforms is None else list(transforms))
    gens = [torch.Generator().manual_seed(j.seed) for j in jobs]
    torch.manual_seed(jobs[0].seed)
    for p in model.parameters():
        p.requires_grad_(False)
    for j in jobs:
        j.param.train()
    opt = torch.optim.Adam([{"params": list(j.param.parameters()), "lr": j.lr} for j in jobs])
    layers = tuple(dict.fromkeys(n for j in jobs for n in j.objective.layers))
    histories: list[list[float]] = [[] for _ in jobs]
    t0 = time.perf_counter()
    for it in range(steps):
        xs = []
        for j, g in zip(jobs, gens, strict=True):
            img = j.param()
            if img.shape[1] != 3:
                raise ParameterError("render_many: alpha (4-channel) parameterisations are not batched; use render")
            xs.append(tf(img, g))
        shapes = {tuple(x.shape[1:]) for x in xs}
        if len(shapes) != 1:
            raise ParameterError(f"render_many: the jobs give images of different shapes {sorted(shapes)}; "
                                 "batch only jobs with one canvas size")
        acts = _activations(model, torch.cat(xs), layers)
        bounds = np.cumsum([0] + [len(x) for x in xs])
        objs = [j.objective({k: v[a:b] for k, v in acts.items()})
                for j, a, b in zip(jobs, bounds[:-1], bounds[1:], strict=True)]
        opt.zero_grad(set_to_none=True)
        (-torch.stack(objs).sum()).backward()
        opt.step()
        if it % log_every == 0 or it == steps - 1:
            for h, o in zip(histories, objs, strict=True):
                h.append(float(o.detach()))
    seconds = time.perf_counter() - t0
    out = []
    for j, h in zip(jobs, histories, strict=True):
        j.param.eval()
        with torch.no_grad():
            img = j.param().cpu()
        images = (img.clamp(0, 1).permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
        out.append(RenderResult(images=images, alpha=None, history=h, seconds=seconds, steps=steps,
                                info={"batched_jobs": len(jobs)}))
    return out


def faceness(images: np.ndarray, mtcnn) -> dict[str, np.ndarray]:
    """How face-like images are, by our MTCNN (chapter 4's number for comparing parameterisations).

    ``onet_prob``: the O-Net face probability of the whole canvas resized to 48x48 (a continuous score);
    ``detected_score``: the best score of a full MTCNN cascade detection (0 when it finds no face).
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ParameterError(f"faceness: images must be uint8 (N, H, W, 3), got {images.shape}")
    x = torch.as_tensor(images).permute(0, 3, 1, 2).float()
    x = F.interpolate(x, size=(48, 48), mode="bilinear", align_corners=False, antialias=True)
    with torch.no_grad():
        prob = mtcnn.onet((x - 127.5) * 0.0078125)[0].numpy()
    dets = mtcnn.detect(images)
    best = np.array([float(d.scores.max()) if len(d) else 0.0 for d in dets])
    return {"onet_prob": prob, "detected_score": best}

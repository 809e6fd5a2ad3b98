"""Tail distillation (chapter 5): the student re-learns the end of the teacher on its frozen trunk's features.

The teacher is the real MobileFaceNet (MS1M). Its trunk up to a late layer is frozen and shared: its
features of every training and evaluation image are computed once by
:func:`facestudy.eval.trunk.trunk_features` (the FR core's cache). The *student* is a re-initialised copy of
the rest of the network (``model.tail(layer)``), trained with SphereFace2 plus one distillation term on
those cached features. Because the student sees the teacher's own features, its embeddings can come close
to the teacher's (student-teacher cosines ``c_i`` past ILED's target ``s = 0.9``), so ILED's weights leave
saturation and its hard mining can act -- the regime the from-scratch student never reaches on a CPU.

    run = train_tail(model, "conv_sep", feats, labels, targets, DistillConfig("iled"), steps=600, ...)
    emb = embed_tail(run.tail, lfw_feats)        # raw embeddings of the evaluation images
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from ..errors import ParameterError
from .losses import iled_weights
from .objective import DistillConfig, DistillLoss

__all__ = ["TailRun", "reinit_", "train_tail", "embed_tail", "probe_cosines", "lowres", "seeds_matrix"]


def reinit_(module: nn.Module, seed: int) -> nn.Module:
    """Re-initialise every parameter and BatchNorm statistic of ``module`` from ``seed`` (in place).

    Same rule as MobileFaceNet's own initialisation: Kaiming-normal convolutions, N(0, 0.01) linear layers,
    BatchNorm weight 1 / bias 0 / fresh running statistics, PReLU slopes 0.25.
    """
    g = torch.Generator().manual_seed(int(seed))
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.out_channels * m.kernel_size[0] * m.kernel_size[1] // m.groups
                m.weight.normal_(0.0, math.sqrt(2.0 / fan_out), generator=g)
                if m.bias is not None:
                    m.bias.zero_()
            elif isinstance(m, nn.Linear):
                m.weight.normal_(0.0, 0.01, generator=g)
                if m.bias is not None:
                    m.bias.zero_()
            elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                m.reset_parameters()
            elif isinstance(m, nn.PReLU):
                m.weight.fill_(0.25)
    return module


@dataclass
class TailRun:
    """One trained student tail: row name, config, seed, the tail, per-step history, probe snapshots."""

    name: str
    config: DistillConfig
    seed: int
    tail: nn.Module
    history: pd.DataFrame
    steps: int
    train_seconds: float
    cpu_seconds: float
    #: step -> student-teacher cosines c_i of the fixed probe images (eval mode) at that step
    snapshots: dict[int, np.ndarray] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def unsaturated_share(self, step: int | None = None, s: float | None = None) -> float:
        """Share of probe images whose ILED weight is < 0.5 at ``step`` (default: the last snapshot)."""
        if not self.snapshots:
            return float("nan")
        step = max(self.snapshots) if step is None else step
        w = iled_weights(torch.as_tensor(self.snapshots[step]), self.config.iled)
        return float((w < 0.5).float().mean())


@torch.no_grad()
def embed_tail(tail: nn.Module, features: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """Raw (unnormalised) embeddings of cached trunk ``features`` through ``tail`` in eval mode, computed on
    the tail's device and returned on the CPU."""
    was = tail.training
    tail.eval()
    dev = next(tail.parameters()).device
    out = [tail(features[i:i + batch_size].to(dev).float()).cpu() for i in range(0, len(features), batch_size)]
    tail.train(was)
    return torch.cat(out) if out else torch.zeros(0)


@torch.no_grad()
def probe_cosines(tail: nn.Module, features: torch.Tensor, targets: torch.Tensor) -> np.ndarray:
    """Student-teacher cosines ``c_i`` of the rows of ``features`` (eval mode)."""
    emb = embed_tail(tail, features)
    return torch.nn.functional.cosine_similarity(emb, targets.float().cpu(), dim=1).numpy()


def _cpu_seconds() -> float:
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def train_tail(model: Any, layer: str, features: torch.Tensor, labels: Any, targets: torch.Tensor,
               dcfg: DistillConfig, *, steps: int, batch_size: int, lr: float, seed: int = 0,
               name: str | None = None, head: str = "sphereface2", momentum: float = 0.9,
               weight_decay: float = 5e-4, grad_clip: float = 5.0, probe: int = 1024,
               snapshots: int = 6, log_every: int = 1, device: Any = None) -> TailRun:
    """Train a re-initialised ``model.tail(layer)`` on cached trunk ``features`` (chapter 5).

    ``targets``: the teacher's (raw) embeddings of the same rows; ``labels``: identity per row (for the FR
    head). SGD with momentum, cosine learning-rate schedule, gradient clipping. Same ``seed`` -> the same
    initialisation (tail and head) and the same batch order for every row, so rows differ only by the
    distillation term. ``snapshots`` times during training (and at the end) the student-teacher cosines of
    ``probe`` fixed training rows are recorded (eval mode) for the ``c_i`` histograms. ``device`` (default:
    the features' own) is where the training runs: features, labels and targets move there once; the batch
    order is drawn on the CPU from the seed, so it is the same on every device.
    """
    from .. import losses
    from ..runtime import seed_everything

    features = torch.as_tensor(features)
    labels = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    targets = torch.as_tensor(targets).float()
    n = len(features)
    if not (len(labels) == len(targets) == n):
        raise ParameterError(f"train_tail: {n} feature rows, {len(labels)} labels and {len(targets)} teacher "
                             "targets; all three must describe the same images")
    if steps < 1 or batch_size < 2:
        raise ParameterError(f"train_tail needs steps >= 1 and batch_size >= 2, got {steps} and {batch_size}")
    batch_size = min(int(batch_size), n)
    dev = torch.device(device) if device is not None else features.device
    features, labels, targets = features.to(dev), labels.to(dev), targets.to(dev)
    seed_everything(seed)
    tail = reinit_(model.tail(layer).cpu(), seed).to(dev)  # CPU generator: same init on every device
    for p in tail.parameters():
        p.requires_grad_(True)
    dim = int(targets.shape[1])
    fr = losses.make_head(head, dim, int(labels.max()) + 1).to(dev)
    kd = DistillLoss(dcfg, batch_size, dim).to(dev) if dcfg.method != "none" else None
    params = list(tail.parameters()) + list(fr.parameters())
    opt = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    g = torch.Generator().manual_seed(int(seed) + 1)
    probe_idx = torch.randperm(n, generator=torch.Generator().manual_seed(12345))[: min(probe, n)].to(dev)
    snap_steps = sorted({int(round(k * steps / max(1, snapshots))) for k in range(snapshots + 1)})
    order = torch.randperm(n, generator=g)
    pos = 0
    rows: list[dict[str, float]] = []
    snaps: dict[int, np.ndarray] = {}
    t0, c0 = time.perf_counter(), _cpu_seconds()
    tail.train()
    for step in range(steps + 1):
        if step in snap_steps:
            snaps[step] = probe_cosines(tail, features[probe_idx], targets[probe_idx])
        if step == steps:
            break
        if pos + batch_size > n:  # next epoch: a fresh permutation (drop the incomplete remainder)
            order, pos = torch.randperm(n, generator=g), 0
        idx = order[pos:pos + batch_size].to(dev)
        pos += batch_size
        for grp in opt.param_groups:
            grp["lr"] = lr * 0.5 * (1.0 + math.cos(math.pi * step / steps))
        emb = tail(features[idx].float())
        cls = fr(emb, labels[idx])
        loss = cls + (kd(emb, targets[idx]) if kd is not None else 0.0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip:
            nn.utils.clip_grad_norm_(params, grad_clip)
        opt.step()
        if step % log_every == 0 or step == steps - 1:
            rec = {"step": step, "cls_loss": float(cls.detach()), "lr": opt.param_groups[0]["lr"]}
            if kd is not None:
                rec.update(kd.last)
            else:
                with torch.no_grad():
                    c = torch.nn.functional.cosine_similarity(emb, targets[idx], dim=1)
                rec["cos_st"] = float(c.mean())
                rec["iled_w_lt_half"] = float((iled_weights(c, dcfg.iled) < 0.5).float().mean())
            rows.append(rec)
        if not math.isfinite(float(loss.detach())):
            raise ParameterError(f"train_tail ({name or dcfg.method}, seed {seed}): the loss became {loss} at "
                                 f"step {step}; lower lr or the distillation weight")
    tail.eval()
    return TailRun(name or dcfg.method, dcfg, int(seed), tail, pd.DataFrame(rows), int(steps),
                   time.perf_counter() - t0, _cpu_seconds() - c0, snaps)


# ---------------------------------------------------------------------------------- harder column
def lowres(size: int = 24) -> tuple[str, Any]:
    """A deterministic degradation for :func:`facestudy.eval.trunk.trunk_features` ``augment=``: each
    112 px face is shrunk to ``size`` px (area averaging) and blown back up (bilinear) -- the low-resolution
    stand-in for the paper's harder benchmarks (cross-pose / cross-age sets we cannot mirror)."""
    if size < 4:
        raise ParameterError(f"lowres size must be >= 4 px, got {size}")

    from ..uiface.model import resize_uint8  # the book's one uint8 resize (area down, bilinear up)

    def fn(images: np.ndarray) -> np.ndarray:
        small = resize_uint8(np.ascontiguousarray(images), size)  # a real low-resolution uint8 image
        return resize_uint8(small, images.shape[1]).numpy()

    return f"lowres{size}-u8", fn


def seeds_matrix(results: dict[tuple[str, int], Any], row: str, seeds: Sequence[int]) -> np.ndarray:
    """``(n_seeds, n_folds)`` fold accuracies of ``row`` from ``{(row, seed): VerificationResult}``."""
    missing = [s for s in seeds if (row, s) not in results]
    if missing:
        raise ParameterError(f"row {row!r} has no result for seeds {missing}")
    return np.stack([np.asarray(results[(row, s)].fold_accuracies, dtype=float) for s in seeds])


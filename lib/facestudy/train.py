"""The one trainer every chapter uses (chapter 0b explains it; chapters 1, 3 and 5 train with it).

``fit(model, head, faceset, ...)`` runs mini-batch training of a :class:`~facestudy.models.FaceModel`
with a classification head from :mod:`facestudy.losses` (or ``head=None`` plus an ``extra_loss``, e.g.
pure distillation). Features:

- device ``auto`` (CUDA when present), AMP (float16 autocast + grad scaling) on CUDA only;
- seeded: the sample order and the global RNG are re-seeded from (seed, epoch) at each epoch, so a CPU run
  repeats exactly and a resumed run continues exactly where an uninterrupted one would be;
- schedules ``cosine`` / ``step`` (``milestones`` in epochs, ``gamma``) / ``constant``, linear warm-up
  (``warmup`` epochs), applied per step; SGD (momentum 0.9) or AdamW; gradient clipping;
- repeated augmentation (``repeat_prob``, §1.7): with that probability the next sample is another image of
  the previous identity (:func:`repeated_order`; batches may then hold an image index twice);
- ``augment(images)`` on the uint8 NCHW batch (or ``augment(images, keypoints=kp) -> (images, kp)`` when its
  signature accepts ``keypoints``);
- ``extra_loss(batch) -> (loss, logs)`` where ``batch`` has images (augmented, raw), inputs (preprocessed),
  labels, index (FaceSet rows, for KD memory banks / teacher caches), embeddings, keypoints, model, step,
  epoch;
- KP-RPE: when ``model.uses_keypoints`` and the FaceSet has landmarks, ``model(x, keypoints=kp)`` with
  ``kp = model.preprocess_keypoints(...)`` (normalised to the input frame);
- checkpoint: saved atomically after every epoch; if the file exists at start, training resumes from it;
- callbacks ``cb(epoch, model, history) -> dict | None`` every ``eval_every`` epochs (default every epoch),
  their dicts are stored in the epoch record.
"""
from __future__ import annotations

import copy
import hashlib
import inspect
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import torch

from .errors import ParameterError
from .runtime import resolve_device, seed_everything

SCHEDULES = ("cosine", "step", "constant")
OPTIMIZERS = ("sgd", "adamw")


@dataclass
class History:
    """Per-step records (step, epoch, loss, lr, extra logs) and per-epoch records (metrics, time)."""

    steps: list[dict[str, float]] = field(default_factory=list)
    epochs: list[dict[str, Any]] = field(default_factory=list)

    def to_frame(self) -> pd.DataFrame:
        """Per-step DataFrame (one row per optimisation step)."""
        return pd.DataFrame(self.steps)

    def epoch_frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.epochs)

    @property
    def last_loss(self) -> float:
        return float(self.steps[-1]["loss"]) if self.steps else float("nan")

    def state(self) -> dict[str, Any]:
        return {"steps": self.steps, "epochs": self.epochs}


def lr_at(step: int, total: int, base: float, schedule: str, warmup_steps: int, steps_per_epoch: int,
          milestones: Sequence[float] = (), gamma: float = 0.1) -> float:
    """Learning rate at optimisation ``step`` (0-based) of ``total``."""
    if warmup_steps > 0 and step < warmup_steps:
        return base * (step + 1) / warmup_steps
    if schedule == "constant":
        return base
    if schedule == "step":
        epoch = step / max(steps_per_epoch, 1)
        return base * gamma ** sum(epoch >= m for m in milestones)
    progress = (step - warmup_steps) / max(total - warmup_steps, 1)
    return base * 0.5 * (1 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))


def repeated_order(labels: Sequence[int] | np.ndarray, generator: torch.Generator, p: float) -> np.ndarray:
    """One epoch's sample order with §1.7's repeated augmentation (chapter 0b; chapter 3 uses it).

    Start from ``torch.randperm(n, generator=generator)``; then each position whose predecessor is not
    itself a repeat is, with probability ``p``, replaced by *another* image of the predecessor's identity
    (uniform among that identity's other images), so the order keeps length n (batch size unchanged) and
    the replaced image is simply not visited this epoch. As in the official dataset, a repeat never
    follows a repeat, so a fraction p / (1 + p) of positions are repeats (0.091 at p = 0.1). Fallbacks:
    an identity with a single image repeats that same image (a second, differently augmented view); a
    negative label (unlabelled image) never triggers a repeat. ``p == 0`` returns the plain randperm order
    bit for bit and draws nothing more from ``generator``; otherwise 2n uniforms are drawn after it, so
    the order depends only on (labels, generator state, p)."""
    if not 0.0 <= float(p) < 1.0:
        raise ParameterError(f"repeat_prob must be in [0, 1) (probability that the next sample repeats the "
                             f"previous identity, 0.1 in §1.7), got {p}")
    lab = np.asarray(labels).reshape(-1)
    n = len(lab)
    order = torch.randperm(n, generator=generator).numpy()
    if p == 0 or n < 2:
        return order
    u = torch.rand(n, generator=generator, dtype=torch.float64).numpy()
    v = torch.rand(n, generator=generator, dtype=torch.float64).numpy()
    cand = u < p
    cand[0] = False
    prev = np.empty(n, dtype=np.int64)
    prev[1:] = order[:-1]
    prev[0] = order[0]
    cand &= lab[prev] >= 0
    # a repeat never follows a repeat: inside each run of candidates keep every other one, from its start
    pos = np.arange(n)
    run_start = np.maximum.accumulate(np.where(cand & ~np.r_[False, cand[:-1]], pos, 0))
    rep = cand & ((pos - run_start) % 2 == 0)
    # images grouped by label: members[start[l] : start[l] + count[l]], and each image's rank in its group
    by_label = np.argsort(lab, kind="stable")
    uniq, first, count = np.unique(lab[by_label], return_index=True, return_counts=True)
    rank = np.empty(n, dtype=np.int64)
    rank[by_label] = pos - np.repeat(first, count)
    k = np.flatnonzero(rep)
    j = prev[k]
    g = np.searchsorted(uniq, lab[j])
    others = count[g] - 1
    r = np.minimum((v[k] * others).astype(np.int64), np.maximum(others - 1, 0))
    r = np.where((others > 0) & (r >= rank[j]), r + 1, r)  # skip the previous image itself
    pick = by_label[first[g] + r]
    order = order.copy()
    order[k] = np.where(others > 0, pick, j)
    return order


def checkpoint_path(area: str, *spec: Any) -> Path:
    """Where :func:`fit` caches a run: ``<cache>/<area>/ckpt-<hash>.pt``, the hash taken over ``repr(spec)``.
    Put everything that changes the trained weights in ``spec`` (architecture, recipe, a data hash such as
    :func:`facestudy.eval.faceset_hash`, seed), so a re-run with the same spec loads instead of training
    and any change trains afresh (chapters 00a and 3)."""
    from .data import cache_dir

    digest = hashlib.sha1(repr(spec).encode()).hexdigest()[:16]
    return cache_dir() / area / f"ckpt-{digest}.pt"


def random_hflip(images: torch.Tensor) -> torch.Tensor:
    """Mirror half the images of a uint8 NCHW batch: the plain ``augment`` hook of :func:`fit` (chapters
    00a and 5). Draws from torch's global RNG, which ``fit`` re-seeds every epoch."""
    flip = torch.rand(images.shape[0], device=images.device) < 0.5
    out = images.clone()
    out[flip] = out[flip].flip(-1)
    return out


def _plain(obj: Any) -> Any:
    """Checkpoint content as tensors and plain python types only (so ``torch.load(weights_only=True)``
    reads it back): numpy scalars/arrays become python numbers/tensors, tuples stay, mappings become dicts."""
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_plain(v) for v in obj)
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(obj))
    return obj


def _atomic_save(obj: Any, path: Path) -> None:
    from .data.store import atomic_path

    with atomic_path(path) as tmp:
        torch.save(_plain(obj), tmp)


def load_checkpoint(path: Path, map_location: Any = "cpu", what: str = "training checkpoint") -> dict | None:
    """A cached checkpoint read with ``torch.load(weights_only=True)`` (tensors and plain types only: a file
    in the cache cannot run code), or None after reporting a corrupt/foreign one by path and deleting it
    (the caller then trains afresh). Leftover temp files of killed writers beside it are removed."""
    from .data.store import _warn_rebuild, clean_temps

    path = Path(path)
    clean_temps(path.parent)
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
        if not isinstance(state, dict):
            raise ValueError(f"holds a {type(state).__name__}, not a checkpoint dict")
    except Exception as exc:  # noqa: BLE001 - unreadable, truncated, or refused by the weights-only loader
        _warn_rebuild(path, exc, what)
        return None
    return state


# ------------------------------------------------------------------------------- distributed (torchrun)
@dataclass(frozen=True)
class Dist:
    """This process's place in a data-parallel run: ``rank`` of ``world`` processes, ``local_rank`` on its
    node (the GPU it drives). ``Dist()`` is the single-process run."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        """Rank 0: the process that writes checkpoints, shows progress and runs the callbacks."""
        return self.rank == 0


def distributed(init: bool = True) -> Dist:
    """The data-parallel group this process belongs to (``facestudy train`` under ``torchrun``).

    An initialised ``torch.distributed`` group is used as it is. Otherwise, when ``torchrun`` (or SLURM via
    ``torchrun``) has set ``WORLD_SIZE`` > 1, the group is initialised from its environment (``env://``:
    ``MASTER_ADDR``, ``MASTER_PORT``, ``RANK``, ``LOCAL_RANK``) with NCCL for CUDA tensors and gloo for CPU
    tensors, and ``LOCAL_RANK``'s GPU becomes the current device. A plain process is ``Dist()``."""
    import torch.distributed as tdist

    local = int(os.environ.get("LOCAL_RANK", "0") or 0)
    if tdist.is_available() and tdist.is_initialized():
        return Dist(tdist.get_rank(), tdist.get_world_size(), local)
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1 or not init:
        return Dist()
    if not tdist.is_available():
        raise ParameterError(f"WORLD_SIZE={world} asks for a distributed run but this torch build has no "
                             f"torch.distributed; run one process")
    cuda = torch.cuda.is_available() and tdist.is_nccl_available()
    if cuda:
        torch.cuda.set_device(local % torch.cuda.device_count())
    tdist.init_process_group("cpu:gloo,cuda:nccl" if cuda else "gloo")
    return Dist(tdist.get_rank(), tdist.get_world_size(), local)


def _amp_dtype(dev: torch.device) -> torch.dtype:
    """Autocast dtype on a GPU: bfloat16 where the GPU supports it (no loss scaling needed), else float16
    (with a GradScaler). Never used on a CPU: the CPU path runs in float32."""
    if dev.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


def _all_mean(values: list[float], weight: float, dist: Dist, dev: torch.device) -> list[float]:
    """``sum over ranks of weight * value`` (weight = this rank's share of the global batch): the global-batch
    mean of per-rank means, identical on every rank."""
    import torch.distributed as tdist

    t = torch.tensor(values, dtype=torch.float64, device=dev) * weight
    tdist.all_reduce(t)
    return t.tolist()


def _check_same_resume(dist: Dist, epoch: int, step: int, dev: torch.device, path: Path | None) -> None:
    """Every rank must resume from the same checkpoint (same epoch and step), else the replicas diverge."""
    import torch.distributed as tdist

    mine = torch.tensor([epoch, step], dtype=torch.int64, device=dev)
    lo, hi = mine.clone(), mine.clone()
    tdist.all_reduce(lo, op=tdist.ReduceOp.MIN)
    tdist.all_reduce(hi, op=tdist.ReduceOp.MAX)
    if not torch.equal(lo, hi):
        raise RuntimeError(f"rank {dist.rank} resumes {path} at (epoch, step) {mine.tolist()} but other ranks at "
                           f"{lo.tolist()}..{hi.tolist()}: the checkpoint is not the same file on every node; put "
                           f"FACESTUDY_CACHE on a filesystem all nodes share")


def _rng_state(dev: torch.device) -> dict[str, Any]:
    """The global random states (python, numpy, torch, CUDA) as tensors and plain types (a mid-epoch
    checkpoint: augmentation draws continue as in an uninterrupted run)."""
    version, ints, gauss = random.getstate()
    _, keys, pos, has_gauss, cached = np.random.get_state()
    out = {"python": torch.tensor(ints, dtype=torch.int64), "python_version": version, "python_gauss": gauss,
           "numpy": torch.from_numpy(keys.astype(np.int64)), "numpy_pos": int(pos),
           "numpy_has_gauss": int(has_gauss), "numpy_gauss": float(cached), "torch": torch.get_rng_state()}
    if dev.type == "cuda":
        out["cuda"] = torch.cuda.get_rng_state(dev)
    return out


def _set_rng_state(st: dict[str, Any], dev: torch.device) -> None:
    random.setstate((int(st["python_version"]), tuple(int(v) for v in st["python"].tolist()), st["python_gauss"]))
    np.random.set_state(("MT19937", st["numpy"].cpu().numpy().astype(np.uint32), int(st["numpy_pos"]),
                         int(st["numpy_has_gauss"]), float(st["numpy_gauss"])))
    torch.set_rng_state(st["torch"].cpu())
    if dev.type == "cuda" and "cuda" in st:
        torch.cuda.set_rng_state(st["cuda"].cpu(), dev)


def _run_callbacks(callbacks: Sequence[Callable], epoch: int, model: torch.nn.Module, history: History,
                   dist: Dist) -> dict[str, Any]:
    """Run the callbacks (on rank 0 only in a distributed run) -> their merged records. Rank 0's records, or
    its error, are broadcast, so every rank keeps the same history and every rank stops when one fails."""
    out: dict[str, Any] = {}
    error: BaseException | None = None
    if dist.main:
        try:
            for cb in callbacks:
                rec = cb(epoch, model, history)
                if rec:
                    out.update(rec)
        except BaseException as exc:  # noqa: BLE001 - re-raised below, after telling the other ranks
            if not dist.active:
                raise
            error = exc
    if dist.active:
        import torch.distributed as tdist

        box: list[Any] = [out, None if error is None else f"{type(error).__name__}: {error}"]
        tdist.broadcast_object_list(box, src=0)
        if error is not None:
            raise error
        if box[1] is not None:
            raise RuntimeError(f"rank 0 stopped in a callback at epoch {epoch}: {box[1]}")
        out = box[0]
    return out


def fit(model: torch.nn.Module, head: torch.nn.Module | None, faceset: Any, *, epochs: int, batch_size: int,
        lr: float, device: str | torch.device = "auto", schedule: str = "cosine", warmup: float = 0,
        optimizer: str = "sgd", weight_decay: float | None = None, momentum: float = 0.9,
        milestones: Sequence[float] = (), gamma: float = 0.1, augment: Callable | None = None,
        extra_loss: Callable | None = None, grad_clip: float | None = None, checkpoint: str | Path | None = None,
        callbacks: Sequence[Callable] = (), eval_every: int | None = None, seed: int = 0, progress: bool = True,
        max_steps: int | None = None, drop_last: bool = True, amp: bool | None = None,
        repeat_prob: float = 0.0, checkpoint_every: int | None = None) -> History:
    """Train ``model`` (+ ``head``) on ``faceset``; returns the :class:`History` (chapter 0b).

    ``repeat_prob`` > 0 orders each epoch with :func:`repeated_order` (§1.7's repeated augmentation, 0.1
    in the recipe); 0 keeps the plain seeded permutation, identical to earlier versions.

    Under ``torchrun`` (:func:`distributed`) the same call trains data-parallel: every rank draws the same
    epoch order from ``seed`` and takes every ``world``-th image of each global batch of ``batch_size``
    (which must divide by the world size), gradients are averaged by ``DistributedDataParallel`` (NCCL on
    GPUs, gloo on CPUs), so the sequence of global batches and the weights equal the single-process run's up
    to float rounding (exactly so for models without BatchNorm, whose statistics stay per rank, and for
    losses that are means over the batch). ``augment`` is applied to the whole global batch on every rank
    before slicing, so the random flips match too. Losses and logs are all-reduced; rank 0 alone runs
    ``callbacks`` (they must not change the weights; their records and errors reach every rank), shows
    progress and writes the checkpoint, which holds nothing world-size specific: a run resumes from it with
    any number of processes. On a GPU autocast uses bfloat16 when supported (float16 with loss scaling
    otherwise); a CPU run is plain float32.

    ``checkpoint_every`` (steps) also saves inside an epoch, with the random states, so a killed run of
    long epochs (MS1M: hours each) resumes at its last such step and continues exactly as it would have."""
    if checkpoint_every is not None and int(checkpoint_every) < 1:
        raise ParameterError(f"checkpoint_every must be a positive number of steps (or None), got {checkpoint_every}")
    if not 0.0 <= float(repeat_prob) < 1.0:
        raise ParameterError(f"repeat_prob must be in [0, 1), got {repeat_prob}")
    if schedule not in SCHEDULES:
        raise ParameterError(f"unknown schedule {schedule!r}; valid: {', '.join(SCHEDULES)}")
    if optimizer not in OPTIMIZERS:
        raise ParameterError(f"unknown optimizer {optimizer!r}; valid: {', '.join(OPTIMIZERS)}")
    if epochs < 1 or batch_size < 1 or lr <= 0:
        raise ParameterError(f"need epochs >= 1, batch_size >= 1, lr > 0; got {epochs}, {batch_size}, {lr}")
    if head is None and extra_loss is None:
        raise ParameterError("fit needs a head, an extra_loss, or both")
    labels_all = np.asarray(faceset.labels)
    if head is not None:
        n_classes = getattr(head, "n_classes", None)
        if (labels_all < 0).any():
            raise ParameterError(f"FaceSet {faceset.name!r} has unlabelled images (label -1); a head needs "
                                 f"labels; pass faceset.subset(faceset.labels >= 0)")
        if n_classes is not None and labels_all.max() >= n_classes:
            raise ParameterError(f"FaceSet {faceset.name!r} has labels up to {labels_all.max()} but the head "
                                 f"has n_classes={n_classes}; use faceset.relabel() or a bigger head")
    n = len(faceset)
    steps_per_epoch = n // batch_size if drop_last else math.ceil(n / batch_size)
    if steps_per_epoch < 1:
        raise ParameterError(f"batch_size={batch_size} exceeds the {n} images of {faceset.name!r}")
    dev = device if isinstance(device, torch.device) else resolve_device(device)
    dist = distributed()
    if dist.active:
        if batch_size % dist.world:
            raise ParameterError(f"batch_size={batch_size} (the global batch) must be divisible by the "
                                 f"{dist.world} processes of this distributed run")
        if not drop_last and 0 < n % batch_size < dist.world:
            raise ParameterError(f"the last batch holds {n % batch_size} images, fewer than the {dist.world} "
                                 f"processes; use drop_last=True or another batch_size")
        if dev.type == "cuda" and dev.index is None:
            dev = torch.device("cuda", dist.local_rank % torch.cuda.device_count())
            torch.cuda.set_device(dev)
    use_amp = (dev.type == "cuda") if amp is None else (bool(amp) and dev.type == "cuda")
    amp_dtype = _amp_dtype(dev)
    model.to(dev)
    if head is not None:
        head.to(dev)
    params = [p for p in model.parameters() if p.requires_grad]
    if head is not None:
        params += [p for p in head.parameters() if p.requires_grad]
    if weight_decay is None:
        weight_decay = 5e-4 if optimizer == "sgd" else 0.05
    if optimizer == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    else:
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)
    total = steps_per_epoch * epochs
    if max_steps is not None:
        total = min(total, int(max_steps))
    warmup_steps = int(round(warmup * steps_per_epoch))
    history = History()
    start_epoch, step = 0, 0
    ckpt = Path(checkpoint) if checkpoint is not None else None
    state = load_checkpoint(ckpt, map_location=dev) if ckpt is not None else None
    resume_batch, resume_rng = 0, None  # a mid-epoch checkpoint: the next batch and the random states
    if state is not None:
        fresh = [{k: v.clone() for k, v in m.state_dict().items()} for m in (model, head) if m is not None]
        fresh_opt, fresh_scaler = copy.deepcopy(opt.state_dict()), copy.deepcopy(scaler.state_dict())
        try:
            model.load_state_dict(state["model"])
            if head is not None and state.get("head") is not None:
                head.load_state_dict(state["head"])
            opt.load_state_dict(state["optimizer"])
            if state.get("scaler"):  # empty when saved without float16 loss scaling (CPU, bfloat16)
                scaler.load_state_dict(state["scaler"])
            history = History(**state["history"])
            start_epoch, step = int(state["epoch"]) + 1, int(state["step"])
            if state.get("partial"):
                part = state["partial"]
                start_epoch, resume_batch, resume_rng = int(part["epoch"]), int(part["batch"]), part["rng"]
        except (KeyError, RuntimeError, ValueError, TypeError, AttributeError) as exc:  # foreign/damaged
            from .data.store import _warn_rebuild

            _warn_rebuild(ckpt, exc, "training checkpoint (does not fit this model)")
            for m, sd in zip([m for m in (model, head) if m is not None], fresh, strict=True):
                m.load_state_dict(sd)
            opt.load_state_dict(fresh_opt)
            scaler.load_state_dict(fresh_scaler)
            history, start_epoch, step = History(), 0, 0
            resume_batch, resume_rng = 0, None
    fwd_model, fwd_head = model, head
    if dist.active:
        from torch.nn.parallel import DistributedDataParallel as DDP

        _check_same_resume(dist, start_epoch, step, dev, ckpt)
        ids = [dev.index] if dev.type == "cuda" else None
        if any(p.requires_grad for p in model.parameters()):
            fwd_model = DDP(model, device_ids=ids)  # also makes every rank start from rank 0's weights
        if head is not None and any(p.requires_grad for p in head.parameters()):
            fwd_head = DDP(head, device_ids=ids)
    landmarks = None
    if getattr(model, "uses_keypoints", False):
        landmarks = faceset.landmarks
    aug_kp = augment is not None and "keypoints" in inspect.signature(augment).parameters
    images_np = faceset.images
    hw = images_np.shape[1:3]

    def save(done_epoch: int, partial: dict[str, Any] | None = None) -> None:
        """Checkpoint after ``done_epoch`` (+ the ``partial`` next one: its next batch and random states)."""
        _atomic_save({"model": model.state_dict(), "head": head.state_dict() if head is not None else None,
                      "optimizer": opt.state_dict(), "scaler": scaler.state_dict(), "history": history.state(),
                      "epoch": done_epoch, "step": step, **({"partial": partial} if partial else {})}, ckpt)

    bar = None
    if progress and dist.main:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, initial=min(step, total), desc=f"fit {getattr(model, 'name', '')}", leave=False)
    try:
        for epoch in range(start_epoch, epochs):
            if step >= total:
                break
            seed_everything(seed * 100003 + epoch)
            gen = torch.Generator().manual_seed(seed * 100003 + epoch)
            order = repeated_order(labels_all, gen, repeat_prob)
            model.train()
            if head is not None:
                head.train()
            t0 = time.perf_counter()
            first = resume_batch if epoch == start_epoch else 0
            if first and resume_rng is not None:
                _set_rng_state(resume_rng, dev)
            for b in range(first, steps_per_epoch):
                if step >= total:
                    break
                idx = np.sort(order[b * batch_size:(b + 1) * batch_size])
                n_global = len(idx)
                mine = slice(dist.rank, None, dist.world)  # this rank's share of the global batch
                if dist.active and augment is None:
                    idx = idx[mine]
                imgs = torch.from_numpy(images_np[idx]).permute(0, 3, 1, 2).to(dev)
                labels = torch.from_numpy(labels_all[idx]).to(dev)
                kp = torch.from_numpy(landmarks[idx]).to(dev) if landmarks is not None else None
                if augment is not None:
                    if aug_kp:
                        imgs, kp = augment(imgs, keypoints=kp)
                    else:
                        imgs = augment(imgs)
                    if dist.active:  # augmented as one global batch (same random draws as one process)
                        idx, imgs, labels = idx[mine], imgs[mine], labels[mine]
                        kp = kp[mine] if kp is not None else None
                share = len(idx) / n_global  # this rank's weight in the global-batch mean
                cur_lr = lr_at(step, total, lr, schedule, warmup_steps, steps_per_epoch, milestones, gamma)
                for g in opt.param_groups:
                    g["lr"] = cur_lr
                with torch.autocast("cuda", dtype=amp_dtype, enabled=use_amp):
                    x = model.preprocess(imgs)
                    kw = {}
                    if kp is not None:
                        kw["keypoints"] = model.preprocess_keypoints(kp, hw)
                    emb = fwd_model(x, **kw)
                logs: dict[str, float] = {}
                loss = torch.zeros((), device=dev)
                if head is not None:
                    cls = fwd_head(emb.float(), labels)
                    loss = loss + cls
                    logs["cls_loss"] = float(cls.detach())
                if extra_loss is not None:
                    batch = {"images": imgs, "inputs": x, "labels": labels, "index": torch.as_tensor(idx),
                             "embeddings": emb, "keypoints": kp, "model": model, "step": step, "epoch": epoch}
                    extra, extra_logs = extra_loss(batch)
                    loss = loss + extra
                    logs.update({k: float(v) for k, v in (extra_logs or {}).items()})
                loss_value = float(loss.detach())
                if dist.active:  # the global-batch mean on every rank (so every rank stops together)
                    loss_value, *vals = _all_mean([loss_value, *logs.values()], share, dist, dev)
                    logs = dict(zip(logs, vals, strict=True))
                if not math.isfinite(loss_value):
                    raise FloatingPointError(f"loss became {loss_value} at step {step} (epoch {epoch}); lower "
                                             f"lr (now {cur_lr:.3g}) or set grad_clip")
                if dist.active and share * dist.world != 1:  # unequal shares (a last partial batch)
                    loss = loss * (share * dist.world)  # DDP averages: make it the global-batch mean
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                if grad_clip is not None:
                    scaler.unscale_(opt)
                    torch.nn.utils.clip_grad_norm_(params, grad_clip)
                scaler.step(opt)
                scaler.update()
                history.steps.append({"step": step, "epoch": epoch, "loss": loss_value, "lr": cur_lr, **logs})
                step += 1
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss_value:.3f}", lr=f"{cur_lr:.2g}")
                if (ckpt is not None and checkpoint_every and step % int(checkpoint_every) == 0 and dist.main
                        and b + 1 < steps_per_epoch and step < total):  # (the epoch's end is saved below)
                    save(epoch - 1, {"epoch": epoch, "batch": b + 1, "rng": _rng_state(dev)})
            record: dict[str, Any] = {"epoch": epoch, "seconds": time.perf_counter() - t0,
                                      "loss": float(np.mean([s["loss"] for s in history.steps
                                                             if s["epoch"] == epoch] or [np.nan]))}
            every = eval_every or 1
            if callbacks and ((epoch + 1) % every == 0 or epoch == epochs - 1 or step >= total):
                record.update(_run_callbacks(callbacks, epoch, model, history, dist))
                model.train()
            history.epochs.append(record)
            if ckpt is not None and dist.main:
                save(epoch)
    finally:
        if bar is not None:
            bar.close()
    if dist.active:
        import torch.distributed as tdist

        tdist.barrier()  # the checkpoint is complete when fit returns on any rank
    model.eval()
    if head is not None:
        head.eval()
    return history

"""The one SAE trainer of chapter 4: Adam, lr and sparsity warm-ups, unit-norm decoder constraint,
input scaling, seeded batches (CPU runs repeat exactly)."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch

from ...errors import DataError, ParameterError
from . import metrics
from .base import BaseSAE


@dataclass
class TrainResult:
    """What :func:`train_sae` returns: the trained SAE, a per-step history and throughput."""

    sae: BaseSAE
    history: pd.DataFrame
    seconds: float
    inputs_seen: int
    final: dict[str, float] = field(default_factory=dict)

    @property
    def templates_per_s(self) -> float:
        return self.inputs_seen / max(self.seconds, 1e-9)


def input_scale(x: torch.Tensor, convention: str) -> float:
    """The factor that brings inputs to the convention's norm: E||x|| = sqrt(d) ('sqrt_d'), 1 ('unit')."""
    mean_norm = float(x.norm(dim=1).mean())
    if mean_norm <= 0:
        raise ParameterError("SAE training data are all zero vectors; check the templates")
    if convention == "sqrt_d":
        return math.sqrt(x.shape[1]) / mean_norm
    if convention == "unit":
        return 1.0 / mean_norm
    return 1.0


def train_sae(sae: BaseSAE, x: torch.Tensor, *, steps: int = 1000, batch_size: int = 256,
              lr: float | None = None, seed: int = 0, device: str | torch.device = "cpu",
              log_every: int = 50, threads: int | None = 1) -> TrainResult:
    """Train ``sae`` on the rows of ``x`` (raw templates, (N, d)) for ``steps`` Adam steps (chapter 4).

    The SAE's config supplies lr (unless given), Adam betas/eps and the warm-ups; decoders with
    ``unit_norm_decoder`` are kept on the unit sphere (gradient projection before, renormalisation after
    each step). Returns a :class:`TrainResult` whose ``final`` holds the metrics on all of ``x``.

    ``threads`` caps torch's intra-op CPU threads while training (restored afterwards; None = leave as
    is): SAE steps are small matrix products that gain nothing from more threads, and on a shared CPU
    extra threads made them about 15x slower in our measurements.
    """
    from ...runtime import torch_threads

    with torch_threads(threads if torch.device(device).type == "cpu" else None):
        return _train(sae, x, steps=steps, batch_size=batch_size, lr=lr, seed=seed, device=device,
                      log_every=log_every)


def _train(sae: BaseSAE, x: torch.Tensor, *, steps: int, batch_size: int, lr: float | None, seed: int,
           device: str | torch.device, log_every: int) -> TrainResult:
    if x.ndim != 2 or x.shape[1] != sae.d_in:
        raise ParameterError(f"train_sae: x must have shape (N, {sae.d_in}), got {tuple(x.shape)}")
    if steps < 1 or batch_size < 1:
        raise ParameterError(f"train_sae: steps and batch_size must be >= 1, got {steps}, {batch_size}")
    cfg = sae.config
    device = torch.device(device)
    x = x.detach().float()
    sae.to(device)
    with torch.no_grad():
        sae.input_scale.fill_(input_scale(x, cfg.input_norm))
        sae.init_from_data((x * sae.input_scale.cpu()).to(device))
        sae.after_step()
    base_lr = lr if lr is not None else cfg.lr
    opt = torch.optim.Adam(sae.param_groups(base_lr), lr=base_lr, betas=tuple(cfg.betas), eps=cfg.adam_eps)
    for group in opt.param_groups:
        group["base_lr"] = group["lr"]
    every = int(getattr(cfg, "resample_every", 0) or 0)
    window = min(every, 50)  # dead = silent on the last <= 50 batches before a resampling point
    fired = torch.zeros(sae.n_latents, dtype=torch.bool, device=device)
    resampled = 0
    g = torch.Generator().manual_seed(seed)
    n = len(x)
    bs = min(batch_size, n)
    perm = torch.randperm(n, generator=g)
    pos = 0
    rows = []
    sae.train()
    t0 = time.perf_counter()
    for it in range(steps):
        if pos + bs > n:
            perm = torch.randperm(n, generator=g)
            pos = 0
        xb = x[perm[pos:pos + bs]].to(device)
        pos += bs
        warm = min(1.0, (it + 1) / cfg.lr_warmup) if cfg.lr_warmup > 0 else 1.0
        for group in opt.param_groups:
            group["lr"] = group["base_lr"] * warm
        sp = min(1.0, (it + 1) / cfg.sparsity_warmup) if cfg.sparsity_warmup > 0 else 1.0
        loss, parts = sae.loss(xb, sparsity_scale=sp)
        if not torch.isfinite(loss):
            raise ParameterError(f"SAE training diverged at step {it} (loss {float(loss.detach())}); lower lr "
                                 f"(now {base_lr}) or the sparsity coefficient")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        sae.before_step()
        opt.step()
        sae.after_step()
        if every and (it + 1) % every > every - window:  # firing is tracked over the window's last steps
            with torch.no_grad():
                fired |= (sae.encode(xb) > 0).any(0)
        if every and (it + 1) % every == 0 and it + 1 < steps:
            dead = ~fired
            if dead.any():
                pool = x[torch.randint(0, n, (min(n, 4 * bs),), generator=g)].to(device)
                touched = sae.resample_(dead, pool * sae.input_scale, generator=g)
                _reset_adam_rows(opt, sae, touched)
                resampled += int(dead.sum())
            fired.zero_()
        if it % log_every == 0 or it == steps - 1:
            rows.append({"step": it, "loss": float(loss.detach()), **parts})
    seconds = time.perf_counter() - t0
    sae.eval()
    final = evaluate(sae, x.to(device))
    final["resampled"] = float(resampled)
    return TrainResult(sae=sae.cpu(), history=pd.DataFrame(rows), seconds=seconds, inputs_seen=steps * bs,
                       final=final)


def train_many(jobs: Sequence[tuple[BaseSAE, torch.Tensor, dict[str, Any]]], workers: int = 1,
               cache: str | Path | None = None, progress: Any = None) -> list[TrainResult]:
    """:func:`train_sae` for each ``(sae, x, keyword arguments)`` job, in order, on ``workers`` processes.

    Each SAE step is a small single-threaded matrix product (``train_sae`` pins one thread), so on a CPU the
    jobs of a grid run side by side in separate processes (joblib's loky backend) instead of one after the
    other. Every job is seeded by its own arguments and runs on one thread either way, so the trained SAEs
    are the same as a sequential run's (tested); ``seconds`` is each job's own training time. Jobs on a GPU
    device, or ``workers`` <= 1, run sequentially in this process.

    ``cache`` (a folder) keeps every trained SAE under a key of its family, config, initial weights, training
    inputs and arguments (:func:`job_key`); a job whose key is there is loaded instead of trained (with the
    ``seconds`` of the run that trained it), so a stage that trains a grid ahead of the chapter (``facestudy
    train 04_facemint saes``) makes the chapter's identical call free. ``progress`` (optional) is called with
    the number of jobs (0 or more) that just finished: first the cached ones, then each trained one.
    """
    jobs = list(jobs)
    if workers < 1:
        raise ParameterError(f"train_many: workers must be >= 1, got {workers}")
    out: list[TrainResult | None] = [None] * len(jobs)
    paths: list[Path | None] = [None] * len(jobs)
    if cache is not None:
        for i, (sae, x, kw) in enumerate(jobs):
            paths[i] = Path(cache) / f"sae-{job_key(sae, x, kw)}.pt"
            out[i] = _load_result(sae, paths[i])
    todo = [i for i, r in enumerate(out) if r is None]
    tick = progress or (lambda _n: None)
    tick(len(jobs) - len(todo))
    on_cpu = all(torch.device(jobs[i][2].get("device", "cpu")).type == "cpu" for i in todo)
    if workers == 1 or len(todo) < 2 or not on_cpu:
        done = (train_sae(jobs[i][0], jobs[i][1], **jobs[i][2]) for i in todo)
    else:
        from joblib import Parallel, delayed

        # numpy inputs travel to the workers as memory maps (joblib), not one pickled copy per job; results
        # come back in order as they finish
        done = Parallel(n_jobs=min(workers, len(todo)), backend="loky", return_as="generator")(
            delayed(_train_job)(jobs[i][0], jobs[i][1].detach().cpu().float().numpy(), jobs[i][2]) for i in todo)
    for i, res in zip(todo, done, strict=True):
        out[i] = res
        if paths[i] is not None:
            _save_result(res, paths[i])
        tick(1)
    return out  # type: ignore[return-value]


def tail_share(history: pd.DataFrame, col: str = "mse", window: int = 5) -> float:
    """How far from converged a training run ended: the fall of ``col`` (smoothed over ``window`` logged
    steps) over the last quarter of the run, as a share of its fall over the whole run (0 = flat at the end,
    ~0.25 = still falling at a constant rate; NaN with fewer than 8 logged steps or no fall)."""
    if col not in history or len(history) < 8:
        return float("nan")
    v = history[col].rolling(window, min_periods=1).mean().to_numpy()
    total = v[1] - v[-1]  # v[0] is the untrained start of the first logged step
    if not np.isfinite(total) or total <= 0:
        return float("nan")
    return float((v[int(0.75 * len(v))] - v[-1]) / total)


def job_key(sae: BaseSAE, x: torch.Tensor, kw: dict[str, Any]) -> str:
    """The cache key of one training job: the SAE's family and config, a digest of its initial weights and
    buffers, of the training inputs, and the training arguments (``device`` and ``threads`` excluded: they do
    not change the result on a CPU)."""
    import dataclasses
    import hashlib
    import json

    h = hashlib.sha1()
    cfg = sae.config
    conf = dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else dict(vars(cfg))
    args = {k: v for k, v in kw.items() if k not in ("device", "threads")}
    h.update(json.dumps([type(sae).__name__, conf, args], sort_keys=True, default=str).encode())
    for name, t in sorted(sae.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    xa = x.detach().cpu().float().contiguous().numpy()
    h.update(str(xa.shape).encode())
    h.update(xa.tobytes())
    return h.hexdigest()[:24]


def _save_result(res: TrainResult, path: Path) -> None:
    from ...data.store import atomic_path, clean_temps

    clean_temps(path.parent)
    blob = {"state": {k: v.detach().cpu() for k, v in res.sae.state_dict().items()},
            "history": {c: [float(v) for v in res.history[c]] for c in res.history.columns},
            "seconds": float(res.seconds), "inputs_seen": int(res.inputs_seen),
            "final": {k: float(v) for k, v in res.final.items()}}
    try:
        with atomic_path(path) as tmp:
            torch.save(blob, tmp)
    except DataError as exc:  # a read-only or full cache: the SAE is still right, only not kept
        import warnings

        warnings.warn(f"SAE not cached: {exc}", stacklevel=3)


def _load_result(sae: BaseSAE, path: Path) -> TrainResult | None:
    """The cached result of ``sae``'s job, loaded into ``sae``; None when absent. A damaged file is reported by
    path and trained again."""
    if not path.exists():
        return None
    init = {k: v.detach().clone() for k, v in sae.state_dict().items()}
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        sae.load_state_dict(blob["state"])
        res = TrainResult(sae=sae.cpu().eval(), history=pd.DataFrame(blob["history"]), seconds=blob["seconds"],
                          inputs_seen=blob["inputs_seen"], final=dict(blob["final"]))
    except Exception as exc:  # noqa: BLE001 - a corrupt cache file is reported by path and retrained
        from ...data.store import _warn_rebuild

        sae.load_state_dict(init)  # a half-loaded file must not change the initialisation it is retrained from
        sae.train()
        _warn_rebuild(path, exc, "SAE cache")
        return None
    return res


def _train_job(sae: BaseSAE, x, kw: dict[str, Any]) -> TrainResult:
    return train_sae(sae, torch.from_numpy(np.array(x, dtype=np.float32)), **kw)


@torch.no_grad()
def _reset_adam_rows(opt: torch.optim.Optimizer, sae: BaseSAE, touched: dict[str, torch.Tensor]) -> None:
    """Zero Adam's moments of the resampled latents' rows / columns (dictionary_learning resets them too)."""
    params = dict(sae.named_parameters())
    for name, idx in touched.items():
        p = params.get(name)
        state = opt.state.get(p) if p is not None else None
        if not state:
            continue
        for key in ("exp_avg", "exp_avg_sq"):
            t = state.get(key)
            if t is None:
                continue
            if name == "W_dec":
                t[:, idx] = 0.0
            else:
                t[idx] = 0.0


@torch.no_grad()
def evaluate(sae: BaseSAE, x: torch.Tensor, batch_size: int = 4096) -> dict[str, float]:
    """Chapter 4's metrics (L0, L1, % alive, MSE, NMSE, EV, cos) of ``sae`` on raw inputs ``x``."""
    sae.eval()
    xh, f = [], []
    for i in range(0, len(x), batch_size):
        a, b = sae(x[i:i + batch_size])
        xh.append(a)
        f.append(b)
    return metrics.summary(x, torch.cat(xh), torch.cat(f))


@torch.no_grad()
def encode_all(sae: BaseSAE, x: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
    """Latent codes of every row of ``x`` (batched, no grad)."""
    sae.eval()
    return torch.cat([sae.encode(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])

"""Run bookkeeping shared by every chapter: seeds, device, threads, data root, timing, environment.

Chapter 0 ("How this book runs") explains it. A notebook's first code cell after ``parameters`` is::

    run = facestudy.runtime.start("01_geometry", profile=profile, seed=seed, device=device,
                                  data_root=data_root)
    cfg = run.cfg
"""
from __future__ import annotations

import os
import platform
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import profiles
from .errors import ParameterError

DEVICES = ("auto", "cpu", "cuda", "mps")

#: glibc malloc settings for every process that runs torch on the CPU. Without them each large activation
#: (hundreds of MB at batch 256) is mmap'ed and returned to the OS per batch, and page faults dominate:
#: measured here, MobileFaceNet on 512 images at batch 256 took 9.4 s wall with 11.3 s of system time,
#: and 3.4 s with 0.9 s of system time with these set. They only take effect in a process started with
#: them, so ``facestudy run`` passes them to every kernel and the Makefile exports them.
MALLOC_ENV = {
    "MALLOC_MMAP_THRESHOLD_": "4294967296",
    "MALLOC_TRIM_THRESHOLD_": "68719476736",
    "MALLOC_TOP_PAD_": "1073741824",
}


def repo_root() -> Path | None:
    """The checkout this package was installed from (editable installs), or the cwd's ancestor with _toc.yml."""
    here = Path(__file__).resolve()
    for cand in [here.parents[2], *Path.cwd().resolve().parents, Path.cwd().resolve()]:
        if (cand / "_toc.yml").exists() and (cand / "lib" / "facestudy").exists():
            return cand
    return None


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` -> CUDA when present, else CPU. An unavailable explicit device is a ParameterError."""
    if device not in DEVICES:
        raise ParameterError(f"unknown device {device!r}; valid devices: {', '.join(DEVICES)}")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ParameterError("device='cuda' was asked for but no CUDA GPU is visible; use device='auto' or 'cpu'")
    if device == "mps" and not torch.backends.mps.is_available():
        raise ParameterError("device='mps' was asked for but MPS is not available; use device='auto' or 'cpu'")
    return torch.device(device)


class torch_threads:
    """Context manager capping torch's intra-op CPU threads, restored on exit (``None`` = unchanged).

    Small per-step work (SAE updates, act-max steps, tiny batches) runs fastest on one thread when the
    CPU is shared; chapters 3 and 4 measured 5-15x slower steps with two threads on a busy 2-core machine.
    """

    def __init__(self, n: int | None = 1):
        self.n = n

    def __enter__(self) -> "torch_threads":
        self.saved = torch.get_num_threads()
        if self.n is not None:
            torch.set_num_threads(max(1, int(self.n)))
        return self

    def __exit__(self, *exc) -> None:
        torch.set_num_threads(self.saved)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch; CPU runs then repeat exactly."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def environment() -> dict[str, Any]:
    """Versions, device and threads: recorded in every executed notebook."""
    import importlib.metadata as md

    def version(pkg: str) -> str:
        try:
            return md.version(pkg)
        except md.PackageNotFoundError:
            return "-"

    env = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
    }
    for pkg in ("facestudy", "torch", "numpy", "scipy", "pandas", "matplotlib", "diffusers", "papermill",
                "jupyter-book", "onnxruntime", "insightface"):
        env[pkg] = version(pkg)
    return env


@dataclass
class Run:
    chapter: str
    profile: str
    seed: int
    device: torch.device
    cfg: profiles.Config
    data_root: str
    started: float = field(default_factory=time.perf_counter)
    notes: list[str] = field(default_factory=list)

    def note(self, message: str) -> None:
        """Say something the reader must know (e.g. 'real CelebA absent: using the synthetic world')."""
        self.notes.append(message)
        print(f"NOTE: {message}")

    def elapsed(self) -> float:
        return time.perf_counter() - self.started


def start(chapter: str, profile: str = "default", seed: int = 0, device: str = "auto",
          data_root: str = "", **overrides: Any) -> Run:
    """Validate parameters, then seed, pick the device and set the data root. Does no other work.

    Raises :class:`~facestudy.errors.ParameterError` (listing valid choices) before anything runs.
    """
    import json

    env_over = json.loads(os.environ.get("FACESTUDY_OVERRIDES") or "{}")  # set by `facestudy run --set`
    cfg = profiles.resolve(chapter, profile, **{**env_over, **overrides})
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ParameterError(f"seed must be an int, got {seed!r}")
    dev = resolve_device(device)
    if data_root:
        os.environ["FACESTUDY_DATA"] = data_root
    threads = os.environ.get("FACESTUDY_THREADS")
    if threads:
        torch.set_num_threads(int(threads))
    seed_everything(seed)
    run = Run(chapter=chapter, profile=profile, seed=seed, device=dev, cfg=cfg,
              data_root=os.environ.get("FACESTUDY_DATA", ""))
    from . import report

    report._begin_chapter(chapter, profile)
    print(f"{chapter} | profile={profile} | seed={seed} | device={dev} | torch threads={torch.get_num_threads()}")
    return run

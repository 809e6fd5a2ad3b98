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
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

#: OpenMP threads that wait at a barrier sleep instead of spinning. Spinning is what collapses a shared CPU:
#: two busy torch threads spinning on two cores that another job also uses made chapter 00a ~10x and the
#: face-world renderer ~30x slower (issue 21; benchmarks/peers.py measures it). libgomp reads this once, when
#: torch loads it, so it is set here, before this module imports torch (a process that imported torch first
#: keeps its own setting; ``make`` and ``facestudy run`` export it as well).
_TORCH_FIRST = "torch" in sys.modules and "OMP_WAIT_POLICY" not in os.environ
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

if _TORCH_FIRST:  # measured: the renderer 1.8x slower under one competing job this way, 27x the other
    import warnings

    warnings.warn("torch was imported before facestudy, so its OpenMP threads keep spin-waiting and slow down "
                  "badly when another job shares the CPU; import facestudy first, or set OMP_WAIT_POLICY=PASSIVE "
                  "before starting Python", RuntimeWarning, stacklevel=2)

from . import profiles  # noqa: E402
from .errors import ParameterError  # noqa: E402

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


#: mallopt(3) parameters for the same tuning in-process (glibc takes an int: at most 2**31 - 1 bytes)
_MALLOPT = {-3: 1 << 30, -1: (1 << 31) - 1, -2: 1 << 30}  # M_MMAP_THRESHOLD, M_TRIM_THRESHOLD, M_TOP_PAD


def tune_malloc() -> bool:
    """Apply :data:`MALLOC_ENV`'s tuning to this process with glibc's ``mallopt`` (done when facestudy is
    imported, so a library user gets it without ``make``): large buffers are then reused from the heap
    instead of being mmap'ed and unmapped per batch. Returns False (and does nothing) off glibc or when
    ``FACESTUDY_NO_MALLOPT`` is set; the environment variables, when present, already did the same."""
    if os.environ.get("FACESTUDY_NO_MALLOPT") or platform.system() != "Linux":
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return all(mallopt(k, v) == 1 for k, v in _MALLOPT.items())


def available_cpus() -> int:
    """Cores this process may really use: its CPU affinity, capped by a cgroup CPU quota (containers, CI
    runners: ``cpu.max`` / ``cpu.cfs_quota_us``), at least 1."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    quota = None
    try:
        q, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if q != "max":
            quota = int(q) / int(period)
    except (OSError, ValueError):
        try:
            q = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
            period = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
            if q > 0 and period > 0:
                quota = q / period
        except (OSError, ValueError):
            pass
    if quota is not None:
        n = min(n, max(1, int(quota + 0.5)))
    return max(1, n)


def cpu_threads() -> int:
    """The intra-op thread count facestudy uses: ``FACESTUDY_THREADS`` if set, else ``OMP_NUM_THREADS`` if
    set, else :func:`available_cpus`."""
    for var in ("FACESTUDY_THREADS", "OMP_NUM_THREADS"):
        v = os.environ.get(var, "").strip()
        if v.isdigit() and int(v) > 0:
            return int(v)
    return available_cpus()


def configure_process() -> dict[str, Any]:
    """What importing facestudy does to the process: malloc tuning, and torch's thread count set to
    :func:`cpu_threads` (a cgroup quota below the visible cores otherwise oversubscribes). Returns a summary
    (also shown by :func:`environment`)."""
    state = {"malloc_tuned": tune_malloc(), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", ""),
             "threads": cpu_threads(), "available_cpus": available_cpus()}
    if torch.get_num_threads() != state["threads"]:
        torch.set_num_threads(state["threads"])
    return state


PROCESS = configure_process()


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


def in_spinning_process(fn, *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)`` in a separate worker process whose OpenMP threads spin-wait
    (``OMP_WAIT_POLICY=ACTIVE``, plus :data:`MALLOC_ENV`); returns its result.

    For one long multi-threaded CPU loop while this process waits. Spinning is what a shared CPU cannot afford
    (see ``OMP_WAIT_POLICY`` above), but on an otherwise idle CPU it is what a loop of small parallel steps
    needs: chapter 4's batched activation maximisation ran 1.85x faster this way (17.1 against 31.7
    image-steps/s on 2 cores once the worker runs, benchmarks/interpret_speed.py). Arguments and result
    travel by (cloud)pickle, so objects the loop mutates stay unchanged here. The worker (a loky process) is
    kept for later calls.
    """
    global _SPINNING
    if _SPINNING is None:
        from joblib.externals.loky.process_executor import ProcessPoolExecutor

        # our own executor: loky's reusable one is a singleton that joblib's Parallel also takes over
        _SPINNING = ProcessPoolExecutor(max_workers=1, env={"OMP_WAIT_POLICY": "ACTIVE", **MALLOC_ENV})
    return _SPINNING.submit(fn, *args, **kwargs).result()


_SPINNING = None


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
        "available_cpus": PROCESS["available_cpus"],
        "omp_wait_policy": PROCESS["omp_wait_policy"],
        "malloc_tuned": PROCESS["malloc_tuned"],
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
    rehearsal: bool = False  # capped work at the profile's shapes (profiles.REHEARSAL); no claim is recorded

    def note(self, message: str) -> None:
        """Say something the reader must know (e.g. 'real CelebA absent: using the synthetic world')."""
        self.notes.append(message)
        print(f"NOTE: {message}")

    def elapsed(self) -> float:
        return time.perf_counter() - self.started


def start(chapter: str, profile: str = "default", seed: int = 0, device: str = "auto",
          data_root: str = "", rehearse: bool | None = None, **overrides: Any) -> Run:
    """Validate parameters, then seed, pick the device and set the data root. Does no other work.

    ``rehearse`` (default: ``$FACESTUDY_REHEARSE``, set by ``facestudy run --rehearse``) applies the chapter's
    :data:`facestudy.profiles.REHEARSAL` caps, says so on the page and turns :func:`facestudy.report.claim`
    into a no-op.

    Raises :class:`~facestudy.errors.ParameterError` (listing valid choices) before anything runs.
    """
    import json

    env_over = json.loads(os.environ.get("FACESTUDY_OVERRIDES") or "{}")  # set by `facestudy run --set`
    if rehearse is None:
        rehearse = os.environ.get("FACESTUDY_REHEARSE", "") not in ("", "0")
    cfg = profiles.resolve(chapter, profile, rehearse=bool(rehearse), **{**env_over, **overrides})
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
              data_root=os.environ.get("FACESTUDY_DATA", ""), rehearsal=bool(rehearse))
    from . import report

    report._begin_chapter(chapter, profile)
    report._state["rehearsal"] = run.rehearsal
    print(f"{chapter} | profile={profile} | seed={seed} | device={dev} | torch threads={torch.get_num_threads()}")
    if run.rehearsal:
        capped = ", ".join(f"{k}={v}" for k, v in profiles.REHEARSAL.get(chapter, {}).items()) or "nothing"
        run.note(f"REHEARSAL: this is a rehearsal of the {profile} profile: its model shapes and code paths with "
                 f"capped work ({capped}). Its numbers mean nothing and no claim is recorded.")
    return run

"""What importing facestudy does to the process (issue 21): passive OpenMP waits, malloc tuning, thread count
from the cores really available."""
from __future__ import annotations

import os
import subprocess
import sys

from facestudy import runtime


def test_available_cpus_within_affinity():
    n = runtime.available_cpus()
    assert 1 <= n <= len(os.sched_getaffinity(0))


def test_cpu_threads_env_overrides(monkeypatch):
    monkeypatch.setenv("FACESTUDY_THREADS", "3")
    assert runtime.cpu_threads() == 3
    monkeypatch.delenv("FACESTUDY_THREADS")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert runtime.cpu_threads() == 1
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert runtime.cpu_threads() == runtime.available_cpus()


def test_import_sets_wait_policy_malloc_and_threads():
    env = {k: v for k, v in os.environ.items()
           if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "FACESTUDY_THREADS", "FACESTUDY_NO_MALLOPT")}
    code = ("import facestudy, torch, os; from facestudy import runtime as r; "
            "print(os.environ['OMP_WAIT_POLICY'], r.PROCESS['malloc_tuned'], torch.get_num_threads(), "
            "r.available_cpus())")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    policy, tuned, threads, cpus = out.stdout.split()
    assert policy == "PASSIVE" and tuned == "True" and threads == cpus


def test_torch_imported_first_is_warned_about():
    """libgomp reads OMP_WAIT_POLICY once, when torch loads it: a process that imported torch before facestudy
    keeps spinning waits (the renderer measured 27x slower under one competing job that way), so say so."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    late = subprocess.run([sys.executable, "-c", "import torch, facestudy"], env=env, capture_output=True, text=True,
                          check=True)
    assert "torch was imported before facestudy" in late.stderr and "OMP_WAIT_POLICY=PASSIVE" in late.stderr
    early = subprocess.run([sys.executable, "-c", "import facestudy, torch"], env=env, capture_output=True,
                           text=True, check=True)
    assert "imported before facestudy" not in early.stderr

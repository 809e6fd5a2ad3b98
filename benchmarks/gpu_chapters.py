"""Run chapters at a profile on this machine's GPU and record how long they take (issue 20, item 5).

    python benchmarks/gpu_chapters.py 00a 00b 05 --profile gpu --out runs/gpu --timeout 480 \
        --record benchmarks/results/gpu_timings.json

Each chapter runs through ``facestudy run`` (papermill, the same code path as ``make book PROFILE=gpu``) in
its own process group under a wall-clock limit, one after the other, while ``nvidia-smi`` is sampled every
0.5 s (peak memory used on the card, mean utilisation). A chapter that passes its limit is stopped; its
partial notebook still gives the cells that finished. The script prints one row per chapter and each
chapter's slowest cells, and writes a JSON record (``--record``); the records committed under
``benchmarks/results/gpu_*.json`` are shown by chapter 0 ("Measured on a GPU"). A chapter that leaves the
card nearly empty (under 64 MiB) is flagged: it ran on the CPU.

Nothing here asserts a speed: it prints and records what it measured, with the machine it measured on.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve()
REPO = HERE.parents[1]


class GpuSampler:
    """``nvidia-smi`` every ``period`` s in a thread: peak memory used (MiB) and mean utilisation (%)."""

    QUERY = ["nvidia-smi", "--query-gpu=memory.used,utilization.gpu", "--format=csv,noheader,nounits"]

    def __init__(self, period: float = 0.5):
        self.period, self.samples, self._stop = period, [], threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                out = subprocess.run(self.QUERY, capture_output=True, text=True, timeout=5).stdout
                mem, util = (float(x) for x in out.splitlines()[0].split(","))
                self.samples.append((mem, util))
            except Exception:  # no nvidia-smi (a CPU machine): nothing to sample
                pass
            self._stop.wait(self.period)

    def __enter__(self) -> "GpuSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def summary(self) -> dict:
        if not self.samples:
            return {"peak_mem_mib": None, "mean_util_pct": None}
        return {"peak_mem_mib": max(m for m, _ in self.samples),
                "mean_util_pct": round(sum(u for _, u in self.samples) / len(self.samples), 1)}


def cell_label(cell: dict) -> str:
    """The first meaningful line of a code cell (comments count: they name what the cell does)."""
    for line in "".join(cell.get("source", "")).splitlines():
        line = line.strip()
        if line:
            return line[:90]
    return "(empty)"


def cell_times(notebook: Path) -> list[dict]:
    """Per code cell: index, label, papermill's duration (s; None for a cell that never finished)."""
    if not notebook.exists():
        return []
    nb = json.loads(notebook.read_text())
    rows = []
    for i, cell in enumerate(nb.get("cells", [])):
        if cell.get("cell_type") != "code":
            continue
        pm = cell.get("metadata", {}).get("papermill", {})
        rows.append({"cell": i, "label": cell_label(cell), "status": pm.get("status"),
                     "seconds": None if pm.get("duration") is None else round(float(pm["duration"]), 2)})
    return rows


def machine() -> dict:
    info = {"python": platform.python_version(), "cpu_count": os.cpu_count(), "gpu": "none", "driver": "-",
            "gpu_memory_mib": None}
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                              "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=10).stdout
        name, driver, total = (x.strip() for x in out.splitlines()[0].split(","))
        info.update(gpu=name, driver=driver, gpu_memory_mib=float(total))
    except Exception:
        pass
    try:
        import torch

        info["torch"] = torch.__version__
        info["cuda"] = torch.version.cuda or "-"
    except ImportError:
        info["torch"] = "-"
    return info


def run_chapter(chapter: str, profile: str, out: Path, timeout: float, extra: list[str]) -> dict:
    cmd = [sys.executable, "-m", "facestudy.cli", "run", chapter, "--profile", profile, "--out", str(out),
           "--quiet", *extra]
    print(f"==> {' '.join(cmd[2:])} (limit {timeout:.0f} s)", flush=True)
    t0, started = time.perf_counter(), time.time() - 1
    with GpuSampler() as gpu:
        proc = subprocess.Popen(cmd, cwd=REPO, start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout)
            status = "ok" if rc == 0 else "failed"
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGTERM)  # the papermill kernel is in the same process group
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            status = "stopped at the limit"
    wall = time.perf_counter() - t0
    runs = [p for p in out.glob(f"{chapter}*.run.json") if p.stat().st_mtime >= started]
    record = json.loads(runs[0].read_text()) if len(runs) == 1 and status != "stopped at the limit" else {}
    chapter_id = record.get("chapter") or chapter
    executed = Path(record["output"]) if record.get("output") else None
    if executed is None or not executed.exists():  # stopped: papermill's partial copy
        partial = sorted(out.glob(f".{chapter}*.running.ipynb"))
        executed = partial[0] if partial else out / f"{chapter}.ipynb"
    cells = cell_times(executed)
    done = [c for c in cells if c["seconds"] is not None]
    return {"chapter": chapter_id, "profile": profile, "status": status if not record.get("error") else "failed",
            "error": record.get("error", ""), "wall_s": round(wall, 1),
            "chapter_wall_s": record.get("wall_s"), "cells_done": len(done), "cells": len(cells),
            **gpu.summary(), "cell_times": cells, "device": record.get("environment", {}).get("cuda")}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("chapters", nargs="+", help="chapter ids or unique prefixes, run in this order")
    ap.add_argument("--profile", default="gpu")
    ap.add_argument("--out", default="runs/gpu", help="folder for the executed notebooks")
    ap.add_argument("--timeout", type=float, default=1800.0, help="wall-clock limit per chapter (s)")
    ap.add_argument("--budget", type=float, default=None,
                    help="total wall-clock budget (s): a chapter gets min(timeout, what is left)")
    ap.add_argument("--record", default=None, help="write the JSON record here")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="passed to facestudy run (recorded)")
    args = ap.parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    extra = [x for s in args.set for x in ("--set", s)]
    info = machine()
    print(json.dumps(info), flush=True)
    t_start, rows = time.perf_counter(), []
    for ch in args.chapters:
        limit = args.timeout
        if args.budget is not None:
            limit = min(limit, args.budget - (time.perf_counter() - t_start))
            if limit < 30:
                print(f"skip {ch}: under 30 s of the budget left", flush=True)
                break
        rows.append(run_chapter(ch, args.profile, out, limit, extra))
        r = rows[-1]
        print(f"    {r['status']}: {r['wall_s']} s, {r['cells_done']}/{r['cells']} cells, peak "
              f"{r['peak_mem_mib']} MiB, mean utilisation {r['mean_util_pct']} %", flush=True)
        if info["gpu"] != "none" and (r["peak_mem_mib"] or 0) < 64:
            print("    WARNING: under 64 MiB of GPU memory used: this chapter ran on the CPU", flush=True)
        slow = sorted((c for c in r["cell_times"] if c["seconds"]), key=lambda c: -c["seconds"])[:6]
        for c in slow:
            print(f"      {c['seconds']:>8.1f} s  cell {c['cell']:>3}  {c['label']}", flush=True)
    record = {"when": time.strftime("%Y-%m-%d %H:%M %Z"), "machine": info, "sets": args.set, "rows": rows}
    if args.record:
        Path(args.record).parent.mkdir(parents=True, exist_ok=True)
        Path(args.record).write_text(json.dumps(record, indent=1) + "\n")
    print(f"{'chapter':<18} {'profile':<8} {'status':<22} {'wall s':>8} {'peak MiB':>9} {'util %':>7}")
    for r in rows:
        print(f"{r['chapter']:<18} {r['profile']:<8} {r['status']:<22} {r['wall_s']:>8} "
              f"{r['peak_mem_mib'] or '-':>9} {r['mean_util_pct'] or '-':>7}")
    return 0 if all(r["status"] == "ok" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())

"""Rendering speed of the synthetic face world (issue 4 target: >= 200 img/s at 112x112 on 2 cores).

Usage: .venv/bin/python benchmarks/faceworld_speed.py [--n 256] [--threads 2] [--size 112]
Prints images/second for neutral ("none"), "default" and "strong" nuisance mixes, best of --repeat runs:
wall clock, and process CPU time divided by the thread count (an estimate for otherwise idle cores, since
on a shared machine the wall clock mostly measures the other jobs).
"""
from __future__ import annotations

import argparse
import os
import time

import torch

from facestudy import faceworld as fw


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--size", type=int, default=112)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--batch", type=int, default=64)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ids = fw.sample_identities(args.n, seed=0)
    print(f"torch {torch.__version__}, threads={torch.get_num_threads()}, cpus={os.cpu_count()}, "
          f"n={args.n}, size={args.size}, batch={args.batch}")
    fw.render(ids[:8], None, size=args.size)  # warm-up
    for mode in ("none", "default", "strong"):
        attrs = fw.random_attributes(args.n, seed=1, nuisance=mode)
        best, cpu = float("inf"), float("inf")
        for _ in range(args.repeat):
            t0, c0 = time.perf_counter(), time.process_time()
            fw.render(ids, attrs, size=args.size, batch_size=args.batch)
            best = min(best, time.perf_counter() - t0)
            cpu = min(cpu, time.process_time() - c0)
        # CPU time / threads estimates the wall time on otherwise idle cores (contention inflates wall time)
        print(f"nuisance={mode:8s} wall {args.n / best:7.1f} img/s ({best:.2f} s for {args.n}); "
              f"cpu {cpu:.2f} s -> {args.n / (cpu / args.threads):7.1f} img/s on {args.threads} idle cores")
    t0 = time.perf_counter()
    fw.render(ids[:64], fw.random_attributes(64, 1), size=args.size, supersample=2)
    print(f"supersample=2       {64 / (time.perf_counter() - t0):7.1f} img/s")


if __name__ == "__main__":
    main()

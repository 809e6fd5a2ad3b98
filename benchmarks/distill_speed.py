"""Chapter 5 speed figures: the cold cost (frozen-trunk features) and the tail-distillation training rate.

Run: ``FACESTUDY_DATA=/work/shared/data .venv/bin/python benchmarks/distill_speed.py [--profile default]``.
Prints figures only (never a pass/fail); numbers depend on the machine's load (quote CPU time beside wall
time on a shared machine). Use it to size ``steps`` / ``seeds`` / ``rows`` in profiles.TABLE.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from facestudy import losses, models, profiles
from facestudy.distill import DistillLoss, study
from facestudy.distill.tail import reinit_


def rate(fn, n_items: int, repeats: int = 3) -> tuple[float, float]:
    """(items per wall second, items per CPU second), median over ``repeats`` after one warm-up."""
    fn()
    walls, cpus = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    return n_items / float(np.median(walls)), n_items / max(1e-9, float(np.median(cpus)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--profile", default="default", choices=profiles.PROFILES)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--train-images", type=int, default=3000, help="training images assumed for the estimate")
    ap.add_argument("--eval-images", type=int, default=7700, help="LFW images of the 6,000 pairs (estimate)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = profiles.resolve("05_distillation", args.profile)
    bs, layer, steps = int(cfg["batch_size"]), cfg["tail_after"], int(cfg["steps"])
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(64, 112, 112, 3), dtype=np.uint8)
    try:
        teacher = study.load_teacher(cfg)
    except Exception as err:  # no real weights: time a randomly initialised MobileFaceNet instead
        print(f"teacher weights unavailable ({err}); timing a random MobileFaceNet")
        teacher = models.create("mobilefacenet").eval()
    print(f"profile={args.profile} threads={torch.get_num_threads()} batch={bs} tail after {layer}, {steps} steps")
    with torch.no_grad():
        w, c = rate(lambda: teacher.features(images, [layer, "embedding"], batch_size=64), len(images), 2)
        feats = teacher.features(images[:bs], [layer], batch_size=bs)[layer].float()
    print(f"trunk features ({layer} + embedding): {w:7.1f} img/s wall, {c:7.1f} img/s CPU")
    n_cold = args.train_images + args.eval_images + 10 * int(cfg["hard_pairs_per_fold"]) * 2
    print(f"  cold cost for ~{n_cold} images (train + LFW + low-res column): ~{n_cold / c / 60:.1f} min CPU")
    tail = reinit_(teacher.tail(layer), 0)
    for p in tail.parameters():  # the teacher is frozen, so its copied tail starts frozen too
        p.requires_grad_(True)
    print(f"student tail: {models.n_parameters(tail):,d} parameters (teacher {models.n_parameters(teacher):,d})")
    labels = torch.arange(bs) % 10
    targets = torch.randn(bs, teacher.embedding_dim)
    per_run = {}
    for method in ("none", "cosine", "iled", "rpsd", "iled+rpsd"):
        head = losses.make_head(cfg["fr_head"], teacher.embedding_dim, 10)
        kd = None if method == "none" else DistillLoss(study.config_from(cfg, method), bs, teacher.embedding_dim)
        opt = torch.optim.SGD(list(tail.parameters()) + list(head.parameters()), lr=0.01)

        def step(head=head, kd=kd, opt=opt):
            emb = tail(feats)
            loss = head(emb, labels) + (kd(emb, targets) if kd is not None else 0.0)
            opt.zero_grad()
            loss.backward()
            opt.step()

        w, c = rate(step, bs, 5)
        per_run[method] = steps * bs / c
        print(f"tail training step, {method:10s} {w:8.1f} img/s wall {c:8.1f} img/s CPU "
              f"-> {per_run[method]:5.1f} s CPU per {steps}-step run")
    n_runs = len(cfg["seeds"]) * len(cfg["rows"]) + len(cfg["single_rows"]) + sum(
        len(cfg[k]) for k in ("sweep_s", "sweep_r", "sweep_t"))
    print(f"{n_runs} runs at this profile: ~{n_runs * np.mean(list(per_run.values())) / 60:.1f} min CPU of training")


if __name__ == "__main__":
    main()

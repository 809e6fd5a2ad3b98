"""Chapter 5 speed figures: teacher vs student parameters, inference and training throughput, KD overhead.

Run: ``FACESTUDY_DATA=/work/shared/data .venv/bin/python benchmarks/distill_speed.py [--profile default]``.
Prints figures only (never a pass/fail); numbers depend on the machine's load.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from facestudy import losses, models, profiles
from facestudy.distill import DistillLoss, study


def train_rate(model, head, kd, images: np.ndarray, labels: torch.Tensor, targets: torch.Tensor,
               steps: int = 3) -> float:
    """Images per second of SGD steps (forward, SphereFace2 (+ KD) loss, backward)."""
    opt = torch.optim.SGD(list(model.parameters()) + list(head.parameters()), lr=0.01)
    model.train()
    times = []
    for i in range(steps + 1):
        t0 = time.perf_counter()
        emb = model(model.preprocess(images))
        loss = head(emb, labels)
        if kd is not None:
            loss = loss + kd(emb, targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i:
            times.append(time.perf_counter() - t0)
    return len(images) / float(np.median(times))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--profile", default="default", choices=profiles.PROFILES)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = profiles.resolve("05_distillation", args.profile)
    rng = np.random.default_rng(0)
    bs = int(cfg["batch_size"])
    images = rng.integers(0, 256, size=(bs, 112, 112, 3), dtype=np.uint8)
    try:
        teacher = study.load_teacher(cfg)
        tname = cfg["teacher"]
    except Exception as err:  # no real weights: time a randomly initialised MobileFaceNet instead
        print(f"teacher weights unavailable ({err}); timing a random MobileFaceNet")
        teacher, tname = models.create("mobilefacenet").eval(), "mobilefacenet (random)"
    student = models.create(cfg["student"], embedding_dim=teacher.embedding_dim,
                            input_size=int(cfg["student_size"]), **dict(cfg["student_kw"]))
    print(f"profile={args.profile} threads={torch.get_num_threads()} batch={bs}")
    for name, m in [(f"teacher {tname}", teacher), (f"student {cfg['student']}", student)]:
        rate = study.throughput(m, images, batch_size=bs)
        print(f"{name:40s} input {m.input_size[0]:3d} px  params {models.n_parameters(m):>10,d}  "
              f"inference {rate:8.1f} img/s")
    labels = torch.arange(bs) % 10
    targets = torch.nn.functional.normalize(torch.randn(bs, teacher.embedding_dim), dim=1)
    for method in ("none", "l2", "iled", "iled+rpsd"):
        head = losses.make_head(cfg["fr_head"], teacher.embedding_dim, 10)
        kd = None if method == "none" else DistillLoss(study.config_from(cfg, method), bs, teacher.embedding_dim)
        rate = train_rate(student, head, kd, images, labels, targets)
        print(f"student training step with {method:10s} {rate:8.1f} img/s")


if __name__ == "__main__":
    main()

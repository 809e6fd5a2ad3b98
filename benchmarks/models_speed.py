"""Speed of the face-recognition core (issue 5): MobileFaceNet embedding img/s at 112 px (target >= 150 on 2
uncontended cores) and training img/s of each backbone at 64 and 112 px. Prints figures; asserts nothing.

Run: FACESTUDY_DATA=/work/shared/data .venv/bin/python benchmarks/models_speed.py [--quick]
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from facestudy import models as M
from facestudy.losses import make_head


def embed_speed(model: M.FaceModel, n: int, size: int, batch: int) -> float:
    imgs = np.random.default_rng(0).integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    model.embed(imgs[:batch], batch_size=batch)  # warm-up
    t = time.perf_counter()
    model.embed(imgs, batch_size=batch)
    return n / (time.perf_counter() - t)


def train_speed(model: M.FaceModel, size: int, batch: int, steps: int) -> float:
    head = make_head("arcface", model.embedding_dim, 1000)
    opt = torch.optim.SGD(list(model.parameters()) + list(head.parameters()), lr=0.01, momentum=0.9)
    x = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8)
    y = torch.randint(0, 1000, (batch,))
    model.train()
    for i in range(steps + 1):
        if i == 1:
            t = time.perf_counter()
        loss = head(model(model.preprocess(x)), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return steps * batch / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer images / steps")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = leave as is)")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    n, steps = (64, 2) if a.quick else (256, 5)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    mfn = M.pretrained("mobilefacenet-ms1m") if "mobilefacenet-ms1m" in M.available()["pretrained"] \
        else M.create("mobilefacenet")
    print(f"embed  {mfn.name:22s} 112 px: {embed_speed(mfn, n, 112, 64):7.1f} img/s (target >= 150)")
    backbones = {
        "smallcnn": lambda s: M.create("smallcnn", input_size=s),
        "mobilefacenet": lambda s: M.create("mobilefacenet", input_size=s),
        "iresnet18": lambda s: M.create("iresnet18", input_size=s),
        "iresnet50": lambda s: M.create("iresnet50", input_size=s),
    }
    for name, build in backbones.items():
        for size in (64, 112):
            torch.manual_seed(0)
            print(f"train  {name:22s} {size:3d} px: {train_speed(build(size), size, 32, steps):7.1f} img/s")


if __name__ == "__main__":
    main()

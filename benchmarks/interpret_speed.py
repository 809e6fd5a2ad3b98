"""Chapter 4 (FaceMINT) speed figures: SAE training throughput (templates/s) per variant and act-max
optimisation steps/s per parameterisation on the real MobileFaceNet (random-weight stand-in if absent).

Usage: FACESTUDY_DATA=/work/shared/data .venv/bin/python benchmarks/interpret_speed.py [--quick]
"""
from __future__ import annotations

import argparse

import torch

from facestudy import models
from facestudy.errors import DataError
from facestudy.interpret import actmax as am
from facestudy.interpret import saes


def sae_throughput(d: int = 128, expansion: int = 8, batch: int = 256, steps: int = 100) -> None:
    x = torch.nn.functional.normalize(torch.randn(8192, d, generator=torch.Generator().manual_seed(0)), dim=1)
    for kind, kw in [("vanilla", {}), ("gated", {}), ("topk", {"k": 16}), ("jumprelu", {})]:
        sae = saes.create(kind, d_in=d, expansion=expansion, **kw)
        res = saes.train_sae(sae, x, steps=steps, batch_size=batch)
        print(f"SAE {kind:9s} d={d} M={sae.n_latents} batch={batch}: {res.templates_per_s:9.0f} templates/s "
              f"({res.seconds / steps * 1000:.1f} ms/step, torch threads 1)")


def actmax_speed(size: int = 64, steps: int = 10) -> None:
    try:
        model = models.pretrained("mobilefacenet-ms1m")
        tag = "mobilefacenet-ms1m"
    except DataError:
        model = models.create("mobilefacenet")
        tag = "mobilefacenet (random weights: real weights absent)"
    model.eval()
    obj = am.channel("conv_sep", 7) - 1e-5 * am.tv()
    for name, kw in [("rgb", {}), ("fft", {}), ("cppn", {}), ("dip", {"channels": 16, "scales": 4})]:
        param = am.make(name, size, size, **kw)
        res = am.render(model, obj, param, steps=steps, lr=0.05)
        print(f"act-max {name:5s} {size}px on {tag}: {res.steps_per_s:6.2f} steps/s "
              "(render caps torch to 1 thread)")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="fewer steps")
    args = ap.parse_args()
    sae_throughput(steps=30 if args.quick else 100)
    actmax_speed(steps=4 if args.quick else 10)

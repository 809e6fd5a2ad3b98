"""Chapter 2 (UIFace): sampling cost per image of each mode relative to the CFG baseline.

Target: the full UIFace sampler (two-stage adaptive + attention injection) costs <= 2.2x the baseline per image.
The generator has the ``default`` profile's architecture; its weights are random (cost does not depend on them),
and the adaptive threshold is set to the median d_t of an unconditional run so that samples really switch.

    .venv/bin/python benchmarks/uiface_sampling.py [--profile default] [--n 32] [--repeats 2] [--threads 0]
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from facestudy import profiles
from facestudy.uiface import UIFaceGenerator, sample
from facestudy.uiface.pipeline import ABLATION, generator_config, sampler


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="default")
    ap.add_argument("--n", type=int, default=32, help="images per mode")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = leave as is)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = profiles.resolve("02_uiface", args.profile)
    torch.manual_seed(0)
    gen = UIFaceGenerator(generator_config(cfg)).eval()
    ident = torch.nn.functional.normalize(torch.randn(args.n, cfg.embed_dim), dim=1)
    probe = sample(gen, ident, sampler(cfg, mode="two_stage", t0=-1, record_maps=True), seed=1,
                   batch_size=cfg.sample_batch)
    th = float(np.nanmedian(probe.d[:, 1:]))
    print(f"profile={args.profile} image={cfg.image_size}px steps={cfg.ddim_steps} n={args.n} "
          f"threads={torch.get_num_threads()} adaptive th={th:.4g} (median d_t)")
    rows = {}
    for name, over in ABLATION.items():
        best = float("inf")
        for _ in range(args.repeats):
            t = time.perf_counter()
            res = sample(gen, ident, sampler(cfg, th=th, **over), seed=2, batch_size=cfg.sample_batch)
            best = min(best, time.perf_counter() - t)
        rows[name] = (best / args.n, res.unet_evals / args.n, float(np.mean(res.t0)))
    base = rows["baseline"][0]
    print(f"{'mode':<20}{'s/image':>10}{'x baseline':>12}{'UNet evals/img':>16}{'mean t0':>10}")
    for name, (spi, ev, t0) in rows.items():
        print(f"{name:<20}{spi:>10.4f}{spi / base:>12.2f}{ev:>16.1f}{t0:>10.0f}")
    ratio = rows["+adaptive+attn"][0] / base
    print(f"two-stage adaptive + injection: {ratio:.2f}x baseline (target <= 2.2x): {'OK' if ratio <= 2.2 else 'OVER'}")


if __name__ == "__main__":
    main()

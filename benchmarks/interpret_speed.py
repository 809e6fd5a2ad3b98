"""Chapter 4 (FaceMINT) speed figures: SAE training throughput (templates/s) per variant and act-max
optimisation steps/s per parameterisation on the real MobileFaceNet (random-weight stand-in if absent);
then chapter 4's two CPU schedules measured side by side: an SAE grid on one process vs two
(``train_many``), and F5's 12 act-max images one by one vs batched (``render_many``) in this process vs in a
spin-waiting worker (``spin=True``). Run it on an idle machine.

Usage: FACESTUDY_DATA=/work/shared/data .venv/bin/python benchmarks/interpret_speed.py [--quick]
"""
from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: OpenMP waits as in a chapter's kernel

import torch  # noqa: E402

from facestudy import models  # noqa: E402
from facestudy.errors import DataError  # noqa: E402
from facestudy.interpret import actmax as am  # noqa: E402
from facestudy.interpret import saes  # noqa: E402


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


def _model():
    try:
        return models.pretrained("mobilefacenet-ms1m").eval()
    except DataError:
        return models.create("mobilefacenet").eval()


def grid_schedules(steps: int = 600) -> None:
    from facestudy.interpret import analysis

    x = torch.nn.functional.normalize(torch.randn(4867, 128, generator=torch.Generator().manual_seed(0)), dim=1)
    runs = [("vanilla", {"l1_coeff": 2.0, "resample_every": 250}), ("gated", {"l1_coeff": 3.0, "resample_every": 250}),
            ("topk", {"k": 32}), ("jumprelu", {"l0_coeff": 0.3, "input_norm": "sqrt_d"})]
    for workers in (1, 2, 2):  # the second 2 reuses the started workers
        t = time.perf_counter()
        analysis.grid_seeds(x, runs, [0, 1, 2], steps=steps, batch_size=256, evals={"d": x[:1000]}, expansion=4,
                            workers=workers)
        print(f"SAE grid 4 families x 3 seeds x {steps} steps, {workers} process(es): {time.perf_counter() - t:6.1f} s")


def f5_schedules(size: int = 64, steps: int = 10) -> None:
    model = _model()

    def jobs():
        return [am.RenderJob(am.neuron("embedding", 5) - 1e-5 * am.tv(),
                             am.make(p, size, size, seed=s, **({"channels": 16, "scales": 4} if p == "dip" else {})),
                             seed=s) for s in range(3) for p in ("rgb", "fft", "cppn", "dip")]
    n = len(jobs()) * steps
    t = time.perf_counter()
    for j in jobs():
        am.render(model, j.objective, j.param, steps=steps, lr=j.lr, seed=j.seed)
    rate = n / (time.perf_counter() - t)
    print(f"F5's {len(jobs())} images x {steps} steps one by one (1 thread): {rate:5.1f} image-steps/s")
    for spin in (False, True, True):  # the second spin reuses the started worker
        t = time.perf_counter()
        am.render_many(model, jobs(), steps=steps, spin=spin)
        print(f"F5's images batched, {'spin-waiting worker' if spin else 'this process'}: "
              f"{n / (time.perf_counter() - t):5.1f} image-steps/s")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="fewer steps")
    args = ap.parse_args()
    sae_throughput(steps=30 if args.quick else 100)
    actmax_speed(steps=4 if args.quick else 10)
    grid_schedules(steps=100 if args.quick else 600)
    f5_schedules(steps=5 if args.quick else 20)

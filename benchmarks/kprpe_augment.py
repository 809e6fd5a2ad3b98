"""Cost of chapter 3's training augmentation (§1.7 ``gridsample_v1`` + RandAugment) next to one training
step of the chapter's default KP-RPE ViT. Prints medians in ms; the augmentation should stay a small
fraction of the step.

    .venv/bin/python benchmarks/kprpe_augment.py               # batch 64 at 64 px, torch's default threads
    .venv/bin/python benchmarks/kprpe_augment.py --threads 1 --runs 40
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from facestudy.kprpe.experiment import make_model
from facestudy.kprpe.keypoints import AugmentSpec, augment_batch, template_keypoints
from facestudy.losses import make_head


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    arch = dict(input_size=a.size, patch=8, dim=96, depth=4, heads=4, mlp_ratio=3.0, embedding_dim=128,
                drop_path=0.0)
    model = make_model("kprpe", arch, 0)
    head = make_head("adaface", 128, 500)
    opt = torch.optim.AdamW(list(model.parameters()) + list(head.parameters()), lr=1e-3)
    x = torch.rand(a.batch, 3, a.size, a.size)
    kp = torch.from_numpy(template_keypoints(a.batch))
    labels = torch.randint(0, 500, (a.batch,))
    gen = torch.Generator().manual_seed(0)

    def step() -> None:
        loss = head(model(model.preprocess(x), keypoints=kp), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()

    cases = {
        "augment (default: RandAugment on every image)": lambda: augment_batch(x, kp, gen, AugmentSpec()),
        "augment (p_photometric 0.5)": lambda: augment_batch(x, kp, gen, AugmentSpec(p_photometric=0.5)),
        "augment (geometry, cutout, blur only)": lambda: augment_batch(x, kp, gen, AugmentSpec(p_photometric=0.0)),
        "KP-RPE ViT training step": step,
    }
    times: dict[str, list[float]] = {k: [] for k in cases}
    for r in range(a.runs + 3):  # interleaved, the first 3 rounds are warm-up
        for k, f in cases.items():
            t0 = time.perf_counter()
            f()
            if r >= 3:
                times[k].append(time.perf_counter() - t0)
    print(f"batch {a.batch} at {a.size} px, {torch.get_num_threads()} threads, median of {a.runs}:")
    step_ms = 1e3 * statistics.median(times["KP-RPE ViT training step"])
    for k, v in times.items():
        ms = 1e3 * statistics.median(v)
        print(f"  {k:<48} {ms:8.1f} ms  ({100 * ms / step_ms:5.1f} % of a step)")


if __name__ == "__main__":
    main()

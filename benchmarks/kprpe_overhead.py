"""KP-RPE overhead (chapter 3, claim K4): parameters and train / inference throughput of the same ViT
plain, with iRPE and with KP-RPE. Prints a table; the target is KP-RPE <= 10 % slower than the ViT.

    .venv/bin/python benchmarks/kprpe_overhead.py                 # the chapter's default CPU ViT (64 px)
    .venv/bin/python benchmarks/kprpe_overhead.py --size 112 --dim 512 --depth 12 --heads 8 --mlp 5 \
        --batch 8 --steps 2                                       # the paper's ViT-small shape (slow on CPU)
"""
from __future__ import annotations

import argparse

import torch

from facestudy.kprpe.experiment import overhead_table


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--patch", type=int, default=8)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--mlp", type=float, default=3.0)
    p.add_argument("--embedding", type=int, default=128)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    arch = dict(input_size=a.size, patch=a.patch, dim=a.dim, depth=a.depth, heads=a.heads, mlp_ratio=a.mlp,
                embedding_dim=a.embedding)
    print(f"arch {arch} | batch {a.batch} | steps {a.steps} x {a.repeats} repeats | "
          f"torch threads {torch.get_num_threads()}")
    df = overhead_table(arch, batch=a.batch, steps=a.steps, repeats=a.repeats)
    with __import__("pandas").option_context("display.width", 160, "display.precision", 2):
        print(df)
    slow = df.loc["kprpe", "train_slowdown_pct"]
    print(f"KP-RPE train slowdown vs ViT: {slow:.1f} % (target <= 10 %); inference "
          f"{df.loc['kprpe', 'infer_slowdown_pct']:.1f} %")


if __name__ == "__main__":
    main()

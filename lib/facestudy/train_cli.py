"""``facestudy train <chapter> <arm> --profile P``: train one chapter arm outside its notebook (issue 20).

Run it alone, or data-parallel on several GPUs / nodes with ``torchrun`` (book page "Running", section
"Running big")::

    facestudy train 00a world-fr --profile gpu
    torchrun --nproc-per-node 4 -m facestudy.train_cli 00a world-fr --profile gpu
    torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint $HEAD:29500 \\
             -m facestudy.train_cli 00a world-fr --profile paper

The checkpoint lands in the cache under the arm's key (:mod:`facestudy.arms`); the chapter run with the same
profile, settings and seed finds it there and loads it instead of training. A killed run started again
resumes from its last finished epoch, with any number of processes.
"""
from __future__ import annotations

import argparse
import sys
import time

from . import profiles
from .errors import ParameterError


def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    from . import arms

    p.add_argument("chapter", nargs="?", help="chapter id or unique prefix (e.g. 00a)")
    p.add_argument("arm", nargs="?", help=f"which model of the chapter: {'; '.join(arms.names())}")
    p.add_argument("--profile", default="default", help=f"one of {', '.join(profiles.PROFILES)} (default: default)")
    p.add_argument("--seed", default="0", help="the chapter's seed parameter (default 0)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override one profile-table setting (YAML)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (under torchrun: each rank's LOCAL_RANK GPU)")
    p.add_argument("--checkpoint-every", type=int, default=None, metavar="STEPS",
                   help="also checkpoint inside epochs every STEPS steps (a killed run resumes there)")
    p.add_argument("--list", action="store_true", help="list the trainable arms and exit")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def cmd_train(args: argparse.Namespace) -> int:
    """Validate, join the torchrun group (if any), build the arm (rank 0 first: it prepares cached data),
    train, report where the checkpoint is."""
    from . import arms, runner, train
    from .cli import _pairs

    if args.list or not args.chapter:
        print("trainable arms (facestudy train CHAPTER ARM --profile P):")
        for name in arms.names():
            print(f"  {name}")
        return 0 if args.list else 2
    if args.checkpoint_every is not None and args.checkpoint_every < 1:
        raise ParameterError(f"--checkpoint-every must be a positive number of steps, got {args.checkpoint_every}")
    if not args.arm:
        raise ParameterError(f"facestudy train needs an arm after the chapter; arms: {'; '.join(arms.names())}")
    (ch, typed, over), = runner.plan(args.chapter, args.profile, {"seed": args.seed, "device": args.device},
                                     _pairs(args.set, "--set"))
    seed, device = int(typed["seed"]), str(typed["device"])
    found = arms.stage(ch.id, args.arm)
    if found is not None:  # a model with its own training loop (chapter 2's generator): one process
        if train.distributed().world > 1:
            raise ParameterError(f"facestudy train {ch.id} {args.arm} runs in one process; start it without "
                                 f"torchrun")
        cfg = profiles.resolve(ch.id, args.profile, **over)
        t0 = time.perf_counter()
        summary = found[1](cfg, seed=seed, device=device, progress=not args.quiet)
        print(f"facestudy train {ch.id} {args.arm} --profile {args.profile} (seed {seed}) done in "
              f"{time.perf_counter() - t0:.0f} s: {summary}. `facestudy run {ch.id} --profile {args.profile}` "
              f"with the same settings and seed loads it instead of training", flush=True)
        return 0
    dist = train.distributed()
    import torch.distributed as tdist

    try:
        if dist.active and not dist.main:
            tdist.barrier()  # rank 0 builds first: it renders / prepares the cached training faces
        arm = arms.build(ch.id, args.arm, args.profile, seed=seed, **over)
        if dist.active and dist.main:
            tdist.barrier()
        kw = arm.fit_kwargs
        if dist.main:
            print(f"facestudy train {ch.id} {arm.name} --profile {args.profile} (seed {seed}): "
                  f"{len(arm.faceset)} images, {kw['epochs']} epochs, global batch {kw['batch_size']} over "
                  f"{dist.world} process(es); checkpoint {arm.checkpoint}", flush=True)
        t0 = time.perf_counter()
        hist = arm.fit(device=device, progress=not args.quiet and dist.main, checkpoint_every=args.checkpoint_every)
        if dist.main:
            print(f"done in {time.perf_counter() - t0:.0f} s: {len(hist.steps)} steps, last loss "
                  f"{hist.last_loss:.4f}; {arm.checkpoint} holds the weights - `facestudy run {ch.id} --profile "
                  f"{args.profile}` with the same settings and seed loads them instead of training", flush=True)
    finally:
        if dist.active and tdist.is_initialized():
            tdist.destroy_process_group()
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m facestudy.train_cli ARGS`` (what ``torchrun -m`` runs) = ``facestudy train ARGS``, with
    the same exit codes (2 bad request, 3 data problem)."""
    from .cli import main as cli_main

    return cli_main(["train", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())

"""Data-parallel training (``facestudy.train.fit`` under torch.distributed, issue 20): two gloo processes on
the CPU give the weights of one process with the same global batch, and a run killed mid-way resumes from
its checkpoint with one or two processes to the same weights.

The model has no BatchNorm on purpose: BatchNorm statistics are computed per rank (per half batch), so a
BN model is *not* expected to match one process exactly (use SyncBatchNorm for that). The processes meet
through a file store in the test's temp folder (no network port). Tolerance: 2e-5 absolute on every
weight after 12 SGD steps (measured: 4.8e-6, the largest weight being 40, i.e. 1.2e-7 relative: float32
rounding of two half-batch gradient means averaged instead of one full-batch mean, carried through 12 steps).
"""
from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from facestudy import losses, train
from facestudy.data import FaceSet
from facestudy.errors import ParameterError
from facestudy.models.base import FaceModel

TOL = 2e-5
KILL_STEP = 6  # 4 steps an epoch: the kill lands in epoch 1; the checkpoint holds epoch 0
RECIPE = dict(epochs=3, batch_size=8, lr=0.1, device="cpu", warmup=0.5, seed=3, progress=False,
              augment=train.random_hflip)


class TinyNet(FaceModel):
    """conv -> PReLU -> pool -> linear: no BatchNorm (see the module docstring)."""

    def __init__(self) -> None:
        super().__init__(input_size=16, embedding_dim=8, name="tiny")
        self.conv = nn.Conv2d(3, 6, 3, 2, 1)
        self.act = nn.PReLU(6)
        self.fc = nn.Linear(6 * 4 * 4, 8)

    def forward(self, x, keypoints=None):
        return self.fc(nn.functional.avg_pool2d(self.act(self.conv(x)), 2).flatten(1))


def _faces() -> FaceSet:
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 8)
    base = rng.integers(0, 256, (4, 16, 16, 3))
    imgs = np.clip(base[labels] + rng.normal(0, 30, (32, 16, 16, 3)), 0, 255).astype(np.uint8)
    return FaceSet(imgs, labels, pd.DataFrame({"identity": labels.astype(str)}), name="toy")


def _fresh():
    torch.manual_seed(11)
    return TinyNet(), losses.make_head("arcface", 8, 4, s=8.0, m2=0.2)


class Killed(RuntimeError):
    pass


def _killer(at: int | None):
    """An extra loss of exactly zero that stops the run at step ``at`` on every rank (a simulated kill)."""
    def extra(batch):
        if at is not None and batch["step"] == at:
            raise Killed(f"killed at step {at}")
        return batch["embeddings"].sum() * 0.0, {}
    return extra


def _weights(model, head) -> dict[str, torch.Tensor]:
    return {**{f"m.{k}": v.detach().clone() for k, v in model.state_dict().items()},
            **{f"h.{k}": v.detach().clone() for k, v in head.state_dict().items()}}


def _run(ckpt, kill=None, every=None):
    model, head = _fresh()
    hist = train.fit(model, head, _faces(), checkpoint=ckpt, extra_loss=_killer(kill), checkpoint_every=every,
                     **RECIPE)
    return _weights(model, head), hist


def _worker(rank: int, world: int, folder: str) -> None:
    """One rank of a 2-process gloo group. In order: an uninterrupted run; a run killed at KILL_STEP and
    resumed with the same world size; a run killed at KILL_STEP left for the parent to finish with one
    process; the parent's one-process killed run finished here with two; a global batch that does not divide
    by the world size (refused on every rank)."""
    import torch.distributed as tdist

    from facestudy.errors import ParameterError

    torch.set_num_threads(1)
    tdist.init_process_group("gloo", init_method=f"file://{folder}/store", rank=rank, world_size=world)
    try:
        w, hist = _run(f"{folder}/full.pt")
        out = {"full": w, "loss": torch.tensor([s["loss"] for s in hist.steps])}
        for name in ("again", "for_one"):
            with pytest.raises(Killed):
                _run(f"{folder}/{name}.pt", kill=KILL_STEP)
        with pytest.raises(Killed):  # with a mid-epoch checkpoint after step 5 (epoch 1, batch 1)
            _run(f"{folder}/mid.pt", kill=KILL_STEP + 1, every=5)
        out["resumed_2_2"], _ = _run(f"{folder}/again.pt")
        out["resumed_1_2"], _ = _run(f"{folder}/one_half.pt")
        model, head = _fresh()
        with pytest.raises(ParameterError, match="divisible by the 2 processes"):
            train.fit(model, head, _faces(), epochs=1, batch_size=7, lr=0.1, device="cpu", progress=False)
        torch.save(out, f"{folder}/rank{rank}.pt")
    finally:
        tdist.destroy_process_group()


def _max_gap(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


@pytest.mark.slow  # two spawned processes import torch: ~15 s of CPU, a minute of wall on a busy 2-core box
def test_two_gloo_processes_match_one_and_resume_with_any_world_size(tmp_path):
    import torch.multiprocessing as mp

    ref, ref_hist = _run(tmp_path / "single.pt")
    ref_loss = [s["loss"] for s in ref_hist.steps]
    assert len(ref_loss) == 12
    assert _max_gap(ref, _weights(*_fresh())) > 1e-2  # it trained
    with pytest.raises(Killed):  # a one-process run killed mid-way, for the two processes to finish
        _run(tmp_path / "one_half.pt", kill=KILL_STEP)
    mp.spawn(_worker, args=(2, str(tmp_path)), nprocs=2, join=True)

    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert _max_gap(r0["full"], r1["full"]) == 0.0  # the replicas agree bit for bit
    gap = _max_gap(ref, r0["full"])
    scale = max(float(v.abs().max()) for v in ref.values())
    print(f"max |w_2proc - w_1proc| after 12 steps: {gap:.2e} (largest weight {scale:.2f})")
    assert gap < TOL
    np.testing.assert_allclose(r0["loss"].numpy(), ref_loss, rtol=1e-5)  # all-reduced = global-batch loss
    assert _max_gap(ref, r0["resumed_2_2"]) < TOL  # killed with 2, resumed with 2
    assert _max_gap(ref, r0["resumed_1_2"]) < TOL  # killed with 1, resumed with 2
    state = torch.load(tmp_path / "for_one.pt", weights_only=True)  # killed with 2: epoch 0 was saved
    assert state["epoch"] == 0 and state["step"] == 4
    w, hist = _run(tmp_path / "for_one.pt")  # ... resumed with 1 process
    assert _max_gap(ref, w) < TOL
    assert len(hist.steps) == 12
    np.testing.assert_allclose([s["loss"] for s in hist.steps], ref_loss, rtol=1e-5)
    state = torch.load(tmp_path / "mid.pt", weights_only=True)  # killed with 2 inside epoch 1, after step 5
    assert state["partial"]["epoch"] == 1 and state["partial"]["batch"] == 1 and state["step"] == 5
    w, hist = _run(tmp_path / "mid.pt", every=5)  # ... resumed there with 1 process
    assert _max_gap(ref, w) < TOL and len(hist.steps) == 12


def test_mid_epoch_checkpoint_resumes_exactly(tmp_path, monkeypatch):
    """``checkpoint_every``: a run killed inside an epoch resumes at its last saved step with the random
    states of that step (the flips of the remaining batches), bit for bit on one CPU process."""
    ref, ref_hist = _run(tmp_path / "ref.pt")
    with pytest.raises(Killed):
        _run(tmp_path / "mid.pt", kill=KILL_STEP + 1, every=3)  # saved after step 6: epoch 1, batch 2
    state = torch.load(tmp_path / "mid.pt", weights_only=True)
    assert (state["epoch"], state["step"], state["partial"]["epoch"], state["partial"]["batch"]) == (0, 6, 1, 2)
    saved = tmp_path / "mid_copy.pt"
    saved.write_bytes((tmp_path / "mid.pt").read_bytes())
    w, hist = _run(tmp_path / "mid.pt", every=3)
    assert _max_gap(ref, w) == 0.0
    assert [s["loss"] for s in hist.steps] == [s["loss"] for s in ref_hist.steps]
    assert "partial" not in torch.load(tmp_path / "mid.pt", weights_only=True)  # finished: a plain checkpoint
    # control: without restoring the random states the remaining flips differ, and so do the weights
    monkeypatch.setattr(train, "_set_rng_state", lambda *a: None)
    w, _ = _run(saved, every=3)
    assert _max_gap(ref, w) > 1e-6
    with pytest.raises(ParameterError, match="checkpoint_every"):
        _run(tmp_path / "x.pt", every=0)


def test_distributed_is_single_process_without_torchrun(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    d = train.distributed()
    assert (d.rank, d.world, d.active, d.main) == (0, 1, False, True)


# ------------------------------------------------------------------ the launcher and the notebook meet in the cache
def _same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k].cpu(), b[k].cpu()) for k in a)


def test_facestudy_train_leaves_the_checkpoint_the_notebook_arm_loads(tmp_path, monkeypatch, capsys):
    from facestudy import arms, train_cli

    monkeypatch.setenv("FACESTUDY_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    rc = train_cli.main(["00a", "world-fr", "--profile", "smoke", "--device", "cpu", "--quiet",
                         "--checkpoint-every", "1"])
    assert rc == 0
    arm = arms.build("00a_faceworld", "world-fr", "smoke", seed=0)  # what the notebook cell builds
    assert str(arm.checkpoint) in capsys.readouterr().out and arm.checkpoint.is_file()
    saved = torch.load(arm.checkpoint, weights_only=True)
    assert not _same_state(arm.model.state_dict(), saved["model"])  # a fresh arm: untrained weights
    calls = []
    hist = arm.fit(device="cpu", progress=False, callbacks=[lambda *a: calls.append(a)])
    assert calls == [] and len(hist.steps) == saved["step"] == 2  # finished run: loaded, not trained
    assert _same_state(arm.model.state_dict(), saved["model"])
    # another seed or setting is another key (trains afresh); a recipe change through fit() is refused
    assert arms.build("00a", "world-fr", "smoke", seed=1).checkpoint != arm.checkpoint
    assert arms.build("00a", "world-fr", "smoke", fr_lr=0.05).checkpoint != arm.checkpoint
    with pytest.raises(ParameterError, match="recipe"):
        arm.fit(lr=1.0)


def test_facestudy_train_refuses_bad_requests(capsys):
    from facestudy import train_cli

    assert train_cli.main(["00a", "nope"]) == 2
    assert "world-fr" in capsys.readouterr().err  # one line, exit 2, as facestudy run
    assert train_cli.main(["00a", "world-fr", "--profile", "huge"]) == 2
    assert train_cli.main(["00a", "world-fr", "--set", "fr_lrr=1"]) == 2
    assert "unknown setting" in capsys.readouterr().err
    assert train_cli.main(["00a", "world-fr", "--checkpoint-every", "0"]) == 2


@pytest.mark.slow  # torchrun + two python processes importing torch: ~30 s of wall on a busy 2-core machine
def test_torchrun_two_processes_on_localhost(tmp_path):
    """The real launch path: ``torchrun --standalone --nproc-per-node 2 -m facestudy.train_cli`` (gloo,
    127.0.0.1 only), then the notebook's arm finds the finished checkpoint."""
    import subprocess
    import sys

    from facestudy import arms

    env = {**os.environ, "FACESTUDY_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1",
           "CUDA_VISIBLE_DEVICES": ""}
    env.pop("WORLD_SIZE", None)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                "--master-addr", "127.0.0.1"]
    out = subprocess.run([*torchrun, "-m", "facestudy.train_cli", "00a", "world-fr", "--profile", "smoke",
                          "--device", "cpu", "--quiet"], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "over 2 process(es)" in out.stdout
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FACESTUDY_CACHE", env["FACESTUDY_CACHE"])
        arm = arms.build("00a", "world-fr", "smoke", seed=0)
        saved = torch.load(arm.checkpoint, weights_only=True)
        hist = arm.fit(device="cpu", progress=False)
    assert len(hist.steps) == saved["step"] == 2
    assert _same_state(arm.model.state_dict(), saved["model"])

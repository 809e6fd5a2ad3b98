"""The trainer: learning, determinism, resume, schedules, hooks for augment / extra_loss / keypoints."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from facestudy import models as M
from facestudy.data import LANDMARK_COLUMNS, FaceSet
from facestudy.errors import ParameterError
from facestudy.losses import make_head
from facestudy.train import fit, lr_at


def _toy(n_id=4, per=4, size=16, seed=0, landmarks=False):
    rng = np.random.default_rng(seed)
    protos = rng.integers(0, 255, (n_id, 1, size, size, 3))
    imgs = np.clip(protos + rng.normal(0, 20, (n_id, per, size, size, 3)), 0, 255).astype(np.uint8)
    meta = None
    if landmarks:
        meta = pd.DataFrame(rng.uniform(2, size - 2, (n_id * per, 10)), columns=LANDMARK_COLUMNS)
    return FaceSet(imgs.reshape(-1, size, size, 3), np.repeat(np.arange(n_id), per), meta, name="toy",
                   source="synthetic")


def _model():
    torch.manual_seed(0)
    return M.create("smallcnn", input_size=16, width=4, stages=2, embedding_dim=8)


def _run(fs, **kw):
    m = _model()
    h = make_head("cosface", 8, fs.n_identities, s=8.0)
    args = dict(epochs=3, batch_size=8, lr=0.05, device="cpu", progress=False, seed=1)
    args.update(kw)
    return m, fit(m, h, fs, **args)


def test_loss_decreases_and_deterministic():
    fs = _toy()
    m1, h1 = _run(fs)
    m2, h2 = _run(fs)
    df = h1.to_frame()
    assert len(df) == 6 and {"step", "epoch", "loss", "lr", "cls_loss"} <= set(df.columns)
    assert df.loss.iloc[-2:].mean() < df.loss.iloc[:2].mean()
    assert np.array_equal(df.loss.values, h2.to_frame().loss.values)
    assert all(torch.equal(a, b) for a, b in zip(m1.state_dict().values(), m2.state_dict().values(), strict=True))
    assert len(h1.epoch_frame()) == 3


class _Kill(Exception):
    pass


def test_checkpoint_resume_matches_uninterrupted(tmp_path):
    fs = _toy()
    m_full, h_full = _run(fs)

    def killer(epoch, model, history):
        if epoch == 1:
            raise _Kill()

    ck = tmp_path / "run.pt"
    with pytest.raises(_Kill):
        _run(fs, checkpoint=ck, callbacks=[killer])
    assert ck.exists()
    m_res, h_res = _run(fs, checkpoint=ck)
    assert np.allclose(h_res.to_frame().loss.values, h_full.to_frame().loss.values)
    pairs = zip(m_full.state_dict().values(), m_res.state_dict().values(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)


def test_schedules():
    assert lr_at(0, 100, 1.0, "cosine", 10, 10) == pytest.approx(0.1)
    assert lr_at(10, 100, 1.0, "cosine", 10, 10) == pytest.approx(1.0)
    assert lr_at(55, 100, 1.0, "cosine", 10, 10) == pytest.approx(0.5)
    assert lr_at(35, 100, 1.0, "step", 0, 10, milestones=(2, 3)) == pytest.approx(0.01)
    assert lr_at(99, 100, 0.3, "constant", 0, 10) == 0.3


def test_augment_extra_loss_callbacks_and_max_steps():
    fs = _toy()
    seen = {"aug": 0, "idx": []}

    def augment(x):
        seen["aug"] += 1
        assert x.dtype == torch.uint8 and x.shape[1] == 3
        return x.flip(3)

    def extra(batch):
        seen["idx"].append(batch["index"].clone())
        assert batch["embeddings"].shape == (8, 8) and batch["inputs"].shape == (8, 3, 16, 16)
        return batch["embeddings"].pow(2).mean() * 0.01, {"l2": 1.0}

    m, h = _run(fs, augment=augment, extra_loss=extra, callbacks=[lambda e, mod, hist: {"val": e * 1.0}],
                eval_every=2, max_steps=3, grad_clip=1.0, schedule="step", milestones=(1,), optimizer="adamw")
    df = h.to_frame()
    assert len(df) == 3 and seen["aug"] == 3 and "l2" in df.columns
    assert sorted(torch.cat(seen["idx"][:2]).tolist()) == list(range(16))  # epoch 0 visits every row once
    assert "val" in h.epoch_frame().columns


class _KPModel(M.SmallCNN):
    uses_keypoints = True

    def forward(self, x, keypoints=None):
        assert keypoints is not None and keypoints.shape == (x.shape[0], 5, 2)
        assert float(keypoints.min()) >= 0 and float(keypoints.max()) <= 1
        return super().forward(x) + 0 * keypoints.sum()


def test_keypoints_reach_the_model():
    fs = _toy(landmarks=True)
    torch.manual_seed(0)
    m = _KPModel(input_size=16, width=4, stages=2, embedding_dim=8)

    def augment(x, keypoints=None):
        return x, keypoints

    h = fit(m, make_head("arcface", 8, 4), fs, epochs=1, batch_size=8, lr=0.01, device="cpu", progress=False,
            augment=augment)
    assert len(h.steps) == 2


def test_bad_arguments():
    fs = _toy()
    with pytest.raises(ParameterError, match="schedule"):
        _run(fs, schedule="linear")
    with pytest.raises(ParameterError, match="n_classes"):
        fit(_model(), make_head("arcface", 8, 2), fs, epochs=1, batch_size=4, lr=0.1, device="cpu",
            progress=False)
    with pytest.raises(ParameterError, match="head"):
        fit(_model(), None, fs, epochs=1, batch_size=4, lr=0.1, device="cpu", progress=False)

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
from facestudy.train import checkpoint_path, fit, lr_at, random_hflip, repeated_order


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


# ------------------------------------------------------------------ repeated augmentation (§1.7)
def _gen(seed):
    return torch.Generator().manual_seed(seed)


def test_repeated_order_p0_is_the_old_randperm():
    labels = np.repeat(np.arange(7), 3)
    for seed in (0, 1, 100003):
        old = torch.randperm(len(labels), generator=_gen(seed)).numpy()
        assert np.array_equal(repeated_order(labels, _gen(seed), 0.0), old)
    # unlabelled images never trigger a repeat
    unl = np.full(50, -1)
    assert np.array_equal(repeated_order(unl, _gen(3), 0.5), torch.randperm(50, generator=_gen(3)).numpy())


def test_repeated_order_statistics_and_validity():
    p, n_id, per = 0.1, 6000, 8
    labels = np.repeat(np.arange(n_id), per)
    n = len(labels)
    order = repeated_order(labels, _gen(5), p)
    base = repeated_order(labels, _gen(5), 0.0)
    assert order.shape == (n,) and order.dtype.kind == "i"
    assert order.min() >= 0 and order.max() < n
    rep = order != base  # the positions that were replaced
    assert not rep[0] and not (rep[1:] & rep[:-1]).any()  # a repeat never follows a repeat
    k = np.flatnonzero(rep)
    assert np.all(labels[order[k]] == labels[order[k - 1]])  # same identity as the previous sample
    assert np.all(order[k] != order[k - 1])  # ... and a different image of it
    # P(repeat | previous is not a repeat) = p; overall fraction p / (1 + p); sd ~ 0.0015 at this n
    eligible = ~rep[:-1]
    assert abs(rep[1:][eligible].mean() - p) < 0.005
    assert abs(rep.mean() - p / (1 + p)) < 0.005
    # deterministic under the same generator seed, different under another
    assert np.array_equal(order, repeated_order(labels, _gen(5), p))
    assert not np.array_equal(order, repeated_order(labels, _gen(6), p))


def test_repeated_order_single_image_identities_and_uniform_pick():
    labels = np.array([0, 1, 1, 1, 2, 3, 3, 3, 3, 4] * 1)  # ids 0, 2, 4 have one image each
    labels = np.concatenate([labels, labels + 5])
    order = repeated_order(labels, _gen(0), 0.9)
    base = repeated_order(labels, _gen(0), 0.0)
    k = np.flatnonzero(order != base)
    prev = order[k - 1]
    counts = np.bincount(labels)
    single = counts[labels[prev]] == 1
    assert np.all(labels[order[k]] == labels[prev])
    assert np.all(order[k][~single] != prev[~single])
    # single-image identity: same image repeated (not visible as order != base when base already had it,
    # so check every position that follows a single-image identity under p ~ 1)
    hits = picks = 0
    for seed in range(60):
        o = repeated_order(labels, _gen(seed), 0.99)
        b = repeated_order(labels, _gen(seed), 0.0)
        r = np.flatnonzero(o != b)
        hits += int(np.sum(counts[labels[o[r - 1]]] == 1))
        picks += len(r)
        same = r[counts[labels[o[r - 1]]] == 1]
        assert np.all(o[same] == o[same - 1])
    assert hits > 0 and picks > 0
    # the other images of a 4-image identity are all picked, each ~1/3 of the time
    ids = np.flatnonzero(labels == 3)
    seen = {int(i): 0 for i in ids}
    for seed in range(400):
        o = repeated_order(labels, _gen(seed), 0.99)
        b = repeated_order(labels, _gen(seed), 0.0)
        for j in np.flatnonzero((o != b) & (labels[o] == 3)):
            seen[int(o[j])] += 1
    total = sum(seen.values())
    assert total > 100 and min(seen.values()) > 0.15 * total


def test_repeated_order_bad_probability():
    for bad in (-0.1, 1.0, 1.5):
        with pytest.raises(ParameterError, match="repeat_prob"):
            repeated_order(np.arange(4), _gen(0), bad)
    with pytest.raises(ParameterError, match="repeat_prob"):
        _run(_toy(), repeat_prob=1.0)


def test_fit_uses_repeated_order():
    fs = _toy()
    seen = []

    def extra(batch):
        seen.append((batch["epoch"], batch["index"].numpy().copy()))
        return batch["embeddings"].sum() * 0.0, {}

    _, h1 = _run(fs, repeat_prob=0.4, extra_loss=extra)
    for epoch in range(3):
        want = repeated_order(fs.labels, _gen(1 * 100003 + epoch), 0.4)
        got = [idx for e, idx in seen if e == epoch]
        assert [sorted(g.tolist()) for g in got] == [sorted(want[b * 8:(b + 1) * 8].tolist()) for b in range(2)]
    _, h2 = _run(fs, repeat_prob=0.4)
    assert np.array_equal(h1.to_frame().loss.values, h2.to_frame().loss.values)
    _, h0 = _run(fs)
    assert not np.array_equal(h1.to_frame().loss.values, h0.to_frame().loss.values)


def test_random_hflip_mirrors_about_half_and_nothing_else():
    torch.manual_seed(0)
    x = torch.randint(0, 256, (400, 3, 6, 5), dtype=torch.uint8)
    y = random_hflip(x)
    same = (y == x).flatten(1).all(1)
    mirrored = (y == x.flip(-1)).flatten(1).all(1)
    assert bool((same | mirrored).all())  # every image is itself or its mirror image
    assert 0.4 < float(mirrored.float().mean()) < 0.6
    assert y.dtype == torch.uint8 and not torch.equal(x, y)
    before = x.clone()
    torch.manual_seed(0)
    a = random_hflip(x)
    torch.manual_seed(0)
    assert torch.equal(a, random_hflip(x))  # seeded: repeats exactly
    assert torch.equal(x, before)  # the input batch is left untouched


def test_checkpoint_path_is_keyed_by_the_whole_spec(tmp_path, monkeypatch):
    monkeypatch.setenv("FACESTUDY_CACHE", str(tmp_path))
    a = checkpoint_path("area", "smallcnn", {"lr": 0.1}, "datahash", 0)
    assert a == checkpoint_path("area", "smallcnn", {"lr": 0.1}, "datahash", 0)
    assert a.parent == tmp_path / "area" and a.suffix == ".pt"
    others = {checkpoint_path("area", "smallcnn", {"lr": 0.2}, "datahash", 0),
              checkpoint_path("area", "smallcnn", {"lr": 0.1}, "otherdata", 0),
              checkpoint_path("area", "smallcnn", {"lr": 0.1}, "datahash", 1)}
    assert a not in others and len(others) == 3
    assert checkpoint_path("other", "smallcnn", {"lr": 0.1}, "datahash", 0).parent == tmp_path / "other"

"""Chapter 5 tail distillation: re-initialised tails trained on cached trunk features, probes, helpers."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from facestudy import models
from facestudy.distill import DistillConfig, tail
from facestudy.errors import ParameterError


def tiny_teacher():
    torch.manual_seed(0)
    return models.create("mobilefacenet", embedding_dim=8, width=0.25, input_size=32).eval()


def tiny_features(model, n: int = 24, n_ids: int = 4):
    torch.manual_seed(1)
    x = torch.randint(0, 256, (n, 32, 32, 3), dtype=torch.uint8).numpy()
    out = model.features(x, ["conv_sep", "embedding"], batch_size=n)
    return out["conv_sep"].half(), out["embedding"].float(), np.arange(n) % n_ids


def test_reinit_is_seeded_and_changes_the_teachers_tail() -> None:
    m = tiny_teacher()
    a, b, c = (tail.reinit_(m.tail("conv_sep"), s) for s in (3, 3, 4))
    pa, pb, pc = (torch.cat([p.flatten() for p in t.parameters()]) for t in (a, b, c))
    assert torch.equal(pa, pb) and not torch.equal(pa, pc)
    own = torch.cat([p.flatten() for p in m.tail("conv_sep").parameters()])
    assert not torch.equal(pa, own)


def test_train_tail_repeats_and_records_probes() -> None:
    m = tiny_teacher()
    feats, emb, labels = tiny_features(m)
    cfg = DistillConfig(method="iled+rpsd", lambda_iled=40.0)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    a = tail.train_tail(m, "conv_sep", feats, labels, emb, cfg, steps=6, batch_size=8, lr=0.05, seed=2,
                        probe=10, snapshots=3)
    b = tail.train_tail(m, "conv_sep", feats, labels, emb, cfg, steps=6, batch_size=8, lr=0.05, seed=2,
                        probe=10, snapshots=3)
    assert np.allclose(a.history["cls_loss"], b.history["cls_loss"])  # same seed: same init and order
    assert {"step", "cls_loss", "iled", "rpsd", "cos_st", "iled_w_lt_half"} <= set(a.history.columns)
    assert sorted(a.snapshots) == [0, 2, 4, 6] and all(len(v) == 10 for v in a.snapshots.values())
    assert 0.0 <= a.unsaturated_share() <= 1.0 and a.steps == 6 and a.cpu_seconds >= 0
    # the teacher itself never moves (the tail is a copy)
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())
    e = tail.embed_tail(a.tail, feats)
    assert e.shape == emb.shape and torch.isfinite(e).all()
    none = tail.train_tail(m, "conv_sep", feats, labels, emb, DistillConfig(method="none"), steps=3,
                           batch_size=8, lr=0.05, seed=2, probe=4)
    assert "iled" not in none.history.columns and "cos_st" in none.history.columns
    with pytest.raises(ParameterError, match="same images"):
        tail.train_tail(m, "conv_sep", feats, labels[:5], emb, cfg, steps=2, batch_size=4, lr=0.1)


def test_train_tail_device_argument_keeps_the_seeded_run() -> None:
    # device= moves features, targets, tail, head and bank once; the batch order and the initialisation stay
    # on the CPU generator, so naming the device changes nothing on the CPU (and on a GPU only the arithmetic)
    m = tiny_teacher()
    feats, emb, labels = tiny_features(m)
    cfg = DistillConfig(method="iled+rpsd", lambda_iled=40.0)
    kw = dict(steps=5, batch_size=8, lr=0.05, seed=4, probe=6, snapshots=2)
    a = tail.train_tail(m, "conv_sep", feats, labels, emb, cfg, **kw)
    b = tail.train_tail(m, "conv_sep", feats, labels, emb, cfg, device="cpu", **kw)
    assert np.allclose(a.history["cls_loss"], b.history["cls_loss"])
    assert all(torch.equal(p, q) for p, q in zip(a.tail.parameters(), b.tail.parameters(), strict=True))


def test_teacher_tail_on_cached_features_reproduces_its_embedding() -> None:
    m = tiny_teacher()
    feats, emb, _ = tiny_features(m)
    own = m.tail("conv_sep").eval()
    got = tail.embed_tail(own, feats)  # fp16 features: close, not bit-equal
    cos = torch.nn.functional.cosine_similarity(got, emb, dim=1)
    assert float(cos.min()) > 0.999


def test_lowres_is_deterministic_uint8_and_blurs() -> None:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    name, fn = tail.lowres(8)
    y = fn(x)
    assert name == "lowres8-u8" and y.dtype == np.uint8 and y.shape == x.shape
    assert np.array_equal(y, fn(x))
    assert np.abs(np.diff(y.astype(float), axis=1)).mean() < np.abs(np.diff(x.astype(float), axis=1)).mean()
    with pytest.raises(ParameterError):
        tail.lowres(2)


def test_seeds_matrix_needs_every_seed() -> None:
    class R:
        def __init__(self, v):
            self.fold_accuracies = np.full(10, v)

    res = {("a", 0): R(0.5), ("a", 1): R(0.7)}
    assert tail.seeds_matrix(res, "a", [0, 1]).shape == (2, 10)
    with pytest.raises(ParameterError, match="seeds"):
        tail.seeds_matrix(res, "a", [0, 1, 2])

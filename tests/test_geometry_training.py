"""Tests of chapter 1's training, lattice and fine-tuning helpers (facestudy.geometry.finetune / lattices / world)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from facestudy.errors import ParameterError
from facestudy.geometry import finetune, lattices, world


def test_attribute_augment_is_seeded_and_keeps_layout():
    x = np.random.default_rng(0).integers(0, 256, (6, 3, 24, 24), dtype=np.uint8)
    a1 = finetune.AttributeAugment("hue", p=1.0, seed=3)(torch.from_numpy(x))
    a2 = finetune.AttributeAugment("hue", p=1.0, seed=3)(torch.from_numpy(x))
    assert isinstance(a1, torch.Tensor) and a1.shape == (6, 3, 24, 24) and a1.dtype == torch.uint8
    assert torch.equal(a1, a2)
    assert not torch.equal(a1, torch.from_numpy(x))
    none = finetune.AttributeAugment("roll", p=0.0, seed=0)(x.transpose(0, 2, 3, 1))
    assert np.array_equal(none, x.transpose(0, 2, 3, 1))
    with pytest.raises(ParameterError):
        finetune.AttributeAugment("sharpness")


def test_world_curves_with_a_fake_renderer():
    def render_many(who, settings):
        out = np.zeros((len(who), 8, 8, 3), np.uint8)
        for i, s in enumerate(settings):
            out[i] = int(100 + 50 * s["a"]) % 256
        return out

    images, table = lattices.world_curves(render_many, [0, 1], {"a": (0.0, 1.0, 0.2), "b": (0.0, 1.0, 0.2)},
                                          n_curves=3, seed=0, discrete=["b"])
    assert len(images) == len(table) == 2 * 2 * 3 * 3
    moving_a = table[table.attribute == "a"].pivot_table(index=["identity", "curve"], columns="step", values="value")
    assert np.allclose(moving_a[2] - moving_a[1], 0.2) and np.allclose(moving_a[1] - moving_a[0], 0.2)
    # along a "b" curve the rendered pixel (which only depends on a) stays constant
    b_rows = table[table.attribute == "b"].sort_values(["identity", "curve", "step"])["row"].to_numpy().reshape(-1, 3)
    assert all(len(np.unique(images[r][:, 0, 0, 0])) == 1 for r in b_rows)
    with pytest.raises(ParameterError):
        lattices.world_curves(render_many, [0], {"a": (0.0, 0.1, 0.2)}, n_curves=3)


def test_world_binary_attributes():
    meta = pd.DataFrame({"eyeglasses": [0.0, 1.0], "yaw": [-10.0, 20.0], "resolution": [1.0, 0.5]})
    t = world.world_binary_attributes(meta)
    assert list(t["Eyeglasses"]) == [-1, 1] and list(t["Yaw_Right"]) == [-1, 1] and list(t["Low_Res"]) == [-1, 1]
    with pytest.raises(ParameterError):
        world.world_binary_attributes(pd.DataFrame({"x": [1]}))


def test_paper_profile_missing_checkpoint_is_one_clear_error(tmp_path, monkeypatch):
    from facestudy.errors import DataError
    from facestudy.geometry import paper

    monkeypatch.setenv("FACESTUDY_DATA", str(tmp_path))
    with pytest.raises(DataError, match="arcface_iresnet50.pth"):
        paper.require(["arcface_r50"])
    with pytest.raises(ParameterError):
        paper.require(["facenet"])


def test_train_network_updates_every_layer_reinitialises_the_tail_and_loads_when_finished(tmp_path, monkeypatch):
    """G3's full-network arm: the trunk moves too (unlike a head), the tail starts from the seeded re-init,
    and a finished run is loaded from its checkpoint rather than trained again."""
    from facestudy import data
    from facestudy.geometry import heads
    from facestudy.models.mobilefacenet import MobileFaceNet

    monkeypatch.setenv("FACESTUDY_CACHE", str(tmp_path))
    torch.manual_seed(0)
    model = MobileFaceNet(embedding_dim=32).eval()
    rng = np.random.default_rng(0)
    fs = data.FaceSet(rng.integers(0, 256, (12, 112, 112, 3), dtype=np.uint8), np.repeat(np.arange(4), 3),
                      pd.DataFrame(index=range(12)), name="tiny-net-train", source="synthetic")
    net, info = heads.train_network(model, fs, "arcface", seed=1, epochs=1, batch_size=6, lr=0.05, max_steps=2)
    before, after = model.state_dict(), net.state_dict()
    trunk_key = next(k for k in before if k.startswith("blocks.") and k.endswith("weight"))
    assert not torch.equal(before[trunk_key], after[trunk_key])  # the loss reached the trunk
    assert not torch.equal(before["fc.weight"], after["fc.weight"])
    assert np.isfinite(info["final_loss"])
    again, _ = heads.train_network(model, fs, "arcface", seed=1, epochs=1, batch_size=6, lr=0.05, max_steps=2)
    assert all(torch.equal(after[k], again.state_dict()[k]) for k in after)
    with pytest.raises(ParameterError):
        heads.train_network(model, fs, "triplet")

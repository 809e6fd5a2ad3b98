"""Chapter 3's token model (facestudy.kprpe.hybrid): same start for every arm, keypoints used after
training, degradations move keypoints with the pixels, cached training."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from facestudy.errors import ParameterError
from facestudy.kprpe import hybrid as hy
from facestudy.kprpe.keypoints import template_keypoints

ARCH = dict(dim=16, depth=1, heads=2, mlp_ratio=2.0, embedding_dim=8)


def _tokens(n: int = 24, c: int = 6, seed: int = 0) -> hy.TokenSet:
    g = torch.Generator().manual_seed(seed)
    kp = template_keypoints(n) + np.random.default_rng(seed).normal(0, 0.05, (n, 5, 2)).astype(np.float32)
    return hy.TokenSet(torch.randn(n, c, 7, 7, generator=g).half(), kp, np.arange(n) % 4,
                       torch.zeros(n, 4))


def test_every_kind_starts_from_the_same_weights_and_output():
    x = torch.randn(3, 6, 7, 7)
    kp = torch.rand(3, 5, 2)
    outs = {}
    for kind in hy.HYBRID_KINDS:
        m = hy.make_hybrid(kind, 6, seed=3, **ARCH).eval()
        outs[kind] = m(x, kp if m.uses_keypoints else None)
    assert torch.allclose(outs["vit"], outs["irpe"], atol=1e-6)
    assert torch.allclose(outs["vit"], outs["kprpe"], atol=1e-6)
    with pytest.raises(ParameterError):
        hy.make_hybrid("cnn", 6)


def test_trained_kprpe_token_model_depends_on_its_keypoints_and_vit_does_not():
    ts = _tokens()
    recipe = dict(epochs=3, batch_size=8, lr=3e-3, warmup=0.5)
    m, losses, _ = hy.train_hybrid("kprpe", ts, ARCH, recipe, seed=0, cache=False)
    assert len(losses) == 9 and np.isfinite(losses).all()
    other = ts.keypoints + 0.1
    assert hy.keypoint_sensitivity(m, ts, other) > 1e-6  # exactly 0 before training
    v, _, _ = hy.train_hybrid("vit", ts, ARCH, recipe, seed=0, cache=False)
    assert hy.keypoint_sensitivity(v, ts, other) == 0.0


def test_train_hybrid_caches_by_spec(tmp_path, monkeypatch):
    monkeypatch.setenv("FACESTUDY_CACHE", str(tmp_path))
    ts = _tokens()
    recipe = dict(epochs=1, batch_size=8, lr=3e-3)
    m1, l1, s1 = hy.train_hybrid("irpe", ts, ARCH, recipe, seed=1)
    m2, l2, s2 = hy.train_hybrid("irpe", ts, ARCH, recipe, seed=1)
    assert s2 == 0.0 and l1 == l2
    x = ts.features[:4].float()
    assert torch.equal(m1.eval()(x), m2(x))


def test_degrade_moves_keypoints_with_the_pixels_and_scales_with_strength():
    img = np.zeros((1, 112, 112, 3), np.uint8)
    kp = np.array([[[0.3, 0.4], [0.7, 0.4], [0.5, 0.6], [0.35, 0.8], [0.65, 0.8]]], np.float32)
    for x, y in (kp[0] * 112).astype(int):
        img[0, y - 2:y + 3, x - 2:x + 3] = 255
    out, moved = hy.degrade(img, kp, "misaligned", seed=5, strength=1.0)
    for x, y in moved[0] * 112:  # each bright dot landed where its keypoint moved
        assert out[0, int(round(y)) - 1:int(round(y)) + 2, int(round(x)) - 1:int(round(x)) + 2].max() > 100
    same, kp0 = hy.degrade(img, kp, "misaligned", seed=5, strength=0.0)
    assert np.abs(kp0 - kp).max() < 1e-5
    _, far = hy.degrade(img, kp, "misaligned", seed=5, strength=2.0)
    assert np.abs(far - kp).mean() > np.abs(moved - kp).mean()
    low, kpl = hy.degrade(img, kp, "lowres", seed=5, sides=(14, 14))
    assert np.array_equal(kpl, kp) and low.shape == img.shape
    with pytest.raises(ParameterError):
        hy.degrade(img, kp, "foggy", seed=0)


def test_training_copy_flips_swap_left_and_right():
    n = 64
    imgs = np.zeros((n, 32, 32, 3), np.uint8)
    kp = template_keypoints(n)
    out, moved = hy.training_copy(imgs, kp, seed=0, strength=0.0, p_lowres=0.0, p_flip=0.5)
    assert out.shape == imgs.shape
    # strength 0: only flips; image-left eye always left of image-right eye
    assert (moved[:, 0, 0] < moved[:, 1, 0]).all()
    flipped = np.abs(moved[:, 0, 0] - kp[:, 0, 0]) > 1e-4
    assert 0 < flipped.sum() < n


def test_photo_templates_use_different_photos_of_one_identity():
    labels = np.repeat(np.arange(6), [5, 4, 3, 6, 4, 1])  # identities 2 and 5 have < 4 photos
    rows, tids, pairs = hy.photo_templates(labels, 10, seed=0)
    assert len(np.unique(rows)) == len(rows)  # no photo used twice
    for t in np.unique(tids):
        assert len(np.unique(labels[rows[tids == t]])) == 1
    ident = {int(t): int(labels[rows[tids == t]][0]) for t in np.unique(tids)}
    assert set(ident.values()) == {0, 1, 3, 4}
    for a, b, same in pairs[["a", "b", "same"]].itertuples(index=False):
        assert (ident[a] == ident[b]) == same
    assert pairs["same"].sum() == 4 and (~pairs["same"]).sum() == 4
    with pytest.raises(ParameterError):
        hy.photo_templates(np.arange(5), 3, seed=0)


def test_template_scores_landmark_fusion_downweights_a_bad_photo():
    f = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 0.0]])
    tids = np.array([0, 0, 1, 1])
    import pandas as pd

    pairs = pd.DataFrame({"a": [0], "b": [1], "same": [True], "fold": [0]})
    sc = hy.template_scores(f, tids, pairs, quality=np.array([1.0, 1e-6, 1.0, 1.0]))
    assert sc["landmark"][0] > sc["average"][0]
    assert sc["landmark"][0] == pytest.approx(1.0, abs=1e-5)


def test_vit_base_kprpe_parameter_count_is_the_papers():
    base, added = hy.vit_base_kprpe_parameters()
    assert added == (2 * 5 + 1) * 49 * 16 * 24 == 206_976
    assert round(100 * added / base, 2) == 0.18


def test_rpe_lr_mult_scales_only_the_position_encoding_step():
    ts = _tokens()
    moved = {}
    for mult in (0.0, 1.0):
        m = hy.make_hybrid("kprpe", 6, seed=0, **ARCH)
        from facestudy.losses import make_head

        head = make_head("adaface", ARCH["embedding_dim"], 4)
        w_other = m.head[0].weight.detach().clone()
        hy.fit_tokens(m, head, ts, epochs=1, batch_size=8, lr=3e-3, rpe_lr_mult=mult)
        moved[mult] = (float(m.rpe.offset_layer.weight.detach().abs().max()),
                       float((m.head[0].weight.detach() - w_other).abs().max()))
    assert moved[0.0][0] == 0.0 and moved[1.0][0] > 1e-4
    assert moved[0.0][1] > 1e-4 and moved[1.0][1] > 1e-4


def test_attention_knockout_removes_the_branch_or_flattens_the_map_and_restores():
    from facestudy.models.vit import attention_knockout

    x = torch.randn(3, 6, 7, 7)
    kp = torch.rand(3, 5, 2)
    m = hy.make_hybrid("kprpe", 6, seed=1, **ARCH).eval()
    torch.nn.init.normal_(m.rpe.offset_layer.weight, std=1.0)  # a bias that depends on the keypoints
    intact = m(x, kp)
    with torch.no_grad():
        # "zero" == the same model whose attention output projection is zero
        ref = copy.deepcopy(m)
        for blk in ref.blocks:
            blk.attn.proj.weight.zero_()
            blk.attn.proj.bias.zero_()
        with attention_knockout(m, "zero"):
            assert torch.allclose(m(x, kp), ref(x, kp), atol=1e-6)
        # "uniform" == queries zeroed (all logits 0) and no position bias: keypoints no longer matter
        ref = copy.deepcopy(m)
        ref.rpe.offset_layer.weight.zero_()
        ref.rpe.offset_layer.bias.zero_()
        for blk in ref.blocks:
            d = blk.attn.qkv.weight.shape[1]
            blk.attn.qkv.weight[:d].zero_()
        with attention_knockout(m, "uniform"):
            out = m(x, kp)
            assert torch.allclose(out, ref(x, kp), atol=1e-5)
            assert torch.allclose(out, m(x, torch.rand(3, 5, 2)), atol=1e-6)
            assert not torch.allclose(out, intact, atol=1e-4)
    assert torch.equal(m(x, kp), intact)  # restored
    with pytest.raises(RuntimeError), attention_knockout(m, "zero"):
        raise RuntimeError("boom")
    assert torch.equal(m(x, kp), intact)  # restored after an error too
    with pytest.raises(ParameterError, match="mode"), attention_knockout(m, "half"):
        pass


def test_landmarks_or_template_normalises_and_fills_missing_faces():
    from facestudy.kprpe import landmarks_or_template

    lm = np.full((2, 5, 2), np.nan, np.float32)
    lm[0] = [[40, 50], [70, 50], [56, 65], [44, 80], [68, 80]]
    kp = landmarks_or_template(lm, 112)
    assert np.allclose(kp[0], lm[0] / 112) and np.allclose(kp[1], template_keypoints(1)[0])
    assert np.allclose(landmarks_or_template(lm[:1], 224, 112)[0], lm[0] / [224, 112])
    with pytest.raises(ParameterError):
        landmarks_or_template(None, 112)

"""Chapter 3 (KP-RPE): ViT hook, bucketing, zero-init equivalence, gradients, keypoint transforms."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from facestudy.errors import ParameterError
from facestudy.kprpe import (
    CTX_TYPES,
    IRPE,
    KPRPE,
    affine_theta,
    apply_condition,
    augment_batch,
    bucket_table,
    flip_keypoints,
    fuse_templates,
    landmark_quality,
    noisy_keypoints,
    normalize_keypoints,
    piecewise_index,
    relative_keypoints,
    template_keypoints,
    warp_images,
    warp_keypoints,
)
from facestudy.models.vit import build_vit, count_parameters

SMALL = dict(input_size=32, patch=8, dim=32, depth=3, heads=4, mlp_ratio=2.0, embedding_dim=16)


def _inputs(b: int = 3, size: int = 32, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 3, size, size, generator=g), torch.rand(b, 5, 2, generator=g)


def _piecewise_reference(x: int) -> int:
    """The released ratio-1.9 map written out by hand (METHODS.md §1.2)."""
    a = abs(x)
    mag = a if a <= 1 else (2 if a <= 3 else 3)
    return int(np.sign(x)) * mag


@pytest.mark.parametrize("grid", [(14, 14), (8, 8), (4, 6), (1, 5)])
def test_bucket_table_matches_piecewise_definition_for_every_offset(grid):
    table = bucket_table(grid).numpy()
    gh, gw = grid
    for i in range(gh * gw):
        for j in range(gh * gw):
            dr = i // gw - j // gw
            dc = i % gw - j % gw
            assert table[i, j] == 7 * (_piecewise_reference(dr) + 3) + (_piecewise_reference(dc) + 3)


def test_piecewise_formula_range_and_49_buckets():
    xs = np.arange(-40, 41)
    g = piecewise_index(xs, 1.9, 3.8, 15.2)
    assert [int(v) for v in g] == [_piecewise_reference(int(x)) for x in xs]
    assert len(np.unique(bucket_table(14))) == 49


@pytest.mark.parametrize("ctx_type", CTX_TYPES)
def test_kprpe_at_init_equals_plain_vit(ctx_type):
    x, kp = _inputs()
    torch.manual_seed(0)
    plain = build_vit(**SMALL).eval()
    torch.manual_seed(0)
    kpr = build_vit(**SMALL, rpe="kprpe", rpe_kwargs={"ctx_type": ctx_type}).eval()
    assert torch.equal(plain(x), kpr(x, kp))


def test_irpe_at_init_equals_plain_vit():
    x, _ = _inputs()
    torch.manual_seed(0)
    plain = build_vit(**SMALL).eval()
    torch.manual_seed(0)
    irpe = build_vit(**SMALL, rpe="irpe").eval()
    assert torch.equal(plain(x), irpe(x))


@pytest.mark.parametrize("rpe", ["kprpe", "irpe"])
def test_gradients_reach_offset_weights(rpe):
    x, kp = _inputs()
    torch.manual_seed(0)
    model = build_vit(**SMALL, rpe=rpe).train()
    model(x, kp).pow(2).sum().backward()
    params = [model.rpe.offset_layer.weight] if rpe == "kprpe" else list(model.rpe.tables.values())
    for p in params:
        assert p.grad is not None and p.grad.abs().sum() > 0


def test_trained_offsets_change_output_and_depend_on_keypoints():
    x, kp = _inputs()
    model = build_vit(**SMALL, rpe="kprpe").eval()
    with torch.no_grad():
        model.rpe.offset_layer.weight.normal_(0, 1.0)
    y1, y2 = model(x, kp), model(x, kp.flip(0))
    assert not torch.allclose(y1[0], y2[0])


def test_splithead_unshared_slice_layout():
    """Layer l, head h uses output slice (l*H + h)*49 + bucket (METHODS.md §1.3)."""
    H, L = 2, 3
    m = KPRPE(grid=4, heads=H, depth=L)
    with torch.no_grad():
        m.offset_layer.bias.copy_(torch.arange(49 * H * L, dtype=torch.float32))
    tables = m.tables(torch.rand(1, 5, 2))
    for l in range(L):
        for h in range(H):
            assert torch.equal(tables[l][0, h, 0], torch.arange(49.0) + (l * H + h) * 49)


def test_relative_keypoints_layout():
    kp = torch.tensor([[[0.1, 0.2], [0.3, 0.4], [0.5, 0.5], [0.2, 0.8], [0.7, 0.9]]])
    d = relative_keypoints(kp, (2, 4))  # token 5 = row 1, col 1: centre (u, v) = (1.5/4, 1.5/2)
    assert d.shape == (1, 8, 10)
    assert torch.allclose(d[0, 5, :4], torch.tensor([0.375 - 0.1, 0.75 - 0.2, 0.375 - 0.3, 0.75 - 0.4]))


def test_kprpe_needs_keypoints_and_validates():
    model = build_vit(**SMALL, rpe="kprpe")
    with pytest.raises(ParameterError, match="keypoints"):
        model(torch.zeros(1, 3, 32, 32))
    with pytest.raises(ParameterError, match="ctx_type"):
        build_vit(**SMALL, rpe="kprpe", rpe_kwargs={"ctx_type": "nope"})
    with pytest.raises(ParameterError, match="multiple of patch"):
        build_vit(input_size=30, patch=8)


def test_keypoint_subset_parameters():
    full = KPRPE(grid=8, heads=4, depth=3)
    eyes = KPRPE(grid=8, heads=4, depth=3, keypoint_indices=(0, 1))
    assert full.offset_layer.weight.shape == (49 * 12, 10)
    assert eyes.offset_layer.weight.shape == (49 * 12, 4)


def test_vit_shapes_and_uint8_path():
    model = build_vit(**SMALL).eval()
    imgs = np.random.default_rng(0).integers(0, 255, size=(5, 48, 48, 3), dtype=np.uint8)
    e = model.embed(imgs, batch_size=2, flip=True)
    assert e.shape == (5, 16)
    assert torch.allclose(e.norm(dim=1), torch.ones(5), atol=1e-5)
    assert count_parameters(model) > 0
    assert model.features(imgs[:2], layers=("blocks.1", "embedding"))["blocks.1"].shape == (2, 16, 32)
    kpr = build_vit(**SMALL, rpe="kprpe")
    assert kpr.uses_keypoints and not model.uses_keypoints
    lm = np.repeat(np.array([[[17, 20], [31, 20], [24, 28], [18, 36], [30, 36]]], np.float32), 5, 0)
    assert kpr.embed(imgs, keypoints=lm, flip=True).shape == (5, 16)


def _blob_image(points_px: np.ndarray, size: int) -> torch.Tensor:
    """One channel per keypoint: a narrow Gaussian at each continuous (x, y) position (pixel i spans
    [i, i + 1], so its centre is i + 0.5)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    ch = [np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * 1.2 ** 2)) for x, y in points_px]
    return torch.from_numpy(np.stack(ch))[None]


def _centroids(img: torch.Tensor) -> np.ndarray:
    size = img.shape[-1]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    out = []
    for c in img[0].numpy():
        w = c / c.sum()
        out.append([(w * xx).sum(), (w * yy).sum()])
    return np.array(out)


@pytest.mark.parametrize("flip", [False, True])
def test_keypoint_transform_agrees_with_image_transform(flip):
    size = 64
    pts = np.array([[24.0, 26.0], [40.0, 25.0], [32.0, 36.0], [26.0, 46.0], [38.0, 47.0]])
    img = _blob_image(pts, size)
    theta = affine_theta(1.1, 15.0, 0.08, -0.06, flip=[flip])
    warped = warp_images(img, theta)
    kp = torch.from_numpy(normalize_keypoints(pts[None], size))
    moved = warp_keypoints(kp, theta, flipped=[flip])[0].numpy() * size
    found = _centroids(warped)  # channel c holds original keypoint c
    if flip:  # left/right swapped: moved[0] is the (new) image-left eye = original right eye (channel 1)
        found = found[[1, 0, 2, 4, 3]]
    assert np.abs(found - moved).max() < 0.35
    if flip:
        assert moved[0, 0] < moved[1, 0] and moved[3, 0] < moved[4, 0]


def test_flip_keypoints_swaps_left_right():
    kp = template_keypoints(1)
    f = flip_keypoints(kp)
    assert f[0, 0, 0] < f[0, 1, 0]
    assert np.allclose(f[0, 0, 0], 1 - kp[0, 1, 0]) and np.allclose(f[0, 2, 0], 1 - kp[0, 2, 0])
    assert np.allclose(flip_keypoints(f), kp)


def test_conditions_are_reproducible_and_move_keypoints():
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 255, size=(4, 64, 64, 3), dtype=np.uint8)
    kp = template_keypoints(4)
    a, ka = apply_condition(imgs, "misaligned", seed=3, keypoints=kp, indices=[10, 11, 12, 13])
    b, kb = apply_condition(imgs[1:2], "misaligned", seed=3, keypoints=kp[1:2], indices=[11])
    assert np.array_equal(a[1:2], b) and np.allclose(ka[1:2], kb)
    assert np.abs(ka - kp).max() > 0.01
    low, _ = apply_condition(imgs, "lowres", seed=3)
    assert low.shape == imgs.shape and not np.array_equal(low, imgs)
    with pytest.raises(ParameterError, match="condition"):
        apply_condition(imgs, "blurry", seed=0)
    assert np.allclose(noisy_keypoints(kp, 0.0, 1), kp)


def test_augment_batch_moves_keypoints_with_image():
    size = 64
    pts = np.array([[24.0, 26.0], [40.0, 25.0], [32.0, 36.0], [26.0, 46.0], [38.0, 47.0]])
    img = _blob_image(pts, size).repeat(6, 1, 1, 1)[:, :3]  # channels: eye, eye, nose
    kp = torch.from_numpy(normalize_keypoints(np.repeat(pts[None], 6, 0), size))
    g = torch.Generator().manual_seed(0)
    from facestudy.kprpe import AugmentSpec

    spec = AugmentSpec(p_cutout=0, p_blur=0, p_photometric=0, p_rotate=1.0)
    x, k = augment_batch(img, kp, g, spec)
    assert x.shape == img.shape and k.shape == kp.shape
    nose = _centroids(x[:1, 2:3])[0]
    assert np.abs(nose - k[0, 2].numpy() * size).max() < 0.35


def test_landmark_quality_and_fusion():
    kp = template_keypoints(3)
    kp[2] += 0.3  # far from the template: quality ~ 0
    q = landmark_quality(kp, det_score=[1.0, 0.5, 1.0])
    assert np.allclose(q[:2], [1.0, 0.5], atol=1e-5) and q[2] == pytest.approx(1e-6)
    feats = torch.tensor([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0]])
    t, ids = fuse_templates(feats, [7, 7, 7], "landmark", quality=q)
    assert t.shape == (1, 2) and t[0, 0] > 0.99
    t_avg, _ = fuse_templates(feats, [7, 7, 7], "average")
    assert t_avg[0, 1] > t[0, 1]
    with pytest.raises(ParameterError):
        fuse_templates(feats, [7, 7, 7], "landmark")


def test_irpe_variants_run():
    x, _ = _inputs(2)
    m = IRPE(grid=4, head_dim=8, heads=4, depth=3, on="qkv", shared_head=False)
    model = build_vit(**SMALL, rpe=m)
    with torch.no_grad():
        for t in m.tables.values():
            t.normal_()
    assert model(x).shape == (2, 16)


def test_registry_builds_the_chapter_vit():
    from facestudy import models

    m = models.create("vit", **SMALL, rpe="kprpe")
    assert isinstance(m, models.FaceModel) and m.uses_keypoints
    assert m.rpe.offset_layer.weight.shape == (49 * 4 * 3, 10)


@pytest.mark.realdata
def test_mtcnn_keypoints_follow_the_misalignment():
    """On real LFW faces, MTCNN keypoints of the misaligned image match the aligned landmarks moved by the
    same transform (to a few % of the side), i.e. what KP-RPE receives is where the face now is."""
    from facestudy import data

    if not (data.available("lfw") and data.available("mtcnn")):
        pytest.skip("LFW / MTCNN weights absent (set FACESTUDY_DATA)")
    from facestudy.kprpe.experiment import detect_keypoints

    faces, _ = data.lfw_pairs(n_per_fold=2)
    faces = faces.subset(np.arange(4))
    kp = faces.landmarks / 112.0
    img, moved = apply_condition(faces.images, "misaligned", seed=5, keypoints=kp)
    det = detect_keypoints(img, key="test", cache=False)
    assert det.found.all()
    assert np.abs(det.keypoints - moved).max() < 0.06

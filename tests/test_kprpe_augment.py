"""Chapter 3's §1.7 training augmentation: photometric RandAugment, CoarseDropout, blur kinds, RNG contract."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from facestudy.errors import ParameterError
from facestudy.kprpe.keypoints import (
    PHOTOMETRIC_OPS,
    AugmentSpec,
    adjust_brightness,
    adjust_contrast,
    adjust_saturation,
    adjust_sharpness,
    apply_photometric,
    augment_batch,
    coarse_dropout_mask,
    equalize,
    grayscale,
    photometric_op,
    sample_randaug,
    template_keypoints,
)

SIGNED = (adjust_brightness, adjust_saturation, adjust_contrast, adjust_sharpness)
NO_GEOMETRY = dict(scale=(1.0, 1.0), p_rotate=0.0, p_flip=0.0, translation=0.0)


def _batch(b=8, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(b, 3, size, size, generator=g)
    kp = torch.from_numpy(template_keypoints(b))
    return x, kp


def test_signed_ops_at_magnitude_zero_are_the_identity():
    x, _ = _batch()
    one = torch.ones(len(x))
    for fn in SIGNED:
        assert torch.equal(fn(x, one), x), fn.__name__
    # through the dispatcher: every op with factor 1 (Identity included) except the two magnitude-free ones
    for o, name in enumerate(PHOTOMETRIC_OPS):
        out = apply_photometric(x, torch.full((len(x), 1), o), torch.ones(len(x), 1))
        if name in ("equalize", "grayscale"):
            assert not torch.equal(out, x)  # documented exception: they ignore the magnitude
        else:
            assert torch.equal(out, x), name
    # ... but each is the identity on its fixed points: a gray image, a flat 256-level histogram
    gray = x[:, :1].expand_as(x)
    assert torch.allclose(grayscale(gray), gray, atol=1e-4)
    flat = (torch.arange(64 * 64) // 16).float().div(255).view(1, 1, 64, 64).expand(1, 3, 64, 64)
    assert torch.equal(equalize(flat), flat)


def test_signed_ops_move_the_image_the_right_way():
    x, _ = _batch()
    up, down = torch.full((len(x),), 1.5), torch.full((len(x),), 0.5)
    assert adjust_brightness(x, down).mean() < x.mean() - 0.2
    assert adjust_contrast(x, down).std() < 0.6 * x.std()
    sat = adjust_saturation(x, torch.zeros(len(x)))
    assert torch.allclose(sat, grayscale(x))
    sharp, soft = adjust_sharpness(x, up), adjust_sharpness(x, down)

    def tv(y):
        return (y[..., 1:, :] - y[..., :-1, :]).abs().mean()

    assert tv(sharp) > tv(x) > tv(soft)


def test_batched_photometric_equals_per_image_ops():
    x, _ = _batch(24, 16, seed=3)
    spec = AugmentSpec()
    op, factor = sample_randaug(torch.rand(24, 3, spec.randaug_redraws + 3, generator=torch.Generator().manual_seed(1)))
    op[:7, 0] = torch.arange(7)  # every op appears at least once
    out = apply_photometric(x, op, factor)
    for i in range(len(x)):
        y = x[i:i + 1]
        for r in range(op.shape[1]):
            y = photometric_op(y, PHOTOMETRIC_OPS[int(op[i, r])], factor[i:i + 1, r])
        assert torch.allclose(out[i:i + 1], y, atol=1e-6), i
    with pytest.raises(ParameterError, match="photometric op"):
        photometric_op(x, "solarize", factor[:, 0])


def test_grayscale_channels_equal_and_range():
    x, _ = _batch()
    g = grayscale(x)
    assert torch.equal(g[:, 0], g[:, 1]) and torch.equal(g[:, 1], g[:, 2])
    for fn in SIGNED:
        for f in (0.1, 0.34, 1.66, 1.9):
            y = fn(x, torch.full((len(x),), f))
            assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0, (fn.__name__, f)


def test_equalize_flattens_a_skewed_ramp():
    ramp = torch.linspace(0, 1, 64 * 64).pow(2).view(1, 1, 64, 64).expand(2, 3, 64, 64).contiguous()
    out = equalize(ramp)
    assert out.shape == ramp.shape and float(out.min()) >= 0 and float(out.max()) <= 1
    h_in = torch.histc(ramp[0, 0], bins=8, min=0, max=1) / ramp[0, 0].numel()
    h_out = torch.histc(out[0, 0], bins=8, min=0, max=1) / out[0, 0].numel()
    assert float(h_in.max()) > 0.3  # the input is far from flat
    assert float((h_out - 1 / 8).abs().max()) < 0.02
    assert torch.equal(out[0], out[1]) and torch.equal(out[0, 0], out[0, 2])  # per channel, per image
    const = torch.full((1, 3, 8, 8), 0.4)
    assert torch.equal(equalize(const), const)  # a single level is left alone


def test_randaug_sampling_rule():
    spec = AugmentSpec()
    g = torch.Generator().manual_seed(0)
    op, factor = sample_randaug(torch.rand(100_000, 2, spec.randaug_redraws + 3, generator=g), spec)
    freq = torch.bincount(op.flatten(), minlength=len(PHOTOMETRIC_OPS)).float() / op.numel()
    rare = (2 / 7) ** 3 / 2
    for o, name in enumerate(PHOTOMETRIC_OPS):
        want = rare if name in ("equalize", "grayscale") else 67 / 343
        assert abs(float(freq[o]) - want) < 0.003, (name, float(freq[o]), want)
    signed = torch.isin(op, torch.tensor([1, 2, 3, 4]))
    mag = (factor[signed] - 1).abs()
    bins = torch.round(mag / (0.9 / 30)).long()
    assert torch.allclose(mag, bins.float() * 0.03, atol=1e-6)
    assert int(bins.min()) == 5 and int(bins.max()) == 22
    assert abs(float((factor[signed] > 1).float().mean()) - 0.5) < 0.01
    assert torch.equal(factor[~signed], torch.ones(int((~signed).sum())))


def test_photometric_and_blur_leave_keypoints_alone_and_stay_in_range():
    x, kp = _batch(16, 32)
    plain = AugmentSpec(p_cutout=0, p_blur=0, p_photometric=0)
    heavy = AugmentSpec(p_cutout=1, p_blur=1, p_photometric=1)
    xa, ka = augment_batch(x, kp, torch.Generator().manual_seed(4), plain)
    xb, kb = augment_batch(x, kp, torch.Generator().manual_seed(4), heavy)
    assert torch.equal(ka, kb) and not torch.equal(xa, xb)
    assert float(xb.min()) >= 0 and float(xb.max()) <= 1
    xc, kc = augment_batch(x, kp, torch.Generator().manual_seed(4), AugmentSpec(**NO_GEOMETRY, p_blur=1))
    assert torch.allclose(kc, kp, atol=1e-6)


def test_determinism_and_global_rng_contract():
    x, kp = _batch()
    spec = AugmentSpec(p_cutout=0.5, p_blur=0.5)
    a = augment_batch(x, kp, torch.Generator().manual_seed(9), spec)
    b = augment_batch(x, kp, torch.Generator().manual_seed(9), spec)
    c = augment_batch(x, kp, torch.Generator().manual_seed(10), spec)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and not torch.equal(a[0], c[0])
    torch.manual_seed(3)
    d = augment_batch(x, kp, None, spec)
    torch.manual_seed(3)
    e = augment_batch(x, kp, None, spec)
    assert torch.equal(d[0], e[0]) and torch.equal(d[1], e[1])


def test_coarse_dropout_zeroes_only_inside_holes():
    size = 64
    side = round(16 / 112 * size)
    x = torch.ones(12, 3, size, size)
    kp = torch.from_numpy(template_keypoints(12))
    spec = AugmentSpec(**NO_GEOMETRY, p_cutout=1, p_coarse_dropout=1, p_blur=0, p_photometric=0)
    out, _ = augment_batch(x, kp, torch.Generator().manual_seed(1), spec)
    zero = (out == 0).all(1).float()[:, None]  # (B, 1, H, W)
    assert torch.equal((out == 0).any(1), (out == 0).all(1))  # holes cut all channels
    assert float(out[out != 0].min()) > 0.99  # the rest is untouched
    # every zeroed pixel lies in a fully zeroed side × side square, and every such square is zeroed
    full = F.avg_pool2d(zero, side, stride=1) > 1 - 1e-6
    covered = F.max_pool2d(F.pad(full.float(), (side - 1,) * 4), side, stride=1)
    assert torch.equal(covered, zero)
    n_zero = zero.sum(dim=(1, 2, 3))
    assert float(n_zero.min()) >= side * side and float(n_zero.max()) <= 20 * side * side
    # the mask itself: hole count, position, size
    hole_u = torch.zeros(2, 20, 2)
    hole_u[0, 0] = torch.tensor([0.5, 0.25])
    m = coarse_dropout_mask(torch.tensor([1, 0]), hole_u, size, size)
    assert bool(m[1].all()) and int((~m[0]).sum()) == side * side
    ys, xs = torch.nonzero(~m[0], as_tuple=True)
    assert int(ys.min()) == math.floor(0.5 * (size - side + 1))
    assert int(xs.min()) == math.floor(0.25 * (size - side + 1))


def test_keep_region_cutout_and_blur_kinds():
    x, kp = _batch(16, 32)
    spec = AugmentSpec(**NO_GEOMETRY, p_cutout=1, p_coarse_dropout=0, p_blur=0, p_photometric=0)
    out, _ = augment_batch(x, kp, torch.Generator().manual_seed(2), spec)
    for img in out:
        kept = (img != 0).any(0)
        rows, cols = torch.nonzero(kept.any(1)).flatten(), torch.nonzero(kept.any(0)).flatten()
        box = kept[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
        assert bool(box.all()) and int(kept.sum()) >= 0.2 * 32 * 32 * 0.8  # one filled rectangle

    def tv(y):
        return (y[..., 1:, :] - y[..., :-1, :]).abs().mean()

    for split in ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)):
        s = AugmentSpec(**NO_GEOMETRY, p_cutout=0, p_blur=1, p_photometric=0, blur_split=split)
        ref, _ = augment_batch(x, kp, torch.Generator().manual_seed(5), AugmentSpec(**NO_GEOMETRY, p_cutout=0,
                                                                                     p_blur=0, p_photometric=0))
        y, _ = augment_batch(x, kp, torch.Generator().manual_seed(5), s)
        assert float(y.min()) >= 0 and float(y.max()) <= 1
        assert tv(y) < 0.9 * tv(ref), split


def test_spec_validation():
    with pytest.raises(ParameterError, match="p_photometric"):
        AugmentSpec(p_photometric=1.5)
    with pytest.raises(ParameterError, match="blur_split"):
        AugmentSpec(blur_split=(0.5, 0.1, 0.1))
    with pytest.raises(ParameterError, match="randaug_bin_range"):
        AugmentSpec(randaug_bin_range=(5, 40))
    with pytest.raises(ParameterError, match="dropout_holes"):
        AugmentSpec(dropout_holes=(20, 12))


def test_augment_spec_from_profile_overrides():
    from facestudy.kprpe import augment_spec

    assert augment_spec({}) == AugmentSpec() and augment_spec(None) == AugmentSpec()
    mild = augment_spec({"scale": [0.9, 1.1], "p_cutout": 0.0})
    assert mild.scale == (0.9, 1.1) and mild.p_cutout == 0.0 and mild.p_blur == AugmentSpec().p_blur
    with pytest.raises(ParameterError, match="p_cutot.*valid: scale"):
        augment_spec({"p_cutot": 0.0})
    with pytest.raises(ParameterError, match="p_blur"):
        augment_spec({"p_blur": 2.0})

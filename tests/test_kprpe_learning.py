"""Chapter 3 (KP-RPE): one optimiser step through the real trainer makes the model use its keypoints.

The fresh build measured a keypoint sensitivity of 4.5e-9 for the trained KP-RPE ViT. Weight decay on a
zero-initialised projection, a detach, a frozen parameter group or a missing gradient would all show as
"the output does not depend on the keypoints"; these tests fail on any of them.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from facestudy.data import LANDMARK_COLUMNS, FaceSet
from facestudy.kprpe import KeypointAugment, augment_spec
from facestudy.losses import make_head
from facestudy.models.vit import build_vit
from facestudy.train import fit

ARCH = dict(input_size=32, patch=8, dim=32, depth=2, heads=2, mlp_ratio=2.0, embedding_dim=16)


def _faceset(n: int = 16, size: int = 32, seed: int = 0) -> FaceSet:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    lm = (np.array([[0.34, 0.46], [0.66, 0.46], [0.5, 0.64], [0.37, 0.82], [0.63, 0.82]])[None]
          + rng.normal(0, 0.03, (n, 5, 2))) * size
    meta = pd.DataFrame(lm.reshape(n, 10), columns=LANDMARK_COLUMNS)
    return FaceSet(images, np.arange(n) % 4, meta, name="kp-test", source="synthetic")


def _kp_sensitivity(model, x, kp_a, kp_b) -> float:
    """Relative L2 change of the output when the keypoints change (first order, unlike 1 - cos, whose
    float32 resolution is ~1e-8 and which is quadratic in the change)."""
    model.eval()
    with torch.no_grad():
        ea, eb = model(x, kp_a), model(x, kp_b)
    return float((ea - eb).norm() / ea.norm())


def test_one_trainer_step_moves_the_projection_and_makes_the_output_depend_on_keypoints():
    torch.manual_seed(0)
    model = build_vit(**ARCH, rpe="kprpe")
    head = make_head("adaface", ARCH["embedding_dim"], 4)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(4, 3, 32, 32, generator=g)
    kp_a = torch.rand(4, 5, 2, generator=g) * 0.5 + 0.25
    kp_b = torch.rand(4, 5, 2, generator=g) * 0.5 + 0.25
    assert _kp_sensitivity(model, x, kp_a, kp_b) == 0.0  # zero-initialised: exactly the plain ViT
    w0 = model.rpe.offset_layer.weight.detach().clone()
    # the chapter's recipe: AdamW (weight decay 0.05), keypoint-consistent augmentation, grad clipping
    fit(model, head, _faceset(), epochs=1, batch_size=16, lr=2e-3, device="cpu", optimizer="adamw",
        augment=KeypointAugment(augment_spec({})), grad_clip=5.0, max_steps=1, progress=False)
    w1 = model.rpe.offset_layer.weight.detach()
    # Adam's first step moves every parameter with a non-zero gradient by ~lr: the projection must move
    assert float((w1 - w0).abs().max()) > 1e-4
    assert float((model.rpe.offset_layer.bias.detach()).abs().max()) > 1e-4
    # identical computations differ by exactly 0; one AdamW step at lr 2e-3 moves the output by ~1e-5
    # relative (the tiny trunc-normal(0.02) init of values/projections damps a ~2e-3-logit bias change)
    assert _kp_sensitivity(model, x, kp_a, kp_b) > 1e-6


def test_keypoint_projection_gets_a_gradient_and_is_in_the_optimised_parameters():
    torch.manual_seed(0)
    model = build_vit(**ARCH, rpe="kprpe")
    with torch.no_grad():  # away from zero so that the gradient reaches every head/layer slice
        for p in model.rpe.parameters():
            p.normal_(0, 0.05)
    g = torch.Generator().manual_seed(4)
    x, kp = torch.randn(3, 3, 32, 32, generator=g), torch.rand(3, 5, 2, generator=g)
    model.train()
    model(x, kp).pow(2).sum().backward()
    w = model.rpe.offset_layer.weight
    assert w.requires_grad and w.grad is not None
    assert float(w.grad.abs().sum()) > 0
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {"rpe.net.weight", "rpe.net.bias"} <= names


def test_trained_projection_is_not_decayed_back_to_zero_over_steps():
    """Many steps with a constant-ish gradient: the projection grows rather than being decayed to 0."""
    torch.manual_seed(0)
    model = build_vit(**ARCH, rpe="kprpe")
    head = make_head("adaface", ARCH["embedding_dim"], 4)
    fit(model, head, _faceset(32), epochs=3, batch_size=16, lr=2e-3, device="cpu", optimizer="adamw",
        augment=KeypointAugment(augment_spec({})), grad_clip=5.0, progress=False)
    assert float(model.rpe.offset_layer.weight.detach().abs().max()) > 2e-3

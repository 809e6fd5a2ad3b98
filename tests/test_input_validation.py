"""Wrong inputs to embed / features / align / detect get one clear ParameterError (issue 19, items 2 and 6),
and the fast embedding path gives the eager embeddings while features() keeps the un-fused layers (issue 21)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import facestudy.data as D
from facestudy import models
from facestudy.errors import ParameterError
from facestudy.models import fast


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    m = models.create("mobilefacenet", embedding_dim=32, width=0.25, input_size=32)
    # non-trivial BatchNorm statistics, so folding has something to fold
    for mod in m.modules():
        if isinstance(mod, (torch.nn.BatchNorm2d, torch.nn.BatchNorm1d)):
            mod.running_mean.uniform_(-0.2, 0.2)
            mod.running_var.uniform_(0.5, 2.0)
            mod.weight.data.uniform_(0.5, 1.5)
            mod.bias.data.uniform_(-0.1, 0.1)
    return m.eval()


IMGS = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)


@pytest.mark.parametrize("bad, words", [
    (IMGS.astype(np.float32), "float images must be in 0..1; pass uint8 or divide by 255"),
    (np.full((2, 32, 32, 3), np.nan, np.float32), "NaN"),
    (IMGS[..., 0], "grayscale"),
    (IMGS[0, ..., 0], "grayscale"),
    (np.zeros((3, 32, 32), np.uint8), "ambiguous"),
    (IMGS[..., :1], "one channel"),
    (IMGS.astype(np.int64), "uint8 (0..255) or float (0..1)"),
    (IMGS.tolist(), "numpy array or torch tensor"),
])
def test_embed_and_features_refuse_bad_images(net, bad, words):
    with pytest.raises(ParameterError, match=words.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        net.embed(bad)
    if isinstance(bad, np.ndarray):
        with pytest.raises(ParameterError):
            net.features(bad, ["conv_sep"])


def test_float_in_0_1_equals_uint8_and_single_image(net):
    a = net.embed(IMGS)
    b = net.embed(torch.from_numpy(IMGS.astype(np.float32) / 255.0))
    assert torch.allclose(a, b, atol=1e-5)
    assert torch.allclose(net.embed(IMGS[0]), a[:1], atol=1e-5)  # one (H, W, 3) image


def test_nan_keypoints_refused(net):
    with pytest.raises(ParameterError, match="NaN"):
        net.embed(IMGS, keypoints=np.full((4, 5, 2), np.nan))


def test_fast_embed_matches_eager_and_features_stay_unfused(net):
    eager = torch.nn.functional.normalize(net(net.preprocess(IMGS)).detach(), dim=1)
    fastm = net.inference_module()
    assert fastm is not net and not any(isinstance(m, torch.nn.BatchNorm2d) for m in fastm.modules())
    e = net.embed(IMGS, flip=True)
    e_eager = torch.nn.functional.normalize(
        net(net.preprocess(IMGS)).detach() + net(net.preprocess(IMGS).flip(3)).detach(), dim=1)
    assert torch.nn.functional.cosine_similarity(e, e_eager).min() > 0.99999
    assert torch.nn.functional.cosine_similarity(net.embed(IMGS), eager).min() > 0.99999
    # features() reads the model itself: BatchNorms still there, outputs = the un-fused layer outputs
    f = net.features(IMGS, ["conv_sep.bn", "blocks.3", "embedding"])
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())
    store = {}
    with torch.no_grad(), net.hooks(["conv_sep.bn"], store):
        net(net.preprocess(IMGS))
    assert torch.allclose(f["conv_sep.bn"], store["conv_sep.bn"][0])
    assert torch.allclose(f["embedding"], net(net.preprocess(IMGS)).detach(), atol=1e-6)
    # weights change (an optimiser step, a BatchNorm update): the folded copy is rebuilt
    with torch.no_grad():
        net.fc.weight.mul_(-1.0)
    changed = torch.nn.functional.normalize(net(net.preprocess(IMGS)).detach(), dim=1)
    assert torch.nn.functional.cosine_similarity(net.embed(IMGS), changed).min() > 0.99999
    assert net.inference_module() is not fastm
    with torch.no_grad():
        net.fc.weight.mul_(-1.0)


def test_fold_batchnorm_generic():
    seq = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU())
    seq[1].running_mean.fill_(0.3)
    seq[1].running_var.fill_(2.0)
    x = torch.randn(2, 3, 8, 8)
    f = fast.fold_batchnorm(seq.eval())
    assert isinstance(f[1], torch.nn.Identity) and torch.allclose(f(x), seq(x), atol=1e-5)
    assert isinstance(seq[1], torch.nn.BatchNorm2d)  # the original is untouched


def test_align_validates():
    lm = np.tile(D.ARCFACE_TEMPLATE_112[None], (2, 1, 1))
    with pytest.raises(ParameterError, match="grayscale"):
        D.align(np.zeros((112, 112), np.uint8), lm[:1])
    with pytest.raises(ParameterError, match="0..1"):
        D.align(np.full((2, 112, 112, 3), 3.0, np.float32), lm)
    with pytest.raises(Exception, match="NaN"):
        D.align(np.zeros((2, 112, 112, 3), np.uint8), np.full((2, 5, 2), np.nan))
    # float 0..1 is accepted (scaled to uint8); the template maps onto itself
    img = np.random.default_rng(1).random((112, 112, 3)).astype(np.float32)
    out = D.align(img[None], lm[:1])
    assert out.dtype == np.uint8 and np.abs(out[0, 10:100, 10:100].astype(int)
                                            - np.round(img[10:100, 10:100] * 255).astype(int)).max() <= 1


def test_cv2_and_torch_warps_agree():
    pytest.importorskip("cv2")
    rng = np.random.default_rng(2)
    img = rng.integers(0, 256, (3, 120, 100, 3), dtype=np.uint8)
    lm = D.ARCFACE_TEMPLATE_112[None] * 0.9 + rng.normal(0, 2, (3, 5, 2)).astype(np.float32) + 5
    M = D.similarity_transform(lm, D.template(112))
    a = D.warp_affine(img, M, 112, backend="cv2")
    b = D.warp_affine(img, M, 112, backend="torch")
    diff = np.abs(a.astype(int) - b.astype(int))
    assert diff[:, 2:-2, 2:-2].max() <= 1  # bilinear in fixed point vs float: one grey level


def test_released_weights_embed_through_onnxruntime_when_asked(net, tmp_path, monkeypatch):
    if not fast.ort_available():
        pytest.skip("onnxruntime not installed")
    import copy

    monkeypatch.setenv("FACESTUDY_CACHE", str(tmp_path))
    m = copy.deepcopy(net)
    m.__dict__.pop("_folded", None)
    m.weights_tag = "test-weights"  # released weights: exported once, keyed by their hash
    assert not isinstance(m.inference_module(), fast.OrtModule)  # the default: the folded torch copy
    m.__dict__.pop("_folded", None)
    monkeypatch.setenv("FACESTUDY_EMBED_BACKEND", "onnxruntime")
    assert isinstance(m.inference_module(), fast.OrtModule)
    assert len(list((tmp_path / "onnx").glob("test-weights-*.onnx"))) == 1
    with torch.no_grad():
        x = m.preprocess(IMGS)
        ref = torch.nn.functional.normalize(m(x) + m(x.flip(3)), dim=1)
    assert torch.nn.functional.cosine_similarity(m.embed(IMGS, flip=True), ref).min() > 0.99999
    f = m.features(IMGS, ["blocks.0"])  # layer access still through the torch module
    assert f["blocks.0"].shape[0] == len(IMGS)

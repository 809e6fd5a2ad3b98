"""FaceModel interface, registry and backbones (no real data needed)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from facestudy import models as M
from facestudy.errors import ParameterError
from facestudy.models.mobilefacenet import casia_key_map, mxnet_name_map


def _imgs(n=3, size=32, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def test_registry_names_and_errors():
    assert {"mobilefacenet", "iresnet50", "smallcnn", "vit"} <= set(M.available()["create"])
    with pytest.raises(ParameterError, match="valid models"):
        M.create("resnet9000")
    with pytest.raises(ParameterError):
        M.create("smallcnn", no_such_arg=1)
    with pytest.raises(ParameterError, match="divisible"):
        M.create("smallcnn", input_size=50)
    with pytest.raises(ParameterError, match="valid"):
        M.pretrained("nope")


@pytest.mark.parametrize("depth,millions", [(50, 43.6), (100, 65.2)])
def test_iresnet_param_counts_on_meta(depth, millions):
    with torch.device("meta"):
        m = M.create(f"iresnet{depth}")
    assert abs(M.n_parameters(m) / 1e6 - millions) < 0.05


def test_iresnet_keys_match_arcface_torch():
    with torch.device("meta"):
        m = M.create("iresnet18")
    keys = set(m.state_dict())
    expected = {"conv1.weight", "bn1.weight", "bn1.running_var", "prelu.weight", "bn2.weight", "fc.weight",
                "fc.bias", "features.weight", "features.bias", "features.running_mean",
                "layer1.0.bn1.weight", "layer1.0.conv1.weight", "layer1.0.bn2.weight", "layer1.0.prelu.weight",
                "layer1.0.conv2.weight", "layer1.0.bn3.weight", "layer1.0.downsample.0.weight",
                "layer1.0.downsample.1.running_mean", "layer4.1.conv2.weight"}
    assert expected <= keys
    assert not any(k.startswith("layer1.1.downsample") for k in keys)
    assert tuple(m.state_dict()["fc.weight"].shape) == (512, 512 * 7 * 7)
    assert not m._modules["features"].weight.requires_grad  # fixed gamma, as in arcface_torch


def test_iresnet_small_forward_and_state_dict_roundtrip():
    m = M.create("iresnet18", input_size=32, width=0.125, embedding_dim=16)
    x = m.preprocess(_imgs(2))
    assert m(x).shape == (2, 16)
    m2 = M.create("iresnet18", input_size=32, width=0.125, embedding_dim=16)
    m2.load_state_dict(m.state_dict(), strict=True)
    m.eval(), m2.eval()
    assert torch.allclose(m(x), m2(x))


def test_mobilefacenet_shapes_and_maps():
    m = M.create("mobilefacenet", width=0.25, embedding_dim=64, input_size=64)
    assert m.embed(_imgs(3, 64)).shape == (3, 64)
    full = M.create("mobilefacenet")
    assert M.n_parameters(full) == 1003264 - 128  # insightface count includes pre_fc1's bias (folded)
    sd = set(full.state_dict())
    assert set(mxnet_name_map().values()) | {"emb_bn.weight"} == {k for k in sd if "num_batches" not in k}
    casia_keys = [ln.split("\t")[0] for ln in
                  ["conv1.prelu.weight", "dw_conv1.bn.running_var", "blocks.3.conv.5.weight", "linear7.conv.weight",
                   "linear1.conv.weight", "linear1.bn.bias"]]
    assert casia_key_map(casia_keys) == {
        "conv1.prelu.weight": "conv1.act.weight", "dw_conv1.bn.running_var": "conv2_dw.bn.running_var",
        "blocks.3.conv.5.weight": "blocks.3.dw.act.weight", "linear7.conv.weight": "gdc.conv.weight",
        "linear1.conv.weight": "fc.weight", "linear1.bn.bias": "emb_bn.bias"}


def test_preprocess_layouts_and_crop():
    m = M.create("smallcnn", input_size=32, width=8, stages=3)
    u8 = _imgs(2, 32)
    a = m.preprocess(u8)
    b = m.preprocess(torch.from_numpy(u8).permute(0, 3, 1, 2))
    c = m.preprocess(u8.astype(np.float32) / 255.0)
    assert a.shape == (2, 3, 32, 32) and torch.allclose(a, b) and torch.allclose(a, c, atol=1e-5)
    assert torch.allclose(a[0, 0, 0, 0], torch.tensor((float(u8[0, 0, 0, 0]) - 127.5) / 127.5))
    casia_like = M.MobileFaceNet(input_size=(112, 96), crop=(112, 112, 0, 8), width=0.25)
    big = _imgs(1, 112)
    x = casia_like.preprocess(big)
    assert x.shape == (1, 3, 112, 96)
    assert torch.allclose(x[0, :, 5, 0] * 128 + 127.5, torch.from_numpy(big[0, 5, 8]).float())
    kp = casia_like.preprocess_keypoints(np.array([[[8.0, 0.0]] * 5]), (112, 112))
    assert torch.allclose(kp[0, 0], torch.tensor([0.0, 0.0]))
    with pytest.raises(ParameterError):
        m.preprocess(np.zeros((2, 32, 32), np.uint8)[..., None].repeat(4, -1))


def test_embed_normalised_flip_and_eval_mode_restored():
    torch.manual_seed(0)
    m = M.create("smallcnn", input_size=32, width=8, stages=3, embedding_dim=16)
    m.train()
    imgs = _imgs(5, 32)
    e = m.embed(imgs, batch_size=2)
    assert e.shape == (5, 16) and torch.allclose(e.norm(dim=1), torch.ones(5), atol=1e-5)
    assert m.training  # restored
    raw = m.embed(imgs, normalize=False)
    ef = m.embed(imgs, flip=True, normalize=False)
    eflip = m.embed(imgs[:, :, ::-1].copy(), normalize=False)
    assert torch.allclose(ef, raw + eflip, atol=1e-4)
    assert torch.allclose(m.embed(imgs[0]), e[:1], atol=1e-6)  # single image gets a batch axis


def test_features_hooks_removed_and_grad_mode():
    m = M.create("smallcnn", input_size=32, width=8, stages=3, embedding_dim=16)
    feats = m.features(_imgs(3, 32), ["blocks.1", "embedding"], batch_size=2)
    assert feats["blocks.1"].shape == (3, 16, 8, 8) and feats["embedding"].shape == (3, 16)
    assert all(len(mod._forward_hooks) == 0 for mod in m.modules())
    x = torch.rand(1, 32, 32, 3, requires_grad=True)
    f = m.features(x, ["blocks.2"], grad=True)["blocks.2"]
    f.mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    with pytest.raises(ParameterError, match="unknown layer"):
        m.features(_imgs(1, 32), ["nope"])


def test_weights_hash_changes_with_weights():
    m = M.create("smallcnn", input_size=32, width=8, stages=3)
    h = m.weights_hash()
    with torch.no_grad():
        m.fc.weight.add_(1.0)
    assert m.weights_hash() != h

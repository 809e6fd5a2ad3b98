"""The frozen-trunk feature cache (facestudy.eval.trunk) and MobileFaceNet.tail."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from facestudy.data import FaceSet
from facestudy.errors import ParameterError
from facestudy.eval.trunk import trunk_features
from facestudy.models import MobileFaceNet


def _faces(n=6, seed=0):
    rng = np.random.default_rng(seed)
    return FaceSet(images=rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), labels=np.arange(n) % 3, meta=None,
                   name="trunk-test")


@pytest.fixture
def model():
    torch.manual_seed(0)
    m = MobileFaceNet(embedding_dim=16, width=0.25, input_size=32).eval()
    return m


@pytest.mark.parametrize("after", ["conv_sep", "blocks.10"])
def test_tail_of_cached_features_reproduces_the_embedding(model, after, tmp_path, monkeypatch):
    monkeypatch.setenv("FACESTUDY_CACHE", str(tmp_path))
    fs = _faces()
    tf = trunk_features(model, fs, layer=after, dtype=torch.float32)
    tail = model.tail(after).eval()
    with torch.no_grad():
        out = tail(tf.features.float())
    assert torch.allclose(out, tf.embedding, atol=1e-5)
    assert torch.allclose(tf.embedding, model.embed(fs.images, normalize=False), atol=1e-5)


def test_cache_hit_miss_and_damage(model, tmp_path, monkeypatch):
    monkeypatch.setenv("FACESTUDY_CACHE", str(tmp_path))
    fs = _faces()
    a = trunk_features(model, fs)
    files = list((tmp_path / "trunk").glob("*.pt"))
    assert len(files) == 1 and a.features.dtype == torch.float16
    b = trunk_features(model, fs)  # hit
    assert torch.equal(a.features, b.features)
    # another augmentation / flip -> another key
    c = trunk_features(model, fs, augment=("dark", lambda x: (x // 2).astype(np.uint8)))
    d = trunk_features(model, fs, flip=True)
    assert len(list((tmp_path / "trunk").glob("*.pt"))) == 3
    assert not torch.equal(a.features, c.features) and not torch.equal(a.features, d.features)
    # other images -> another key
    trunk_features(model, _faces(seed=1))
    assert len(list((tmp_path / "trunk").glob("*.pt"))) == 4
    # a damaged file is said and recomputed
    files[0].write_bytes(b"not a torch file")
    with pytest.warns(UserWarning, match="damaged"):
        e = trunk_features(model, fs)
    assert torch.equal(e.features, a.features)


def test_bad_layer_and_tail(model):
    with pytest.raises(ParameterError, match="unknown layer"):
        trunk_features(model, _faces(), layer="nope", cache=False)
    with pytest.raises(ParameterError, match="valid layers"):
        model.tail("conv1")

"""The two real MobileFaceNets: golden embedding slices (cheap) and full LFW accuracy (slow, real data)."""
from __future__ import annotations

import os

import numpy as np
import pytest

from facestudy import data as fdata
from facestudy import models as M

GOLDEN = {  # first 6 dims of the L2-normalised embedding of insightface's Tom_Hanks_54745.png (112x112)
    "mobilefacenet-ms1m": [0.1254, -0.0167, 0.0927, -0.0143, -0.1987, -0.0053],
    "mobilefacenet-casia": [0.0658, 0.0003, 0.0423, -0.0584, 0.1901, 0.0642],
}
LFW_TARGET = {"mobilefacenet-ms1m": 0.990, "mobilefacenet-casia": 0.980}


def _have(name: str) -> bool:
    return name in M.available()["pretrained"]


def _tom_hanks() -> np.ndarray:
    insightface = pytest.importorskip("insightface")
    from PIL import Image

    path = os.path.join(os.path.dirname(insightface.__file__), "data", "images", "Tom_Hanks_54745.png")
    if not os.path.exists(path):
        pytest.skip("insightface's bundled Tom_Hanks_54745.png is absent")
    return np.asarray(Image.open(path).convert("RGB"))


@pytest.mark.realdata
@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_golden_embedding_slice(name):
    if not _have(name):
        pytest.skip(f"{name} weights absent (set FACESTUDY_DATA)")
    model = M.pretrained(name)
    e = model.embed(_tom_hanks())
    assert e.shape == (1, 128)
    assert np.allclose(e[0, :6].numpy(), GOLDEN[name], atol=2e-3)
    flip = model.embed(_tom_hanks(), flip=True)
    assert float((flip * e).sum()) > 0.8  # the mirrored face is the same person


@pytest.mark.realdata
def test_mxnet_reader_reads_every_parameter():
    if not _have("mobilefacenet-ms1m"):
        pytest.skip("mobilefacenet-ms1m weights absent")
    from facestudy.models.mxnet_params import read_params

    raw = read_params(fdata.locate("mobilefacenet_ms1m", "models/mobilefacenet-ms1m/model-0000.params"))
    assert sum(v.size for k, v in raw.items() if k.startswith("arg:")) == 1_003_264  # the README count
    assert raw["arg:conv_1_conv2d_weight"].shape == (64, 3, 3, 3)
    assert raw["aux:fc1_moving_var"].shape == (128,)


@pytest.mark.realdata
@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(LFW_TARGET))
def test_full_lfw_accuracy(name):
    if not _have(name) or not fdata.available("lfw"):
        pytest.skip("LFW or the weights are absent")
    from facestudy.eval import evaluate_pairs

    # LFW-112 as shipped (no detection), all 6,000 pairs, without the flip average: the README's 99.20 /
    # 98.27 were measured with it; without it the same models measured 99.20 / 98.20 (2026-11-29) at half the
    # forward passes (make test's budget). The flip path has its own test above; chapter 00b_models reports
    # the re-aligned (ArcFace template) numbers as well.
    faces, pairs = fdata.lfw_pairs(as_shipped=True)
    assert len(pairs) == 6000 and len(faces) == 7701
    r = evaluate_pairs(M.pretrained(name), faces, pairs, flip=False, cache=False)
    print(f"{name}: LFW {100 * r.accuracy:.2f} +- {100 * r.accuracy_std:.2f} %")
    assert r.accuracy >= LFW_TARGET[name], r

"""RetinaFace-MobileNet-0.25 (facestudy.data.retinaface): keys against the release, priors and decoding,
golden detections on a real group photo, onnxruntime == torch, the face rules."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import facestudy.data as D
from facestudy.data import retinaface as R
from facestudy.errors import DataError, ParameterError

# six faces of insightface's bundled t1.jpg (1280x886), sorted by x1: boxes x1, y1, x2, y2 and the left eye,
# from our torch module with the released weights (equal to onnxruntime's, tested below)
GOLDEN_BOXES = np.array([[55.3, 264.1, 169.4, 401.6], [270.4, 145.0, 368.0, 271.5], [460.0, 261.7, 573.8, 417.8],
                         [745.0, 350.3, 844.4, 474.7], [901.4, 52.5, 1011.6, 205.8], [1134.9, 277.1, 1224.3, 399.0]])
GOLDEN_LEFT_EYE = np.array([[82.7, 330.0], [285.5, 211.9], [490.7, 320.2], [761.1, 399.2], [914.5, 123.3],
                            [1148.1, 327.7]])


def _image(name: str) -> np.ndarray:
    insightface = pytest.importorskip("insightface")
    from PIL import Image

    return np.array(Image.open(Path(insightface.__file__).parent / "data" / "images" / name).convert("RGB"))


@pytest.fixture(scope="module")
def detector():
    if not D.available("retinaface_mnet025"):
        pytest.skip("RetinaFace weights absent (set FACESTUDY_DATA)")
    return R.RetinaFace.from_manifest(backend="torch")


def test_priors_order_and_count():
    p = R.priors(64, 96)
    # levels of stride 8, 16, 32 with 2 anchors per cell
    assert len(p) == 2 * (8 * 12 + 4 * 6 + 2 * 3)
    assert np.allclose(p[0], [4, 4, 10, 10]) and np.allclose(p[1], [4, 4, 20, 20])
    assert np.allclose(p[2], [12, 4, 10, 10])  # next column of the first row
    assert np.allclose(p[-1], [80, 48, 256, 256])


def test_decode_zero_offsets_give_the_prior_box():
    pri = np.array([[50.0, 60.0, 20.0, 20.0]], np.float32)
    boxes, lms = R.decode(np.zeros((1, 4), np.float32), np.zeros((1, 10), np.float32), pri)
    assert np.allclose(boxes, [[40, 50, 60, 70]]) and np.allclose(lms, 50 * np.array([1, 1.2]))
    loc = np.array([[1.0, 0.0, np.log(2) / 0.2, 0.0]], np.float32)  # centre +0.1*w, width x2
    boxes, _ = R.decode(loc, np.zeros((1, 10), np.float32), pri)
    assert np.allclose(boxes, [[32, 50, 72, 70]], atol=1e-4)


def test_module_keys_match_the_release_listing():
    from facestudy.data.store import find

    path = find("retinaface_mnet025", "models/retinaface-mnet025/state_dict_keys.txt")
    if path is None:
        pytest.skip("state_dict_keys.txt absent (set FACESTUDY_DATA)")
    R.check_keys(R.RetinaFaceNet().state_dict(), path)  # raises on any difference
    bad = R.RetinaFaceNet().state_dict()
    bad.pop("ssh3.conv7x7_3.1.bias")
    with pytest.raises(DataError, match="missing"):
        R.check_keys(bad)


@pytest.mark.realdata
def test_golden_group_photo(detector):
    det = detector.detect(_image("t1.jpg"))[0]
    assert det.image_size == (886, 1280)
    o = np.argsort(det.boxes[:, 0])
    assert len(det) == 6 and det.scores.min() > 0.99
    assert np.abs(det.boxes[o] - GOLDEN_BOXES).max() < 0.5
    assert np.abs(det.landmarks[o][:, 0] - GOLDEN_LEFT_EYE).max() < 0.5
    le, re, nose, lm, rm = det.landmarks[0].T[0]
    assert le < nose < re and lm < rm


@pytest.mark.realdata
def test_onnxruntime_equals_torch(detector):
    from facestudy.models import fast

    if not fast.ort_available():
        pytest.skip("onnxruntime not installed")
    img = _image("t1.jpg")
    onnx = R.RetinaFace(detector.net, backend="onnx", key=detector.key)
    a, b = detector.detect(img)[0], onnx.detect(img)[0]
    assert len(a) == len(b) == 6
    assert np.abs(a.boxes - b.boxes).max() < 0.05 and np.abs(a.landmarks - b.landmarks).max() < 0.05
    assert np.abs(a.scores - b.scores).max() < 1e-4


@pytest.mark.realdata
def test_aligned_face_batch_flip_and_blank(detector):
    img = _image("Tom_Hanks_54745.png")
    d = detector.detect(np.stack([img, img[:, ::-1], np.zeros_like(img)]))
    assert [len(x) for x in d] == [1, 1, 0]
    lms = d[0].landmarks[0]
    assert np.linalg.norm(lms - D.ARCFACE_TEMPLATE_112, axis=1).mean() < 8
    assert abs(d[1].landmarks[0, 1, 0] - (111 - lms[0, 0])) < 3  # right eye of the flip = mirrored left eye
    # min_face_size drops smaller faces
    assert len(detector.detect(img, min_face_size=150)[0]) == 0


def test_face_rules_centre_largest_score():
    boxes = np.array([[0, 0, 60, 60], [40, 40, 60, 60], [90, 0, 100, 10]], np.float32)
    det = D.Detections(boxes, np.array([0.9, 0.8, 0.99], np.float32), np.zeros((3, 5, 2), np.float32),
                       image_size=(100, 100))
    assert det.best("largest") == 0 and det.best("score") == 2 and det.best("centre") == 1
    assert det.best("centre", point=(95, 5)) == 2
    with pytest.raises(ParameterError, match="valid rules"):
        det.best("middle")
    with pytest.raises(ParameterError, match="image size"):
        D.Detections(boxes, np.ones(3, np.float32), np.zeros((3, 5, 2), np.float32)).best("centre")


def test_detect_rejects_bad_images():
    net = R.RetinaFace(R.RetinaFaceNet(), backend="torch", key="random")
    with pytest.raises(ParameterError, match="grayscale"):
        net.detect(np.zeros((64, 64), np.uint8))
    with pytest.raises(ParameterError, match="0..1"):
        net.detect(np.full((64, 64, 3), 200.0, np.float32))
    with pytest.raises(ParameterError, match="NaN"):
        net.detect(np.full((64, 64, 3), np.nan, np.float32))
    out = net.detect(torch.zeros(2, 64, 64, 3, dtype=torch.uint8))
    assert len(out) == 2 and out[0].image_size == (64, 64)


def test_detector_factory_names():
    with pytest.raises(ParameterError, match="valid detectors: retinaface, mtcnn"):
        D.detector("yolo")

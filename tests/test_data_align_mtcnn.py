"""Similarity transform, alignment warp, NMS and MTCNN on a real face (facestudy.data.align / mtcnn)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import facestudy.data as D
from facestudy.data.mtcnn import nms
from facestudy.errors import DataError


def _rot(deg: float, scale: float, t: tuple[float, float]) -> np.ndarray:
    a = np.deg2rad(deg)
    return np.array([[scale * np.cos(a), -scale * np.sin(a), t[0]], [scale * np.sin(a), scale * np.cos(a), t[1]]],
                    np.float32)


def test_similarity_transform_recovers_a_known_transform():
    src = np.random.default_rng(0).uniform(0, 100, (5, 2)).astype(np.float32)
    M = _rot(17.0, 1.7, (12.0, -30.0))
    dst = D.transform_points(src, M)
    est = D.similarity_transform(src, dst)
    assert np.allclose(est, M, atol=1e-4)
    batch = D.similarity_transform(np.stack([src, src]), dst)
    assert batch.shape == (2, 2, 3) and np.allclose(batch[1], M, atol=1e-4)
    # no reflection: a mirrored point set is fitted by a rotation, not a flip
    mirrored = src * np.array([-1, 1], np.float32)
    R = D.similarity_transform(src, mirrored)[:, :2]
    assert np.linalg.det(R) >= 0


def test_align_puts_landmarks_on_the_template_and_warps_pixels():
    T = D.ARCFACE_TEMPLATE_112
    M = _rot(-12.0, 1.6, (20.0, 5.0))  # template -> a bigger, rotated, shifted "photo"
    lm = D.transform_points(T, M)[None]
    size = 220
    img = np.zeros((1, size, size, 3), np.uint8)
    for x, y in lm[0]:  # a bright 5x5 blob at each landmark of the photo
        img[0, int(round(y)) - 2:int(round(y)) + 3, int(round(x)) - 2:int(round(x)) + 3] = 255
    out, M2 = D.align(img, lm, size=112, return_matrix=True)
    assert out.shape == (1, 112, 112, 3) and out.dtype == np.uint8
    assert np.allclose(D.transform_points(lm[0], M2[0]), T, atol=1e-3)
    for x, y in T:  # the blobs land on the template points
        assert out[0, int(round(y)), int(round(x))].mean() > 100
    assert out[0].mean() < 30  # and nowhere much else
    # an identity transform leaves a 112x112 image unchanged (pixel-centre convention)
    face = np.random.default_rng(1).integers(0, 256, (1, 112, 112, 3), dtype=np.uint8)
    same = D.align(face, T[None], size=112)
    assert np.abs(same.astype(int) - face).max() <= 1
    with pytest.raises(DataError, match="NaN"):
        D.align(face, np.full((1, 5, 2), np.nan))


def test_nms_matches_bruteforce_greedy():
    rng = np.random.default_rng(3)
    xy = rng.uniform(0, 50, (60, 2))
    wh = rng.uniform(5, 30, (60, 2))
    boxes = torch.tensor(np.concatenate([xy, xy + wh], 1), dtype=torch.float32)
    scores = torch.tensor(rng.uniform(0, 1, 60), dtype=torch.float32)
    groups = torch.tensor(rng.integers(0, 3, 60))
    from facestudy.data.mtcnn import box_iou

    expected = []
    for g in range(3):
        idx = [int(i) for i in torch.argsort(scores, descending=True) if groups[i] == g]
        kept: list[int] = []
        for i in idx:
            if all(box_iou(boxes[i:i + 1], boxes[k:k + 1])[0, 0] <= 0.4 for k in kept):
                kept.append(i)
        expected += kept
    got = nms(boxes, scores, groups, 0.4)
    assert sorted(got.tolist()) == sorted(expected)


def _tom_hanks() -> np.ndarray:
    import insightface
    from PIL import Image

    path = Path(insightface.__file__).parent / "data" / "images" / "Tom_Hanks_54745.png"
    return np.array(Image.open(path).convert("RGB"))


@pytest.mark.realdata
def test_mtcnn_finds_one_face_with_ordered_landmarks():
    if not D.available("mtcnn"):
        pytest.skip("MTCNN weights absent (set FACESTUDY_DATA)")
    det = D.MTCNN.from_manifest()
    img = _tom_hanks()
    (boxes, scores, lms), = det.detect([img], min_face_size=40)
    assert boxes.shape == (1, 4) and scores[0] > 0.99 and lms.shape == (1, 5, 2)
    le, re, nose, lm, rm = lms[0]
    assert le[0] < nose[0] < re[0] and lm[0] < rm[0]  # left/right in image coordinates
    assert max(le[1], re[1]) < nose[1] < min(lm[1], rm[1])  # eyes above nose above mouth
    # the image is an ArcFace-aligned crop: landmarks near the template
    assert np.linalg.norm(lms[0] - D.ARCFACE_TEMPLATE_112, axis=1).mean() < 6
    # batched with a flipped copy and a blank image: flip mirrors the landmarks, blank has no face
    flipped = img[:, ::-1].copy()
    d = det.detect(np.stack([img, flipped, np.zeros_like(img)]), min_face_size=40)
    assert [len(x) for x in d] == [1, 1, 0]
    assert abs(d[1].landmarks[0, 1, 0] - (111 - le[0])) < 3  # right eye of the flip = mirrored left eye
    # the O-Net-only pass from a rough box agrees with the cascade
    r = det.refine([img], boxes + np.array([4, -3, 2, 5], np.float32))[0]
    assert len(r) == 1 and np.abs(r.landmarks[0] - lms[0]).mean() < 2.0

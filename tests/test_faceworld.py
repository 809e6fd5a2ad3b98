"""Tests of the synthetic face world (facestudy.faceworld, chapter 00a). Small sizes: fast on 2 cores."""
from __future__ import annotations

import hashlib
import math

import numpy as np
import pytest

from facestudy import faceworld as fw
from facestudy.errors import ParameterError


@pytest.fixture(scope="module")
def ids():
    return fw.sample_identities(6, seed=3)


def _hash(*arrays) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def test_determinism_same_seed_same_bytes(ids):
    attrs = fw.random_attributes(6, seed=5, nuisance="strong")
    first = fw.render(ids, attrs, size=48)
    again = fw.render(fw.sample_identities(6, seed=3), fw.random_attributes(6, seed=5, nuisance="strong"), size=48)
    assert _hash(*first) == _hash(*again)
    other = fw.render(fw.sample_identities(6, seed=4), attrs, size=48)
    assert _hash(other[0]) != _hash(first[0])


def test_identity_stream_is_prefix_stable():
    a, b = fw.sample_identities(3, seed=9), fw.sample_identities(10, seed=9)
    np.testing.assert_array_equal(a.params, b.params[:3])
    assert a.names == b.names[:3]
    assert len(b[[1, 4]]) == 2 and b[2].names == ["syn9_2"]


def test_output_types_and_shapes(ids):
    images, lmk, vis = fw.render(ids[:2], fw.Attributes(), size=40)
    assert images.dtype == np.uint8 and images.shape == (2, 40, 40, 3)
    assert lmk.dtype == np.float32 and lmk.shape == (2, 5, 2)
    assert vis.dtype == bool and vis.shape == (2, 5) and vis.all()
    assert images.std() > 10  # not a blank image


@pytest.mark.parametrize("size", [112, 56])
def test_aligned_frontal_landmarks_hit_arcface_template(ids, size):
    _, lmk, _ = fw.render(ids, fw.Attributes(), size=size)
    template = fw.ARCFACE_TEMPLATE_112 * size / 112
    err = np.linalg.norm(lmk - template[None], axis=-1)
    assert err.mean() < 0.04 * size, err.mean()  # a similarity fit: only face proportions remain
    eyes = np.linalg.norm(lmk[:, 1] - lmk[:, 0], axis=-1)
    assert np.all(np.abs(eyes - 35.24 * size / 112) < 0.06 * size)


def test_landmark_projection_is_rigid_under_rotation(ids):
    one = ids[1]
    _, l0, _ = fw.render(one, fw.Attributes(), size=112)
    d0 = l0[0, 1] - l0[0, 0]
    for yaw in (-40.0, 25.0):
        _, l, _ = fw.render(one, fw.Attributes(yaw=yaw), size=112)
        d = l[0, 1] - l[0, 0]
        # eye centres share y and z in the head frame: yaw shortens their distance by cos(yaw)
        assert abs(d[0] - d0[0] * math.cos(math.radians(yaw))) < 1e-2
        assert abs(d[1] - d0[1]) < 1e-2
    for roll in (-20.0, 15.0):
        _, l, _ = fw.render(one, fw.Attributes(roll=roll), size=112)
        d = l[0, 1] - l[0, 0]
        assert abs(np.linalg.norm(d) - np.linalg.norm(d0)) < 1e-2
        ang = math.degrees(math.atan2(-d[1], d[0]) - math.atan2(-d0[1], d0[0]))
        assert abs(ang - roll) < 1e-2  # + roll = counter-clockwise as displayed (y down in pixels)
    # positive yaw turns the face towards the image's right: the nose moves right
    _, l, _ = fw.render(one, fw.Attributes(yaw=30), size=112)
    assert l[0, 2, 0] > l0[0, 2, 0] + 5


def test_visibility_follows_occlusion(ids):
    specs = [fw.Attributes(yaw=-70), fw.Attributes(yaw=70), fw.Attributes(sunglasses=1), fw.Attributes(mask=1)]
    _, _, vis = fw.render(ids[0], specs, size=64)
    assert not vis[0, 0] and vis[0, 1]  # face turned to the image's left hides the image-left eye
    assert vis[1, 0] and not vis[1, 1]
    assert not vis[2, 0] and not vis[2, 1] and vis[2, 2]  # lenses are nearer than the eyes
    assert vis[3, 0] and vis[3, 1] and not vis[3, 2:].any()


def _changed_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.flatnonzero(np.abs(a.astype(int) - b.astype(int)).max(axis=(1, 2)) > 0)


def test_edits_change_only_their_region(ids):
    base = fw.Attributes(yaw=10, light_azimuth=20)
    specs = [base, fw.edit(base, beard=1), fw.edit(base, hat=1), fw.edit(base, eyeglasses=1),
             fw.edit(base, mouth_open=1)]
    images, lmk, _ = fw.render(ids[2], specs, size=112)
    eye_y = lmk[0, :2, 1].mean()
    nose_y = lmk[0, 2, 1]
    rows = _changed_rows(images[0], images[1])
    assert len(rows) and rows.min() > eye_y  # a beard lives below the eyes
    rows = _changed_rows(images[0], images[2])
    assert len(rows) and rows.max() < eye_y  # a hat lives above the eyes
    rows = _changed_rows(images[0], images[3])
    assert len(rows) and rows.min() > eye_y - 20 and rows.max() < nose_y  # glasses: a band at the eyes
    rows = _changed_rows(images[0], images[4])
    assert len(rows) and rows.min() > nose_y  # opening the mouth changes nothing above the nose
    # edit returns new specs and leaves everything else as it was
    e = fw.edit(base, beard=1)
    assert e.beard == 1 and e.yaw == base.yaw and base.beard == 0
    assert fw.edit([base, base], age=1)[1].age == 1


def test_background_edit_keeps_the_face(ids):
    a = fw.Attributes()
    images, lmk, _ = fw.render(ids[3], [a, fw.edit(a, background=7)], size=64)
    x0, x1 = int(lmk[0, :, 0].min()), int(lmk[0, :, 0].max())
    y0, y1 = int(lmk[0, :, 1].min()), int(lmk[0, :, 1].max())
    np.testing.assert_array_equal(images[0, y0:y1, x0:x1], images[1, y0:y1, x0:x1])
    assert (images[0, :3, :3] != images[1, :3, :3]).any()


def test_lattice_moves_exactly_one_attribute(ids):
    base = fw.Attributes(pitch=5, smile=0.3)
    images, lmk, vis, specs = fw.lattice(ids[4], "age", [0.0, 0.5, 1.0], base=base, size=48)
    assert images.shape == (3, 48, 48, 3) and len(specs) == 3
    for s in specs:
        d = {k: v for k, v in s.as_dict().items() if v != getattr(base, k)}
        assert set(d) <= {"age"}
    assert [s.age for s in specs] == [0.0, 0.5, 1.0]
    assert _hash(images[0]) != _hash(images[2])
    with pytest.raises(ParameterError, match="valid"):
        fw.lattice(ids[4], "agee", [0, 1])


def test_bad_inputs_raise_clear_errors(ids):
    with pytest.raises(ParameterError, match="yaw"):
        fw.Attributes(yaw=200)
    with pytest.raises(ParameterError, match="valid attributes"):
        fw.edit(fw.Attributes(), glasses=1)
    with pytest.raises(ParameterError, match="nuisance"):
        fw.random_attributes(3, 0, nuisance="wild")
    with pytest.raises(ParameterError, match="identities"):
        fw.render(ids[:2], [fw.Attributes()] * 3)
    with pytest.raises(ParameterError, match="size"):
        fw.render(ids[:1], None, size=3)


def test_faceset_round_trip_through_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FACESTUDY_CACHE", str(tmp_path))
    fs = fw.make_faceset(4, 3, seed=2, size=32, nuisance="default")
    assert fs.source == "synthetic" and len(fs) == 12 and fs.n_identities == 4
    assert list(fs.labels) == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    cached = list(tmp_path.rglob("*.npz"))
    assert len(cached) == 1 and str(tmp_path) in fs.info["cache"]
    again = fw.make_faceset(4, 3, seed=2, size=32, nuisance="default")
    np.testing.assert_array_equal(again.images, fs.images)
    np.testing.assert_array_equal(again.landmarks, fs.landmarks)
    # labels round-trip: re-rendering a row from its meta gives the same image and landmarks
    row = again.meta.iloc[4]
    spec = fw.Attributes(**{k: (int(row[k]) if k == "background" else float(row[k])) for k in fw.ATTRIBUTE_NAMES})
    ident = fw.sample_identities(4, seed=2)[int(again.labels[4])]
    assert ident.names[0] == row["identity"]
    img, lmk, _ = fw.render(ident, spec, size=32)
    np.testing.assert_array_equal(img[0], again.images[4])
    np.testing.assert_allclose(lmk[0], again.landmarks[4], atol=1e-4)


def test_synthetic_pairs_are_balanced_and_identity_disjoint(tmp_path, monkeypatch):
    monkeypatch.setenv("FACESTUDY_CACHE", str(tmp_path))
    fs = fw.make_faceset(10, 2, seed=1, size=24, nuisance="none", cache=False)
    pairs = fw.synthetic_pairs(fs, 40, seed=0, n_folds=5)
    assert list(pairs.columns) == ["a", "b", "same", "fold"] and len(pairs) == 40
    assert pairs.same.sum() == 20 and set(pairs.fold) == set(range(5))
    la, lb = fs.labels[pairs.a], fs.labels[pairs.b]
    assert np.all((la == lb) == pairs.same.to_numpy()) and np.all(pairs.a != pairs.b)
    fold_ids = [set(la[pairs.fold == f]) | set(lb[pairs.fold == f]) for f in range(5)]
    for i in range(5):
        for j in range(i + 1, 5):
            assert not fold_ids[i] & fold_ids[j]

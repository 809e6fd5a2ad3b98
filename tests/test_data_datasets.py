"""Real datasets through the cache: load(), lfw_pairs(), prepare(limit), status_table() (realdata)."""
from __future__ import annotations

import numpy as np
import pytest

import facestudy.data as D
from facestudy.data import LANDMARK_COLUMNS
from facestudy.errors import DataError

pytestmark = pytest.mark.realdata


def _need(name: str) -> None:
    if not (D.available(name) and D.available("mtcnn")):
        pytest.skip(f"{name} or the MTCNN weights are absent (set FACESTUDY_DATA)")


def test_load_lfw_subset_is_aligned_deterministic_and_labelled():
    _need("lfw")
    a = D.load("lfw", limit=12, seed=0)
    assert a.images.shape[1:] == (112, 112, 3) and a.images.dtype == np.uint8 and 10 <= len(a) <= 12
    assert {"path", "identity", "face_score", "detected", *LANDMARK_COLUMNS} <= set(a.meta.columns)
    # labels are identity indices: same label <=> same identity name
    same_label = a.labels[:, None] == a.labels[None]
    same_name = a.meta["identity"].to_numpy()[:, None] == a.meta["identity"].to_numpy()[None]
    assert (same_label == same_name).all()
    # re-aligned to the ArcFace template: detected landmarks sit near it
    err = np.linalg.norm(a.landmarks[a.meta["detected"]] - D.ARCFACE_TEMPLATE_112, axis=2).mean()
    assert err < 5.0
    assert D.load("lfw", limit=12, seed=0).meta["path"].tolist() == a.meta["path"].tolist()
    assert D.load("lfw", limit=12, seed=1).meta["path"].tolist() != a.meta["path"].tolist()
    with pytest.raises(DataError, match="unknown dataset"):
        D.load("mnist")


def test_lfw_pairs_subset_is_balanced_per_fold():
    _need("lfw")
    faces, pairs = D.lfw_pairs(n_per_fold=2)
    assert list(pairs.columns) == ["a", "b", "same", "fold"] and len(pairs) == 20
    assert pairs.groupby("fold")["same"].agg(["sum", "count"]).values.tolist() == [[1, 2]] * 10
    ids = faces.meta["identity"].to_numpy()
    assert (ids[pairs["a"]] == ids[pairs["b"]]).tolist() == pairs["same"].tolist()
    assert pairs[["a", "b"]].to_numpy().max() < len(faces) <= 40


def test_celeba10k_has_official_attributes():
    _need("celeba10k")
    c = D.load("celeba10k", limit=8)
    for col in ("image_id", "identity", "Eyeglasses", "Smiling", "Male", "Young", "5_o_Clock_Shadow"):
        assert col in c.meta.columns, col
    attrs = c.meta.loc[:, "5_o_Clock_Shadow":"Young"]
    assert attrs.shape[1] == 40 and set(np.unique(attrs.to_numpy())) <= {0, 1}
    assert (c.labels >= 0).all() and c.images.shape[1:] == (112, 112, 3)


def test_utkface_and_id299_labels():
    _need("utkface")
    u = D.load("utkface", limit=8)
    assert (u.labels == -1).all() and u.meta["age"].between(1, 116).all()
    assert set(u.meta["gender"]) <= {0, 1} and set(u.meta["race"]) <= {-1, 0, 1, 2, 3, 4}
    assert u.info["requested"] == 8 and len(u) + u.info["n_dropped"] == 8
    _need("celeba_id299")
    s = D.load("celeba_id299", limit=8)
    assert s.n_identities >= 1 and (s.labels >= 0).all()


def test_prepare_subset_and_status_table():
    _need("lfw")
    done = D.prepare(["lfw"], limit=12, progress=False)
    assert done.loc[0, "dataset"] == "lfw" and done.loc[0, "kept"] >= 10
    st = D.status_table()
    assert set(D.manifests()) == set(st["name"])
    row = st.set_index("name").loc["lfw"]
    assert row["present"] == "2/2" and row["hash_ok"] and row["prepared"] in ("yes", "no")
    assert st.set_index("name").loc["insightface_bins", "user_supplied"]


@pytest.mark.realdata
def test_lfw_pairs_as_shipped_reads_the_tar_without_detection():
    if not D.available("lfw"):
        pytest.skip("LFW absent")
    faces, pairs = D.lfw_pairs(4, as_shipped=True)
    assert len(pairs) == 40 and pairs["same"].sum() == 20
    assert faces.images.shape[1:] == (112, 112, 3) and faces.landmarks is None
    assert faces.info["as_shipped"] and faces.source == "real"
    # the same pair rows point at the same identities as the re-aligned protocol
    assert (faces.meta["identity"].to_numpy()[pairs["a"]] == faces.meta["identity"].to_numpy()[pairs["b"]]
            ).tolist() == pairs["same"].tolist()

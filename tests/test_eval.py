"""Verification protocol, TAR@FAR, identification and the embedding cache against hand-made cases."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from facestudy import eval as E
from facestudy import models as M
from facestudy.data import FaceSet
from facestudy.errors import ParameterError


def test_best_threshold_exact():
    scores = np.array([0.1, 0.2, 0.35, 0.4, 0.8, 0.9])
    same = np.array([False, False, True, False, True, True])
    thr, acc = E._best_threshold(scores, same)
    assert acc == pytest.approx(5 / 6)
    assert 0.2 < thr < 0.35 or 0.4 < thr < 0.8


def test_verification_folds_by_hand():
    # 2 folds; fold 1's threshold comes from fold 0 and vice versa
    scores = np.array([0.9, 0.8, 0.2, 0.1, 0.6, 0.5, 0.45, 0.3])
    same = np.array([1, 1, 0, 0, 1, 1, 0, 0], bool)
    pairs = pd.DataFrame({"same": same, "fold": [0, 0, 0, 0, 1, 1, 1, 1]})
    r = E.verification(scores, pairs)
    # fold 0 trained on fold 1: threshold in (0.45, 0.5) -> fold 0 all correct
    # fold 1 trained on fold 0: threshold in (0.2, 0.8) (first best = midpoint 0.5) -> fold 1 all correct or 3/4
    assert r.fold_accuracies[0] == 1.0
    assert 0.45 < r.thresholds[0] < 0.5
    assert r.accuracy == pytest.approx(r.fold_accuracies.mean())
    assert r.auc == pytest.approx(1.0)
    assert r.tar_at_far[0.1] == pytest.approx(1.0)


def test_verification_from_embeddings_and_tar():
    rng = np.random.default_rng(0)
    e = rng.normal(size=(40, 8))
    pairs = pd.DataFrame({"a": np.arange(20), "b": np.arange(20, 40), "same": np.arange(20) % 2 == 0,
                          "fold": np.arange(20) % 10})
    e[20:][pairs.same.values] = e[:20][pairs.same.values] + 0.01
    r = E.verification(torch.tensor(e), pairs)
    assert r.accuracy == 1.0 and r.auc == 1.0
    s = E.pair_scores(e, pairs)
    assert np.allclose(s[pairs.same.values], 1.0, atol=1e-3)
    with pytest.raises(ParameterError, match="both"):
        E.verification(s, pairs.assign(same=True))
    with pytest.raises(ParameterError):
        E.verification(s[:3], pairs)


def test_tar_at_far_by_hand():
    # 10 impostors, 4 genuine; at FAR 0.1 (1 impostor accepted) the threshold sits below the top impostor
    imp = np.linspace(0, 0.9, 10)
    gen = np.array([0.95, 0.85, 0.5, 0.2])
    scores = np.r_[gen, imp]
    pairs = pd.DataFrame({"same": np.r_[np.ones(4, bool), np.zeros(10, bool)]})
    r = E.verification(scores, pairs)
    assert r.tar_at_far[0.1] == pytest.approx(0.25 + 0.25)  # 0.95 and 0.85 above 0.8 (2nd impostor)
    assert r.tar_at_far[1e-4] == pytest.approx(0.25)


def test_identification_rank1_rank5():
    g = np.eye(6)
    gl = np.array([0, 1, 2, 3, 4, 4])
    p = np.array([[1, 0.1, 0, 0, 0, 0], [0.9, 1.0, 0, 0, 0, 0], [0.5, 0.3, 0.2, 0, 0, 0.1], [0, 0, 0, 0, 0, 1.0]])
    pl = np.array([0, 0, 2, 4])
    r = E.identification(g, gl, p, pl)
    # probe0 rank1 ok; probe1: id1 beats id0 -> rank 2; probe2: id2 is 3rd; probe3: id4 (second image) first
    assert r["rank1"] == pytest.approx(0.5) and r["rank5"] == pytest.approx(1.0)
    assert r["n_identities"] == 5


def test_embed_cached_and_evaluate_pairs(tmp_path, monkeypatch):
    monkeypatch.setenv("FACESTUDY_CACHE", str(tmp_path))
    monkeypatch.setattr(E, "_cache_dir", lambda: tmp_path)
    rng = np.random.default_rng(0)
    fs = FaceSet(rng.integers(0, 256, (6, 16, 16, 3), dtype=np.uint8), np.arange(6) // 2, None, name="t",
                 source="synthetic")
    torch.manual_seed(0)
    m = M.create("smallcnn", input_size=16, width=4, stages=2, embedding_dim=8)
    a = E.embed_cached(m, fs)
    files = list((tmp_path / "embeddings").glob("*.pt"))
    assert len(files) == 1
    b = E.embed_cached(m, fs)
    assert torch.equal(a, b)
    E.embed_cached(m, fs, flip=True)
    assert len(list((tmp_path / "embeddings").glob("*.pt"))) == 2
    pairs = pd.DataFrame({"a": [0, 2, 0, 1], "b": [1, 3, 4, 5], "same": [True, True, False, False]})
    r = E.evaluate_pairs(m, fs, pairs, flip=False)
    assert np.allclose(r.scores, E.pair_scores(a, pairs), atol=1e-5)


def test_faceset_hash_covers_images_labels_and_landmarks():
    from facestudy.data import LANDMARK_COLUMNS

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (4, 8, 8, 3), dtype=np.uint8)
    meta = pd.DataFrame(rng.uniform(0, 8, (4, 10)), columns=LANDMARK_COLUMNS)
    base = E.faceset_hash(FaceSet(images, np.arange(4), meta.copy(), name="a"))
    assert base == E.faceset_hash(FaceSet(images.copy(), np.arange(4), meta.copy(), name="b"))
    moved = meta.copy()
    moved.iloc[0, 0] += 1e-4  # a landmark moved by 1e-4 px: KP-RPE trains on it, so the cache must miss
    assert E.faceset_hash(FaceSet(images, np.arange(4), moved, name="a")) != base
    assert E.faceset_hash(FaceSet(images, np.arange(4)[::-1].copy(), meta.copy(), name="a")) != base
    assert E.faceset_hash(FaceSet(images, np.arange(4), None, name="a")) != base  # no landmarks at all

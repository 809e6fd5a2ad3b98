"""Chapter 5 glue: teacher-embedding cache with flips, trainer hook, one tiny ablation row end to end."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from facestudy import models
from facestudy.data import FaceSet
from facestudy.distill import DistillConfig, DistillLoss, study
from facestudy.distill.teacher import TargetLookup, as_extra_loss, teacher_embeddings
from facestudy.errors import DataError, ParameterError


def tiny_faces(n_ids: int = 4, per: int = 4, size: int = 32, seed: int = 0) -> FaceSet:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, size=(n_ids, size, size, 3))
    imgs = np.concatenate([np.clip(base[i] + rng.normal(0, 20, (per, size, size, 3)), 0, 255)
                           for i in range(n_ids)]).astype(np.uint8)
    labels = np.repeat(np.arange(n_ids), per)
    return FaceSet(imgs, labels, pd.DataFrame({"identity": labels.astype(str)}), name="tiny", source="synthetic")


def tiny_model(dim: int = 8, size: int = 32, seed: int = 0):
    torch.manual_seed(seed)
    return models.create("smallcnn", embedding_dim=dim, input_size=size, width=4, stages=2)


def test_teacher_cache_with_flips(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("FACESTUDY_CACHE", str(tmp_path))
    faces = tiny_faces()
    teacher = tiny_model().eval()
    te = teacher_embeddings(teacher, faces.images)
    assert te.orig.shape == (16, 8) and te.flip.shape == (16, 8)
    assert torch.allclose(te.orig.norm(dim=1), torch.ones(16), atol=1e-5)
    mirrored = teacher.embed(np.ascontiguousarray(faces.images[:, :, ::-1]))
    assert torch.allclose(te.flip, mirrored, atol=1e-5)
    assert torch.allclose(te.target("sum"), torch.nn.functional.normalize(te.orig + te.flip, dim=1))
    files = list((tmp_path / "distill").glob("teacher_*.pt"))
    assert len(files) == 1
    again = teacher_embeddings(teacher, faces.images)  # read from the cache
    assert again.key == te.key and torch.equal(again.orig, te.orig)
    other = teacher_embeddings(teacher, faces.images[:8])  # other images -> other key
    assert other.key != te.key
    assert all(not p.requires_grad for p in teacher.parameters())  # frozen
    with pytest.raises(ParameterError):
        te.target("mean")


def test_lookup_and_hook_check_indices() -> None:
    targets = torch.nn.functional.normalize(torch.randn(10, 4), dim=1)
    lookup = TargetLookup(DistillLoss(DistillConfig(method="iled"), 2, 4), targets)
    hook = as_extra_loss(lookup)
    emb = targets[[3, 7]].clone().requires_grad_(True)
    loss, logs = hook({"embeddings": emb, "index": torch.tensor([3, 7])})
    assert "iled" in logs and loss.item() < 0.01  # student == teacher -> tiny ILED loss
    with pytest.raises(ParameterError, match="out of range"):
        hook({"embeddings": emb, "index": torch.tensor([3, 12])})
    with pytest.raises(ParameterError, match="lacks"):
        hook({"embeddings": emb})


def test_select_identities() -> None:
    faces = FaceSet(np.zeros((9, 4, 4, 3), np.uint8), np.array([0, 0, 0, 1, 2, 2, 3, 3, 3]),
                    pd.DataFrame(index=range(9)))
    sub = study.select_identities(faces, n_identities=10, min_per_identity=2, max_per_identity=2)
    assert len(sub) == 6 and sub.n_identities == 3 and sub.labels.max() == 2
    with pytest.raises(DataError):
        study.select_identities(faces, 3, min_per_identity=5, max_per_identity=5)


def test_one_row_trains_with_the_trainer_and_is_repeatable(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("FACESTUDY_CACHE", str(tmp_path))
    faces = tiny_faces()
    teacher = tiny_model(seed=1).eval()
    targets = teacher_embeddings(teacher, faces.images)
    cfg = {"student": "smallcnn", "student_kw": {"width": 4, "stages": 2}, "student_size": 32,
           "fr_head": "sphereface2", "epochs": 1, "batch_size": 4, "lr": 0.05,
           "iled_r": 40.0, "iled_s": 0.9, "iled_b": 0.1, "iled_b_placement": "bias", "rpsd_t": 0.05,
           "rpsd_r": 60.0, "rpsd_b": 1.0, "rpsd_form": "softplus", "rpsd_include_batch": False,
           "rpsd_bank": "student", "bank_multiple": 3, "lambda_iled": 1.0, "lambda_rpsd": 40.0, "lambda_baseline": 1.0}
    dc = study.config_from(cfg, "iled+rpsd")
    assert dc.iled.r == 40.0 and dc.rpsd.t == 0.05 and dc.lambda_rpsd == 40.0 and dc.rpsd.bank == "student"
    tb = study.config_from(cfg, "rpsd_teacher_bank")  # a row preset: method + changed setting
    assert tb.method == "rpsd" and tb.rpsd.bank == "teacher" and tb.rpsd.relation == "cross"
    a = study.train_row("both", dc, cfg=cfg, train_set=faces, targets=targets, seed=3)
    b = study.train_row("both", dc, cfg=cfg, train_set=faces, targets=targets, seed=3)
    assert {"cls_loss", "iled", "rpsd", "cos_st"} <= set(a.history.columns)
    assert len(a.history) == 16 // 4
    assert np.allclose(a.history["loss"], b.history["loss"])  # CPU runs repeat exactly
    none = study.train_row("none", study.config_from(cfg, "none"), cfg=cfg, train_set=faces, targets=targets,
                           seed=3)
    assert "iled" not in none.history.columns
    pairs = pd.DataFrame({"a": [0, 0, 4, 8], "b": [1, 4, 5, 12], "same": [True, False, True, False],
                          "fold": [0, 0, 1, 1]})
    study.evaluate_row(a, faces, pairs, teacher.embed(faces.images, flip=True))
    assert 0.0 <= a.result.accuracy <= 1.0 and -1.0 <= a.cos_teacher <= 1.0
    table = study.results_table([a])
    assert list(table.index) == ["both"] and "tar@1e-2" in table.columns


def test_paper_profile_missing_files_name_them(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("FACESTUDY_DATA", str(tmp_path))
    cfg = {"teacher_checkpoint": "checkpoints/arcface_iresnet100.pth", "teacher_arch": "iresnet100",
           "train_data": "rec", "train_manifest": "ms1m/train.rec"}
    with pytest.raises(DataError, match="arcface_iresnet100.pth"):
        study.check_user_files(cfg)

"""Chapter 5's experiment: train one student per distillation row, same seed and data order, and score it.

Each row is a :class:`~facestudy.distill.objective.DistillConfig`; every row shares the student's random
initialisation (same seed), the training images and their order (``facestudy.train.fit`` re-seeds per
epoch), the SphereFace2 head and the cached teacher targets, so rows differ only by the distillation term.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch

from ..errors import DataError, ParameterError
from .objective import DistillConfig, DistillLoss
from .teacher import TargetLookup, TeacherEmbeddings, as_extra_loss

__all__ = [
    "ROW_PRESETS", "RowResult", "config_from", "check_user_files", "rec_faceset", "select_identities",
    "load_training_set", "load_eval_pairs", "load_teacher", "train_row", "evaluate_row", "results_table",
    "throughput", "mean_cosine",
]


# ------------------------------------------------------------------------------------------- config
#: ablation rows that are a method plus a change of its settings (row name -> (method, changes))
ROW_PRESETS: dict[str, tuple[str, dict[str, Any]]] = {
    "rpsd_teacher_bank": ("rpsd", {"rpsd_bank": "teacher"}),
    "rpsd_student_bank": ("rpsd", {"rpsd_bank": "student"}),
}


def config_from(cfg: Any, method: str, **changes: Any) -> DistillConfig:
    """The :class:`DistillConfig` of ``method`` (a method of :data:`METHODS` or a row of
    :data:`ROW_PRESETS`) with the chapter profile's hyper-parameters (chapter 5)."""
    from .losses import ILEDConfig, RPSDConfig

    if method in ROW_PRESETS:
        method, preset = ROW_PRESETS[method]
        changes = {**preset, **changes}
    base = DistillConfig(
        method=method,
        iled=ILEDConfig(r=float(cfg["iled_r"]), s=float(cfg["iled_s"]), b=float(cfg["iled_b"]),
                        b_placement=cfg["iled_b_placement"]),
        rpsd=RPSDConfig(t=float(cfg["rpsd_t"]), r=float(cfg["rpsd_r"]), b=float(cfg["rpsd_b"]),
                        form=cfg["rpsd_form"], include_batch=bool(cfg["rpsd_include_batch"]),
                        bank=cfg["rpsd_bank"]),
        lambda_iled=float(cfg["lambda_iled"]), lambda_rpsd=float(cfg["lambda_rpsd"]),
        lambda_baseline=float(cfg["lambda_baseline"]), bank_multiple=int(cfg["bank_multiple"]))
    return base.with_(**changes) if changes else base


# --------------------------------------------------------------------------------------------- data
def select_identities(faces: Any, n_identities: int, min_per_identity: int, max_per_identity: int,
                      seed: int = 0) -> Any:
    """Keep ``n_identities`` identities with >= ``min_per_identity`` images, at most ``max_per_identity``
    images each (the first ones, deterministic), relabelled 0..K-1 (chapter 5's FR training set)."""
    labels = np.asarray(faces.labels)
    ids, counts = np.unique(labels[labels >= 0], return_counts=True)
    ok = ids[counts >= min_per_identity]
    if len(ok) == 0:
        raise DataError(f"no identity of {faces.name!r} has >= {min_per_identity} images; lower "
                        "min_per_identity")
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.permutation(ok)[:n_identities])
    keep: list[int] = []
    for lab in chosen:
        keep.extend(np.flatnonzero(labels == lab)[:max_per_identity].tolist())
    return faces.subset(np.sort(np.asarray(keep))).relabel()


def load_training_set(cfg: Any, seed: int = 0) -> tuple[Any, str | None]:
    """Labelled training faces for the FR loss and KD terms: ``(FaceSet, note)`` (chapter 5).

    Real ``cfg.train_data`` (``celeba_id299`` / ``celeba10k``) when present, else the synthetic world (the
    note says so). ``train_data="rec"`` reads ``cfg.train_manifest`` (paper profile; a missing file is a
    DataError naming it).
    """
    from .. import data

    name = cfg["train_data"]
    n_ids, lo, hi = int(cfg["train_identities"]), int(cfg["min_per_identity"]), int(cfg["max_per_identity"])
    if name == "rec":
        return rec_faceset(_user_file(cfg["train_manifest"], "training set (MXNet RecordIO train.rec + "
                                      "train.idx, e.g. ms1m/train.rec; see data_manifests/train_rec.yaml)"),
                           n_ids, hi), None
    if name not in ("celeba_id299", "celeba10k", "synthetic"):
        raise ParameterError(f"train_data must be celeba_id299, celeba10k, synthetic or rec, got {name!r}")
    if name != "synthetic" and data.available(name):
        limit = None if name == "celeba_id299" else n_ids * 8  # id299 is prepared whole once, then cached
        faces = data.load(name, limit=limit, seed=seed)
        return select_identities(faces, n_ids, lo, hi, seed), None
    from .. import faceworld

    faces = faceworld.make_faceset(n_ids, int(cfg["synthetic_per_identity"]), seed=seed, size=112)
    if name == "synthetic":
        note = f"this profile trains on {n_ids} synthetic-world identities (fast, no data preparation)"
    else:
        note = (f"real {name} is absent: training on {n_ids} synthetic-world identities instead; "
                "numbers are not comparable with the real-data run")
    return select_identities(faces, n_ids, lo, hi, seed), note


def _user_file(rel: str, what: str) -> Path:
    """A user-supplied file: absolute, or relative to one of the data roots; DataError when absent."""
    from .. import data

    path = Path(rel)
    cands = [path] if path.is_absolute() else [r / path for r in data.roots()]
    for c in cands:
        if c.exists():
            return c
    where = ", ".join(str(c) for c in cands) or f"{rel} (no data root set: export FACESTUDY_DATA)"
    raise DataError(f"paper profile: {what} not found at {where}. Put the file there (see data_manifests/) "
                    "or run profile='default'")


def check_user_files(cfg: Any) -> None:
    """Paper profile: fail at once (DataError naming the file and where to put it) when a user-supplied
    teacher checkpoint or training set named in ``cfg`` is absent (chapter 5)."""
    if cfg["teacher_checkpoint"]:
        _user_file(cfg["teacher_checkpoint"], f"{cfg['teacher_arch']} teacher checkpoint (arcface_torch state "
                   "dict; see data_manifests/fr_checkpoints.yaml)")
    if cfg["train_data"] == "rec":
        _user_file(cfg["train_manifest"], "training set (MXNet RecordIO train.rec + train.idx; see "
                   "data_manifests/train_rec.yaml)")


def rec_faceset(path: Path, n_identities: int, max_per_identity: int) -> Any:
    """The first ``n_identities`` identities of an InsightFace ``train.rec`` as a FaceSet (paper profile).

    Records are grouped by identity in InsightFace's sets, so reading stops after enough identities.
    """
    from ..data import FaceSet, RecordIOReader

    images, labels = [], []
    seen: dict[int, int] = {}
    from ..data.formats import unpack_record

    with RecordIOReader(path) as rec:
        keys = sorted(rec.keys)
        first = unpack_record(rec.read(keys[0]))[0] if keys else {"flag": 0}
        if first["flag"] > 0 and len(keys) > 1:  # InsightFace: record 0 is a header whose label[0] ends the
            end = int(first["label"][0])           # image records; the per-identity records follow them
            keys = [k for k in keys[1:] if k < end] if end > 1 else keys[1:]
        for key in keys:
            header, img = rec.read_image(key)
            lab = header["label"]
            lab = int(lab[0] if np.ndim(lab) else lab)
            if lab not in seen and len(seen) >= n_identities:
                break
            seen[lab] = seen.get(lab, 0) + 1
            if seen[lab] <= max_per_identity:
                images.append(img)
                labels.append(lab)
    if not images:
        raise DataError(f"{path}: no face records read")
    meta = pd.DataFrame({"identity": [str(v) for v in labels]})
    return FaceSet(np.stack(images), np.asarray(labels), meta, name=path.parent.name, source="real").relabel()


def load_eval_pairs(cfg: Any, seed: int = 0, n_per_fold: int | None = None
                    ) -> tuple[Any, pd.DataFrame, str | None]:
    """Real LFW View-2 pairs (``n_per_fold``, default ``cfg.lfw_pairs_per_fold``, per fold), else synthetic
    pairs: (faces, pairs, note)."""
    from .. import data

    n = int(cfg["lfw_pairs_per_fold"] if n_per_fold is None else n_per_fold)
    if data.available("lfw"):
        faces, pairs = data.lfw_pairs(n_per_fold=None if n >= 600 else n)
        return faces, pairs, None
    from .. import faceworld

    faces = faceworld.make_faceset(max(20, n), 4, seed=seed + 7919, size=112, identity_offset=100000)
    pairs = faceworld.synthetic_pairs(faces, 10 * n, seed=seed)
    return faces, pairs, "real LFW is absent: evaluating on synthetic-world pairs instead"


def load_teacher(cfg: Any, device: Any = "cpu") -> Any:
    """The frozen teacher: ``pretrained(cfg.teacher)``, or a user checkpoint (paper profile), in eval mode on
    ``device`` (the run's: its trunk features are computed there)."""
    from .. import models

    ckpt = cfg["teacher_checkpoint"]
    if ckpt:
        path = _user_file(ckpt, f"{cfg['teacher_arch']} teacher checkpoint (arcface_torch state dict, "
                                "see data_manifests/fr_checkpoints.yaml)")
        teacher = models.create(cfg["teacher_arch"], embedding_dim=512)
        teacher.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    else:
        teacher = models.pretrained(cfg["teacher"])
    teacher.to(device).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


# ---------------------------------------------------------------------------------------- training
@dataclass
class RowResult:
    """One trained student: its row name, config, verification result, curves and timings (chapter 5)."""

    name: str
    config: DistillConfig
    model: Any
    history: pd.DataFrame
    train_seconds: float
    result: Any = None
    cos_teacher: float = float("nan")
    extra: dict = field(default_factory=dict)


def train_row(name: str, dcfg: DistillConfig, *, cfg: Any, train_set: Any, targets: TeacherEmbeddings,
              device: Any = "cpu", seed: int = 0, target: str = "sum", augment: bool = True) -> RowResult:
    """Train one student with SphereFace2 + the row's distillation term (chapter 5).

    Same ``seed`` -> same student initialisation and same data order for every row.
    """
    from .. import losses, models, train
    from ..runtime import seed_everything

    if len(targets) != len(train_set):
        raise ParameterError(f"teacher targets cover {len(targets)} images but the training set has "
                             f"{len(train_set)}: build them with teacher_embeddings(teacher, train_set.images)")
    seed_everything(seed)
    student = models.create(cfg["student"], embedding_dim=targets.dim, input_size=int(cfg["student_size"]),
                            **dict(cfg["student_kw"]))
    head = losses.make_head(cfg["fr_head"], targets.dim, int(train_set.labels.max()) + 1)
    extra = None
    if dcfg.method != "none":
        kd = DistillLoss(dcfg, int(cfg["batch_size"]), targets.dim)
        extra = as_extra_loss(TargetLookup(kd, targets.target(target)))
    t0 = time.perf_counter()
    hist = train.fit(student, head, train_set, epochs=int(cfg["epochs"]), batch_size=int(cfg["batch_size"]),
                     lr=float(cfg["lr"]), device=device, extra_loss=extra, seed=seed, progress=False,
                     augment=train.random_hflip if augment else None, grad_clip=5.0)
    return RowResult(name, dcfg, student, hist.to_frame(), time.perf_counter() - t0)


def mean_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean cosine between matching rows of two embedding tables (student-teacher agreement)."""
    return float(torch.nn.functional.cosine_similarity(a.float(), b.float(), dim=1).mean())


def evaluate_row(row: RowResult, faces: Any, pairs: pd.DataFrame,
                 teacher_emb: torch.Tensor | None = None) -> RowResult:
    """Flip-sum embeddings of the pair images -> 10-fold verification; also the student-teacher cosine."""
    from .. import eval as fseval

    emb = row.model.embed(faces.images, batch_size=128, flip=True)
    row.result = fseval.verification(emb, pairs)
    if teacher_emb is not None:
        row.cos_teacher = mean_cosine(emb, teacher_emb)
    return row


def results_table(rows: Sequence[RowResult], teacher_result: Any = None,
                  labels: dict[str, str] | None = None) -> pd.DataFrame:
    """One line per row: LFW accuracy +- std, TAR@FAR 1e-3 / 1e-2, AUC, student-teacher cosine, time."""
    recs = []
    if teacher_result is not None:
        recs.append({"row": "teacher", "accuracy": teacher_result.accuracy, "acc_std": teacher_result.accuracy_std,
                     "tar@1e-3": teacher_result.tar_at_far.get(1e-3, np.nan),
                     "tar@1e-2": teacher_result.tar_at_far.get(1e-2, np.nan), "auc": teacher_result.auc,
                     "cos_teacher": 1.0, "train_s": np.nan})
    for r in rows:
        res = r.result
        recs.append({"row": r.name, "accuracy": res.accuracy, "acc_std": res.accuracy_std,
                     "tar@1e-3": res.tar_at_far.get(1e-3, np.nan), "tar@1e-2": res.tar_at_far.get(1e-2, np.nan),
                     "auc": res.auc, "cos_teacher": r.cos_teacher, "train_s": r.train_seconds})
    df = pd.DataFrame(recs).set_index("row")
    if labels:
        df.insert(0, "what", [labels.get(i, "") for i in df.index])
    return df


# ------------------------------------------------------------------------------------------- speed
def throughput(model: Any, images: np.ndarray, batch_size: int = 32, repeats: int = 2) -> float:
    """Inference images per second of ``model.embed`` on ``images`` (best of ``repeats``; chapter 5)."""
    if len(images) == 0:
        raise ParameterError("throughput needs at least one image")
    model.embed(images[: min(len(images), batch_size)], batch_size=batch_size)  # warm-up
    best = float("inf")
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        model.embed(images, batch_size=batch_size)
        best = min(best, time.perf_counter() - t0)
    return len(images) / best

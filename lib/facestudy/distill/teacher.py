"""Teacher side of chapter 5: cached teacher embeddings (with flips) and the trainer glue.

A frozen teacher embeds every training image once (original and mirrored); the distillation terms then
read the rows of the current batch by dataset index, so each training run costs only the student's
forward/backward pass. Using the flip-sum teacher embedding as the target (default) makes the target
independent of whether the trainer mirrored the student's input.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ParameterError

TARGETS = ("sum", "orig", "flip")


@dataclass
class TeacherEmbeddings:
    """Teacher embeddings of one FaceSet: ``orig`` and ``flip`` (N, D), L2-normalised (chapter 5).

    ``target(kind)`` gives the distillation target: ``"sum"`` (flip-sum, normalised; default), ``"orig"``
    or ``"flip"``. ``key`` identifies teacher weights + images (the cache key).
    """

    orig: torch.Tensor
    flip: torch.Tensor
    key: str = ""

    def __len__(self) -> int:
        return self.orig.shape[0]

    @property
    def dim(self) -> int:
        return int(self.orig.shape[1])

    def target(self, kind: str = "sum") -> torch.Tensor:
        if kind not in TARGETS:
            raise ParameterError(f"teacher target must be one of {TARGETS}, got {kind!r}")
        if kind == "orig":
            return self.orig
        if kind == "flip":
            return self.flip
        return F.normalize(self.orig + self.flip, dim=1)


def images_hash(images: np.ndarray) -> str:
    """sha1 of a uint8 image array (shape included): part of the teacher-cache key."""
    h = hashlib.sha1(str(images.shape).encode())
    h.update(np.ascontiguousarray(images).tobytes())
    return h.hexdigest()[:16]


def _cache_root() -> Path:
    from ..data import cache_dir  # lazy: the data layer is heavier than this module

    return cache_dir() / "distill"


def teacher_embeddings(teacher: nn.Module, images: np.ndarray, *, batch_size: int = 128,
                       cache: bool = True, tag: str = "") -> TeacherEmbeddings:
    """Embed ``images`` (uint8 NHWC) and their mirror images with the frozen ``teacher`` (chapter 5).

    Results are cached under ``<FACESTUDY_CACHE>/distill/`` keyed by the teacher's weights, its
    preprocessing and the images' hash, so re-running a chapter never recomputes them. ``teacher`` must be
    a :class:`facestudy.models.FaceModel` (it needs ``embed``).
    """
    if not hasattr(teacher, "embed"):
        raise ParameterError("teacher must be a facestudy FaceModel with .embed(images); got "
                             f"{type(teacher).__name__}")
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ParameterError(f"teacher_embeddings needs uint8 (N, H, W, 3) images, got {images.dtype} "
                             f"{images.shape}")
    wh = teacher.weights_hash() if hasattr(teacher, "weights_hash") else "nohash"
    sig = teacher.preprocess_signature() if hasattr(teacher, "preprocess_signature") else ""
    key = hashlib.sha1(f"{tag}|{wh}|{sig}|{images_hash(images)}".encode()).hexdigest()[:20]
    path = _cache_root() / f"teacher_{key}.pt" if cache else None
    if path is not None and path.exists():
        try:
            data = torch.load(path, weights_only=True)
            return TeacherEmbeddings(data["orig"], data["flip"], key)
        except Exception as exc:  # noqa: BLE001 - a corrupt cache file is reported by path and recomputed
            from ..data.store import _warn_rebuild

            _warn_rebuild(path, exc, "teacher embedding cache")
    for p in teacher.parameters():
        p.requires_grad_(False)
    orig = teacher.embed(images, batch_size=batch_size)
    flip = teacher.embed(np.ascontiguousarray(images[:, :, ::-1]), batch_size=batch_size)
    out = TeacherEmbeddings(orig.float().cpu(), flip.float().cpu(), key)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save({"orig": out.orig, "flip": out.flip}, tmp)
        tmp.replace(path)
    return out


class TargetLookup:
    """Distillation glue for a trainer: batch indices -> teacher targets -> :class:`DistillLoss` (chapter 5).

    ``lookup(student_emb, index)`` returns the weighted KD loss for a batch whose rows are dataset
    positions ``index``. ``history`` keeps the per-step parts (ILED, RPSD, mean student-teacher cosine).
    """

    def __init__(self, distill: nn.Module, targets: torch.Tensor) -> None:
        self.distill = distill
        self.targets = targets.detach().float()
        self.history: list[dict[str, float]] = []

    def __call__(self, student_emb: torch.Tensor, index: Any) -> torch.Tensor:
        idx = torch.as_tensor(index, dtype=torch.long).cpu()
        if idx.numel() != student_emb.shape[0]:
            raise ParameterError(f"got {idx.numel()} dataset indices for {student_emb.shape[0]} embeddings")
        if int(idx.max()) >= len(self.targets) or int(idx.min()) < 0:
            raise ParameterError(f"dataset index out of range for {len(self.targets)} cached teacher targets: "
                                 "the teacher cache must be built on the same FaceSet the student trains on")
        loss = self.distill(student_emb, self.targets[idx].to(student_emb.device))
        self.history.append(dict(self.distill.last))
        return loss


def as_extra_loss(lookup: TargetLookup) -> Callable[[dict], tuple[torch.Tensor, dict[str, float]]]:
    """Adapt :class:`TargetLookup` to ``facestudy.train.fit(extra_loss=...)`` (chapter 5).

    ``fit`` calls the hook with its batch dict (``embeddings`` = raw student embeddings, ``index`` = FaceSet
    rows) and adds the returned loss to the SphereFace2 loss; the logs become columns of the history.
    """

    def extra_loss(batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        missing = [k for k in ("embeddings", "index") if k not in batch]
        if missing:
            raise ParameterError(f"the trainer's extra_loss batch lacks {missing}; got keys {sorted(batch)}")
        loss = lookup(batch["embeddings"].float(), batch["index"])
        return loss, dict(lookup.distill.last)

    return extra_loss

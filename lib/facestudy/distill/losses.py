"""Distillation losses of chapter 5 (unified knowledge distillation: ILED + RPSD) and their baselines.

The paper (Mishra and Uikey, IJCB 2025, arXiv 2508.11376) has no public code and only its abstract could be
read, so the two losses below are **reconstructed** from the hyper-parameters it reports and from the
"rescaled softplus" form of SphereFace2 (METHODS.md §5.2-5.3, ambiguity 17). Every point where the paper's
equation is unknown is a parameter here, and the chapter labels the result "reconstructed".

All functions take student and teacher embeddings ``(B, D)``; they L2-normalise both and never let a
gradient reach the teacher (the teacher side is detached).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import ParameterError

__all__ = [
    "ILEDConfig", "RPSDConfig", "iled_loss", "iled_weights", "rpsd_loss", "l2_kd_loss", "cosine_kd_loss",
    "relational_kd_loss", "relation_matrices",
]


def _pair(student: torch.Tensor, teacher: torch.Tensor, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    if student.ndim != 2 or teacher.ndim != 2 or student.shape != teacher.shape:
        raise ParameterError(
            f"{name}: student and teacher embeddings must both be (B, D) with equal shapes, got "
            f"{tuple(student.shape)} and {tuple(teacher.shape)}; project the student to the teacher's "
            "dimension first (DistillLoss(project=True) or a student with the teacher's embedding_dim)")
    return F.normalize(student, dim=1), F.normalize(teacher.detach(), dim=1)


# --------------------------------------------------------------------------------------------- ILED
@dataclass(frozen=True)
class ILEDConfig:
    """ILED hyper-parameters (chapter 5). ``r`` scale, ``s`` target cosine, ``b`` bias (reconstructed).

    ``b_placement``: where the paper's b sits -- ``"bias"`` (default, inside the softplus like SphereFace2:
    ``softplus(r(s - c) + b)``) or ``"margin"`` (added to the target: ``softplus(r(s + b - c))``).
    """

    r: float = 40.0
    s: float = 0.9
    b: float = 0.1
    b_placement: str = "bias"

    def __post_init__(self) -> None:
        if self.r <= 0:
            raise ParameterError(f"ILED scale r must be > 0, got {self.r}")
        if not -1.0 <= self.s <= 1.0:
            raise ParameterError(f"ILED target cosine s must lie in [-1, 1], got {self.s}")
        if self.b_placement not in ("bias", "margin"):
            raise ParameterError(f"ILED b_placement must be 'bias' or 'margin', got {self.b_placement!r}")

    def argument(self, cos: torch.Tensor) -> torch.Tensor:
        """The softplus argument for student-teacher cosines ``cos``."""
        if self.b_placement == "bias":
            return self.r * (self.s - cos) + self.b
        return self.r * (self.s + self.b - cos)


def iled_loss(student: torch.Tensor, teacher: torch.Tensor, cfg: ILEDConfig = ILEDConfig()) -> torch.Tensor:
    """Instance-level embedding distillation with dynamic hard mining (chapter 5, reconstructed).

    ``L = mean_i (1/r) * softplus(r (s - c_i) + b)`` with ``c_i = cos(S(x_i), T(x_i))``. Its gradient with
    respect to ``c_i`` is ``-sigmoid(r (s - c_i) + b) / B``: samples the student has not yet aligned
    (``c_i < s``) get a weight near 1, aligned ones are down-weighted exponentially -- the "hard mining".
    """
    s, t = _pair(student, teacher, "iled_loss")
    cos = (s * t).sum(dim=1)
    return (F.softplus(cfg.argument(cos)) / cfg.r).mean()


def iled_weights(cos: torch.Tensor, cfg: ILEDConfig = ILEDConfig()) -> torch.Tensor:
    """ILED's per-sample gradient weight ``sigmoid(r (s - c) + b)`` = ``-B * dL/dc`` (chapter 5)."""
    return torch.sigmoid(cfg.argument(cos))


# --------------------------------------------------------------------------------------------- RPSD
@dataclass(frozen=True)
class RPSDConfig:
    """RPSD hyper-parameters (chapter 5, reconstructed).

    ``t`` mining threshold on ``|S^S - S^T|``; ``r``, ``b`` the rescaled softplus (paper's r' and b');
    ``form``: ``"softplus"`` (default), ``"l2"`` or ``"l1"`` penalty on mined pairs; ``include_batch``:
    add the in-batch B x B relations to the bank relations; ``mining``: keep only pairs above ``t``
    (``False`` averages over all pairs).
    """

    t: float = 0.05
    r: float = 60.0
    b: float = 1.0
    form: str = "softplus"
    include_batch: bool = False
    mining: bool = True

    def __post_init__(self) -> None:
        if self.r <= 0:
            raise ParameterError(f"RPSD scale r' must be > 0, got {self.r}")
        if self.t < 0:
            raise ParameterError(f"RPSD mining threshold t must be >= 0, got {self.t}")
        if self.form not in ("softplus", "l2", "l1"):
            raise ParameterError(f"RPSD form must be 'softplus', 'l2' or 'l1', got {self.form!r}")


def relation_matrices(student: torch.Tensor, teacher: torch.Tensor, bank: torch.Tensor | None,
                      include_batch: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine relations of student and teacher batches to reference embeddings (chapter 5).

    References are the (detached, normalised) ``bank`` rows, plus the current teacher batch when
    ``include_batch`` is true or the bank is empty. Returns ``(S^S, S^T)``, both ``(B, K)``. With the batch
    as reference, the student side uses its own batch (student-student relations vs teacher-teacher).
    """
    s, t = _pair(student, teacher, "relation_matrices")
    empty = bank is None or bank.shape[0] == 0
    parts_s, parts_t = [], []
    if include_batch or empty:
        parts_s.append(s @ s.T)
        parts_t.append(t @ t.T)
    if not empty:
        m = F.normalize(bank.detach(), dim=1)
        if m.shape[1] != t.shape[1]:
            raise ParameterError(f"memory bank rows have dimension {m.shape[1]}, embeddings {t.shape[1]}")
        parts_s.append(s @ m.T)
        parts_t.append(t @ m.T)
    return torch.cat(parts_s, dim=1), torch.cat(parts_t, dim=1)


def rpsd_loss(student: torch.Tensor, teacher: torch.Tensor, bank: torch.Tensor | None = None,
              cfg: RPSDConfig = RPSDConfig()) -> torch.Tensor:
    """Relation-preserving similarity distillation with sample mining (chapter 5, reconstructed).

    ``d_ij = |S^S_ij - S^T_ij|`` over the relation matrices of :func:`relation_matrices`; pairs with
    ``d_ij > t`` are mined and ``L = mean_mined (1/r') softplus(r' (d_ij - t) + b')``. No mined pair gives
    a zero loss that still carries a (zero) gradient. In-batch diagonal entries (self-similarity, always
    equal) are excluded.
    """
    ss, st = relation_matrices(student, teacher, bank, cfg.include_batch)
    d = (ss - st).abs()
    B = student.shape[0]
    valid = torch.ones_like(d, dtype=torch.bool)
    if cfg.include_batch or bank is None or bank.shape[0] == 0:
        valid[:, :B] &= ~torch.eye(B, dtype=torch.bool, device=d.device)
    mask = valid & (d > cfg.t) if cfg.mining else valid
    if not bool(mask.any()):
        return d.sum() * 0.0
    dm = d[mask]
    if cfg.form == "softplus":
        shift = dm - cfg.t if cfg.mining else dm
        per = F.softplus(cfg.r * shift + cfg.b) / cfg.r
    elif cfg.form == "l2":
        per = dm.pow(2)
    else:
        per = dm
    return per.mean()


# ---------------------------------------------------------------------------------------- baselines
def l2_kd_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Plain feature distillation: mean squared L2 distance of normalised embeddings (chapter 5 baseline)."""
    s, t = _pair(student, teacher, "l2_kd_loss")
    return (s - t).pow(2).sum(dim=1).mean()


def cosine_kd_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Cosine feature distillation ``mean(1 - cos)`` (chapter 5 baseline, no mining)."""
    s, t = _pair(student, teacher, "cosine_kd_loss")
    return (1.0 - (s * t).sum(dim=1)).mean()


def relational_kd_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """In-batch relational KD without a bank: MSE of the B x B cosine matrices, off-diagonal (chapter 5)."""
    s, t = _pair(student, teacher, "relational_kd_loss")
    B = s.shape[0]
    if B < 2:
        raise ParameterError("relational_kd_loss needs a batch of at least 2 embeddings")
    off = ~torch.eye(B, dtype=torch.bool, device=s.device)
    return ((s @ s.T) - (t @ t.T))[off].pow(2).mean()

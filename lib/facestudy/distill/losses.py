"""Distillation losses of chapter 5 (unified knowledge distillation: ILED + RPSD) and their baselines.

The paper (Mishra and Uikey, IJCB 2025, arXiv 2508.11376) has no public code and only its abstract could be
read, so the two losses below are **reconstructed** from the hyper-parameters it reports and from the
"rescaled softplus" form of SphereFace2 (METHODS.md §5.2-5.3, ambiguity 17). Every point where the paper's
equation is unknown is a parameter here, and the chapter labels the result "reconstructed".

All functions take student and teacher embeddings ``(B, D)``; they L2-normalise both (except the raw L2
baseline, which compares unnormalised embeddings) and never let a gradient reach the teacher (the teacher
side is detached).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import ParameterError

__all__ = [
    "ILEDConfig", "RPSDConfig", "iled_loss", "iled_weights", "rpsd_loss", "l2_kd_loss", "cosine_kd_loss",
    "relational_kd_loss", "relation_matrices", "rpsd_mask", "BANKS", "REFERENCES",
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
BANKS = ("student", "teacher")
REFERENCES = ("bank", "batch")


@dataclass(frozen=True)
class RPSDConfig:
    """RPSD hyper-parameters (chapter 5, reconstructed).

    ``t`` mining threshold on ``|S^S - S^T|``; ``r``, ``b`` the rescaled softplus (paper's r' and b');
    ``form``: ``"softplus"`` (default), ``"l2"`` or ``"l1"`` penalty on mined pairs; ``mining``: keep only
    pairs above ``t`` (``False`` averages over all pairs).

    ``bank`` says what the reference embeddings are, and so which *relation type* RPSD compares:

    - ``"student"`` (default, the paper's most likely reading: its summary names "stale embeddings" in the
      bank as a risk, which only a bank of *student* embeddings can have -- the teacher is frozen): two
      FIFO banks of the same past images, one of student and one of teacher embeddings;
      ``S^S = S M_S^T`` and ``S^T = T M_T^T`` are *intra-model* relations, unchanged when the student's
      whole embedding space is rotated (rotation-invariant, like classic relational KD);
    - ``"teacher"``: one bank of teacher embeddings; ``S^S = S M_T^T`` and ``S^T = T M_T^T`` are
      *cross-model* relations, which anchor the student in the teacher's frame (not rotation-invariant).

    ``references``: ``"bank"`` (default) or ``"batch"`` (the other images of the current batch in place of
    the bank, same relation type: the one-factor "no bank" ablation); ``include_batch`` adds the in-batch
    references to the bank's.
    """

    t: float = 0.05
    r: float = 60.0
    b: float = 1.0
    form: str = "softplus"
    include_batch: bool = False
    mining: bool = True
    bank: str = "student"
    references: str = "bank"

    def __post_init__(self) -> None:
        if self.r <= 0:
            raise ParameterError(f"RPSD scale r' must be > 0, got {self.r}")
        if self.t < 0:
            raise ParameterError(f"RPSD mining threshold t must be >= 0, got {self.t}")
        if self.form not in ("softplus", "l2", "l1"):
            raise ParameterError(f"RPSD form must be 'softplus', 'l2' or 'l1', got {self.form!r}")
        if self.bank not in BANKS:
            raise ParameterError(f"RPSD bank must be one of {BANKS}, got {self.bank!r}")
        if self.references not in REFERENCES:
            raise ParameterError(f"RPSD references must be one of {REFERENCES}, got {self.references!r}")

    @property
    def relation(self) -> str:
        """``"intra"`` (student bank) or ``"cross"`` (teacher bank)."""
        return "intra" if self.bank == "student" else "cross"


def relation_matrices(student: torch.Tensor, teacher: torch.Tensor, bank: torch.Tensor | None = None,
                      include_batch: bool = False, *, bank_student: torch.Tensor | None = None,
                      relation: str = "cross") -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine relations of the student and teacher batches to reference embeddings (chapter 5).

    ``bank`` holds past *teacher* embeddings, ``bank_student`` the student's embeddings of the same past
    images (needed for ``relation="intra"``). ``relation="cross"``: both batches are compared with the
    teacher's references (``S^S = S M_T^T``, ``S^T = T M_T^T``); ``"intra"``: each network with its own
    (``S^S = S M_S^T``, ``S^T = T M_T^T``). The current batch is used as references (same relation type:
    ``S S^T`` vs ``T T^T`` intra, ``S T^T`` vs ``T T^T`` cross) when ``include_batch`` is true or there is
    no bank; those columns come first. Returns ``(S^S, S^T)``, both ``(B, K)``.
    """
    if relation not in ("intra", "cross"):
        raise ParameterError(f"relation must be 'intra' or 'cross', got {relation!r}")
    s, t = _pair(student, teacher, "relation_matrices")
    empty = bank is None or bank.shape[0] == 0
    parts_s, parts_t = [], []
    if include_batch or empty:
        parts_s.append(s @ (s if relation == "intra" else t).T)
        parts_t.append(t @ t.T)
    if not empty:
        mt = F.normalize(bank.detach(), dim=1)
        if mt.shape[1] != t.shape[1]:
            raise ParameterError(f"memory bank rows have dimension {mt.shape[1]}, embeddings {t.shape[1]}")
        if relation == "intra":
            if bank_student is None or bank_student.shape != bank.shape:
                raise ParameterError("intra-model relations need the student bank (bank_student) with the "
                                     "teacher bank's shape: the student's embeddings of the same past images")
            ms = F.normalize(bank_student.detach(), dim=1)
        else:
            ms = mt
        parts_s.append(s @ ms.T)
        parts_t.append(t @ mt.T)
    return torch.cat(parts_s, dim=1), torch.cat(parts_t, dim=1)


def rpsd_loss(student: torch.Tensor, teacher: torch.Tensor, bank: torch.Tensor | None = None,
              cfg: RPSDConfig = RPSDConfig(), bank_student: torch.Tensor | None = None) -> torch.Tensor:
    """Relation-preserving similarity distillation with sample mining (chapter 5, reconstructed).

    ``d_ij = |S^S_ij - S^T_ij|`` over the relation matrices of :func:`relation_matrices` (relation type
    from ``cfg.bank``; ``bank`` = teacher rows, ``bank_student`` = student rows of the same images); pairs
    with ``d_ij > t`` are mined and ``L = mean_mined (1/r') softplus(r' (d_ij - t) + b')``. No mined pair
    gives a zero loss that still carries a (zero) gradient. In-batch diagonal entries (an image with
    itself) are excluded.
    """
    ss, st = relation_matrices(student, teacher, bank, cfg.include_batch, bank_student=bank_student,
                               relation=cfg.relation)
    d = (ss - st).abs()
    return _rpsd_penalty(d, rpsd_mask(d, student.shape[0], bank, cfg), cfg)


def rpsd_mask(d: torch.Tensor, batch: int, bank: torch.Tensor | None, cfg: RPSDConfig) -> torch.Tensor:
    """Which entries of the relation gap ``d`` RPSD uses: valid (no image with itself) and mined (> t)."""
    valid = torch.ones_like(d, dtype=torch.bool)
    if cfg.include_batch or bank is None or bank.shape[0] == 0:
        valid[:, :batch] &= ~torch.eye(batch, dtype=torch.bool, device=d.device)
    return valid & (d > cfg.t) if cfg.mining else valid


def _rpsd_penalty(d: torch.Tensor, mask: torch.Tensor, cfg: RPSDConfig) -> torch.Tensor:
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
def l2_kd_loss(student: torch.Tensor, teacher: torch.Tensor, normalize: bool = False) -> torch.Tensor:
    """Raw L2 feature distillation (chapter 5 baseline): the mean squared error over all entries,
    ``mean_ij (S(x_i)_j - T(x_i)_j)^2``, of the **unnormalised** embeddings (the student must match the
    teacher's norm too). ``normalize=True`` compares normalised embeddings instead, which is exactly
    ``2 / D x`` :func:`cosine_kd_loss` and so no separate baseline."""
    if student.ndim != 2 or student.shape != teacher.shape:
        raise ParameterError(f"l2_kd_loss: student and teacher embeddings must both be (B, D) with equal "
                             f"shapes, got {tuple(student.shape)} and {tuple(teacher.shape)}")
    if normalize:
        student, teacher = _pair(student, teacher, "l2_kd_loss")
    return (student - teacher.detach()).pow(2).mean()


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

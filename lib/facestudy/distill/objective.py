"""One distillation objective for every row of chapter 5's ablation table.

``DistillLoss(method=...)`` maps a batch of student embeddings and the frozen teacher's embeddings of the
same images to ``lambda_iled * L_ILED + lambda_rpsd * L_RPSD`` (or a baseline), keeps the RPSD memory bank
and logs each term. The FR loss (SphereFace2) is added by the trainer; the total is the paper's
``L = lambda_ILED * L_ILED + lambda_RPSD * L_RPSD + L_FR`` with ``lambda_RPSD = 40`` (the paper's summary;
it does not give lambda_ILED, which defaults to 1).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
from torch import nn

from ..errors import ParameterError
from .bank import MemoryBank
from .losses import (
    ILEDConfig,
    RPSDConfig,
    cosine_kd_loss,
    iled_loss,
    iled_weights,
    l2_kd_loss,
    relational_kd_loss,
    rpsd_loss,
)

METHODS: dict[str, str] = {
    "none": "no distillation (SphereFace2 only)",
    "iled": "ILED: instance-level alignment with rescaled-softplus hard mining",
    "rpsd": "RPSD: relation distillation against a FIFO memory bank, with mining",
    "iled+rpsd": "ILED + RPSD (the paper's unified framework)",
    "rpsd_nobank": "RPSD against the other images of the batch instead of the bank (same relation type)",
    "l2": "raw L2 feature distillation on unnormalised embeddings (baseline)",
    "cosine": "cosine feature distillation, no mining (baseline)",
    "relational": "relational KD: in-batch cosine-matrix MSE, no bank, no mining (baseline)",
}


@dataclass(frozen=True)
class DistillConfig:
    """Everything that defines one distillation row (chapter 5). Defaults are the paper's numbers.

    ``lambda_iled`` weights ILED (not given by the paper: 1), ``lambda_rpsd`` RPSD (the paper's
    lambda_RPSD = 40); ``lambda_baseline`` weights the L2 / cosine / relational baselines; ``bank_multiple``
    sets the bank to ``multiple x batch``; ``rpsd.bank`` says whether it holds student or teacher embeddings.
    """

    method: str = "iled+rpsd"
    iled: ILEDConfig = field(default_factory=ILEDConfig)
    rpsd: RPSDConfig = field(default_factory=RPSDConfig)
    lambda_iled: float = 1.0
    lambda_rpsd: float = 40.0
    lambda_baseline: float = 1.0
    bank_multiple: int = 3

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ParameterError(f"unknown distillation method {self.method!r}; valid: {', '.join(METHODS)}")
        if self.bank_multiple < 1:
            raise ParameterError(f"bank_multiple must be >= 1, got {self.bank_multiple}")

    def with_(self, **changes) -> "DistillConfig":
        """A copy with ``changes``; ``iled_<x>`` / ``rpsd_<x>`` keys change the nested configs."""
        iled = {k[5:]: v for k, v in changes.items() if k.startswith("iled_")}
        rpsd = {k[5:]: v for k, v in changes.items() if k.startswith("rpsd_")}
        rest = {k: v for k, v in changes.items() if not k.startswith(("iled_", "rpsd_"))}
        return replace(self, iled=replace(self.iled, **iled), rpsd=replace(self.rpsd, **rpsd), **rest)


class DistillLoss(nn.Module):
    """The distillation term for one ablation row (chapter 5); see :data:`METHODS`.

    ``forward(student_emb, teacher_emb)`` returns a scalar and stores the parts in ``self.last`` (floats).
    Teacher embeddings are detached on entry. For the bank methods, the current batch (teacher and, detached,
    student embeddings) is pushed into the FIFO banks *after* the relations are computed (so a sample is
    never compared with itself); ``rpsd_nobank`` and ``rpsd.references = "batch"`` use the batch instead.
    The student must embed into the teacher's dimension (build it with ``embedding_dim=teacher_dim``).
    """

    def __init__(self, cfg: DistillConfig, batch_size: int, teacher_dim: int, student_dim: int | None = None
                 ) -> None:
        super().__init__()
        self.cfg = cfg
        student_dim = teacher_dim if student_dim is None else student_dim
        if student_dim != teacher_dim:
            raise ParameterError(f"student embeddings are {student_dim}-d, teacher {teacher_dim}-d: build "
                                 f"the student with embedding_dim={teacher_dim}")
        self.bank = MemoryBank.for_batch(batch_size, teacher_dim, cfg.bank_multiple)  # teacher rows
        self.bank_student = MemoryBank.for_batch(batch_size, teacher_dim, cfg.bank_multiple)  # student rows
        self.last: dict[str, float] = {}

    @property
    def uses_bank(self) -> bool:
        return self.cfg.method in ("rpsd", "iled+rpsd") and self.cfg.rpsd.references == "bank"

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        teacher = teacher.detach().to(student.device, student.dtype)
        zero = student.sum() * 0.0
        parts: dict[str, torch.Tensor] = {}
        m = cfg.method
        if m in ("iled", "iled+rpsd"):
            parts["iled"] = cfg.lambda_iled * iled_loss(student, teacher, cfg.iled)
        if m in ("rpsd", "iled+rpsd") and self.uses_bank:
            bank = self.bank.contents().to(student.device, student.dtype)
            bank_s = self.bank_student.contents().to(student.device, student.dtype)
            parts["rpsd"] = cfg.lambda_rpsd * rpsd_loss(student, teacher, bank, cfg.rpsd, bank_s)
            self.bank.enqueue(teacher)
            self.bank_student.enqueue(student.detach())
        elif m in ("rpsd", "iled+rpsd", "rpsd_nobank"):
            parts["rpsd"] = cfg.lambda_rpsd * rpsd_loss(student, teacher, None, cfg.rpsd)
        if m == "l2":
            parts["l2"] = cfg.lambda_baseline * l2_kd_loss(student, teacher)
        if m == "cosine":
            parts["cosine"] = cfg.lambda_baseline * cosine_kd_loss(student, teacher)
        if m == "relational":
            parts["relational"] = cfg.lambda_baseline * relational_kd_loss(student, teacher)
        total = sum(parts.values(), zero)
        with torch.no_grad():
            cos = torch.nn.functional.cosine_similarity(student, teacher, dim=1)
            unsat = (iled_weights(cos, cfg.iled) < 0.5).float().mean()
        self.last = {k: float(v.detach()) for k, v in parts.items()}
        self.last["kd_total"] = float(total.detach())
        self.last["cos_st"] = float(cos.mean())
        self.last["iled_w_lt_half"] = float(unsat)
        return total

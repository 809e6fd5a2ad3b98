"""facestudy.distill: chapter 5, unified knowledge distillation (ILED + RPSD) for face recognition.

- :mod:`.losses`     ILED, RPSD (both reconstructed, every ambiguity a parameter) and the baselines
                     (L2 feature KD, cosine KD, in-batch relational KD)
- :mod:`.bank`       the FIFO memory bank (student or teacher embeddings) used by RPSD
- :mod:`.objective`  ``DistillLoss``: one configurable term per ablation row
- :mod:`.teacher`    teacher-embedding cache (original + flipped images) and the glue to
                     ``facestudy.train.fit(extra_loss=...)``
- :mod:`.tail`       tail distillation: a re-initialised tail of the teacher trained on its frozen trunk's
                     cached features (the chapter's main regime), c_i snapshots, the low-resolution column
- :mod:`.study`      data, teacher and config helpers; the from-scratch student path (``train_row``)

The FR loss itself (SphereFace2) is ``facestudy.losses.make_head("sphereface2", ...)``.
"""
from . import tail
from .bank import MemoryBank
from .losses import (
    ILEDConfig,
    RPSDConfig,
    cosine_kd_loss,
    iled_loss,
    iled_weights,
    l2_kd_loss,
    relation_matrices,
    relational_kd_loss,
    rpsd_loss,
    rpsd_mask,
)
from .objective import METHODS, DistillConfig, DistillLoss
from .teacher import TargetLookup, TeacherEmbeddings, as_extra_loss, teacher_embeddings

__all__ = [
    "MemoryBank", "ILEDConfig", "RPSDConfig", "cosine_kd_loss", "iled_loss", "iled_weights", "l2_kd_loss",
    "relation_matrices", "relational_kd_loss", "rpsd_loss", "rpsd_mask", "tail", "METHODS", "DistillConfig",
    "DistillLoss", "TargetLookup", "TeacherEmbeddings", "as_extra_loss", "teacher_embeddings",
]

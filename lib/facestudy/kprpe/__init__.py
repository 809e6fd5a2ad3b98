"""Chapter 3 — KP-RPE: keypoint relative position encoding for ViT face recognition (METHODS.md §1).

* :mod:`.buckets`   iRPE product-method bucketing for any patch grid (§1.2)
* :mod:`.rpe`       :class:`KPRPE` (zero-initialised, all ``ctx_type`` variants) and :class:`IRPE` (§1.3)
* :mod:`.keypoints` keypoints that move with the image: flips (left/right swap), affine warps, the
  misaligned / low-resolution evaluation conditions, landmark noise, training augmentation (§1.4, §1.7)
* :mod:`.fusion`    landmark-quality re-weighting and template fusion (§1.5)
* :mod:`.cvlface`   loads CVLface's released KP-RPE ViT checkpoints into our ViT (the ``paper`` profile)
* :mod:`.experiment` the chapter's pipeline: cached MTCNN keypoints, training, evaluation, offset maps

The ViT itself is :mod:`facestudy.models.vit` (``build_vit(..., rpe="kprpe")``).
"""
from . import cvlface
from .buckets import bucket_table, num_buckets, piecewise_index, piecewise_params
from .cvlface import load_cvlface_kprpe
from .fusion import fuse_templates, landmark_quality, nme
from .keypoints import (
    CONDITIONS,
    AugmentSpec,
    ConditionSpec,
    KeypointAugment,
    affine_theta,
    apply_condition,
    augment_batch,
    augment_spec,
    denormalize_keypoints,
    flip_keypoints,
    landmarks_or_template,
    noisy_keypoints,
    normalize_keypoints,
    template_keypoints,
    warp_images,
    warp_keypoints,
)
from .rpe import CTX_TYPES, IRPE, KPRPE, relative_keypoints

__all__ = [
    "bucket_table", "num_buckets", "piecewise_index", "piecewise_params", "fuse_templates",
    "landmark_quality", "nme", "CONDITIONS", "AugmentSpec", "ConditionSpec", "KeypointAugment", "affine_theta",
    "apply_condition", "augment_batch", "augment_spec", "denormalize_keypoints", "flip_keypoints", "noisy_keypoints",
    "normalize_keypoints",
    "landmarks_or_template", "template_keypoints", "warp_images", "warp_keypoints",
    "CTX_TYPES", "IRPE", "KPRPE", "relative_keypoints",
    "cvlface", "load_cvlface_kprpe",
]

"""Keypoints and image transforms that move together (chapter 3, METHODS.md §1.4 and the issue's conditions).

Conventions. Landmarks in pixels are (x, y) as in DESIGN.md, read as continuous image coordinates (pixel
i spans [i, i + 1]; detectors are accurate to about a pixel anyway). Normalised keypoints (what KP-RPE
consumes, and what ``FaceModel.preprocess_keypoints`` produces) are ``p = x / W``, ``y / H``: 0 is the
image's left/top edge, 1 its right/bottom edge, so ``2p - 1`` is exactly the
``grid_sample(align_corners=False)`` coordinate of the same point and a flip is ``p -> 1 - p``.

An affine image transform is given by ``theta`` (B, 2, 3), mapping *output* normalised coordinates
n_out = 2p_out - 1 to *input* coordinates n_in = theta @ [n_out, 1] (the ``affine_grid`` convention).
A keypoint therefore moves by the inverse: n_out = theta⁻¹ (n_in). Horizontal flips also swap the
left/right landmark indices (eyes 0 <-> 1, mouth corners 3 <-> 4), so "left eye" stays the eye on the
image's left.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..data.align import ARCFACE_TEMPLATE_112  # the one ArcFace template
from ..errors import ParameterError

FLIP_ORDER: tuple[int, ...] = (1, 0, 2, 4, 3)
TEMPLATE_NORM = ARCFACE_TEMPLATE_112 / 112.0  # §1.5's reference landmarks (as CVLface: divided by 112)


# ------------------------------------------------------------------ conversions
def normalize_keypoints(landmarks_px, width: int, height: int | None = None) -> np.ndarray:
    """Pixel landmarks (N, K, 2) -> [0, 1] keypoints ``x / W``, ``y / H`` (chapter 3)."""
    lm = np.asarray(landmarks_px, dtype=np.float32)
    if lm.ndim != 3 or lm.shape[-1] != 2:
        raise ParameterError(f"landmarks must be (N, K, 2) pixel (x, y), got shape {lm.shape}")
    h = width if height is None else height
    return lm / np.array([width, h], dtype=np.float32)


def denormalize_keypoints(keypoints, width: int, height: int | None = None) -> np.ndarray:
    """Inverse of :func:`normalize_keypoints`."""
    h = width if height is None else height
    return np.asarray(keypoints, dtype=np.float32) * np.array([width, h], dtype=np.float32)


def template_keypoints(n: int) -> np.ndarray:
    """The ArcFace 5-point template as normalised keypoints for ``n`` images (N, 5, 2)."""
    return np.repeat(normalize_keypoints(ARCFACE_TEMPLATE_112[None], 112), n, axis=0)


def landmarks_or_template(landmarks, width: int, height: int | None = None) -> np.ndarray:
    """(N, 5, 2) pixel landmarks (``FaceSet.landmarks``, NaN where no face was found; None = none at all)
    normalised by the image size, with the alignment template where a face has none."""
    if landmarks is None:
        raise ParameterError("landmarks_or_template needs landmarks (pass template_keypoints(n) for none)")
    lm = np.asarray(landmarks, np.float32)
    ok = np.isfinite(lm).all(axis=(1, 2))
    size = np.array([width, width if height is None else height], np.float32)
    return np.where(ok[:, None, None], lm / size, template_keypoints(len(lm))).astype(np.float32)


def flip_keypoints(keypoints: torch.Tensor | np.ndarray):
    """Mirror normalised keypoints horizontally and swap left/right indices (§1.4)."""
    if isinstance(keypoints, np.ndarray):
        out = keypoints.copy()
        out[..., 0] = 1.0 - out[..., 0]
        return out[:, list(FLIP_ORDER)] if out.shape[1] == 5 else out
    out = keypoints.clone()
    out[..., 0] = 1.0 - out[..., 0]
    return out[:, list(FLIP_ORDER)] if out.shape[1] == 5 else out


# ------------------------------------------------------------------ affine transforms
def affine_theta(scale, angle_deg, tx, ty, flip=None) -> torch.Tensor:
    """theta (B, 2, 3) of a similarity about the image centre: the *content* is scaled by ``scale``, rotated
    by ``angle_deg`` (counter-clockwise on screen) and shifted by (tx, ty) in normalised units (fraction of
    the half-width); ``flip`` (bool per image) mirrors the content first."""
    s = torch.as_tensor(scale, dtype=torch.float32).reshape(-1)
    a = torch.as_tensor(angle_deg, dtype=torch.float32).reshape(-1) * (math.pi / 180.0)
    tx = torch.as_tensor(tx, dtype=torch.float32).reshape(-1)
    ty = torch.as_tensor(ty, dtype=torch.float32).reshape(-1)
    B = max(len(s), len(a), len(tx), len(ty))
    s, a, tx, ty = (v.expand(B) if len(v) == 1 else v for v in (s, a, tx, ty))
    # forward map of content: n_out = s R n_in + t  with R rotating counter-clockwise on screen (y down)
    cos, sin = torch.cos(a), torch.sin(a)
    fwd = torch.zeros(B, 3, 3)
    fwd[:, 0, 0], fwd[:, 0, 1], fwd[:, 0, 2] = s * cos, s * sin, tx
    fwd[:, 1, 0], fwd[:, 1, 1], fwd[:, 1, 2] = -s * sin, s * cos, ty
    fwd[:, 2, 2] = 1.0
    if flip is not None:
        fl = torch.as_tensor(flip, dtype=torch.bool).reshape(-1).expand(B)
        m = torch.eye(3).repeat(B, 1, 1)
        m[fl, 0, 0] = -1.0
        fwd = fwd @ m
    return torch.linalg.inv(fwd)[:, :2, :]


def warp_images(images: torch.Tensor, theta: torch.Tensor, out_size: tuple[int, int] | None = None,
                padding_mode: str = "zeros") -> torch.Tensor:
    """Apply theta to a float (B, C, H, W) batch with bilinear ``grid_sample`` (align_corners=False)."""
    B, C, H, W = images.shape
    oh, ow = out_size or (H, W)
    grid = F.affine_grid(theta.to(images), [B, C, oh, ow], align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode=padding_mode, align_corners=False)


def warp_keypoints(keypoints: torch.Tensor, theta: torch.Tensor, flipped=None) -> torch.Tensor:
    """Move normalised keypoints (B, K, 2) with the image transform theta; swap left/right where
    ``flipped`` (bool per image) so the index order stays image-left/right (§1.4)."""
    B = keypoints.shape[0]
    full = torch.zeros(B, 3, 3, dtype=keypoints.dtype, device=keypoints.device)
    full[:, :2] = theta.to(keypoints)
    full[:, 2, 2] = 1.0
    inv = torch.linalg.inv(full)
    n = keypoints * 2.0 - 1.0
    n_h = torch.cat([n, torch.ones_like(n[..., :1])], dim=-1)  # (B, K, 3)
    out = (n_h @ inv.transpose(1, 2))[..., :2]
    out = (out + 1.0) / 2.0
    if flipped is not None and keypoints.shape[1] == 5:
        fl = torch.as_tensor(flipped, dtype=torch.bool, device=keypoints.device).reshape(-1).expand(B)
        out = torch.where(fl[:, None, None], out[:, list(FLIP_ORDER)], out)
    return out


def to_float(images) -> torch.Tensor:
    """uint8 NHWC (numpy/torch) or uint8 NCHW torch -> float (B, 3, H, W) in [0, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(images)) if isinstance(images, np.ndarray) else images
    if x.ndim != 4:
        raise ParameterError(f"expected a batch of images (B, H, W, 3) or (B, 3, H, W), got {tuple(x.shape)}")
    if x.shape[-1] == 3 and x.shape[1] != 3:
        x = x.permute(0, 3, 1, 2)
    return x.float() / 255.0 if x.dtype == torch.uint8 else x.float()


def to_uint8_nhwc(x: torch.Tensor) -> np.ndarray:
    """float (B, 3, H, W) in [0, 1] -> uint8 NHWC numpy."""
    return (x.clamp(0, 1) * 255.0).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


# ------------------------------------------------------------------ evaluation conditions
CONDITIONS: tuple[str, ...] = ("aligned", "misaligned", "lowres")


@dataclass
class ConditionSpec:
    """Ranges of the evaluation conditions (issue 8): misaligned = random similarity per image
    (scale, rotation, translation as a fraction of the image side); lowres = down to ``lowres_sides`` px
    (of a 112-px face) and back up."""

    scale: tuple[float, float] = (0.8, 1.2)
    rotation: float = 20.0
    translation: float = 0.10
    lowres_sides: tuple[int, int] = (16, 28)


def apply_condition(images, condition: str, seed: int, keypoints=None, spec: ConditionSpec | None = None,
                    indices=None) -> tuple[np.ndarray, np.ndarray | None]:
    """Degrade uint8 NHWC ``images`` by ``condition`` reproducibly (chapter 3's evaluation conditions).

    Each image's random draw depends only on ``seed`` and its index (``indices`` or 0..N-1), so the same
    image gets the same transform in every run and every batch. Returns (images uint8, moved keypoints or
    None); the keypoints are the ground-truth movement, used for checks and the synthetic world.
    """
    if condition not in CONDITIONS:
        raise ParameterError(f"unknown condition {condition!r}; valid: {', '.join(CONDITIONS)}")
    spec = spec or ConditionSpec()
    imgs = np.asarray(images)
    n = len(imgs)
    idx = np.arange(n) if indices is None else np.asarray(indices)
    kp = None if keypoints is None else torch.as_tensor(np.asarray(keypoints), dtype=torch.float32)
    if condition == "aligned" or n == 0:
        return imgs.copy(), None if kp is None else kp.numpy().copy()
    draws = np.stack([np.random.default_rng([int(seed), int(i), 3]).random(4) for i in idx])
    x = to_float(imgs)
    H, W = x.shape[-2:]
    if condition == "misaligned":
        scale = spec.scale[0] + draws[:, 0] * (spec.scale[1] - spec.scale[0])
        angle = (2 * draws[:, 1] - 1) * spec.rotation
        tx = (2 * draws[:, 2] - 1) * spec.translation * 2.0  # fraction of side -> normalised units
        ty = (2 * draws[:, 3] - 1) * spec.translation * 2.0
        theta = affine_theta(scale, angle, tx, ty)
        out = warp_images(x, theta)
        kp_out = None if kp is None else warp_keypoints(kp, theta)
        return to_uint8_nhwc(out), None if kp_out is None else kp_out.numpy()
    lo, hi = spec.lowres_sides
    sides = np.maximum(2, np.round((lo + draws[:, 0] * (hi - lo)) * H / 112.0)).astype(int)  # of a 112 face
    out = torch.empty_like(x)
    for s in np.unique(sides):
        sel = np.where(sides == s)[0]
        small = F.interpolate(x[sel], size=(int(s), int(s)), mode="bilinear",
                              align_corners=False, antialias=True)
        out[sel] = F.interpolate(small, size=(H, W), mode="bilinear", align_corners=False)
    return to_uint8_nhwc(out), None if kp is None else kp.numpy().copy()


def noisy_keypoints(keypoints, alpha: float, seed: int) -> np.ndarray:
    """Landmark noise of the supplement's eq. 12, read as L' = L + α·ε with ε ~ N(0, I) per coordinate
    (normalised units, so α = 0.05 is 5 % of the image side). Reproducible from ``seed``."""
    kp = np.asarray(keypoints, dtype=np.float32)
    if alpha < 0:
        raise ParameterError(f"landmark noise alpha must be >= 0, got {alpha}")
    eps = np.random.default_rng([int(seed), 12]).standard_normal(kp.shape).astype(np.float32)
    return kp + float(alpha) * eps


# ------------------------------------------------------------------ training augmentation (§1.7, scaled)
PHOTOMETRIC_OPS: tuple[str, ...] = ("identity", "brightness", "saturation", "contrast", "sharpness", "equalize",
                                    "grayscale")
DOWNWEIGHTED_OPS: tuple[str, ...] = ("equalize", "grayscale")  # re-drawn, see AugmentSpec.randaug_redraws
SIGNED_OPS: tuple[str, ...] = ("brightness", "saturation", "contrast", "sharpness")  # use the magnitude
BLUR_KINDS: tuple[str, ...] = ("resize", "box", "gaussian")
RESIZE_MODES: tuple[str, ...] = ("nearest", "bilinear", "bicubic", "area")
GRAY_WEIGHTS: tuple[float, float, float] = (0.2989, 0.587, 0.114)  # ITU-R 601 luma, as PIL / torchvision


#: Version of the augmentation code below; part of chapter 3's checkpoint cache key, so bump it whenever a
#: change alters what a given AugmentSpec produces (2: RandAugment, CoarseDropout, box/Gaussian blur).
AUGMENT_VERSION = 2


@dataclass
class AugmentSpec:
    """The §1.7 ``gridsample_v1`` family at a chosen strength (probabilities and ranges), chapter 3.

    Geometry: scale U(``scale``), rotation U(±``rotation``°) with probability ``p_rotate``, flip with
    ``p_flip``, translation U(±``translation``) of the side. Then, per image and in this order:

    - cutout with ``p_cutout``: a share ``p_coarse_dropout`` (5 %) are CoarseDropout, ``dropout_holes``
      (12..20, inclusive) square holes of ``dropout_hole`` × side (16/112: 16 px on a 112-px face) zeroed,
      each hole fully inside the image; the others keep a random-resized-crop region (area 0.2–1, ratio
      3/4–4/3) and zero the rest;
    - blur with ``p_blur``, its kind split ``blur_split`` = (resize, box, gaussian) = (0.8, 0.1, 0.1) as the
      official augmenter (8 of 10 equally likely choices): down-up resize to U(``min_blur_side``, 1) of the
      side with a random interpolation down and another up among ``RESIZE_MODES`` (the reference draws
      among 5 cv2 modes; Lanczos has no torch equivalent); a box blur of k ∈ {1..round(``max_box_kernel``·H)}
      px (1..9 px at 112); a Gaussian of σ ~ U(0, ``max_gaussian_sigma``·H) px (0..4 px at 112);
    - photometric RandAugment with ``p_photometric`` (1.0: the recipe applies it to every image):
      ``randaug_ops`` ops drawn independently from ``PHOTOMETRIC_OPS``; a draw that lands on Equalize or
      Grayscale is re-drawn, at most ``randaug_redraws`` (2) times, and the last draw is kept whatever it
      is; so P(Equalize) = P(Grayscale) = (2/7)³/2 ≈ 1.2 % and each other op 67/343 ≈ 19.5 % per draw. The
      magnitude bin is uniform in ``randaug_bin_range`` = [5, 23) of ``randaug_bins`` = 31 bins over
      [0, ``randaug_max`` = 0.9], with a random sign; the op factor is 1 + signed magnitude (0.34–1.66).
    """

    scale: tuple[float, float] = (0.8, 1.2)
    p_rotate: float = 0.2
    rotation: float = 20.0
    p_flip: float = 0.5
    translation: float = 0.1
    p_cutout: float = 0.2
    p_coarse_dropout: float = 0.05
    dropout_holes: tuple[int, int] = (12, 20)
    dropout_hole: float = 16 / 112
    p_blur: float = 0.2
    min_blur_side: float = 0.2
    blur_split: tuple[float, float, float] = (0.8, 0.1, 0.1)
    max_box_kernel: float = 9 / 112
    max_gaussian_sigma: float = 4 / 112
    p_photometric: float = 1.0
    randaug_ops: int = 2
    randaug_bins: int = 31
    randaug_bin_range: tuple[int, int] = (5, 23)
    randaug_max: float = 0.9
    randaug_redraws: int = 2

    def __post_init__(self) -> None:
        for name in ("p_rotate", "p_flip", "p_cutout", "p_coarse_dropout", "p_blur", "p_photometric",
                     "min_blur_side"):
            v = float(getattr(self, name))
            if not 0.0 <= v <= 1.0:
                raise ParameterError(f"AugmentSpec.{name} must be in [0, 1], got {v}")
        if len(self.blur_split) != 3 or min(self.blur_split) < 0 or abs(sum(self.blur_split) - 1) > 1e-6:
            raise ParameterError(f"AugmentSpec.blur_split must be 3 non-negative shares (resize, box, gaussian) "
                                 f"summing to 1, got {self.blur_split}")
        lo, hi = self.dropout_holes
        if not 0 <= lo <= hi:
            raise ParameterError(f"AugmentSpec.dropout_holes must be (min, max) with 0 <= min <= max, got "
                                 f"{self.dropout_holes}")
        lo, hi = self.randaug_bin_range
        if self.randaug_bins < 2 or not 0 <= lo < hi <= self.randaug_bins:
            raise ParameterError(f"AugmentSpec.randaug_bin_range must be [lo, hi) with 0 <= lo < hi <= "
                                 f"randaug_bins={self.randaug_bins} (>= 2), got {self.randaug_bin_range}")
        if self.randaug_ops < 0 or self.randaug_redraws < 0:
            raise ParameterError(f"AugmentSpec.randaug_ops and randaug_redraws must be >= 0, got "
                                 f"{self.randaug_ops}, {self.randaug_redraws}")


def augment_spec(overrides: dict[str, Any] | None = None) -> AugmentSpec:
    """An :class:`AugmentSpec` from a profile's ``augment`` dict (chapter 3): empty = the full §1.7 recipe;
    lists become tuples; an unknown key is a ParameterError that lists the valid ones."""
    valid = [f.name for f in fields(AugmentSpec)]
    kw = {}
    for k, v in dict(overrides or {}).items():
        if k not in valid:
            raise ParameterError(f"augment: unknown AugmentSpec field {k!r}; valid: {', '.join(valid)}")
        kw[k] = tuple(v) if isinstance(v, list) else v
    return AugmentSpec(**kw)


# -- photometric ops on float (N, 3, H, W) in [0, 1]; ``factor`` (N,) is 1 + signed magnitude (1 = identity)
def _blend(a: torch.Tensor, b: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """f·a + (1 − f)·b clamped to [0, 1]; ``torch.lerp`` is one fused op (~15× faster on CPU than the
    written-out blend) and exact at f = 1 (returns a) and f = 0 (returns b)."""
    f = factor.to(a).view(-1, 1, 1, 1)
    return torch.lerp(b.to(a).expand_as(a), a, f).clamp_(0.0, 1.0)


def grayscale(x: torch.Tensor) -> torch.Tensor:
    """Luma (0.2989 R + 0.587 G + 0.114 B) copied to 3 channels (chapter 3, RandAugment's Grayscale)."""
    w = torch.tensor(GRAY_WEIGHTS, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True).expand_as(x).clone()


def adjust_brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """x · factor (chapter 3, RandAugment's Brightness)."""
    return _blend(x, torch.zeros((), dtype=x.dtype), factor)


def adjust_saturation(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend with the image's grayscale (chapter 3, RandAugment's Saturation; 0 = gray, 1 = unchanged)."""
    return _blend(x, grayscale(x), factor)


def adjust_contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend with the image's mean luma (chapter 3, RandAugment's Contrast)."""
    mean = grayscale(x)[:, :1].mean(dim=(1, 2, 3), keepdim=True)
    return _blend(x, mean, factor)


def _smooth3(x: torch.Tensor) -> torch.Tensor:
    """PIL's SMOOTH filter [[1,1,1],[1,5,1],[1,1,1]]/13 on the interior, border pixels kept."""
    if x.shape[-1] < 3 or x.shape[-2] < 3:
        return x.clone()
    # 3×3 box sum (separable shifted adds: much faster on CPU than conv2d/avg_pool2d) + 4·centre
    rows = x[..., :-2] + x[..., 1:-1] + x[..., 2:]
    box = rows[..., :-2, :] + rows[..., 1:-1, :] + rows[..., 2:, :]
    smooth = x.clone()
    smooth[..., 1:-1, 1:-1] = (box + 4.0 * x[..., 1:-1, 1:-1]) / 13.0
    return smooth


def adjust_sharpness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend with a 3×3 smoothed copy (kernel [[1,1,1],[1,5,1],[1,1,1]]/13, border pixels kept), as PIL's
    ImageEnhance.Sharpness: factor > 1 sharpens, < 1 softens (chapter 3, RandAugment's Sharpness)."""
    return _blend(x, _smooth3(x), factor)


def equalize(x: torch.Tensor) -> torch.Tensor:
    """Per-channel histogram equalisation on 256 levels, PIL's rule (chapter 3, RandAugment's Equalize):
    step = (pixels − count of the last occupied level) // 255, lut[l] = (step // 2 + #pixels below l) //
    step; a channel with step 0 (nearly constant) is left as it is. The output is quantised to 1/255."""
    N, C, H, W = x.shape
    q = (x.reshape(N * C, H * W) * 255.0).round().clamp(0, 255).long()
    hist = torch.zeros(N * C, 256, dtype=torch.long, device=x.device).scatter_add_(1, q, torch.ones_like(q))
    last = 255 - (hist.flip(1) > 0).long().argmax(1, keepdim=True)
    step = (H * W - hist.gather(1, last)) // 255  # (M, 1)
    below = hist.cumsum(1) - hist
    lut = ((below + step // 2) // step.clamp(min=1)).clamp(0, 255)
    lut = torch.where(step > 0, lut, torch.arange(256, device=x.device).expand_as(lut))
    out = lut.gather(1, q).to(x.dtype) / 255.0
    keep = (step == 0).expand_as(out)
    out = torch.where(keep, x.reshape(N * C, H * W), out)
    return out.reshape(N, C, H, W)


def photometric_op(x: torch.Tensor, name: str, factor: torch.Tensor) -> torch.Tensor:
    """One named op of ``PHOTOMETRIC_OPS`` on a batch with per-image ``factor`` (chapter 3, §1.7)."""
    if name not in PHOTOMETRIC_OPS:
        raise ParameterError(f"unknown photometric op {name!r}; valid: {', '.join(PHOTOMETRIC_OPS)}")
    if name == "identity":
        return x
    if name == "equalize":
        return equalize(x)
    if name == "grayscale":
        return grayscale(x)
    return {"brightness": adjust_brightness, "saturation": adjust_saturation, "contrast": adjust_contrast,
            "sharpness": adjust_sharpness}[name](x, factor)


def sample_randaug(draws: torch.Tensor, spec: AugmentSpec | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Turn uniform ``draws`` (B, ops, randaug_redraws + 3) into RandAugment op indices into
    ``PHOTOMETRIC_OPS`` (B, ops) and factors 1 + signed magnitude (B, ops) by :class:`AugmentSpec`'s rule
    (chapter 3, §1.7): first ``randaug_redraws + 1`` columns are op candidates (re-draw while the op is
    Equalize/Grayscale), then the magnitude bin, then the sign."""
    spec = spec or AugmentSpec()
    n_ops = len(PHOTOMETRIC_OPS)
    r = spec.randaug_redraws
    cand = (draws[..., :r + 1] * n_ops).long().clamp(max=n_ops - 1)
    down = torch.tensor([PHOTOMETRIC_OPS.index(o) for o in DOWNWEIGHTED_OPS])
    op = cand[..., 0]
    for j in range(1, r + 1):
        op = torch.where(torch.isin(op, down), cand[..., j], op)
    lo, hi = spec.randaug_bin_range
    bin_ = (lo + (draws[..., r + 1] * (hi - lo)).long()).clamp(max=hi - 1)
    mag = bin_.to(torch.float32) * (spec.randaug_max / (spec.randaug_bins - 1))
    mag = torch.where(draws[..., r + 2] < 0.5, -mag, mag)
    signed = torch.tensor([PHOTOMETRIC_OPS.index(o) for o in SIGNED_OPS])
    mag = torch.where(torch.isin(op, signed), mag, torch.zeros_like(mag))
    return op, 1.0 + mag


def apply_photometric(x: torch.Tensor, op: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Apply per-image photometric ops in sequence: ``op`` (B, k) indices into ``PHOTOMETRIC_OPS``, ``factor``
    (B, k) each op's 1 + signed magnitude (chapter 3, §1.7's RandAugment). Returns a new tensor; keypoints
    are not involved. Vectorised over the batch: in each round every op runs once, on the images that drew
    it (cheaper on CPU than a masked blend over the whole batch, which was measured ~2× slower)."""
    out = x.clone()
    op = op.reshape(len(x), -1).to(x.device)
    factor = factor.reshape(len(x), -1).to(x.device)
    for r in range(op.shape[1]):
        for o, name in enumerate(PHOTOMETRIC_OPS):
            if name == "identity":
                continue
            sel = torch.nonzero(op[:, r] == o).flatten()
            if len(sel):
                out[sel] = photometric_op(out[sel], name, factor[sel, r])
    return out


# -- blur and cutout helpers
def _resize(x: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    if mode in ("bilinear", "bicubic"):
        return F.interpolate(x, size=size, mode=mode, align_corners=False)
    return F.interpolate(x, size=size, mode=mode)


def _box_blur(x: torch.Tensor, k: int) -> torch.Tensor:
    if k <= 1:
        return x
    xp = F.pad(x, ((k - 1) // 2, k // 2, (k - 1) // 2, k // 2), mode="replicate")
    return F.avg_pool2d(xp, k, stride=1)


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    if sigma < 0.1:
        return x
    rad = max(1, int(math.ceil(3.0 * sigma)))
    t = torch.arange(-rad, rad + 1, dtype=x.dtype, device=x.device)
    g = torch.exp(-0.5 * (t / sigma) ** 2)
    g = g / g.sum()
    C = x.shape[1]
    xp = F.pad(x, (rad, rad, rad, rad), mode="replicate")
    xp = F.conv2d(xp, g.view(1, 1, 1, -1).expand(C, 1, 1, -1), groups=C)
    return F.conv2d(xp, g.view(1, 1, -1, 1).expand(C, 1, -1, 1), groups=C)


def _rect_mask(y0: torch.Tensor, x0: torch.Tensor, h: torch.Tensor, w: torch.Tensor, H: int, W: int) -> torch.Tensor:
    """Boolean (..., H, W) masks of the rectangles [y0, y0 + h) × [x0, x0 + w) (broadcast over leading dims)."""
    ys = torch.arange(H)
    xs = torch.arange(W)
    rows = (ys >= y0[..., None]) & (ys < (y0 + h)[..., None])
    cols = (xs >= x0[..., None]) & (xs < (x0 + w)[..., None])
    return rows[..., :, None] & cols[..., None, :]


def coarse_dropout_mask(n_holes: torch.Tensor, hole_u: torch.Tensor, H: int, W: int,
                        hole: float = 16 / 112) -> torch.Tensor:
    """Keep-masks (N, H, W) of CoarseDropout (chapter 3, §1.7): image i loses ``n_holes[i]`` square holes of
    side round(``hole``·H) × round(``hole``·W) at positions from uniform ``hole_u`` (N, max_holes, 2); each
    hole lies fully inside the image. True = kept, False = zeroed."""
    hs, ws = min(H, max(1, round(hole * H))), min(W, max(1, round(hole * W)))
    y0 = (hole_u[..., 0] * (H - hs + 1)).long().clamp(max=H - hs)
    x0 = (hole_u[..., 1] * (W - ws + 1)).long().clamp(max=W - ws)
    rects = _rect_mask(y0, x0, torch.full_like(y0, hs), torch.full_like(x0, ws), H, W)  # (N, K, H, W)
    valid = torch.arange(hole_u.shape[1]) < n_holes.reshape(-1, 1)
    return ~(rects & valid[..., None, None]).any(1)


def augment_batch(images: torch.Tensor, keypoints: torch.Tensor, generator: torch.Generator | None = None,
                  spec: AugmentSpec | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """§1.7's ``gridsample_v1`` on a float (B, 3, H, W) [0, 1] batch with normalised keypoints (chapter 3):
    random similarity + flip (keypoints moved, left/right swapped), cutout (keep-region or CoarseDropout),
    blur (down-up resize / box / Gaussian) and photometric RandAugment, as :class:`AugmentSpec` describes.
    Only the geometry moves keypoints. Every random number is drawn up front in a fixed amount per image,
    so the result depends only on the generator state; ``generator`` None draws from torch's global RNG
    (which ``train.fit`` seeds per epoch)."""
    spec = spec or AugmentSpec()
    B, _, H, W = images.shape
    u = torch.rand(B, 19, generator=generator)
    hole_u = torch.rand(B, max(1, spec.dropout_holes[1]), 2, generator=generator)
    ph = torch.rand(B, spec.randaug_ops, spec.randaug_redraws + 3, generator=generator)
    scale = spec.scale[0] + u[:, 0] * (spec.scale[1] - spec.scale[0])
    angle = torch.where(u[:, 1] < spec.p_rotate, (2 * u[:, 2] - 1) * spec.rotation, torch.zeros(B))
    flip = u[:, 3] < spec.p_flip
    tx = (2 * u[:, 4] - 1) * spec.translation * 2.0
    ty = (2 * u[:, 5] - 1) * spec.translation * 2.0
    theta = affine_theta(scale, angle, tx, ty, flip=flip)
    x = warp_images(images, theta)
    kp = warp_keypoints(keypoints, theta, flipped=flip)
    # cutout: keep a random-resized-crop region and zero the rest, or (p_coarse_dropout) CoarseDropout holes
    cut = torch.nonzero(u[:, 6] < spec.p_cutout).flatten()
    if len(cut):
        c = u[cut]
        area = 0.2 + 0.8 * c[:, 10]
        ratio = torch.exp(math.log(3 / 4) + c[:, 11] * math.log(16 / 9))
        ch = (torch.sqrt(area / ratio) * H).round().long().clamp(1, H)
        cw = (torch.sqrt(area * ratio) * W).round().long().clamp(1, W)
        y0 = (c[:, 12] * (H - ch + 1)).long().clamp(max=H - ch)
        x0 = (c[:, 13] * (W - cw + 1)).long().clamp(max=W - cw)
        keep = _rect_mask(y0, x0, ch, cw, H, W)
        coarse = torch.nonzero(c[:, 9] < spec.p_coarse_dropout).flatten()
        if len(coarse):
            lo, hi = spec.dropout_holes
            n_holes = (lo + (c[coarse, 14] * (hi - lo + 1)).long()).clamp(max=hi)
            keep[coarse] = coarse_dropout_mask(n_holes, hole_u[cut[coarse]], H, W, spec.dropout_hole)
        cut_x = cut.to(x.device)
        x[cut_x] = x[cut_x] * keep[:, None].to(device=x.device, dtype=x.dtype)
    # blur: down-up resize with random interpolations, box or Gaussian (shares spec.blur_split)
    for i in torch.nonzero(u[:, 7] < spec.p_blur).flatten().tolist():
        kind_u, val = float(u[i, 15]), float(u[i, 16])
        xi = x[i:i + 1]
        if kind_u < spec.blur_split[0]:
            f = spec.min_blur_side + val * (1 - spec.min_blur_side)
            side = (max(2, int(H * f)), max(2, int(W * f)))
            down = RESIZE_MODES[min(int(float(u[i, 17]) * len(RESIZE_MODES)), len(RESIZE_MODES) - 1)]
            up = RESIZE_MODES[min(int(float(u[i, 18]) * len(RESIZE_MODES)), len(RESIZE_MODES) - 1)]
            out = _resize(_resize(xi, side, down), (H, W), up).clamp(0, 1)
        elif kind_u < spec.blur_split[0] + spec.blur_split[1]:
            kmax = max(1, round(spec.max_box_kernel * H))
            out = _box_blur(xi, 1 + min(int(val * kmax), kmax - 1))
        else:
            out = _gaussian_blur(xi, val * spec.max_gaussian_sigma * H)
        x[i:i + 1] = out
    # photometric RandAugment
    if spec.randaug_ops > 0 and spec.p_photometric > 0:
        op, factor = sample_randaug(ph, spec)
        active = (u[:, 8] < spec.p_photometric)[:, None]
        op = torch.where(active, op, torch.zeros_like(op))
        if bool((op > 0).any()):
            x = apply_photometric(x, op, factor)
    return x, kp


class KeypointAugment:
    """The trainer's augmentation hook for KP-RPE (chapter 3): ``aug(images, keypoints=kp) -> (images, kp)``
    on a uint8 NCHW batch with pixel landmarks, as :func:`facestudy.train.fit` calls it. Returns float
    images in [0, 1] and the moved pixel landmarks (None stays None: the plain ViT is augmented the same
    way, its keypoints only steer the geometry)."""

    def __init__(self, spec: AugmentSpec | None = None) -> None:
        self.spec = spec or AugmentSpec()

    def __call__(self, images: torch.Tensor, keypoints: torch.Tensor | None = None):
        x = to_float(images)
        H, W = x.shape[-2:]
        scale = torch.tensor([W, H], dtype=torch.float32, device=x.device)
        kp = torch.as_tensor(TEMPLATE_NORM, device=x.device).expand(len(x), 5, 2).clone() if keypoints is None \
            else keypoints.float() / scale
        x, kp = augment_batch(x, kp, None, self.spec)
        return x, (None if keypoints is None else kp * scale)

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
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ParameterError

FLIP_ORDER: tuple[int, ...] = (1, 0, 2, 4, 3)
ARCFACE_TEMPLATE_112 = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                                 [41.5493, 92.3655], [70.7299, 92.2041]], dtype=np.float32)
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
@dataclass
class AugmentSpec:
    """The §1.7 ``gridsample_v1`` family at a chosen strength (probabilities and ranges)."""

    scale: tuple[float, float] = (0.8, 1.2)
    p_rotate: float = 0.2
    rotation: float = 20.0
    p_flip: float = 0.5
    translation: float = 0.1
    p_cutout: float = 0.2
    p_blur: float = 0.2
    min_blur_side: float = 0.2
    p_photometric: float = 0.5


def augment_batch(images: torch.Tensor, keypoints: torch.Tensor, generator: torch.Generator | None = None,
                  spec: AugmentSpec | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Random similarity + flip (keypoints moved and left/right swapped), cutout, down-up blur and
    brightness/contrast jitter on a float (B, 3, H, W) [0, 1] batch with normalised keypoints (chapter 3,
    §1.7 scaled down). ``generator`` None draws from torch's global RNG (which ``train.fit`` seeds)."""
    spec = spec or AugmentSpec()
    B, _, H, W = images.shape
    u = torch.rand(B, 10, generator=generator)
    scale = spec.scale[0] + u[:, 0] * (spec.scale[1] - spec.scale[0])
    angle = torch.where(u[:, 1] < spec.p_rotate, (2 * u[:, 2] - 1) * spec.rotation, torch.zeros(B))
    flip = u[:, 3] < spec.p_flip
    tx = (2 * u[:, 4] - 1) * spec.translation * 2.0
    ty = (2 * u[:, 5] - 1) * spec.translation * 2.0
    theta = affine_theta(scale, angle, tx, ty, flip=flip)
    x = warp_images(images, theta)
    kp = warp_keypoints(keypoints, theta, flipped=flip)
    # cutout: keep a random region, zero the rest
    cut = torch.nonzero(u[:, 6] < spec.p_cutout).flatten()
    for i in cut.tolist():
        r = torch.rand(4, generator=generator)
        area = 0.2 + 0.8 * float(r[0])
        ratio = math.exp(math.log(3 / 4) + float(r[1]) * math.log(16 / 9))
        ch = min(H, max(1, int(round(math.sqrt(area / ratio) * H))))
        cw = min(W, max(1, int(round(math.sqrt(area * ratio) * W))))
        y0 = int(float(r[2]) * (H - ch + 1))
        x0 = int(float(r[3]) * (W - cw + 1))
        mask = torch.zeros(H, W, dtype=x.dtype)
        mask[y0:y0 + ch, x0:x0 + cw] = 1
        x[i] = x[i] * mask
    blur = torch.nonzero(u[:, 7] < spec.p_blur).flatten()
    for i in blur.tolist():
        f = spec.min_blur_side + float(torch.rand(1, generator=generator)) * (1 - spec.min_blur_side)
        side = (max(4, int(H * f)), max(4, int(W * f)))
        small = F.interpolate(x[i:i + 1], size=side, mode="bilinear", align_corners=False, antialias=True)
        x[i:i + 1] = F.interpolate(small, size=(H, W), mode="bilinear", align_corners=False)
    photo = u[:, 8] < spec.p_photometric
    if photo.any():
        r = torch.rand(B, 2, generator=generator)
        bright = 1 + (2 * r[:, 0] - 1) * 0.3
        contrast = 1 + (2 * r[:, 1] - 1) * 0.3
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        jittered = ((x - mean) * contrast.view(B, 1, 1, 1) + mean) * bright.view(B, 1, 1, 1)
        x = torch.where(photo.view(B, 1, 1, 1), jittered.clamp(0, 1), x)
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

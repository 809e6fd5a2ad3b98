"""Face alignment to the ArcFace 112x112 template: ONE similarity-transform implementation used everywhere
(book page "Data", book/data.md; chapter 3 uses the landmarks for KP-RPE).

Coordinates are pixel (x, y) with the centre of pixel (i, j) at (j, i), the convention of OpenCV's
``warpAffine`` and of InsightFace's ``norm_crop``. The warp itself runs in torch (``grid_sample``).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import DataError

#: ArcFace / InsightFace 5-point template for 112x112 crops: left eye, right eye, nose, left and right mouth
#: corner, in pixels ("left" = the image's left).
ARCFACE_TEMPLATE_112 = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float32,
)


def template(size: int = 112) -> np.ndarray:
    """The ArcFace template scaled to a ``size`` x ``size`` crop."""
    return ARCFACE_TEMPLATE_112 * (size / 112.0)


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation; no reflection) mapping ``src`` points
    onto ``dst`` (Umeyama's closed form in 2-D).

    ``src``: (K, 2) or (N, K, 2); ``dst``: (K, 2) or (N, K, 2). Returns (2, 3) or (N, 2, 3) matrices M with
    ``dst ~= M[:, :2] @ src + M[:, 2]``.
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    single = src.ndim == 2
    if single:
        src = src[None]
    if dst.ndim == 2:
        dst = np.broadcast_to(dst, src.shape)
    if src.shape != dst.shape or src.shape[-1] != 2 or src.shape[-2] < 2:
        raise DataError(f"similarity_transform needs matching (N, K>=2, 2) point sets, got {src.shape} and "
                        f"{dst.shape}")
    ms, md = src.mean(1, keepdims=True), dst.mean(1, keepdims=True)
    s, d = src - ms, dst - md
    denom = (s ** 2).sum((1, 2))
    denom = np.where(denom > 1e-12, denom, 1e-12)
    a = (s[..., 0] * d[..., 0] + s[..., 1] * d[..., 1]).sum(1) / denom
    b = (s[..., 0] * d[..., 1] - s[..., 1] * d[..., 0]).sum(1) / denom
    R = np.stack([np.stack([a, -b], -1), np.stack([b, a], -1)], -2)  # (N, 2, 2)
    t = md[:, 0] - np.einsum("nij,nj->ni", R, ms[:, 0])
    M = np.concatenate([R, t[..., None]], -1).astype(np.float32)
    return M[0] if single else M


def transform_points(points: np.ndarray, M: np.ndarray) -> np.ndarray:
    """Apply (N, 2, 3) affine matrices to (N, K, 2) points (or a single (2, 3) to (K, 2))."""
    points = np.asarray(points, dtype=np.float32)
    M = np.asarray(M, dtype=np.float32)
    return points @ M[..., :2].swapaxes(-1, -2) + M[..., None, :, 2] if M.ndim == 3 else points @ M[:, :2].T + M[:, 2]


def invert_affine(M: np.ndarray) -> np.ndarray:
    """Inverse of (N, 2, 3) (or (2, 3)) affine matrices."""
    M = np.asarray(M, dtype=np.float64)
    single = M.ndim == 2
    M3 = np.concatenate([M.reshape(-1, 2, 3), np.tile([[[0.0, 0.0, 1.0]]], (M.reshape(-1, 2, 3).shape[0], 1, 1))], 1)
    inv = np.linalg.inv(M3)[:, :2].astype(np.float32)
    return inv[0] if single else inv


def warp_affine(images: np.ndarray | torch.Tensor, M: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Warp uint8 NHWC images with (N, 2, 3) matrices (input pixel -> output pixel), bilinear, zero border,
    in torch. Returns (N, h, w, 3) uint8."""
    h, w = (size, size) if isinstance(size, int) else size
    x = torch.as_tensor(np.asarray(images)).permute(0, 3, 1, 2).float()
    n, _, H, W = x.shape
    inv = torch.from_numpy(invert_affine(np.asarray(M).reshape(n, 2, 3)))  # output -> input pixels
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                            indexing="ij")
    grid = torch.stack([xs, ys, torch.ones_like(xs)], -1).reshape(1, -1, 3)  # (1, h*w, 3)
    src = grid @ inv.transpose(1, 2)  # (n, h*w, 2) input pixel coordinates
    gx = (2 * src[..., 0] + 1) / W - 1
    gy = (2 * src[..., 1] + 1) / H - 1
    g = torch.stack([gx, gy], -1).reshape(n, h, w, 2)
    out = F.grid_sample(x, g, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def align(images, landmarks: np.ndarray, size: int = 112, return_matrix: bool = False):
    """Align faces to the ArcFace template (chapter "Data"): similarity transform from each image's 5
    landmarks onto :data:`ARCFACE_TEMPLATE_112` (scaled to ``size``), warp in torch.

    ``images``: uint8 (N, H, W, 3) array, or a list of (H, W, 3) arrays of different sizes; ``landmarks``:
    (N, 5, 2) pixels. Returns (N, size, size, 3) uint8 (and the (N, 2, 3) matrices if ``return_matrix``).
    """
    lm = np.asarray(landmarks, dtype=np.float32)
    if lm.ndim == 2:
        lm = lm[None]
    n = len(images)
    if lm.shape != (n, 5, 2):
        raise DataError(f"align: landmarks must be (N, 5, 2) for N={n} images, got {lm.shape}")
    if not np.isfinite(lm).all():
        raise DataError("align: landmarks contain NaN/inf; drop the faces without detections first")
    M = similarity_transform(lm, template(size))
    out = np.zeros((n, size, size, 3), np.uint8)
    if isinstance(images, np.ndarray) and images.ndim == 4:
        groups = {images.shape[1:3]: np.arange(n)}
        stacked = {images.shape[1:3]: images}
    else:
        groups, stacked = {}, {}
        for i, im in enumerate(images):
            groups.setdefault(np.asarray(im).shape[:2], []).append(i)
        for shape, idx in groups.items():
            stacked[shape] = np.stack([np.asarray(images[i]) for i in idx])
    for shape, idx in groups.items():
        idx = np.asarray(idx)
        out[idx] = warp_affine(stacked[shape], M[idx], size)
    return (out, M) if return_matrix else out

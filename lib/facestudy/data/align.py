"""Face alignment to the ArcFace 112x112 template: ONE similarity-transform implementation used everywhere
(book page "Data", book/data.md; chapter 3 uses the landmarks for KP-RPE).

Coordinates are pixel (x, y) with the centre of pixel (i, j) at (j, i), the convention of OpenCV's
``warpAffine`` and of InsightFace's ``norm_crop``. The warp is OpenCV's ``warpAffine`` (bilinear, zero
border; installed with insightface, about 5x faster than our torch ``grid_sample`` warp, which stays as the
fallback and agrees within one grey level, tested).

:func:`check_image` / :func:`check_images` are the one input validation for images entering a detector,
the aligner or a model: uint8 RGB, or float declared in 0..1; grayscale, ambiguous layouts and NaN are
refused with the reason.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import DataError, ParameterError

#: ArcFace / InsightFace 5-point template for 112x112 crops: left eye, right eye, nose, left and right mouth
#: corner, in pixels ("left" = the image's left).
ARCFACE_TEMPLATE_112 = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float32,
)


_GRAY_HINT = "convert grayscale to RGB first, e.g. np.repeat(x[..., None], 3, axis=-1)"
_FLOAT_HINT = "float images must be in 0..1; pass uint8 or divide by 255"


def check_float_range(x, what: str) -> None:
    """A float image array / tensor must be finite and within 0..1 (eps 1e-3); else a ParameterError."""
    if isinstance(x, torch.Tensor):
        t = x.detach()
        if t.numel() == 0:
            return
        finite = bool(torch.isfinite(t).all())
        lo, hi = (float(t.min()), float(t.max())) if finite else (0.0, 0.0)
    else:
        if x.size == 0:
            return
        finite = bool(np.isfinite(x).all())
        lo, hi = (float(x.min()), float(x.max())) if finite else (0.0, 0.0)
    if not finite:
        raise ParameterError(f"{what}: images contain NaN or inf pixels")
    if lo < -1e-3 or hi > 1.0 + 1e-3:
        raise ParameterError(f"{what}: {_FLOAT_HINT} (got values in {lo:.4g}..{hi:.4g})")


def _check_dtype(dtype, what: str) -> bool:
    """True for float, False for uint8; anything else is refused."""
    if dtype in (np.uint8, torch.uint8):
        return False
    if (isinstance(dtype, torch.dtype) and dtype.is_floating_point) or (
            isinstance(dtype, np.dtype) and np.issubdtype(dtype, np.floating)):
        return True
    raise ParameterError(f"{what}: images must be uint8 (0..255) or float (0..1), got dtype {dtype}; "
                         "cast 0..255 integers with .astype(np.uint8)")


def check_image(image, what: str = "image") -> np.ndarray:
    """One (H, W, 3) RGB image -> a contiguous, writable uint8 numpy array (float 0..1 is scaled by 255).

    Refused with the reason: grayscale (2-D or one channel), channels-first (3, H, W), other dtypes, NaN or
    out-of-range floats."""
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    image = np.asarray(image)
    if image.ndim == 2 or (image.ndim == 3 and image.shape[-1] == 1):
        raise ParameterError(f"{what}: shape {image.shape} is a grayscale image; RGB (H, W, 3) is needed: "
                             f"{_GRAY_HINT}")
    if image.ndim != 3 or image.shape[-1] != 3:
        hint = " (channels first? pass x.transpose(1, 2, 0))" if image.ndim == 3 and image.shape[0] == 3 else ""
        raise ParameterError(f"{what}: must be an RGB (H, W, 3) array, got shape {image.shape}{hint}")
    if _check_dtype(image.dtype, what):
        check_float_range(image, what)
        return np.ascontiguousarray(np.round(image.astype(np.float32) * 255.0).clip(0, 255).astype(np.uint8))
    return np.require(image, np.uint8, ["C_CONTIGUOUS", "WRITEABLE"])


def check_images(images, what: str = "images") -> tuple[bool, bool]:
    """Validate a batch for a model: (N, H, W, 3) or (N, 3, H, W), uint8 or float in 0..1, finite.

    Returns ``(is_float, channels_last)``. A 3-D array is refused unless it is one (H, W, 3) image: a
    (3, H, W) array could be one channels-first image or a stack of three grayscale images."""
    if not isinstance(images, (np.ndarray, torch.Tensor)):
        raise ParameterError(f"{what}: images must be a numpy array or torch tensor, got {type(images).__name__}")
    shape = tuple(images.shape)
    is_float = _check_dtype(images.dtype, what)
    if len(shape) == 2:
        raise ParameterError(f"{what}: shape {shape} is one grayscale image; models take RGB (N, H, W, 3): "
                             f"{_GRAY_HINT}")
    if len(shape) == 3:
        if shape[-1] == 3 and shape[0] != 3:
            channels_last = True
        elif shape[0] == 3:
            raise ParameterError(f"{what}: shape {shape} is ambiguous: one channels-first image or a stack of "
                                 "three grayscale images? Pass a batch: x[None] for one (3, H, W) image, or "
                                 "(N, H, W, 3) RGB")
        else:
            raise ParameterError(f"{what}: shape {shape} looks like a stack of grayscale images; models take "
                                 f"RGB (N, H, W, 3): {_GRAY_HINT}")
    elif len(shape) == 4:
        if shape[-1] == 3 and shape[1] != 3:
            channels_last = True
        elif shape[1] == 3:
            channels_last = False
        elif 1 in (shape[1], shape[-1]):
            raise ParameterError(f"{what}: shape {shape} has one channel (grayscale); models take RGB: "
                                 "repeat the channel 3 times")
        else:
            raise ParameterError(f"{what}: images need 3 colour channels, (N, H, W, 3) or (N, 3, H, W); "
                                 f"got shape {shape}")
    else:
        raise ParameterError(f"{what}: images must have shape (N, H, W, 3) or (N, 3, H, W), got {shape}")
    if is_float:
        check_float_range(images, what)
    return is_float, channels_last


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


def _cv2():
    try:
        import cv2
    except Exception:  # noqa: BLE001 - no (working) OpenCV: use the torch warp
        return None
    return cv2


def warp_affine(images: np.ndarray | torch.Tensor, M: np.ndarray, size: int | tuple[int, int],
                backend: str = "auto") -> np.ndarray:
    """Warp uint8 NHWC images with (N, 2, 3) matrices (input pixel -> output pixel), bilinear, zero border.
    ``backend``: ``"cv2"`` (OpenCV ``warpAffine``, the default when installed) or ``"torch"``
    (``grid_sample``). Returns (N, h, w, 3) uint8."""
    h, w = (size, size) if isinstance(size, int) else size
    if backend not in ("auto", "cv2", "torch"):
        raise ParameterError(f"warp_affine backend must be 'auto', 'cv2' or 'torch', got {backend!r}")
    cv2 = _cv2() if backend != "torch" else None
    if backend == "cv2" and cv2 is None:
        raise ParameterError("warp_affine backend='cv2' needs OpenCV (pip install opencv-python-headless)")
    if cv2 is not None:
        arr = np.asarray(images)
        Ms = np.asarray(M, np.float64).reshape(len(arr), 2, 3)
        return np.stack([cv2.warpAffine(np.ascontiguousarray(arr[i]), Ms[i], (w, h), flags=cv2.INTER_LINEAR,
                                        borderMode=cv2.BORDER_CONSTANT, borderValue=0)
                         for i in range(len(arr))]) if len(arr) else np.zeros((0, h, w, 3), np.uint8)
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
    landmarks onto :data:`ARCFACE_TEMPLATE_112` (scaled to ``size``), OpenCV's warp (torch without it).

    ``images``: uint8 (N, H, W, 3) array, or a list of (H, W, 3) arrays of different sizes; ``landmarks``:
    (N, 5, 2) pixels. Returns (N, size, size, 3) uint8 (and the (N, 2, 3) matrices if ``return_matrix``).
    """
    if isinstance(images, torch.Tensor):
        images = images.detach().cpu().numpy()
    if isinstance(images, np.ndarray):
        if images.ndim == 2:
            check_image(images, "align")  # raises: grayscale
        if images.ndim == 3:
            images = images[None]
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            images = [check_image(im, f"align: image {i}") for i, im in enumerate(images)]
    else:
        images = [check_image(im, f"align: image {i}") for i, im in enumerate(images)]
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

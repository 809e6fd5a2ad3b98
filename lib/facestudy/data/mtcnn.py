"""MTCNN face detector with 5 landmarks (Zhang et al. 2016), our own module definitions and a batched
cascade in plain torch (book page "Data", book/data.md).

Weights: ``models/mtcnn/{pnet,rnet,onet}.pt`` state dicts (facenet-pytorch's conversion, MIT), found through
the ``mtcnn`` manifest. The cascade: an image pyramid through the fully convolutional P-Net (all images of
one size in one batch), non-maximum suppression, then 24x24 crops through R-Net and 48x48 crops through
O-Net, which also regresses the 5 landmarks (left eye, right eye, nose, left mouth, right mouth corner;
"left" = the image's left), returned in the input image's pixel coordinates.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import DataError, ParameterError


class PNet(nn.Module):
    """Proposal net: 12x12 receptive field, fully convolutional, stride 2."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 10, 3), nn.PReLU(10)
        self.conv2, self.prelu2 = nn.Conv2d(10, 16, 3), nn.PReLU(16)
        self.conv3, self.prelu3 = nn.Conv2d(16, 32, 3), nn.PReLU(32)
        self.conv4_1 = nn.Conv2d(32, 2, 1)
        self.conv4_2 = nn.Conv2d(32, 4, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = F.max_pool2d(self.prelu1(self.conv1(x)), 2, 2, ceil_mode=True)
        x = self.prelu3(self.conv3(self.prelu2(self.conv2(x))))
        return F.softmax(self.conv4_1(x), dim=1)[:, 1], self.conv4_2(x)


def _flatten_transposed(x: torch.Tensor) -> torch.Tensor:
    # the converted Caffe/TF weights expect (N, W, H, C) flattening order
    return x.permute(0, 3, 2, 1).reshape(x.shape[0], -1)


class RNet(nn.Module):
    """Refinement net on 24x24 crops."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 28, 3), nn.PReLU(28)
        self.conv2, self.prelu2 = nn.Conv2d(28, 48, 3), nn.PReLU(48)
        self.conv3, self.prelu3 = nn.Conv2d(48, 64, 2), nn.PReLU(64)
        self.dense4, self.prelu4 = nn.Linear(576, 128), nn.PReLU(128)
        self.dense5_1 = nn.Linear(128, 2)
        self.dense5_2 = nn.Linear(128, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = F.max_pool2d(self.prelu1(self.conv1(x)), 3, 2, ceil_mode=True)
        x = F.max_pool2d(self.prelu2(self.conv2(x)), 3, 2, ceil_mode=True)
        x = self.prelu4(self.dense4(_flatten_transposed(self.prelu3(self.conv3(x)))))
        return F.softmax(self.dense5_1(x), dim=1)[:, 1], self.dense5_2(x)


class ONet(nn.Module):
    """Output net on 48x48 crops: score, box regression and 5 landmarks (x0..x4, y0..y4, box-relative)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 32, 3), nn.PReLU(32)
        self.conv2, self.prelu2 = nn.Conv2d(32, 64, 3), nn.PReLU(64)
        self.conv3, self.prelu3 = nn.Conv2d(64, 64, 3), nn.PReLU(64)
        self.conv4, self.prelu4 = nn.Conv2d(64, 128, 2), nn.PReLU(128)
        self.dense5, self.prelu5 = nn.Linear(1152, 256), nn.PReLU(256)
        self.dense6_1 = nn.Linear(256, 2)
        self.dense6_2 = nn.Linear(256, 4)
        self.dense6_3 = nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = F.max_pool2d(self.prelu1(self.conv1(x)), 3, 2, ceil_mode=True)
        x = F.max_pool2d(self.prelu2(self.conv2(x)), 3, 2, ceil_mode=True)
        x = F.max_pool2d(self.prelu3(self.conv3(x)), 2, 2, ceil_mode=True)
        x = self.prelu5(self.dense5(_flatten_transposed(self.prelu4(self.conv4(x)))))
        return F.softmax(self.dense6_1(x), dim=1)[:, 1], self.dense6_2(x), self.dense6_3(x)


@dataclass
class Detections:
    """One image's faces: ``boxes`` (k, 4) x1, y1, x2, y2; ``scores`` (k,); ``landmarks`` (k, 5, 2) pixels;
    ``image_size`` (height, width) of the image they were found in (set by the detectors).
    Sorted by score, highest first. Unpacks as ``boxes, scores, landmarks = det``."""

    boxes: np.ndarray
    scores: np.ndarray
    landmarks: np.ndarray
    image_size: tuple[int, int] | None = None

    def __iter__(self):
        return iter((self.boxes, self.scores, self.landmarks))

    def __len__(self) -> int:
        return len(self.scores)

    def best(self, rule: str = "largest", point: Sequence[float] | None = None) -> int | None:
        """Index of the face to keep, None when empty:

        - ``"largest"``: the largest box (ties by score);
        - ``"score"``: the most confident;
        - ``"centre"``: the box whose centre is nearest ``point`` (x, y), by default the image centre
          (the LFW convention: the person named is the face in the middle of the photo; ties by score).
        """
        if rule not in FACE_RULES:
            raise ParameterError(f"unknown face rule {rule!r}; valid rules: {', '.join(FACE_RULES)}")
        if not len(self):
            return None
        if rule == "score":
            return int(np.argmax(self.scores))
        if rule == "centre":
            if point is None:
                if self.image_size is None:
                    raise ParameterError("best('centre') needs the image size: pass point=(x, y) or use "
                                         "Detections from a detector (they carry image_size)")
                point = ((self.image_size[1] - 1) / 2.0, (self.image_size[0] - 1) / 2.0)
            px, py = (float(v) for v in point)
            if not (math.isfinite(px) and math.isfinite(py)):
                raise ParameterError(f"best('centre'): point must be finite, got {point!r}")
            cx = (self.boxes[:, 0] + self.boxes[:, 2]) / 2
            cy = (self.boxes[:, 1] + self.boxes[:, 3]) / 2
            dist = np.hypot(cx - px, cy - py)
            return int(np.lexsort((-self.scores, dist))[0])
        area = (self.boxes[:, 2] - self.boxes[:, 0]) * (self.boxes[:, 3] - self.boxes[:, 1])
        return int(np.lexsort((-self.scores, -area))[0])


FACE_RULES = ("largest", "score", "centre")


def as_image_list(images, what: str) -> list[np.ndarray]:
    """Detector input -> a list of uint8 (H, W, 3) RGB arrays, validated (one clear error per problem).

    Accepts an (N, H, W, 3) array / tensor, one (H, W, 3) image, or a list of (H, W, 3) images; uint8, or
    float declared in 0..1 (converted). Grayscale (2-D or 1-channel), NaN and out-of-range floats are refused.
    """
    from .align import check_image

    if isinstance(images, torch.Tensor):
        images = images.detach().cpu().numpy()
    if isinstance(images, np.ndarray):
        if images.ndim == 3:
            images = [images]
        elif images.ndim == 4:
            images = list(images)
        elif images.ndim == 2:
            raise ParameterError(f"{what}: got a 2-D array {images.shape}, a grayscale image; detectors take RGB "
                                 "(H, W, 3): convert with np.repeat(img[..., None], 3, axis=-1)")
        else:
            raise ParameterError(f"{what}: images must be (N, H, W, 3) or (H, W, 3), got shape {images.shape}")
    elif not isinstance(images, (list, tuple)):
        raise ParameterError(f"{what}: images must be a numpy array, a torch tensor or a list of (H, W, 3) "
                             f"arrays, got {type(images).__name__}")
    return [check_image(im, f"{what}: image {i}") for i, im in enumerate(images)]


# ---------------------------------------------------------------------------------------- box helpers
def box_iou(a: torch.Tensor, b: torch.Tensor, mode: str = "union") -> torch.Tensor:
    """Pairwise IoU of (..., n, 4) and (..., m, 4) boxes; ``mode="min"`` divides by the smaller area."""
    area_a = (a[..., 2] - a[..., 0] + 1).clamp(min=0) * (a[..., 3] - a[..., 1] + 1).clamp(min=0)
    area_b = (b[..., 2] - b[..., 0] + 1).clamp(min=0) * (b[..., 3] - b[..., 1] + 1).clamp(min=0)
    lt = torch.maximum(a[..., :, None, :2], b[..., None, :, :2])
    rb = torch.minimum(a[..., :, None, 2:], b[..., None, :, 2:])
    wh = (rb - lt + 1).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    if mode == "min":
        return inter / torch.minimum(area_a[..., :, None], area_b[..., None, :]).clamp(min=1e-6)
    return inter / (area_a[..., :, None] + area_b[..., None, :] - inter).clamp(min=1e-6)


def nms(boxes: torch.Tensor, scores: torch.Tensor, groups: torch.Tensor, threshold: float,
        mode: str = "union") -> torch.Tensor:
    """Greedy non-maximum suppression within each group (e.g. image), exact, in plain torch.

    Boxes of a group are sorted by score into a padded (G, n, n) overlap matrix; the greedy keep-set is the
    fixed point of ``keep[i] = not any(keep[k] and overlap[k, i] for k < i)``, reached by iteration.
    Returns the kept indices (into ``boxes``).
    """
    if boxes.numel() == 0:
        return torch.zeros(0, dtype=torch.long)
    order = torch.argsort(scores, descending=True, stable=True)
    order = order[torch.argsort(groups[order], stable=True)]  # grouped, by score within group
    g = groups[order]
    uniq, counts = torch.unique_consecutive(g, return_counts=True)
    n_max = int(counts.max())
    starts = torch.cumsum(counts, 0) - counts
    pos = torch.arange(len(order)) - torch.repeat_interleave(starts, counts)
    gi = torch.repeat_interleave(torch.arange(len(uniq)), counts)
    padded = torch.full((len(uniq), n_max, 4), -1e6)
    padded[gi, pos] = boxes[order].float()
    valid = torch.zeros(len(uniq), n_max, dtype=torch.bool)
    valid[gi, pos] = True
    over = box_iou(padded, padded, mode) > threshold
    over &= torch.ones(n_max, n_max, dtype=torch.bool).triu(1)  # only earlier (higher-score) boxes suppress
    over &= valid[:, :, None] & valid[:, None, :]
    keep = valid.clone()
    for _ in range(n_max + 1):
        new = valid & ~(over & keep[:, :, None]).any(1)
        if torch.equal(new, keep):
            break
        keep = new
    return order[keep[gi, pos]]


def _square(boxes: torch.Tensor) -> torch.Tensor:
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    side = torch.maximum(w, h)
    out = boxes.clone()
    out[:, 0] = boxes[:, 0] + w * 0.5 - side * 0.5
    out[:, 1] = boxes[:, 1] + h * 0.5 - side * 0.5
    out[:, 2] = out[:, 0] + side
    out[:, 3] = out[:, 1] + side
    return out


def _regress(boxes: torch.Tensor, reg: torch.Tensor) -> torch.Tensor:
    w = boxes[:, 2] - boxes[:, 0] + 1
    h = boxes[:, 3] - boxes[:, 1] + 1
    return torch.stack([boxes[:, 0] + reg[:, 0] * w, boxes[:, 1] + reg[:, 1] * h,
                        boxes[:, 2] + reg[:, 2] * w, boxes[:, 3] + reg[:, 3] * h], 1)


def _normalise(x: torch.Tensor) -> torch.Tensor:
    return (x - 127.5) * 0.0078125


def _crops(canvas: torch.Tensor, img_idx: torch.Tensor, boxes: torch.Tensor, size: int,
           chunk: int = 256) -> torch.Tensor:
    """Cut boxes (pixel-inclusive x1, y1, x2, y2; zero outside the image) from ``canvas`` (N, 3, H, W) and
    resize them to ``size`` x ``size``: bilinear sampling at 2x then 2x2 average pooling (anti-aliased)."""
    out = torch.zeros(len(boxes), 3, size, size)
    if not len(boxes):
        return out
    _, _, H, W = canvas.shape
    b = boxes.floor()
    s2 = 2 * size
    t = (torch.arange(s2, dtype=torch.float32) + 0.5) / s2  # sample positions in [0, 1]
    for c in range(0, len(boxes), chunk):
        bb = b[c:c + chunk]
        x = bb[:, 0:1] + t[None] * (bb[:, 2:3] - bb[:, 0:1] + 1) - 0.5  # (n, s2) pixel x
        y = bb[:, 1:2] + t[None] * (bb[:, 3:4] - bb[:, 1:2] + 1) - 0.5
        gx = ((2 * x + 1) / W - 1)[:, None, :].expand(-1, s2, -1)
        gy = ((2 * y + 1) / H - 1)[:, :, None].expand(-1, -1, s2)
        grid = torch.stack([gx, gy], -1)
        src = canvas[img_idx[c:c + chunk]]
        patch = F.grid_sample(src, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        out[c:c + chunk] = F.avg_pool2d(patch, 2)
    return out


class MTCNN(nn.Module):
    """The three-stage cascade. ``detect(images)`` -> list of :class:`Detections`, one per image.

    ``min_face_size`` (pixels), ``thresholds`` (P, R, O score cut-offs) and ``factor`` (pyramid step) have
    the usual MTCNN defaults.
    """

    def __init__(self, min_face_size: int = 20, thresholds: Sequence[float] = (0.6, 0.7, 0.7),
                 factor: float = 0.709, batch_size: int = 256):
        super().__init__()
        self.pnet, self.rnet, self.onet = PNet(), RNet(), ONet()
        self.min_face_size, self.thresholds, self.factor = min_face_size, tuple(thresholds), factor
        self.batch_size = batch_size
        self.eval()

    @classmethod
    def from_manifest(cls, **kw) -> "MTCNN":
        """Load the weights named in ``data_manifests/mtcnn.yaml`` (verified by sha256)."""
        from .store import locate

        net = cls(**kw)
        for part in ("pnet", "rnet", "onet"):
            path = locate("mtcnn", f"models/mtcnn/{part}.pt")
            state = torch.load(path, map_location="cpu", weights_only=True)
            missing, unexpected = getattr(net, part).load_state_dict(state, strict=False)
            if missing or unexpected:
                raise DataError(f"{path}: keys do not match our {part} (missing {missing}, unexpected "
                                f"{unexpected}); use the file named in data_manifests/mtcnn.yaml")
        return net

    # -------------------------------------------------------------------------------------- stages
    def _scales(self, h: int, w: int) -> list[float]:
        m = 12.0 / self.min_face_size
        minl = min(h, w) * m
        scales, s = [], m
        while minl >= 12:
            scales.append(s)
            s *= self.factor
            minl *= self.factor
        return scales

    def _stage1(self, batch: torch.Tensor, first: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        n, _, h, w = batch.shape
        all_boxes, all_scores, all_img = [], [], []
        for s in self._scales(h, w):
            hs, ws = int(math.ceil(h * s)), int(math.ceil(w * s))
            x = _normalise(F.interpolate(batch, size=(hs, ws), mode="bilinear", antialias=True, align_corners=False))
            prob, reg = self.pnet(x)
            mask = prob >= self.thresholds[0]
            idx = mask.nonzero()
            if not len(idx):
                continue
            score = prob[mask]
            r = reg.permute(0, 2, 3, 1)[mask]
            yx = idx[:, 1:].float()
            q1 = ((2 * yx + 1) / s).floor()
            q2 = ((2 * yx + 12) / s).floor()
            boxes = torch.cat([q1[:, [1, 0]], q2[:, [1, 0]]], 1)
            keep = nms(boxes, score, idx[:, 0], 0.5)
            boxes, score, r, img = boxes[keep], score[keep], r[keep], idx[keep, 0]
            w_ = boxes[:, 2] - boxes[:, 0]
            h_ = boxes[:, 3] - boxes[:, 1]
            refined = torch.stack([boxes[:, 0] + r[:, 0] * w_, boxes[:, 1] + r[:, 1] * h_,
                                   boxes[:, 2] + r[:, 2] * w_, boxes[:, 3] + r[:, 3] * h_], 1)
            all_boxes.append(torch.cat([boxes, refined], 1))
            all_scores.append(score)
            all_img.append(img + first)
        if not all_boxes:
            return torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.long)
        boxes, scores, img = torch.cat(all_boxes), torch.cat(all_scores), torch.cat(all_img)
        keep = nms(boxes[:, :4], scores, img, 0.7)
        return _square(boxes[keep, 4:]), scores[keep], img[keep]

    @torch.no_grad()
    def detect(self, images, min_face_size: int | None = None) -> list[Detections]:
        """Detect faces in uint8 RGB images: an (N, H, W, 3) array / tensor or a list of (H, W, 3) arrays
        (sizes may differ; same-size images share P-Net batches). ``min_face_size`` (pixels) overrides the
        detector's for this call: a larger value means fewer pyramid levels and a faster search."""
        if min_face_size is not None:
            saved, self.min_face_size = self.min_face_size, min_face_size
            try:
                return self.detect(images)
            finally:
                self.min_face_size = saved
        imgs = [torch.from_numpy(im).permute(2, 0, 1).float()
                for im in as_image_list(images, "MTCNN.detect")]
        n = len(imgs)
        by_size: dict[tuple[int, int], list[int]] = {}
        for i, im in enumerate(imgs):
            by_size.setdefault(tuple(im.shape[1:]), []).append(i)
        boxes_l, scores_l, img_l = [], [], []
        for idx in by_size.values():
            for c in range(0, len(idx), self.batch_size):
                chunk = idx[c:c + self.batch_size]
                b, s, im_i = self._stage1(torch.stack([imgs[i] for i in chunk]), 0)
                boxes_l.append(b)
                scores_l.append(s)
                img_l.append(torch.as_tensor(chunk, dtype=torch.long)[im_i] if len(im_i) else im_i)
        boxes = torch.cat(boxes_l) if boxes_l else torch.zeros(0, 4)
        img_idx = torch.cat(img_l) if img_l else torch.zeros(0, dtype=torch.long)
        hmax, wmax = max(im.shape[1] for im in imgs), max(im.shape[2] for im in imgs)
        if all(im.shape[1:] == (hmax, wmax) for im in imgs):
            canvas = torch.stack(imgs)
        else:  # zero-padded to a common size: outside an image reads as zero, as in MTCNN's own padding
            canvas = torch.zeros(n, 3, hmax, wmax)
            for i, im in enumerate(imgs):
                canvas[i, :, :im.shape[1], :im.shape[2]] = im
        # stage 2: R-Net
        if len(boxes):
            prob, reg = self._run(self.rnet, _crops(canvas, img_idx, boxes, 24))
            keep = prob > self.thresholds[1]
            boxes, prob, reg, img_idx = boxes[keep], prob[keep], reg[keep], img_idx[keep]
            k = nms(boxes, prob, img_idx, 0.7)
            boxes = _square(_regress(boxes[k], reg[k]))
            img_idx = img_idx[k]
        # stage 3: O-Net
        lms = torch.zeros(0, 5, 2)
        scores = torch.zeros(0)
        if len(boxes):
            prob, reg, pts = self._run(self.onet, _crops(canvas, img_idx, boxes, 48))
            keep = prob > self.thresholds[2]
            boxes, prob, reg, pts, img_idx = boxes[keep], prob[keep], reg[keep], pts[keep], img_idx[keep]
            bw = (boxes[:, 2] - boxes[:, 0] + 1)[:, None]
            bh = (boxes[:, 3] - boxes[:, 1] + 1)[:, None]
            lx = bw * pts[:, :5] + boxes[:, :1] - 1
            ly = bh * pts[:, 5:] + boxes[:, 1:2] - 1
            boxes = _regress(boxes, reg)
            k = nms(boxes, prob, img_idx, 0.7, mode="min")
            boxes, scores, img_idx = boxes[k], prob[k], img_idx[k]
            lms = torch.stack([lx[k], ly[k]], -1)
        out = []
        for i in range(n):
            sel = (img_idx == i).nonzero().flatten()
            sel = sel[torch.argsort(scores[sel], descending=True)]
            out.append(Detections(boxes[sel].numpy().astype(np.float32), scores[sel].numpy().astype(np.float32),
                                  lms[sel].numpy().astype(np.float32), image_size=tuple(imgs[i].shape[1:])))
        return out

    @torch.no_grad()
    def refine(self, images, boxes: np.ndarray, steps: int = 2) -> list[Detections]:
        """O-Net only, from a known face box per image (e.g. an aligned crop's nominal face box): crop,
        score, regress the box, repeat ``steps`` times; the last pass gives score and 5 landmarks. About ten
        times cheaper than :meth:`detect`; a face is "found" when the final score passes ``thresholds[2]``
        (otherwise the image's Detections is empty and the caller can fall back to :meth:`detect`)."""
        imgs = [torch.from_numpy(im).permute(2, 0, 1).float() for im in as_image_list(images, "MTCNN.refine")]
        n = len(imgs)
        if n == 0:
            return []
        hmax, wmax = max(im.shape[1] for im in imgs), max(im.shape[2] for im in imgs)
        canvas = torch.zeros(n, 3, hmax, wmax)
        for i, im in enumerate(imgs):
            canvas[i, :, :im.shape[1], :im.shape[2]] = im
        b = _square(torch.as_tensor(np.asarray(boxes, np.float32)).reshape(n, 4))
        idx = torch.arange(n)
        for _ in range(max(1, steps)):
            prob, reg, pts = self._run(self.onet, _crops(canvas, idx, b, 48))
            bw = (b[:, 2] - b[:, 0] + 1)[:, None]
            bh = (b[:, 3] - b[:, 1] + 1)[:, None]
            lms = torch.stack([bw * pts[:, :5] + b[:, :1] - 1, bh * pts[:, 5:] + b[:, 1:2] - 1], -1)
            last = b
            b = _square(_regress(b, reg))
        final = _regress(last, reg)
        out = []
        for i in range(n):
            if prob[i] > self.thresholds[2]:
                out.append(Detections(final[i:i + 1].numpy().astype(np.float32),
                                      prob[i:i + 1].numpy().astype(np.float32),
                                      lms[i:i + 1].numpy().astype(np.float32), image_size=tuple(imgs[i].shape[1:])))
            else:
                out.append(Detections(np.zeros((0, 4), np.float32), np.zeros(0, np.float32),
                                      np.zeros((0, 5, 2), np.float32), image_size=tuple(imgs[i].shape[1:])))
        return out

    def _run(self, net: nn.Module, crops: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outs = [net(_normalise(crops[c:c + 2048])) for c in range(0, len(crops), 2048)]
        return tuple(torch.cat(parts) for parts in zip(*outs, strict=False))

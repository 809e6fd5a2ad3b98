"""RetinaFace with a MobileNet-0.25 backbone (Deng et al. 2020; the 1.7 MB release of biubug6's
Face-Detector-1MB-with-landmark): the default face detector, 5 landmarks (book page "Data").

Our own module definition, matching the released state dict key for key (``state_dict_keys.txt`` in the
weights folder lists them; :meth:`RetinaFace.from_manifest` checks every key and shape). The network is a
MobileNet-0.25 body (three stages, strides 8/16/32), a 3-level FPN, an SSH context module per level and 1x1
heads giving, per anchor, a face score, a box offset and 5 landmark offsets. Two anchors per location
(``MIN_SIZES``), decoded against the prior boxes with the SSD variances (0.1, 0.2); greedy NMS (IoU 0.4).

Inference: the network is exported once to ONNX into the cache and run by onnxruntime when it is installed
(``backend="auto"``), otherwise in torch; both give the same detections (tested). Input: uint8 RGB images;
the network takes BGR minus the per-channel mean (104, 117, 123), unscaled, at the image's own size.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import DataError, ParameterError
from .mtcnn import Detections, as_image_list

#: anchor sizes in pixels per FPN level (strides 8, 16, 32), the release's ``cfg_mnet``
MIN_SIZES: tuple[tuple[int, ...], ...] = ((10, 20), (32, 64), (128, 256))
STEPS: tuple[int, ...] = (8, 16, 32)
VARIANCE = (0.1, 0.2)
BGR_MEAN = (104.0, 117.0, 123.0)


def _conv_bn(cin: int, cout: int, stride: int = 1, relu: bool = True, kernel: int = 3,
             groups: int = 1) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
                               nn.BatchNorm2d(cout)]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def _conv_dw(cin: int, cout: int, stride: int) -> nn.Sequential:
    """Depthwise 3x3 + BN + ReLU, pointwise 1x1 + BN + ReLU (keys .0/.1 and .3/.4)."""
    return nn.Sequential(nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False), nn.BatchNorm2d(cin),
                         nn.ReLU(inplace=True), nn.Conv2d(cin, cout, 1, 1, 0, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class _Body(nn.Module):
    """MobileNet-0.25 trunk: stage1 (stride 8, 64 ch), stage2 (stride 16, 128 ch), stage3 (stride 32, 256 ch)."""

    def __init__(self) -> None:
        super().__init__()
        self.stage1 = nn.Sequential(_conv_bn(3, 8, 2), _conv_dw(8, 16, 1), _conv_dw(16, 32, 2),
                                    _conv_dw(32, 32, 1), _conv_dw(32, 64, 2), _conv_dw(64, 64, 1))
        self.stage2 = nn.Sequential(_conv_dw(64, 128, 2), *[_conv_dw(128, 128, 1) for _ in range(5)])
        self.stage3 = nn.Sequential(_conv_dw(128, 256, 2), _conv_dw(256, 256, 1))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        c1 = self.stage1(x)
        c2 = self.stage2(c1)
        return [c1, c2, self.stage3(c2)]


class _FPN(nn.Module):
    def __init__(self, cins: Sequence[int] = (64, 128, 256), cout: int = 64) -> None:
        super().__init__()
        self.output1 = _conv_bn(cins[0], cout, kernel=1)
        self.output2 = _conv_bn(cins[1], cout, kernel=1)
        self.output3 = _conv_bn(cins[2], cout, kernel=1)
        self.merge1 = _conv_bn(cout, cout)
        self.merge2 = _conv_bn(cout, cout)

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        o1, o2, o3 = self.output1(feats[0]), self.output2(feats[1]), self.output3(feats[2])
        o2 = self.merge2(o2 + F.interpolate(o3, size=o2.shape[-2:], mode="nearest"))
        o1 = self.merge1(o1 + F.interpolate(o2, size=o1.shape[-2:], mode="nearest"))
        return [o1, o2, o3]


class _SSH(nn.Module):
    """Single-stage headless context module: 3x3, 5x5 (two 3x3) and 7x7 (three 3x3) branches, concatenated."""

    def __init__(self, cin: int = 64, cout: int = 64) -> None:
        super().__init__()
        self.conv3X3 = _conv_bn(cin, cout // 2, relu=False)
        self.conv5X5_1 = _conv_bn(cin, cout // 4)
        self.conv5X5_2 = _conv_bn(cout // 4, cout // 4, relu=False)
        self.conv7X7_2 = _conv_bn(cout // 4, cout // 4)
        self.conv7x7_3 = _conv_bn(cout // 4, cout // 4, relu=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.conv3X3(x)
        b1 = self.conv5X5_1(x)
        b = self.conv5X5_2(b1)
        c = self.conv7x7_3(self.conv7X7_2(b1))
        return F.relu(torch.cat([a, b, c], 1))


class _Head(nn.Module):
    def __init__(self, cin: int, per_anchor: int, anchors: int = 2) -> None:
        super().__init__()
        self.conv1x1 = nn.Conv2d(cin, anchors * per_anchor, 1)
        self.per_anchor = per_anchor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv1x1(x).permute(0, 2, 3, 1).reshape(x.shape[0], -1, self.per_anchor)


class RetinaFaceNet(nn.Module):
    """The network: (N, 3, H, W) BGR-minus-mean -> box offsets (N, P, 4), face probability (N, P),
    landmark offsets (N, P, 10) for the P prior boxes of :func:`priors`."""

    def __init__(self) -> None:
        super().__init__()
        self.body = _Body()
        self.fpn = _FPN()
        self.ssh1, self.ssh2, self.ssh3 = _SSH(), _SSH(), _SSH()
        self.ClassHead = nn.ModuleList([_Head(64, 2) for _ in range(3)])
        self.BboxHead = nn.ModuleList([_Head(64, 4) for _ in range(3)])
        self.LandmarkHead = nn.ModuleList([_Head(64, 10) for _ in range(3)])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        p = self.fpn(self.body(x))
        f = [self.ssh1(p[0]), self.ssh2(p[1]), self.ssh3(p[2])]
        loc = torch.cat([h(t) for h, t in zip(self.BboxHead, f, strict=True)], 1)
        conf = torch.cat([h(t) for h, t in zip(self.ClassHead, f, strict=True)], 1)
        ldm = torch.cat([h(t) for h, t in zip(self.LandmarkHead, f, strict=True)], 1)
        return loc, F.softmax(conf, -1)[..., 1], ldm


_PRIORS: dict[tuple[int, int], np.ndarray] = {}


def priors(h: int, w: int) -> np.ndarray:
    """Prior boxes (P, 4) as (cx, cy, w, h) in pixels for an h x w input, in the network's output order
    (level, row, column, anchor)."""
    if (h, w) not in _PRIORS:
        out = []
        for sizes, step in zip(MIN_SIZES, STEPS, strict=True):
            fh, fw = math.ceil(h / step), math.ceil(w / step)
            cy, cx = np.meshgrid((np.arange(fh) + 0.5) * step, (np.arange(fw) + 0.5) * step, indexing="ij")
            per = [np.stack([cx, cy, np.full_like(cx, s), np.full_like(cx, s)], -1) for s in sizes]
            out.append(np.stack(per, 2).reshape(-1, 4))
        _PRIORS[(h, w)] = np.concatenate(out).astype(np.float32)
    return _PRIORS[(h, w)]


def decode(loc: np.ndarray, ldm: np.ndarray, pri: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Box offsets (P, 4) and landmark offsets (P, 10) against priors (P, 4) -> boxes (P, 4) x1, y1, x2, y2
    and landmarks (P, 5, 2), in pixels (the SSD encoding with variances 0.1 / 0.2)."""
    c = pri[:, :2] + loc[:, :2] * VARIANCE[0] * pri[:, 2:]
    wh = pri[:, 2:] * np.exp(loc[:, 2:] * VARIANCE[1])
    boxes = np.concatenate([c - wh / 2, c + wh / 2], 1)
    lms = pri[:, None, :2] + ldm.reshape(-1, 5, 2) * VARIANCE[0] * pri[:, None, 2:]
    return boxes, lms


def check_keys(state: dict, keys_file=None) -> None:
    """The state dict must have exactly our keys and shapes (and those listed in ``state_dict_keys.txt``)."""
    ours = {k: tuple(v.shape) for k, v in RetinaFaceNet().state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in state.items()}
    if keys_file is not None:
        listed = {}
        for line in open(keys_file, encoding="utf-8").read().splitlines():
            if line.strip():
                k, shape = line.split("\t")
                listed[k] = tuple(int(s) for s in shape.strip("()").split(",") if s.strip())
        if listed != ours:
            diff = sorted(set(listed) ^ set(ours)) or [k for k in ours if ours[k] != listed.get(k)]
            raise DataError(f"{keys_file}: the released keys differ from our RetinaFace module ({diff[:5]})")
    if theirs != ours:
        missing = sorted(set(ours) - set(theirs))
        extra = sorted(set(theirs) - set(ours))
        shape = [k for k in ours if k in theirs and ours[k] != theirs[k]]
        raise DataError(f"RetinaFace weights do not fit the MobileNet-0.25 module (missing {missing[:5]}, "
                        f"unexpected {extra[:5]}, wrong shape {shape[:5]}); use the file named in "
                        "data_manifests/retinaface_mnet025.yaml")


class RetinaFace:
    """The detector: ``detect(images)`` -> list of :class:`~facestudy.data.mtcnn.Detections`, one per image.

    ``threshold``: face probability cut (0.5); ``nms_threshold``: IoU of the greedy NMS (0.4, the release's);
    ``backend``: ``"auto"`` (onnxruntime when installed, else torch), ``"onnx"`` or ``"torch"``;
    ``max_side``: images whose longer side exceeds it are downscaled for the network (boxes and landmarks
    are returned in the original pixels); ``batch_size``: same-size images per network call.
    """

    def __init__(self, net: RetinaFaceNet, threshold: float = 0.5, nms_threshold: float = 0.4,
                 backend: str = "auto", max_side: int = 640, batch_size: int = 32, key: str = "") -> None:
        if backend not in ("auto", "onnx", "torch"):
            raise ParameterError(f"RetinaFace backend must be 'auto', 'onnx' or 'torch', got {backend!r}")
        from ..models import fast

        if backend == "onnx" and not fast.ort_available():
            raise ParameterError("RetinaFace backend='onnx' needs onnxruntime and onnx (pip install onnxruntime "
                                 "onnx); use backend='auto' to fall back to torch")
        self.net = net.eval()
        self.threshold, self.nms_threshold = float(threshold), float(nms_threshold)
        self.backend = "onnx" if backend == "onnx" or (backend == "auto" and fast.ort_available()) else "torch"
        self.max_side, self.batch_size = int(max_side), int(batch_size)
        self.key = key or fast.state_key(net)
        self._onnx_path = None

    @classmethod
    def from_manifest(cls, **kw) -> "RetinaFace":
        """Load the weights named in ``data_manifests/retinaface_mnet025.yaml`` (verified by sha256)."""
        from .store import find, locate

        path = locate("retinaface_mnet025", "models/retinaface-mnet025/mobilenet0.25_Final.pth")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - any unpickling failure means a bad file
            raise DataError(f"{path}: cannot load with torch.load(weights_only=True) ({e}); re-download it") from e
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
        state = {k.removeprefix("module."): v for k, v in state.items()}
        check_keys(state, find("retinaface_mnet025", "models/retinaface-mnet025/state_dict_keys.txt"))
        net = RetinaFaceNet()
        net.load_state_dict(state, strict=True)
        from .store import file_sha256

        return cls(net, key=file_sha256(path)[:16], **kw)

    # ------------------------------------------------------------------------------------- network
    def _onnx(self):
        from ..models import fast
        from .store import cache_dir

        if self._onnx_path is None:
            self._onnx_path = fast.export(self.net, torch.zeros(1, 3, 64, 64),
                                          cache_dir() / "onnx" / f"retinaface-mnet025-{self.key}.onnx",
                                          {0: "n", 2: "h", 3: "w"}, ("loc", "conf", "landmarks"))
        return fast.session(self._onnx_path)

    def forward(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The network on a float32 (N, 3, H, W) BGR-minus-mean batch: loc, face probability, landmarks."""
        if self.backend == "onnx":
            from ..models import fast

            loc, conf, ldm = fast.run(self._onnx(), x)
            return loc, conf, ldm
        with torch.inference_mode():
            loc, conf, ldm = self.net(torch.from_numpy(np.ascontiguousarray(x, np.float32)))
        return loc.numpy(), conf.numpy(), ldm.numpy()

    # ------------------------------------------------------------------------------------- detect
    def detect(self, images, min_face_size: int | None = None) -> list[Detections]:
        """Faces in uint8 RGB images: an (N, H, W, 3) array / tensor, one (H, W, 3) image, or a list of
        (H, W, 3) arrays of any sizes. Boxes below ``min_face_size`` pixels (shorter side) are dropped."""
        imgs = as_image_list(images, "RetinaFace.detect")
        out: list[Detections | None] = [None] * len(imgs)
        by_size: dict[tuple[int, int], list[int]] = {}
        for i, im in enumerate(imgs):
            by_size.setdefault(im.shape[:2], []).append(i)
        for (h, w), idx in by_size.items():
            scale = min(1.0, self.max_side / max(h, w))
            nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
            pri = priors(nh, nw)
            for c in range(0, len(idx), self.batch_size):
                chunk = idx[c:c + self.batch_size]
                x = np.stack([imgs[i] for i in chunk])
                if (nh, nw) != (h, w):
                    x = _resize(x.astype(np.float32), nh, nw)
                # NCHW, BGR, mean-subtracted, written plane by plane (no reversed-stride or transposed copies)
                xb = np.empty((len(chunk), 3, nh, nw), np.float32)
                for plane, (ch, mean) in enumerate(zip((2, 1, 0), BGR_MEAN, strict=True)):
                    np.subtract(x[..., ch], np.float32(mean), out=xb[:, plane], dtype=np.float32)
                x = xb
                loc, conf, ldm = self.forward(x)
                for j, i in enumerate(chunk):
                    out[i] = self._post(loc[j], conf[j], ldm[j], pri, (nw / w, nh / h), (h, w), min_face_size)
        return out  # type: ignore[return-value]

    def _post(self, loc, conf, ldm, pri, scale, hw, min_face_size) -> Detections:
        keep = np.nonzero(conf > self.threshold)[0]
        keep = keep[np.argsort(-conf[keep], kind="stable")][:750]
        boxes, lms = decode(loc[keep], ldm[keep], pri[keep])
        sx, sy = scale
        boxes = boxes / np.array([sx, sy, sx, sy], np.float32)
        lms = lms / np.array([sx, sy], np.float32)
        scores = conf[keep]
        if min_face_size:
            big = np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) >= min_face_size
            boxes, lms, scores = boxes[big], lms[big], scores[big]
        if len(scores):
            k = greedy_nms(boxes, scores, self.nms_threshold)
            boxes, lms, scores = boxes[k], lms[k], scores[k]
        return Detections(boxes.astype(np.float32), scores.astype(np.float32), lms.astype(np.float32),
                          image_size=hw)


def greedy_nms(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> np.ndarray:
    """Greedy non-maximum suppression of one image's (n, 4) boxes (x1, y1, x2, y2; +1 pixel areas, as
    :func:`facestudy.data.mtcnn.box_iou`): the indices kept, best score first. Each pass keeps the best
    remaining box and drops every remaining box overlapping it by IoU > ``threshold``; with a handful of faces
    among a few hundred candidates that is a few vectorised passes (measured faster than the all-pairs
    overlap matrix of :func:`facestudy.data.mtcnn.nms`, which MTCNN's batched stages use)."""
    boxes = np.asarray(boxes, np.float32)
    area = (boxes[:, 2] - boxes[:, 0] + 1).clip(min=0) * (boxes[:, 3] - boxes[:, 1] + 1).clip(min=0)
    rest = np.argsort(-np.asarray(scores), kind="stable")
    kept = []
    while rest.size:
        best, rest = rest[0], rest[1:]
        kept.append(best)
        lt = np.maximum(boxes[best, :2], boxes[rest, :2])
        rb = np.minimum(boxes[best, 2:], boxes[rest, 2:])
        wh = (rb - lt + 1).clip(min=0)
        inter = wh[:, 0] * wh[:, 1]
        rest = rest[inter / np.maximum(area[best] + area[rest] - inter, 1e-6) <= threshold]
    return np.asarray(kept, dtype=np.int64)


def _resize(x: np.ndarray, h: int, w: int) -> np.ndarray:
    """Bilinear (antialiased) resize of a float (N, H, W, 3) batch."""
    t = torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2)
    t = F.interpolate(t, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
    return t.permute(0, 2, 3, 1).numpy()


DETECTORS = ("retinaface", "mtcnn")


def detector(name: str = "retinaface", **kw):
    """The face detector by name, weights from its manifest: ``"retinaface"`` (default: RetinaFace-MobileNet-0.25,
    onnxruntime when installed) or ``"mtcnn"`` (the cascade chapter 3 and the data page teach). Both return
    :class:`~facestudy.data.mtcnn.Detections` from ``detect(images)``."""
    if name == "retinaface":
        return RetinaFace.from_manifest(**kw)
    if name == "mtcnn":
        from .mtcnn import MTCNN

        return MTCNN.from_manifest(**kw)
    raise ParameterError(f"unknown detector {name!r}; valid detectors: {', '.join(DETECTORS)}")

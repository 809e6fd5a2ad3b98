"""Chapter 3's pipeline pieces: cached MTCNN keypoints, model zoo, condition sets, evaluation, offset maps
and the overhead measurement (the notebook ``03_kprpe`` calls these; METHODS.md §1).
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from ..errors import ParameterError
from .keypoints import AUGMENT_VERSION, ConditionSpec, apply_condition, landmarks_or_template, template_keypoints


# ------------------------------------------------------------------ keypoints from our MTCNN, cached
@dataclass
class KeypointResult:
    """MTCNN keypoints of a batch: ``keypoints`` (N, 5, 2) normalised to [0, 1] of the image they were
    detected on, ``score`` (N,) detector score (0 where nothing was found), ``found`` (N,) bool. Where no
    face was found the keypoints fall back to the ArcFace template (what a deployed system assumes)."""

    keypoints: np.ndarray
    score: np.ndarray
    found: np.ndarray

    @property
    def detection_rate(self) -> float:
        return float(self.found.mean()) if len(self.found) else float("nan")

    def pixels(self, size: int) -> np.ndarray:
        return self.keypoints * float(size)


def _images_digest(images: np.ndarray) -> str:
    h = hashlib.sha1()
    h.update(str(images.shape).encode())
    h.update(np.ascontiguousarray(images).tobytes())
    return h.hexdigest()[:16]


def detect_keypoints(images: np.ndarray, key: str = "", mtcnn: Any = None, pad: float = 0.25,
                     batch_size: int = 128, cache: bool = True) -> KeypointResult:
    """Run our MTCNN (facestudy.data.MTCNN) on uint8 NHWC face crops and keep the largest face (chapter 3).

    Crops are padded by ``pad`` of their side (edge replication) first, because MTCNN needs some context
    around a face that fills the whole image. Results are cached in ``$FACESTUDY_CACHE/kprpe`` keyed by
    ``key`` (e.g. condition + seed) and a hash of the pixels, so a re-run never detects twice.
    """
    from .. import data as fsdata

    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ParameterError(f"detect_keypoints: images must be uint8 (N, H, W, 3), got {images.dtype} "
                             f"{images.shape}")
    n, h, w, _ = images.shape
    path = fsdata.cache_dir() / "kprpe" / f"mtcnn-{key or 'images'}-{_images_digest(images)}-pad{pad}.npz"
    if cache and path.exists():
        try:
            with np.load(path, allow_pickle=False) as z:
                return KeypointResult(z["keypoints"], z["score"], z["found"])
        except Exception as exc:  # noqa: BLE001 - a corrupt cache file is reported by path and recomputed
            from ..data.store import _warn_rebuild

            _warn_rebuild(path, exc, "keypoint cache")
    det = mtcnn or fsdata.MTCNN.from_manifest()
    py, px = int(round(h * pad)), int(round(w * pad))
    kps = template_keypoints(n)
    score = np.zeros(n, np.float32)
    found = np.zeros(n, bool)
    for s in range(0, n, batch_size):
        chunk = images[s:s + batch_size]
        padded = np.pad(chunk, ((0, 0), (py, py), (px, px), (0, 0)), mode="edge")
        for i, d in enumerate(det.detect(padded)):
            b = d.best("largest")
            if b is None:
                continue
            lm = d.landmarks[b] - np.array([px, py], np.float32)
            kps[s + i] = lm / np.array([w, h], np.float32)
            score[s + i] = float(d.scores[b])
            found[s + i] = True
    if cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, keypoints=kps, score=score, found=found)
        tmp.replace(path)
    return KeypointResult(kps.astype(np.float32), score, found)


def condition_set(images: np.ndarray, condition: str, seed: int, indices=None,
                  spec: ConditionSpec | None = None, mtcnn: Any = None, landmarks: np.ndarray | None = None,
                  scores: np.ndarray | None = None) -> tuple[np.ndarray, KeypointResult]:
    """Images under an evaluation condition plus MTCNN keypoints detected on *those* images (§1.4).

    For the ``aligned`` condition, ``landmarks`` (pixels, e.g. ``FaceSet.landmarks``, which the data layer
    took from our MTCNN and mapped into the aligned frame) and detector ``scores`` are reused instead of
    detecting again; the degraded conditions are always detected on the degraded pixels.
    """
    out, _ = apply_condition(images, condition, seed, indices=indices, spec=spec)
    if condition == "aligned" and landmarks is not None:
        lm = np.asarray(landmarks, np.float32)
        h, w = out.shape[1:3]
        ok = np.isfinite(lm).all(axis=(1, 2))
        kp = landmarks_or_template(lm, w, h)
        sc = np.ones(len(lm), np.float32) if scores is None else np.nan_to_num(np.asarray(scores, np.float32))
        return out, KeypointResult(kp.astype(np.float32), np.where(ok, sc, 0).astype(np.float32), ok)
    kp = detect_keypoints(out, key=f"{condition}-s{seed}", mtcnn=mtcnn)
    return out, kp


# ------------------------------------------------------------------ models of the chapter
MODEL_KINDS: tuple[str, ...] = ("vit", "irpe", "kprpe")


def make_model(kind: str, arch: dict[str, Any], seed: int, **rpe_kwargs: Any):
    """``vit`` | ``irpe`` | ``kprpe`` with the same ViT architecture and the same initial ViT weights."""
    from ..models.vit import build_vit

    if kind not in MODEL_KINDS:
        raise ParameterError(f"unknown model kind {kind!r}; valid: {', '.join(MODEL_KINDS)}")
    torch.manual_seed(seed)
    rpe = None if kind == "vit" else kind
    return build_vit(**arch, rpe=rpe, rpe_kwargs=rpe_kwargs or None, name=kind)


def embed_with_keypoints(model, images: np.ndarray, keypoints: np.ndarray | None, batch_size: int = 128,
                         flip: bool = True) -> torch.Tensor:
    """Flip-sum embeddings (N, D); KP-RPE models get the normalised ``keypoints`` (others ignore them)."""
    size = images.shape[1:3]
    lm = None if keypoints is None else np.asarray(keypoints) * np.array([size[1], size[0]], np.float32)
    return model.embed(images, batch_size=batch_size, flip=flip, keypoints=lm if model.uses_keypoints else None)


def offset_maps(model, keypoints: np.ndarray, query: tuple[int, int], layers=None) -> np.ndarray:
    """KP-RPE bias B_{query, j} for key patches j: (n_layers, heads, grid_h, grid_w) (supplement Figs. 12–13).

    ``query`` is the (row, col) patch; ``keypoints`` one image's (5, 2) normalised keypoints.
    """
    rpe = getattr(model, "rpe", None)
    if rpe is None or not hasattr(rpe, "offset_map"):
        raise ParameterError("offset_maps needs a KP-RPE model (build_vit(..., rpe='kprpe'))")
    gh, gw = rpe.grid
    q = int(query[0]) * gw + int(query[1])
    layers = range(rpe.depth) if layers is None else layers
    kp = torch.as_tensor(np.asarray(keypoints, np.float32)[None])
    return np.stack([rpe.offset_map(kp, l, q).numpy() for l in layers])


# ------------------------------------------------------------------ overhead (K4)
def measure_throughput(model, batch: int, size: int, steps: int = 5, train: bool = True,
                       keypoints: bool = True, warmup: int = 1, threads: int | None = None) -> float:
    """Images per second for a forward (+ backward when ``train``) pass on random inputs (chapter 3, K4).
    ``threads`` caps torch's CPU threads for the measurement only (restored afterwards)."""
    from ..runtime import torch_threads

    with torch_threads(threads or None):
        return _measure_throughput(model, batch, size, steps, train, keypoints, warmup)


def _measure_throughput(model, batch: int, size: int, steps: int, train: bool, keypoints: bool,
                        warmup: int) -> float:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, size, size, generator=g)
    kp = torch.rand(batch, 5, 2, generator=g) * 0.5 + 0.25 if keypoints and model.uses_keypoints else None
    model.train(train)
    opt = torch.optim.SGD(model.parameters(), lr=1e-4) if train else None

    def step() -> None:
        if train:
            opt.zero_grad(set_to_none=True)
            model(x, kp).pow(2).mean().backward()
            opt.step()
        else:
            with torch.no_grad():
                model(x, kp)

    for _ in range(warmup):
        step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return batch * steps / (time.perf_counter() - t0)


def overhead_table(arch: dict[str, Any], batch: int = 32, steps: int = 5, seed: int = 0,
                   repeats: int = 3) -> "Any":
    """Parameters and train / inference throughput of ViT, ViT+iRPE and ViT+KP-RPE (interleaved repeats,
    best of ``repeats``), as a DataFrame with each model's slowdown relative to the plain ViT."""
    import pandas as pd

    from ..models.vit import count_parameters

    size = arch["input_size"] if isinstance(arch["input_size"], int) else arch["input_size"][0]
    models = {k: make_model(k, arch, seed) for k in MODEL_KINDS}
    speed: dict[tuple[str, str], list[float]] = {}
    # interleaved repeats; the best repeat is kept (on a shared machine, slow repeats are other people's load)
    for _ in range(repeats):
        for k, m in models.items():
            for mode in ("train", "infer"):
                v = measure_throughput(m, batch, size, steps=steps, train=(mode == "train"))
                speed.setdefault((k, mode), []).append(v)
    rows = []
    for k, m in models.items():
        rows.append({"model": k, "params": count_parameters(m),
                     "train_img_s": float(np.max(speed[(k, "train")])),
                     "infer_img_s": float(np.max(speed[(k, "infer")]))})
    df = pd.DataFrame(rows).set_index("model")
    base = df.loc["vit"]
    df["params_overhead_pct"] = 100 * (df["params"] / base["params"] - 1)
    df["train_slowdown_pct"] = 100 * (base["train_img_s"] / df["train_img_s"] - 1)
    df["infer_slowdown_pct"] = 100 * (base["infer_img_s"] / df["infer_img_s"] - 1)
    return df


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


# ------------------------------------------------------------------ data of the chapter
def resize_faceset(faces, size: int):
    """A FaceSet resized to ``size`` x ``size`` (images antialiased, landmark columns scaled) — the chapter
    trains at CPU scale, so resizing once beats resizing every batch."""
    import torch.nn.functional as F

    from ..data import LANDMARK_COLUMNS, FaceSet

    h, w = faces.images.shape[1:3]
    if (h, w) == (size, size):
        return faces
    out = []
    for s in range(0, len(faces), 512):
        x = torch.from_numpy(faces.images[s:s + 512]).permute(0, 3, 1, 2).float()
        y = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        out.append(y.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy())
    meta = faces.meta.copy()
    for c in LANDMARK_COLUMNS:
        if c in meta:
            meta[c] = meta[c] * (size / (w if c.startswith("lmk_x") else h))
    return FaceSet(np.concatenate(out) if out else faces.images[:0], faces.labels, meta, name=faces.name,
                   source=faces.source, info=dict(faces.info))


def training_set(cfg: Any, seed: int, note: Callable[[str], None] = print, size: int | None = None):
    """Training identities of chapter 3: CelebA-id299 + CelebA-10k identities with >= 2 images (real, MTCNN
    landmarks of the aligned images, as CVLface) + synthetic-world identities (exact landmarks), resized
    to ``size`` (default ``cfg.image_size``). Missing real data falls back to more synthetic identities (said
    via ``note``)."""
    from .. import data as fsdata
    from .. import faceworld as fw

    parts, counts, missing = [], {}, False
    if cfg.id299_limit > 0:
        if fsdata.available("celeba_id299"):
            parts.append(fsdata.load("celeba_id299", limit=cfg.id299_limit, seed=seed))
        else:
            missing = True
            note("CelebA-id299 is absent: training on more synthetic identities instead")
    if cfg.celeba10k_limit > 0:
        if fsdata.available("celeba10k"):
            c10 = fsdata.load("celeba10k", limit=cfg.celeba10k_limit, seed=seed)
            lab, cnt = np.unique(c10.labels, return_counts=True)
            keep = np.isin(c10.labels, lab[cnt >= 2])
            parts.append(c10.subset(keep).relabel())
        else:
            missing = True
            note("CelebA-10k is absent: training on more synthetic identities instead")
    n_syn = 4 * cfg.synth_identities if missing else cfg.synth_identities
    if missing and n_syn == 0:
        n_syn = 60
    if n_syn > 0 or not parts:
        parts.append(fw.make_faceset(max(n_syn, 8), cfg.synth_per_identity, seed=seed, size=112,
                                     nuisance="default"))
    for p in parts:
        counts[p.name] = (len(p), p.n_identities)
    parts = [p.subset(p.labels >= 0) for p in parts]
    parts = [p if p.landmarks is not None else _with_detected_landmarks(p) for p in parts]
    train = fsdata.concat([resize_faceset(p, size or cfg.image_size) for p in parts], name="kprpe-train").relabel()
    return train, counts


def _with_detected_landmarks(faces):
    kp = detect_keypoints(faces.images, key=f"train-{faces.name}")
    meta = faces.meta.copy()
    lm = kp.pixels(faces.images.shape[1])
    for i in range(5):
        meta[f"lmk_x{i}"], meta[f"lmk_y{i}"] = lm[:, i, 0], lm[:, i, 1]
    from ..data import FaceSet

    return FaceSet(faces.images, faces.labels, meta, name=faces.name, source=faces.source, info=dict(faces.info))


def arch_of(cfg: Any) -> dict[str, Any]:
    """The ViT architecture keys of a chapter-3 profile."""
    return dict(input_size=cfg.image_size, patch=cfg.patch, dim=cfg.dim, depth=cfg.depth, heads=cfg.heads,
                mlp_ratio=cfg.mlp_ratio, embedding_dim=cfg.embedding_dim, drop_path=cfg.drop_path)


def train_model(kind: str, cfg: Any, trainset, seed: int, device: Any = "auto",
                keypoint_indices: tuple[int, ...] | None = None, cache: bool = True, progress: bool = False):
    """Train one chapter-3 model with AdaFace (§1.6), keypoint-consistent augmentation and repeated
    augmentation (§1.7; ``cfg.augment`` overrides of :class:`AugmentSpec`, ``cfg.repeat_prob``) through
    :func:`facestudy.train.fit`. The checkpoint is cached by everything that shapes the weights (kind,
    keypoints, sizes, recipe, augmentation version, data, seed), so a re-run loads instead of training.
    Returns (model, history, seconds)."""
    from ..eval import faceset_hash
    from ..losses import make_head
    from ..train import checkpoint_path, fit
    from .keypoints import KeypointAugment, augment_spec

    kw = {} if keypoint_indices is None else {"keypoint_indices": tuple(keypoint_indices)}
    model = make_model(kind, arch_of(cfg), seed, **kw)
    torch.manual_seed(seed + 1)
    head = make_head("adaface", cfg.embedding_dim, int(trainset.labels.max()) + 1)
    aug = augment_spec(cfg.augment)
    ckpt = None
    if cache:  # the key holds everything that changes the trained weights, the augmentation recipe included
        ckpt = checkpoint_path("kprpe", kind, keypoint_indices, sorted(arch_of(cfg).items()), cfg.epochs,
                               cfg.batch_size, cfg.lr, cfg.optimizer, cfg.warmup, cfg.repeat_prob, aug,
                               AUGMENT_VERSION, faceset_hash(trainset), seed)
    t0 = time.perf_counter()
    hist = fit(model, head, trainset, epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, device=device,
               optimizer=cfg.optimizer, warmup=cfg.warmup, augment=KeypointAugment(aug), grad_clip=5.0,
               checkpoint=ckpt, seed=seed, progress=progress, repeat_prob=cfg.repeat_prob)
    model.cpu().eval()
    return model, hist, time.perf_counter() - t0


def embed_condition(model, images: np.ndarray, keypoints: np.ndarray | None, normalize: bool = True,
                    batch_size: int = 256) -> torch.Tensor:
    """Flip-sum embeddings of condition images; KP-RPE models get the MTCNN keypoints of those images."""
    size = images.shape[1:3]
    lm = None
    if keypoints is not None and model.uses_keypoints:
        lm = np.asarray(keypoints, np.float32) * np.array([size[1], size[0]], np.float32)
    return model.embed(images, batch_size=batch_size, flip=True, normalize=normalize, keypoints=lm)


# ------------------------------------------------------------------ verdict helpers and template fusion
def pair_correct(result, pairs) -> np.ndarray:
    """Per-pair correctness (0/1) under each fold's threshold of a VerificationResult — the unit for
    paired bootstrap CIs between two models on the same pairs."""
    folds = pairs["fold"].to_numpy().astype(int)
    uniq = np.unique(folds)
    if len(uniq) > 1:
        thr = dict(zip(uniq.tolist(), np.atleast_1d(result.thresholds).tolist(), strict=True))
    else:
        thr = {int(uniq[0]): float(result.threshold)}
    t = np.array([thr[int(f)] for f in folds])
    return ((result.scores > t) == result.same).astype(float)


def fusion_scores(raw: dict[str, torch.Tensor], keypoints: dict[str, Any], pairs, seed: int,
                  per_template: int = 2, methods=("average", "norm", "landmark")) -> dict[str, np.ndarray]:
    """Template verification scores for each fusion method (§1.5).

    Each side of each pair becomes a template of ``per_template`` copies of its image under different,
    randomly chosen conditions (seeded per pair and side), so templates mix good and degraded media. Image
    features are the unnormalised flip-sum embeddings ``raw[condition]``; the landmark quality comes from
    the MTCNN keypoints and detector score of that copy (:func:`facestudy.kprpe.landmark_quality`).
    """
    from .fusion import fuse_templates, landmark_quality

    conds = list(raw)
    if per_template > len(conds):
        raise ParameterError(f"per_template={per_template} exceeds the {len(conds)} conditions")
    rng = np.random.default_rng([seed, 15])
    feats, quality, tid = [], [], []
    for p, (a, b) in enumerate(zip(pairs["a"].to_numpy(), pairs["b"].to_numpy(), strict=True)):
        for side, row in ((0, a), (1, b)):
            for c in rng.choice(len(conds), size=per_template, replace=False):
                name = conds[int(c)]
                feats.append(raw[name][row].numpy())
                k = keypoints[name]
                quality.append(landmark_quality(k.keypoints[row:row + 1], k.score[row:row + 1])[0])
                tid.append(2 * p + side)
    feats_a, q, ids = np.stack(feats), np.asarray(quality), np.asarray(tid)
    out = {}
    for m in methods:
        t, uniq = fuse_templates(feats_a, ids, m, quality=q if m == "landmark" else None)
        t = t.numpy()
        out[m] = (t[0::2] * t[1::2]).sum(1)
    return out

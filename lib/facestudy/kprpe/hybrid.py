"""Chapter 3's CPU-scale design: a frozen real face CNN's 7x7 feature map as tokens, then a small
transformer whose *only* varying part is the position encoding (none / iRPE / KP-RPE).

Why this design (issue 16): a ViT trained from scratch for a few hundred steps on a 2-core CPU is not a face
model (seed-to-seed gaps of 4-11 LFW points), so it cannot show what a position encoding adds. Here the
pixels -> features part is the real MobileFaceNet-MS1M (frozen, cached once per image and degradation by
:func:`facestudy.eval.trunk.trunk_features`); its last 7x7 map (16-pixel cells of the 112-pixel face) gives
49 tokens. A CNN is translation-equivariant, so a misaligned face gives *moved* features: exactly what a
flatten head with absolute positions is sensitive to, and what keypoint-relative attention can undo.

The token model is the chapter's own :class:`facestudy.models.vit.FaceViT` (same blocks, same rpe hook,
same flatten head, same zero-initialised :class:`~facestudy.kprpe.KPRPE` / :class:`~facestudy.kprpe.IRPE`)
built for a 7x7 input with patch 1, whose patch embedding is a 1x1 convolution C -> width over the
feature map. Keypoints are normalised to the image; the 7x7 cells tile the image, so the same [0, 1]
coordinates place them on the token grid.

Training copies are degraded *before* the trunk (the trunk is frozen, so augmentation is a fixed number of
cached copies) with the landmarks moved by the same similarity (:func:`degrade`).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from ..errors import ParameterError
from .keypoints import ConditionSpec, affine_theta, to_float, to_uint8_nhwc, warp_images, warp_keypoints

HYBRID_KINDS: tuple[str, ...] = ("vit", "irpe", "kprpe")
#: bump when what train_hybrid produces for a given spec changes (part of its checkpoint key)
HYBRID_VERSION = 1


# ------------------------------------------------------------------ degradations with moved keypoints
def scaled_spec(strength: float, base: ConditionSpec | None = None) -> ConditionSpec:
    """The misalignment ranges of ``base`` (scale 0.8-1.2, ±20°, shift ±10 %) multiplied by ``strength``
    (0 = aligned, 1 = the chapter's misaligned condition, 2 = twice as strong): the dose-response axis."""
    if strength < 0:
        raise ParameterError(f"misalignment strength must be >= 0, got {strength}")
    b = base or ConditionSpec()
    half = (b.scale[1] - b.scale[0]) / 2 * strength
    mid = (b.scale[0] + b.scale[1]) / 2
    return ConditionSpec(scale=(max(0.05, mid - half), mid + half), rotation=b.rotation * strength,
                         translation=b.translation * strength, lowres_sides=b.lowres_sides)


def degrade(images: np.ndarray, keypoints: np.ndarray, condition: str, seed: int, *, strength: float = 1.0,
            sides: tuple[int, int] | None = None, indices=None,
            spec: ConditionSpec | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``images`` (uint8 NHWC) under ``aligned`` / ``misaligned`` (ranges x ``strength``) / ``lowres``
    (down to ``sides`` px of a 112 face, default the spec's 16-28, and back up), with the normalised
    ``keypoints`` (N, 5, 2) moved by the same transform. Each image's draw depends only on ``seed`` and its
    index (as :func:`facestudy.kprpe.apply_condition`, whose misaligned draw at strength 1 this equals)."""
    from .keypoints import apply_condition

    base = spec or ConditionSpec()
    if condition == "misaligned":
        return apply_condition(images, "misaligned", seed, keypoints=keypoints, spec=scaled_spec(strength, base),
                               indices=indices)
    if condition == "lowres":
        s = base if sides is None else ConditionSpec(base.scale, base.rotation, base.translation, tuple(sides))
        out, _ = apply_condition(images, "lowres", seed, spec=s, indices=indices)
        return out, np.asarray(keypoints, np.float32).copy()
    if condition == "aligned":
        return np.asarray(images).copy(), np.asarray(keypoints, np.float32).copy()
    raise ParameterError(f"unknown condition {condition!r}; valid: aligned, misaligned, lowres")


def training_copy(images: np.ndarray, keypoints: np.ndarray, seed: int, *, strength: float = 1.5,
                  p_lowres: float = 0.3, p_flip: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """One augmented copy of a training set (§1.7 scaled to a frozen trunk): every image gets a random
    similarity with ranges ``strength`` x the evaluation ranges, a horizontal flip with ``p_flip`` (left /
    right landmarks swapped) and a down-up resize to 16-28 px with ``p_lowres``; keypoints move with it."""
    n = len(images)
    rng = np.random.default_rng([int(seed), 16])
    sp = scaled_spec(strength)
    u = rng.random((n, 6))
    scale = sp.scale[0] + u[:, 0] * (sp.scale[1] - sp.scale[0])
    angle = (2 * u[:, 1] - 1) * sp.rotation
    tx, ty = ((2 * u[:, 2] - 1) * sp.translation * 2.0, (2 * u[:, 3] - 1) * sp.translation * 2.0)
    flip = torch.as_tensor(u[:, 4] < p_flip)
    theta = affine_theta(scale, angle, tx, ty, flip=flip)
    kp = warp_keypoints(torch.as_tensor(np.asarray(keypoints, np.float32)), theta, flipped=flip)
    out = to_uint8_nhwc(warp_images(to_float(images), theta))
    low = np.where(u[:, 5] < p_lowres)[0]
    if len(low):
        out[low], _ = degrade(out[low], kp.numpy()[low], "lowres", seed + 1, indices=low)
    return out, kp.numpy().astype(np.float32)


# ------------------------------------------------------------------ tokens from the frozen trunk
@dataclass
class TokenSet:
    """Frozen-trunk tokens of a set of (possibly degraded) images: ``features`` (N, C, 7, 7) fp16,
    ``keypoints`` (N, 5, 2) normalised, ``labels`` (N,), ``embedding`` (N, D) the trunk model's own
    embedding of the same images (the frozen reference)."""

    features: torch.Tensor
    keypoints: np.ndarray
    labels: np.ndarray
    embedding: torch.Tensor
    seconds: float = 0.0

    def __len__(self) -> int:
        return len(self.features)

    @staticmethod
    def cat(parts: list["TokenSet"]) -> "TokenSet":
        return TokenSet(torch.cat([p.features for p in parts]), np.concatenate([p.keypoints for p in parts]),
                        np.concatenate([p.labels for p in parts]), torch.cat([p.embedding for p in parts]),
                        float(sum(p.seconds for p in parts)))


def tokens(trunk: Any, images: np.ndarray, keypoints: np.ndarray, labels=None, *, layer: str, name: str,
           batch_size: int = 64) -> TokenSet:
    """Trunk features of ``images`` through the shared cache (keyed by the pixels, so every degraded copy
    is its own entry and a re-run reads it back)."""
    import pandas as pd

    from ..data import FaceSet
    from ..eval.trunk import trunk_features

    n = len(images)
    lab = np.full(n, -1, np.int64) if labels is None else np.asarray(labels, np.int64)
    fs = FaceSet(np.ascontiguousarray(images), lab, pd.DataFrame(index=range(n)), name=f"kprpe-{name}")
    t0 = time.perf_counter()
    tf = trunk_features(trunk, fs, layer=layer, batch_size=batch_size)
    return TokenSet(tf.features, np.asarray(keypoints, np.float32), lab, tf.embedding, time.perf_counter() - t0)


# ------------------------------------------------------------------ the token model
def make_hybrid(kind: str, in_channels: int, *, grid: int = 7, dim: int = 64, depth: int = 2, heads: int = 4,
                mlp_ratio: float = 2.0, embedding_dim: int = 128, seed: int = 0, **rpe_kwargs: Any):
    """A FaceViT over a ``grid`` x ``grid`` feature map (patch 1, 1x1-conv token projection) with
    ``kind`` = ``vit`` (no RPE) | ``irpe`` | ``kprpe``. All kinds get identical initial weights for the
    same ``seed`` (the rpe modules start at zero), so the position encoding is the only difference."""
    from ..models.vit import build_vit

    if kind not in HYBRID_KINDS:
        raise ParameterError(f"unknown hybrid kind {kind!r}; valid: {', '.join(HYBRID_KINDS)}")
    torch.manual_seed(seed)
    proj = nn.Conv2d(int(in_channels), dim, kernel_size=1)
    torch.manual_seed(seed + 1)
    model = build_vit(input_size=grid, patch=1, dim=dim, depth=depth, heads=heads, mlp_ratio=mlp_ratio,
                      embedding_dim=embedding_dim, rpe=None if kind == "vit" else kind,
                      rpe_kwargs=rpe_kwargs or None, name=f"hybrid-{kind}")
    model.patch_embed = proj
    return model


def _kw(model, kp: torch.Tensor | None) -> dict[str, Any]:
    return {"keypoints": kp} if kp is not None and model.uses_keypoints else {}


def embed_tokens(model, ts: TokenSet, keypoints: np.ndarray | None = None, batch_size: int = 512,
                 normalize: bool = False) -> torch.Tensor:
    """Embeddings (N, D) of a :class:`TokenSet` (raw unless ``normalize``); KP-RPE models get ``keypoints``
    (default the set's own, e.g. pass noisy ones for the noise study)."""
    kp_all = torch.as_tensor(ts.keypoints if keypoints is None else np.asarray(keypoints, np.float32))
    model.eval()
    out = []
    with torch.no_grad():
        for s in range(0, len(ts), batch_size):
            x = ts.features[s:s + batch_size].float()
            out.append(model(x, **_kw(model, kp_all[s:s + batch_size])).float())
    e = torch.cat(out) if out else torch.zeros(0, model.embedding_dim)
    return torch.nn.functional.normalize(e, dim=1) if normalize else e


def fit_tokens(model, head, ts: TokenSet, *, epochs: int, batch_size: int, lr: float, weight_decay: float = 0.05,
               warmup: float = 1.0, grad_clip: float = 5.0, repeat_prob: float = 0.1, seed: int = 0,
               rpe_lr_mult: float = 1.0) -> list[float]:
    """AdamW (the supplement's Table 6 recipe), linear warm-up for ``warmup`` epochs then cosine, the §1.7
    repeated-augmentation order (:func:`facestudy.train.repeated_order`), on cached tokens. ``rpe_lr_mult``
    scales the learning rate of the position-encoding module (iRPE or KP-RPE alike). Returns the per-step
    losses."""
    from ..train import lr_at, repeated_order

    if epochs < 1 or batch_size < 1 or lr <= 0:
        raise ParameterError(f"need epochs >= 1, batch_size >= 1, lr > 0; got {epochs}, {batch_size}, {lr}")
    n = len(ts)
    spe = max(1, n // batch_size)
    total = spe * epochs
    rpe_ids = {id(p) for p in model.rpe.parameters()} if getattr(model, "rpe", None) is not None else set()
    params = [p for p in list(model.parameters()) + list(head.parameters()) if p.requires_grad]
    groups = [{"params": [p for p in params if id(p) not in rpe_ids], "mult": 1.0},
              {"params": [p for p in params if id(p) in rpe_ids], "mult": float(rpe_lr_mult)}]
    opt = torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, weight_decay=weight_decay)
    labels = torch.as_tensor(ts.labels)
    kp_all = torch.as_tensor(ts.keypoints)
    losses: list[float] = []
    step = 0
    for epoch in range(epochs):
        gen = torch.Generator().manual_seed(seed * 100003 + epoch)
        order = repeated_order(ts.labels, gen, repeat_prob)
        model.train()
        head.train()
        for b in range(spe):
            idx = torch.as_tensor(np.sort(order[b * batch_size:(b + 1) * batch_size]))
            cur = lr_at(step, total, lr, "cosine", int(round(warmup * spe)), spe)
            for g in opt.param_groups:
                g["lr"] = cur * g["mult"]
            emb = model(ts.features[idx].float(), **_kw(model, kp_all[idx]))
            loss = head(emb, labels[idx])
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss became {float(loss)} at step {step}; lower lr ({lr})")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(params, grad_clip)
            opt.step()
            losses.append(float(loss.detach()))
            step += 1
    model.eval()
    return losses


def train_hybrid(kind: str, ts: TokenSet, arch: dict[str, Any], recipe: dict[str, Any], seed: int, *,
                 keypoint_indices: tuple[int, ...] | None = None, cache: bool = True,
                 note: Callable[[str], None] | None = None):
    """Train one token model with AdaFace (§1.6) on ``ts``; cached by everything that shapes the weights
    (kind, keypoint subset, architecture, recipe, the tokens' content, seed). Returns (model, losses, s)."""
    from ..losses import make_head
    from ..train import checkpoint_path, load_checkpoint

    kw = {} if keypoint_indices is None else {"keypoint_indices": tuple(keypoint_indices)}
    if kw and kind != "kprpe":
        raise ParameterError("keypoint_indices only applies to kind='kprpe'")
    model = make_hybrid(kind, ts.features.shape[1], grid=ts.features.shape[-1], seed=seed, **arch, **kw)
    torch.manual_seed(seed + 2)
    head = make_head("adaface", model.embedding_dim, int(ts.labels.max()) + 1)
    path = None
    if cache:
        digest = _tokens_digest(ts)
        path = checkpoint_path("kprpe-hybrid", HYBRID_VERSION, kind, keypoint_indices, sorted(arch.items()),
                               sorted(recipe.items()), digest, seed)
        state = load_checkpoint(path, what="chapter 3 token model")
        if state is not None:
            try:
                model.load_state_dict(state["model"])
                model.eval()
                return model, list(state["losses"]), 0.0
            except (KeyError, RuntimeError) as e:  # foreign file: train afresh
                if note:
                    note(f"ignored an incompatible cached token model {path} ({e})")
    t0 = time.perf_counter()
    losses = fit_tokens(model, head, ts, seed=seed, **recipe)
    sec = time.perf_counter() - t0
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save({"model": model.state_dict(), "losses": losses}, tmp)
        tmp.replace(path)
    return model, losses, sec


def _tokens_digest(ts: TokenSet) -> str:
    import hashlib

    h = hashlib.sha1()
    for a in (ts.features.numpy(), ts.keypoints, ts.labels):
        a = np.ascontiguousarray(a)
        h.update(str(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


def keypoint_sensitivity(model, ts: TokenSet, other_keypoints: np.ndarray) -> float:
    """Mean relative change ||e(P) - e(P')|| / ||e(P)|| of the embeddings when the keypoints change from the
    set's own to ``other_keypoints`` (first order; 0 for a model that ignores its keypoints)."""
    a = embed_tokens(model, ts)
    b = embed_tokens(model, ts, keypoints=other_keypoints)
    return float(((a - b).norm(dim=1) / a.norm(dim=1).clamp_min(1e-12)).mean())


# ------------------------------------------------------------------ the chapter's study: conditions x arms x seeds
@dataclass
class Condition:
    """One evaluation condition: degraded ``images`` (uint8 NHWC, 112 px), their moved normalised
    ``keypoints`` and, for the hybrid design, the frozen-trunk ``tokens`` of those images."""

    name: str
    images: np.ndarray
    keypoints: np.ndarray
    tokens: TokenSet | None = None


def condition_name(kind: str, value: float | int | None = None) -> str:
    """``aligned`` | ``misaligned`` (strength 1) | ``misaligned@1.5`` | ``lowres`` (16-28 px) | ``lowres@14``."""
    if kind == "misaligned" and value is not None and float(value) != 1.0:
        return f"misaligned@{float(value):g}"
    if kind == "lowres" and value is not None:
        return f"lowres@{int(value)}"
    return kind


def make_conditions(images: np.ndarray, keypoints: np.ndarray, seed: int, *, strengths=(), sides=(),
                    trunk: Any = None, layer: str = "blocks.14", name: str = "lfw") -> dict[str, Condition]:
    """The three conditions plus the dose-response ones (misalignment ``strengths`` x today's ranges,
    low-resolution ``sides``), each with moved keypoints; tokens through the shared trunk cache when a
    ``trunk`` is given."""
    todo = [("aligned", None), ("misaligned", None), ("lowres", None)]
    todo += [("misaligned", float(s)) for s in strengths if float(s) not in (0.0, 1.0)]
    todo += [("lowres", int(s)) for s in sides]
    out: dict[str, Condition] = {}
    for kind, v in todo:
        key = condition_name(kind, v)
        kw: dict[str, Any] = {}
        if kind == "misaligned" and v is not None:
            kw["strength"] = v
        if kind == "lowres" and v is not None:
            kw["sides"] = (v, v)
        im, kp = degrade(images, keypoints, kind, seed, **kw)
        ts = tokens(trunk, im, kp, layer=layer, name=f"{name}-{key}") if trunk is not None else None
        out[key] = Condition(key, im, kp, ts)
    return out


class Study:
    """Train and embed the chapter's arms with either design (``cfg.design``):

    * ``hybrid``: tokens of the training images (aligned + ``cfg.train_copies`` augmented copies) from the
      frozen trunk, :func:`train_hybrid`, :func:`embed_tokens` (no flip: the trunk saw unflipped images);
    * ``vit``: the pure face ViT on pixels, exactly as before (:func:`facestudy.kprpe.experiment.train_model`
      and its flip-sum :func:`~facestudy.kprpe.experiment.embed_condition`).
    """

    def __init__(self, cfg: Any, trainset: Any, *, trunk: Any = None, device: Any = "cpu",
                 note: Callable[[str], None] = print) -> None:
        if cfg.design not in ("hybrid", "vit"):
            raise ParameterError(f"03_kprpe: design must be 'hybrid' or 'vit', got {cfg.design!r}")
        self.cfg, self.trainset, self.trunk, self.device, self.note = cfg, trainset, trunk, device, note
        self.train_tokens: TokenSet | None = None
        if cfg.design == "hybrid":
            if trunk is None:
                raise ParameterError("the hybrid design needs the frozen trunk model")
            from .keypoints import landmarks_or_template, template_keypoints

            h, w = trainset.images.shape[1:3]
            kp = (landmarks_or_template(trainset.landmarks, w, h) if trainset.landmarks is not None
                  else template_keypoints(len(trainset)))
            parts = [tokens(trunk, trainset.images, kp, trainset.labels, layer=cfg.trunk_layer, name="train")]
            for c in range(int(cfg.train_copies)):
                im, k = training_copy(trainset.images, kp, seed=1000 + c)
                parts.append(tokens(trunk, im, k, trainset.labels, layer=cfg.trunk_layer, name=f"train-aug{c}"))
            self.train_tokens = TokenSet.cat(parts)

    @property
    def design(self) -> str:
        return self.cfg.design

    def train(self, kind: str, seed: int, keypoint_indices: tuple[int, ...] | None = None):
        """(model, per-step losses, seconds) of one arm and seed (cached)."""
        if self.design == "hybrid":
            return train_hybrid(kind, self.train_tokens, dict(self.cfg.hybrid), dict(self.cfg.hybrid_recipe),
                                seed, keypoint_indices=keypoint_indices, note=self.note)
        from .experiment import train_model

        model, hist, sec = train_model(kind, self.cfg, self.trainset, seed, device=self.device,
                                       keypoint_indices=keypoint_indices)
        return model, [s["loss"] for s in hist.steps], sec

    def embed(self, model, cond: Condition, keypoints: np.ndarray | None = None) -> torch.Tensor:
        """Raw (unnormalised) embeddings of a condition; KP-RPE models get ``keypoints`` (default the
        condition's moved keypoints)."""
        kp = cond.keypoints if keypoints is None else keypoints
        if self.design == "hybrid":
            return embed_tokens(model, cond.tokens, keypoints=kp)
        from .experiment import embed_condition

        return embed_condition(model, cond.images, kp, normalize=False)


# ------------------------------------------------------------------ K5: templates of different photos
def photo_templates(labels: np.ndarray, n_identities: int, seed: int, per_template: int = 2):
    """Templates of *different* photos of one identity (§1.5's setting): for up to ``n_identities``
    identities with >= 2·``per_template`` photos, template A = photos 0.., template B = the next photos;
    a genuine pair (A_i, B_i) and an impostor pair (A_i, B_{i+1}) per identity, folds 0..9 in turn.
    Returns (photo rows (M,), template id per photo (M,), pairs DataFrame over template ids a, b, same, fold)."""
    import pandas as pd

    labels = np.asarray(labels)
    need = 2 * per_template
    rng = np.random.default_rng([int(seed), 5])
    ids, cnt = np.unique(labels[labels >= 0], return_counts=True)
    ids = ids[cnt >= need]
    ids = rng.permutation(ids)[:n_identities]
    if len(ids) < 2:
        raise ParameterError(f"template fusion needs >= 2 identities with >= {need} photos, found {len(ids)}")
    rows, tids = [], []
    for i, ident in enumerate(ids):
        photos = rng.permutation(np.where(labels == ident)[0])[:need]
        rows += photos.tolist()
        tids += [2 * i] * per_template + [2 * i + 1] * per_template
    n = len(ids)
    a = [2 * i for i in range(n)] * 2
    b = [2 * i + 1 for i in range(n)] + [2 * ((i + 1) % n) + 1 for i in range(n)]
    same = [True] * n + [False] * n
    pairs = pd.DataFrame({"a": a, "b": b, "same": same})
    pairs["fold"] = np.arange(len(pairs)) % 10
    return np.asarray(rows), np.asarray(tids), pairs


def degrade_each(images: np.ndarray, keypoints: np.ndarray, seed: int,
                 conditions=("aligned", "misaligned", "lowres")) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each photo degraded independently by a condition drawn per photo (seeded): (images, moved keypoints,
    condition index per photo)."""
    n = len(images)
    which = np.random.default_rng([int(seed), 55]).integers(0, len(conditions), n)
    out, kp = np.asarray(images).copy(), np.asarray(keypoints, np.float32).copy()
    for ci, c in enumerate(conditions):
        sel = np.where(which == ci)[0]
        if len(sel):
            out[sel], kp[sel] = degrade(out[sel], kp[sel], c, seed, indices=sel)
    return out, kp, which


def template_scores(features: torch.Tensor, template_ids: np.ndarray, pairs, quality: np.ndarray,
                    methods=("average", "norm", "landmark")) -> dict[str, np.ndarray]:
    """Cosine score of every template pair for each fusion (``average``, ``norm``, ``landmark``)."""
    from .fusion import fuse_templates

    out = {}
    for m in methods:
        t, uniq = fuse_templates(features.numpy(), template_ids, m, quality=quality if m == "landmark" else None)
        pos = {int(u): i for i, u in enumerate(uniq)}
        ia = [pos[int(v)] for v in pairs["a"]]
        ib = [pos[int(v)] for v in pairs["b"]]
        out[m] = (t[ia] * t[ib]).sum(1).numpy()
    return out


def vit_base_kprpe_parameters() -> tuple[int, int]:
    """(parameters of the paper's ViT-base, parameters KP-RPE adds) counted on the meta device (no memory):
    ViT-base = 112 px, patch 8, width 512, 24 blocks of 16 heads, MLP ratio 3 (METHODS.md §1.1)."""
    from ..models.vit import build_vit, count_parameters

    with torch.device("meta"):
        base = build_vit(112, 8, 512, 24, 16, 3.0, embedding_dim=512)
        kp = build_vit(112, 8, 512, 24, 16, 3.0, embedding_dim=512, rpe="kprpe")
    return count_parameters(base), count_parameters(kp) - count_parameters(base)

"""Training helpers of chapter 1 ("Attributes shape the embedding space"): the loss-family models and the
fine-tuning validation.

*Loss families.* The paper compares FaceNet (Euclidean, softmax/triplet-like), ArcFace and AdaFace. We train
the same small backbone on the same data with a ``softmax``, ``arcface``, ``cosface`` and ``adaface`` head
(:func:`train_cached`): only the loss differs. Trained weights are cached under
``<cache>/geometry/models/`` keyed by every input that changes them, so a rerun loads them in a second.

*Fine-tuning validation* (our definition; the official repository does not contain it, METHODS.md 4.4):
start from a trained model ("vanilla"), fine-tune it for a few epochs (i) with random augmentation along
attribute ``a`` and (ii) without augmentation (the "control", so that the mere extra training is not
credited to the augmentation). Then compare the invariance energy E_a of (i) against (ii) per identity
(prediction: it rises, i.e. more invariance) and the energies of the other attributes (prediction: they stay
near), and the verification accuracy when one face of each pair is shifted along ``a``.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import torch

from ..errors import ParameterError
from . import imageops


# ------------------------------------------------------------------------------------------- augmentation
class AttributeAugment:
    """Random shift along one low-level attribute, applied to a uint8 NHWC batch. Chapter 1.

    Each image is shifted with probability ``p`` by a value drawn uniformly in ``strength`` times the op's
    range (:data:`facestudy.geometry.imageops.RANGES`). Seeded: the same call sequence repeats exactly.
    Accepts numpy or torch uint8, NHWC or NCHW, and returns the same type and layout.
    """

    def __init__(self, attribute: str, p: float = 0.8, strength: float = 1.0, seed: int = 0) -> None:
        if attribute not in imageops.RANGES:
            raise ParameterError(f"unknown augmentation attribute {attribute!r}; valid: {', '.join(imageops.OPS)}")
        if not 0.0 <= p <= 1.0:
            raise ParameterError(f"augmentation probability p must be in [0, 1], got {p}")
        self.attribute, self.p, self.strength = attribute, float(p), float(strength)
        self.rng = np.random.default_rng(seed)

    def values(self, n: int) -> np.ndarray:
        lo, hi, _ = imageops.RANGES[self.attribute]
        neutral = 0.0 if lo < 0 < hi else lo
        v = neutral + self.strength * self.rng.uniform(lo - neutral, hi - neutral, n)
        return np.where(self.rng.random(n) < self.p, v, neutral)

    def __call__(self, images: Any) -> Any:
        is_torch = isinstance(images, torch.Tensor)
        x = images.cpu().numpy() if is_torch else np.asarray(images)
        nchw = x.ndim == 4 and x.shape[1] == 3 and x.shape[-1] != 3
        if nchw:
            x = x.transpose(0, 2, 3, 1)
        out = imageops.apply(np.ascontiguousarray(x), self.attribute, self.values(len(x)))
        if nchw:
            out = out.transpose(0, 3, 1, 2)
        out = np.ascontiguousarray(out)
        return torch.from_numpy(out).to(images.device) if is_torch else out


# ------------------------------------------------------------------------------------------- caching
def faceset_fingerprint(faceset: Any) -> str:
    """A short hash of a FaceSet's labels and a strided sample of its pixels (part of cache keys)."""
    h = hashlib.sha256()
    labels = np.asarray(faceset.labels)
    h.update(labels.tobytes())
    imgs = np.asarray(faceset.images)
    step = max(1, len(imgs) // 64)
    h.update(np.ascontiguousarray(imgs[::step]).tobytes())
    h.update(str(imgs.shape).encode())
    return h.hexdigest()[:16]


def cache_key(config: dict[str, Any]) -> str:
    """Hash of a JSON-able config (sorted keys)."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def train_cached(backbone: str, head: str, faceset: Any, *, backbone_kw: dict[str, Any] | None = None,
                 head_kw: dict[str, Any] | None = None, epochs: int = 2, batch_size: int = 64, lr: float = 0.05,
                 seed: int = 0, device: str | torch.device = "cpu", init: torch.nn.Module | None = None,
                 augment: Callable | None = None, augment_tag: str = "", tag: str = "",
                 verbose: bool = False) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Train ``backbone`` with a ``head`` loss on ``faceset`` (or load the cached result). Chapter 1.

    Uses :func:`facestudy.models.create`, :func:`facestudy.losses.make_head` and :func:`facestudy.train.fit`.
    ``init`` starts from another model's weights (fine-tuning); ``augment`` is passed to ``fit`` and must
    be described by ``augment_tag`` for the cache key. Returns (model in eval mode, info dict with the
    cache path, whether it was loaded, and the final training loss when trained now).
    """
    from .. import data as fdata
    from .. import losses, models, train

    backbone_kw = dict(backbone_kw or {})
    head_kw = dict(head_kw or {})
    labels = np.asarray(faceset.labels)
    if (labels < 0).any() or (len(labels) and labels.max() + 1 != np.unique(labels).size):
        raise ParameterError(f"train_cached needs labels 0..K-1 on every image of {faceset.name!r}; use "
                             "faceset.subset(faceset.labels >= 0).relabel()")
    n_classes = int(labels.max()) + 1
    init_key = None
    if init is not None:
        sd = init.state_dict()
        hh = hashlib.sha256()
        for k in sorted(sd):
            hh.update(k.encode())
            hh.update(sd[k].detach().cpu().numpy().tobytes())
        init_key = hh.hexdigest()[:16]
    config = {"backbone": backbone, "backbone_kw": backbone_kw, "head": head, "head_kw": head_kw,
              "epochs": epochs, "batch_size": batch_size, "lr": lr, "seed": seed, "data": faceset_fingerprint(faceset),
              "n_classes": n_classes, "init": init_key, "augment": augment_tag, "tag": tag, "v": 1}
    key = cache_key(config)
    path = fdata.cache_dir() / "geometry" / "models" / f"{backbone}-{head}-{key}.pt"
    model = models.create(backbone, **backbone_kw)
    info: dict[str, Any] = {"path": str(path), "loaded": False, "config": config}
    from ..train import load_checkpoint

    state = load_checkpoint(path, what="cached fine-tuned model")  # weights_only; a corrupt file is retrained
    if state is not None:
        model.load_state_dict(state["model"])
        info.update(loaded=True, final_loss=state.get("final_loss"))
        return model.eval(), info
    if init is not None:
        model.load_state_dict(init.state_dict())
    loss_head = losses.make_head(head, model.embedding_dim, n_classes, **head_kw)
    torch.manual_seed(seed)
    kw: dict[str, Any] = dict(epochs=epochs, batch_size=batch_size, lr=lr, device=device, seed=seed,
                              progress=False)
    if augment is not None:
        kw["augment"] = augment
    hist = train.fit(model, loss_head, faceset, **kw)
    final = float(hist.last_loss)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"model": model.state_dict(), "config": config, "final_loss": final}, tmp)
    tmp.replace(path)
    info["final_loss"] = final
    if verbose:
        print(f"trained {backbone}+{head}: final loss {final}")
    return model.cpu().eval(), info


# ------------------------------------------------------------------------------------------- evaluation
def shifted_verification(embed: Callable[[np.ndarray], np.ndarray], images: np.ndarray, pairs: pd.DataFrame,
                         attribute: str, values: Sequence[float]) -> pd.DataFrame:
    """Verification accuracy when the second face of every pair is shifted along ``attribute``. Chapter 1.

    ``embed`` maps uint8 NHWC images to L2-normalised embeddings; ``pairs`` has columns ``a, b, same`` and
    optionally ``fold``. For each shift value we score cosine similarity and report the 10-fold accuracy
    (threshold chosen on the other folds, via :func:`facestudy.eval.verification` when present, else the
    best threshold on the training folds computed here).
    """
    base = np.asarray(embed(images))
    rows = []
    b_idx = pairs["b"].to_numpy()
    uniq, inv = np.unique(b_idx, return_inverse=True)
    for v in values:
        shifted = np.asarray(embed(imageops.apply(images[uniq], attribute, v)))
        sims = (base[pairs["a"].to_numpy()] * shifted[inv]).sum(1)
        rows.append({"attribute": attribute, "value": float(v), "accuracy": _kfold_accuracy(sims, pairs)})
    return pd.DataFrame(rows)


def _kfold_accuracy(scores: np.ndarray, pairs: pd.DataFrame) -> float:
    same = pairs["same"].to_numpy(bool)
    folds = pairs["fold"].to_numpy() if "fold" in pairs else np.arange(len(pairs)) % 10
    accs = []
    for f in np.unique(folds):
        tr, te = folds != f, folds == f
        cand = np.unique(scores[tr])
        if len(cand) == 0:
            continue
        acc_tr = [((scores[tr] >= t) == same[tr]).mean() for t in cand]
        t = cand[int(np.argmax(acc_tr))]
        accs.append(((scores[te] >= t) == same[te]).mean())
    return float(np.mean(accs))

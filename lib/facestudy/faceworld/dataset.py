"""Datasets of the synthetic face world: lattices, FaceSets and verification pairs (chapter 00a).

``make_faceset`` renders n identities x m images with random nuisance attributes and keeps every label
(identity, all attributes, exact landmarks and their visibility) in ``meta``; it is cached on disk keyed
by its parameters (and the world's version), written atomically.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import asdict, replace
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from ..data.faceset import LANDMARK_COLUMNS, FaceSet
from ..errors import DataError, ParameterError
from .attributes import ATTRIBUTE_NAMES, NUISANCE_MODES, Attributes, random_attributes
from .identity import Identities, sample_identities
from .render import render

#: Bump when the renderer's output changes, so cached datasets are rebuilt.
WORLD_VERSION = "6"


def lattice(identity: Identities, attribute: str, values: Sequence[float], base: Attributes | None = None,
            size: int = 112, aligned: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[Attributes]]:
    """A sweep where exactly one attribute moves (chapter 00a; used by chapter 4's invariance energy).

    ``identity``: one identity (``ids[k]``). ``base``: the attributes held fixed (neutral if None).
    Returns (images, landmarks, visibility, attribute list) with one image per value.
    """
    if attribute not in ATTRIBUTE_NAMES:
        raise ParameterError(f"lattice: unknown attribute {attribute!r}; valid: {', '.join(ATTRIBUTE_NAMES)}")
    if not isinstance(identity, Identities) or len(identity) != 1:
        raise ParameterError("lattice: give exactly one identity, e.g. ids[3]")
    base = Attributes() if base is None else base
    if not isinstance(base, Attributes):
        raise ParameterError(f"lattice: base must be an Attributes, got {type(base).__name__}")
    specs = [replace(base, **{attribute: (int(v) if attribute == "background" else float(v))}) for v in values]
    if not specs:
        raise ParameterError("lattice: values is empty")
    images, lmk, vis = render(identity, specs, size=size, aligned=aligned)
    return images, lmk, vis, specs


def _default_cache_root() -> Path:
    try:
        from .. import data as _data

        fn = getattr(_data, "cache_dir", None)
        if fn is not None:
            return Path(fn())
    except Exception:  # the data layer may not provide cache_dir yet; fall back below
        pass
    return Path(os.environ.get("FACESTUDY_CACHE") or Path.home() / ".cache" / "facestudy")


def _atomic_savez(path: Path, **arrays) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def make_faceset(n_identities: int, n_per_identity: int, seed: int = 0, size: int = 112,
                 nuisance: str = "default", *, aligned: bool = True, cache: bool = True,
                 identity_offset: int = 0) -> FaceSet:
    """n identities x m images of the synthetic world with random nuisance attributes (chapter 00a).

    ``labels`` are 0..n-1; ``meta`` holds ``identity`` (name), every attribute, the landmarks
    ``lmk_x0..lmk_y4`` (pixels) and ``vis0..vis4``. ``identity_offset`` takes identities k0.. of the seed's
    stream (disjoint train / test identities: offset the test set). Cached under
    ``facestudy.data.cache_dir()/faceworld`` (or ``$FACESTUDY_CACHE`` / ``~/.cache/facestudy``).
    """
    for name, v in (("n_identities", n_identities), ("n_per_identity", n_per_identity), ("size", size),
                    ("identity_offset", identity_offset)):
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 0:
            raise ParameterError(f"make_faceset: {name} must be a non-negative int, got {v!r}")
    if nuisance not in NUISANCE_MODES:
        raise ParameterError(f"make_faceset: unknown nuisance {nuisance!r}; valid: {', '.join(NUISANCE_MODES)}")
    key = dict(v=WORLD_VERSION, n=int(n_identities), m=int(n_per_identity), seed=int(seed), size=int(size),
               nuisance=nuisance, aligned=bool(aligned), off=int(identity_offset))
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    name = f"faceworld_{n_identities}x{n_per_identity}_s{seed}_{nuisance}_{size}"
    path = _default_cache_root() / "faceworld" / f"{name}_{digest}.npz"
    if cache and path.exists():
        try:
            with np.load(path, allow_pickle=False) as z:
                images, labels = z["images"], z["labels"]
                meta = pd.read_json(str(z["meta"]), orient="split")
            return FaceSet(images, labels, meta, name=name, source="synthetic", info={"cache": str(path), **key})
        except Exception as e:  # corrupt cache: rebuild
            try:
                path.unlink()
            except OSError as e2:
                raise DataError(f"faceworld cache {path} is unreadable ({e}) and cannot be removed; delete it") from e2
    ids = sample_identities(int(identity_offset) + int(n_identities), int(seed))[int(identity_offset):]
    idx = np.repeat(np.arange(int(n_identities)), int(n_per_identity))
    attrs = random_attributes(len(idx), int(seed) * 7919 + 17 + int(identity_offset), nuisance)
    images, lmk, vis = render(ids[idx] if len(idx) else ids[:0], attrs, size=int(size), aligned=aligned) \
        if len(idx) else (np.zeros((0, size, size, 3), np.uint8), np.zeros((0, 5, 2), np.float32),
                          np.zeros((0, 5), bool))
    meta = pd.DataFrame([asdict(a) for a in attrs], columns=list(ATTRIBUTE_NAMES))
    meta.insert(0, "identity", [ids.names[i] for i in idx])
    flat = lmk.reshape(len(idx), 10)
    for j, c in enumerate(LANDMARK_COLUMNS):
        meta[c] = flat[:, j]
    for j in range(5):
        meta[f"vis{j}"] = vis[:, j]
    meta["path"] = ""
    fs = FaceSet(images, idx.astype(np.int64), meta, name=name, source="synthetic", info={"cache": str(path), **key})
    if cache:
        _atomic_savez(path, images=images, labels=fs.labels, meta=np.array(meta.to_json(orient="split")))
    return fs


def synthetic_pairs(faceset: FaceSet, n_pairs: int, seed: int = 0, n_folds: int = 10) -> pd.DataFrame:
    """Balanced verification pairs over a FaceSet (chapter 00a): columns a, b, same, fold.

    Half the pairs are two different images of one identity, half images of two identities; pairs are
    assigned to ``n_folds`` folds so that no identity appears in two folds (as in LFW's protocol).
    """
    if not isinstance(faceset, FaceSet):
        raise ParameterError(f"synthetic_pairs: faceset must be a FaceSet, got {type(faceset).__name__}")
    if n_pairs < 2 or n_folds < 1:
        raise ParameterError("synthetic_pairs: need n_pairs >= 2 and n_folds >= 1")
    labels = faceset.labels
    ids = np.unique(labels[labels >= 0])
    if len(ids) < 2 * n_folds:
        raise ParameterError(f"synthetic_pairs: {len(ids)} identities cannot fill {n_folds} identity-disjoint folds; "
                             f"use n_folds <= {max(1, len(ids) // 2)} or more identities")
    rng = np.random.default_rng([int(seed), 31337])
    by_id = {int(i): np.flatnonzero(labels == i) for i in ids}
    perm = rng.permutation(ids)
    folds = np.array_split(perm, n_folds)
    rows = []
    per_fold = [n_pairs // n_folds + (1 if f < n_pairs % n_folds else 0) for f in range(n_folds)]
    for f, (fold_ids, k) in enumerate(zip(folds, per_fold, strict=True)):
        multi = [i for i in fold_ids if len(by_id[int(i)]) >= 2]
        n_same = k // 2
        if n_same and not multi:
            raise ParameterError("synthetic_pairs: identities need >= 2 images for same pairs (n_per_identity >= 2)")
        for _ in range(n_same):
            i = int(rng.choice(multi))
            a, b = rng.choice(by_id[i], 2, replace=False)
            rows.append((int(a), int(b), True, f))
        for _ in range(k - n_same):
            i, j = rng.choice(fold_ids, 2, replace=False)
            rows.append((int(rng.choice(by_id[int(i)])), int(rng.choice(by_id[int(j)])), False, f))
    return pd.DataFrame(rows, columns=["a", "b", "same", "fold"]).astype(
        {"a": np.int64, "b": np.int64, "same": bool, "fold": np.int64})

"""The real face datasets as aligned 112x112 FaceSets, prepared into the cache on first use (book page
"Data", book/data.md).

``load(name, limit=None, seed=0)`` for ``lfw``, ``celeba10k``, ``celeba_id299`` and ``utkface`` returns
uint8 112x112 RGB faces in the ArcFace template with 5 MTCNN landmarks (in the aligned image) as meta columns
``lmk_x0 .. lmk_y4``. The work (decode -> MTCNN -> align) is cached per shard of :data:`SHARD` images (and,
for small subsets, per subset), written atomically, so a killed run resumes and a ``limit`` run on a fresh
cache only processes the images it needs (read straight from the tar by offset, nothing extracted).
"""
from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from ..errors import DataError
from .align import align, template, transform_points
from .faceset import LANDMARK_COLUMNS, FaceSet
from .formats import (
    IMAGE_SUFFIXES,
    check_corrupt,
    decode_image,
    decode_many,
    identity_folder_index,
    parse_utkface_name,
    read_celeba_attributes,
    read_celeba_identities,
    read_lfw_pairs,
)
from .store import (
    TarReader,
    _warn_rebuild,
    atomic_path,
    cache_path,
    check_file,
    clean_temps,
    file_lock,
    file_sha256,
    locate,
    manifest,
    manifests,
)

DATASETS = ("lfw", "celeba10k", "celeba_id299", "utkface")
SHARD = 1000  # images per prepared cache shard
VERSION = "v2"  # bump when the preparation changes; old cache entries are then ignored
_STATUS_OK, _STATUS_NOFACE_KEPT, _STATUS_NOFACE_DROPPED, _STATUS_CORRUPT = 0, 1, 2, 3
_MIN_SCORE = 0.7  # a detection below this O-Net score does not count as a found face (MTCNN's own cut)


#: The 96x112 SphereFace/CosFace template placed at the left of a 112x112 canvas, i.e. the ArcFace template
#: moved 8 px left. The mirrored LFW-112 images follow this convention (measured with our MTCNN: see
#: book/data.md), so they are re-aligned to the ArcFace template; images where MTCNN finds no face are
#: re-aligned with these nominal source landmarks.
SPHEREFACE_IN_112 = (template(112) - np.array([8.0, 0.0], np.float32)).astype(np.float32)


@dataclass(frozen=True)
class _Spec:
    name: str
    tar: str  # manifest file holding the images
    prealigned: bool  # True: images come aligned; a face without detection is kept
    identities: bool  # True: labels are identity indices
    index: Callable[["_Spec"], pd.DataFrame]
    source_landmarks: np.ndarray | None = None  # prealigned: nominal landmarks of the source alignment
    realign: bool = False  # prealigned but not in the ArcFace template: warp with our landmarks
    min_face: float = 0.2  # MTCNN min face size as a fraction of the image's shorter side
    #: Starting face box (x1, y1, x2, y2) for the fast O-Net-only pass: these sources are standardised crops,
    #: so the face sits at about the same place in every image (typical box of the full cascade, measured on
    #: images 2000-2099 of each set). Images where the O-Net pass finds no face go through the full cascade.
    nominal_box: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)


def _index_lfw(spec: _Spec) -> pd.DataFrame:
    return identity_folder_index(TarReader(locate(spec.name, spec.tar)).names())


def _index_id299(spec: _Spec) -> pd.DataFrame:
    df = identity_folder_index(TarReader(locate(spec.name, spec.tar)).names())
    df["image_id"] = df["path"].map(lambda p: Path(p).name)
    return df


def _index_celeba10k(spec: _Spec) -> pd.DataFrame:
    names = [n for n in TarReader(locate(spec.name, spec.tar)).names() if n.lower().endswith(IMAGE_SUFFIXES)]
    df = pd.DataFrame({"path": sorted(names)})
    df["image_id"] = df["path"].map(lambda p: Path(p).name)
    ids = read_celeba_identities(locate(spec.name, "identity_CelebA_000001-010000.txt"))
    attrs = read_celeba_attributes(locate(spec.name, "list_attr_celeba_000001-010000.txt"))
    df = df.merge(ids, on="image_id", how="left").merge(attrs, on="image_id", how="left")
    if df["identity"].isna().any() or df[attrs.columns[1:]].isna().any().any():
        missing = df.loc[df["identity"].isna() | df[attrs.columns[1]].isna(), "image_id"].head(3).tolist()
        raise DataError(f"celeba10k: images {missing} have no identity/attribute row; the text files do not "
                        f"match the tar (see data_manifests/celeba10k.yaml)")
    df["identity"] = df["identity"].astype(np.int64).astype(str)
    df[attrs.columns[1:]] = df[attrs.columns[1:]].astype(np.int64)
    return df


def _index_utkface(spec: _Spec) -> pd.DataFrame:
    names = [n for n in TarReader(locate(spec.name, spec.tar)).names() if n.lower().endswith(IMAGE_SUFFIXES)]
    df = pd.DataFrame({"path": sorted(names)})
    lab = np.array([parse_utkface_name(n) for n in df["path"]], dtype=np.int64).reshape(-1, 3)
    df["age"], df["gender"], df["race"] = lab[:, 0], lab[:, 1], lab[:, 2]
    df["identity"] = "unknown"
    return df


SPECS: dict[str, _Spec] = {
    "lfw": _Spec("lfw", "lfw-112x112.tar", True, True, _index_lfw, SPHEREFACE_IN_112, realign=True,
                 nominal_box=(7.0, 11.0, 86.0, 114.0)),
    "celeba10k": _Spec("celeba10k", "img_align_celeba_89x109_000001-010000.tar", False, True, _index_celeba10k,
                       nominal_box=(23.0, 34.0, 66.0, 90.0)),
    "celeba_id299": _Spec("celeba_id299", "celeba_id299_aligned112.tar", True, True, _index_id299,
                          template(112), nominal_box=(15.0, 11.0, 94.0, 114.0)),
    "utkface": _Spec("utkface", "utkface_crop_part1.tar", False, False, _index_utkface,
                     nominal_box=(10.0, -15.0, 187.0, 192.0)),
}


def _spec(name: str) -> _Spec:
    if name not in SPECS:
        raise DataError(f"unknown dataset {name!r}; load() knows {', '.join(DATASETS)}")
    return SPECS[name]


@lru_cache(maxsize=None)
def _index_cached(name: str, key: str) -> pd.DataFrame:
    spec = _spec(name)
    df = spec.index(spec)
    if spec.identities:
        df["label"] = pd.factorize(df["identity"], sort=True)[0].astype(np.int64)
    else:
        df["label"] = -1
    return df.reset_index(drop=True)


def index(name: str) -> pd.DataFrame:
    """Full metadata of a dataset in canonical (sorted member) order, without images: ``path`` (tar
    member), ``identity``, ``label`` and the dataset's labels. Cheap (no image decoding)."""
    return _index_cached(name, _source_key(name)).copy()


def _source_key(name: str) -> str:
    """Changes when any source file of the dataset changes (sha256 of every file, verified once)."""
    m = manifest(name)
    shas = [file_sha256(locate(name, f["path"])) for f in m["files"]]
    return hashlib.sha256("|".join([VERSION, *shas]).encode()).hexdigest()[:16]


def _prep_dir(name: str) -> Path:
    return cache_path() / "prepared" / name / f"{VERSION}-{_source_key(name)}"


# ------------------------------------------------------------------------------------------- processing
_DETECTOR = None


def _detector():
    global _DETECTOR
    if _DETECTOR is None:
        from .mtcnn import MTCNN

        _DETECTOR = MTCNN.from_manifest()
    return _DETECTOR


def _process(name: str, members: Sequence[str], reader: TarReader) -> dict[str, np.ndarray]:
    """Decode -> MTCNN -> align for ``members``; returns images, landmarks, score, status arrays.

    Not pre-aligned sets (CelebA-10k, UTKFace): the largest face with score >= 0.9 is aligned, an image
    without one is dropped. Pre-aligned sets keep every image: CelebA-id299 as it is (landmarks detected);
    LFW-112 re-aligned from its source convention to the ArcFace template with the detected landmarks
    (or the nominal source landmarks when no face is found).
    """
    from .mtcnn import Detections

    spec = _spec(name)
    n = len(members)
    images = np.zeros((n, 112, 112, 3), np.uint8)
    lmk = np.tile(template(112)[None], (n, 1, 1)).astype(np.float32)
    src = np.full((n, 5, 2), np.nan, np.float32)  # detected landmarks in the source image
    score = np.zeros(n, np.float32)
    status = np.full(n, _STATUS_OK, np.int8)
    method = np.zeros(n, np.int8)  # 0 none, 1 O-Net pass from the nominal box, 2 full cascade
    decoded: list[np.ndarray | None] = []
    for i, m in enumerate(members):
        try:
            decoded.append(decode_image(reader.read(m), what=f"{reader.path}:{m}"))
        except DataError:
            decoded.append(None)
            status[i] = _STATUS_CORRUPT
    ok = [i for i, im in enumerate(decoded) if im is not None]
    by_size: dict[tuple, list[int]] = {}
    for i in ok:
        by_size.setdefault(decoded[i].shape[:2], []).append(i)
    found: dict[int, tuple[np.ndarray, float]] = {}
    detector = _detector()
    for (h, w), ids in by_size.items():
        boxes = np.tile(np.asarray(spec.nominal_box, np.float32), (len(ids), 1))
        dets = detector.refine([decoded[i] for i in ids], boxes, steps=2)
        for i, det in zip(ids, dets, strict=False):
            if len(det) and det.scores[0] >= _MIN_SCORE:
                found[i] = (det.landmarks[0], float(det.scores[0]))
                method[i] = 1
        ids = [i for i in ids if i not in found]
        if not ids:
            continue
        dets = detector.detect([decoded[i] for i in ids], min_face_size=max(12, int(spec.min_face * min(h, w))))
        for i, det in zip(ids, dets, strict=False):
            keep = det.scores >= _MIN_SCORE
            if keep.any():
                sub = Detections(det.boxes[keep], det.scores[keep], det.landmarks[keep], image_size=(h, w))
                j = sub.best("centre" if name == "lfw" else "largest")  # LFW: the person is the central face
                found[i] = (sub.landmarks[j], float(sub.scores[j]))
                method[i] = 2
    to_align, src_lmk = [], []
    for i in ok:
        if i in found:
            src[i], score[i] = found[i]
        elif spec.prealigned:
            status[i] = _STATUS_NOFACE_KEPT
        else:
            status[i] = _STATUS_NOFACE_DROPPED
            continue
        if spec.prealigned and decoded[i].shape[:2] != (112, 112):
            raise DataError(f"{name}: {members[i]} is {decoded[i].shape[1]}x{decoded[i].shape[0]}, expected a "
                            f"112x112 aligned image; the archive is not the one in data_manifests/{name}.yaml")
        if spec.prealigned and not spec.realign:
            images[i] = decoded[i]
            lmk[i] = found[i][0] if i in found else spec.source_landmarks
        else:
            to_align.append(i)
            src_lmk.append(found[i][0] if i in found else spec.source_landmarks)
    if to_align:
        warped, M = align([decoded[i] for i in to_align], np.stack(src_lmk), size=112, return_matrix=True)
        idx = np.asarray(to_align)
        images[idx] = warped
        lmk[idx] = transform_points(np.stack(src_lmk), M)
    return {"images": images, "landmarks": lmk, "score": score, "status": status, "src_landmarks": src,
            "method": method}


def _save(path: Path, arrays: dict[str, np.ndarray]) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)


_SHARD_KEYS = ("rows", "images", "landmarks", "score", "status", "src_landmarks", "method")


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    with open(path, "rb") as fh, np.load(fh, allow_pickle=False) as z:  # our handle: closed even when np.load fails
        return {k: z[k] for k in z.files}


def _load_entry(path: Path) -> dict[str, np.ndarray] | None:
    """A prepared cache entry, or None after reporting (by path) and deleting a corrupt one (the zip's
    CRC-32 catches flipped bytes, a cut file fails to open, a lost array fails the key/length check)."""
    try:
        arr = _load_npz(path)
        n = len(arr["rows"])
        for key in _SHARD_KEYS:
            if len(arr[key]) != n:
                raise ValueError(f"array {key!r} has {len(arr[key])} rows, expected {n}")
    except Exception as exc:  # noqa: BLE001 - any failure to read the entry means: rebuild it
        _warn_rebuild(path, exc, "prepared cache entry")
        return None
    return arr


def _shard_path(name: str, k: int) -> Path:
    return _prep_dir(name) / f"shard_{k:04d}.npz"


def _prepare_shard(name: str, k: int, idx: pd.DataFrame, reader: TarReader) -> dict[str, np.ndarray]:
    path = _shard_path(name, k)
    if path.exists():
        arr = _load_entry(path)
        if arr is not None:
            return arr
    rows = np.arange(k * SHARD, min((k + 1) * SHARD, len(idx)))
    t0 = time.perf_counter()
    out = _process(name, idx["path"].iloc[rows].tolist(), reader)
    out["rows"] = rows
    out["seconds"] = np.float64(time.perf_counter() - t0)  # compute time of this shard (wall clock)
    _save(path, out)
    return out


def _materialise(name: str, rows: np.ndarray, progress: bool = False) -> dict[str, np.ndarray]:
    """Prepared arrays for canonical ``rows`` (sorted, unique), from shards or a subset cache entry.

    A shard from which at least a quarter of the rows is needed is prepared whole (and reused by every
    later call); the other rows are processed alone and cached as one subset entry.
    """
    idx = index(name)
    rows = np.unique(np.asarray(rows, dtype=np.int64))
    spec = _spec(name)
    reader = TarReader(locate(name, spec.tar))
    parts: dict[str, list[np.ndarray]] = {k: [] for k in _SHARD_KEYS}
    leftover = []
    shards = rows // SHARD
    uniq = np.unique(shards)
    it = uniq
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(uniq, desc=f"prepare {name}", unit="shard")
    for k in it:
        want = rows[shards == k]
        size = min(SHARD, len(idx) - k * SHARD)
        if _shard_path(name, int(k)).exists() or len(want) >= size / 4:
            sh = _prepare_shard(name, int(k), idx, reader)
            sel = want - k * SHARD
            for key in parts:
                parts[key].append(sh[key][sel])
        else:
            leftover.append(want)
    if leftover:
        left = np.concatenate(leftover)
        h = hashlib.sha256(left.tobytes()).hexdigest()[:20]
        path = _prep_dir(name) / "subsets" / f"{h}.npz"
        sub = _load_entry(path) if path.exists() else None
        if sub is None:
            sub = _process(name, idx["path"].iloc[left].tolist(), reader)
            sub["rows"] = left
            _save(path, sub)
        for key in parts:
            parts[key].append(sub[key])
    reader.close()
    out = {k: np.concatenate(v) for k, v in parts.items()}
    if np.all(np.diff(out["rows"]) > 0):  # already in canonical order: no second copy of the images
        return out
    order = np.argsort(out["rows"], kind="stable")
    return {k: v[order] for k, v in out.items()}


def _faceset(name: str, rows: np.ndarray, what: str) -> FaceSet:
    idx = index(name)
    arr = _materialise(name, rows)
    status = arr["status"]
    n = len(status)
    n_corrupt = int((status == _STATUS_CORRUPT).sum())
    check_corrupt(n_corrupt, n, f"{name} ({what})")
    keep = (status == _STATUS_OK) | (status == _STATUS_NOFACE_KEPT)
    meta = idx.iloc[arr["rows"][keep]].reset_index(drop=True)
    lm = arr["landmarks"][keep].reshape(-1, 10)
    for c, col in enumerate(LANDMARK_COLUMNS):
        meta[col] = lm[:, c]
    src = arr["src_landmarks"][keep].reshape(-1, 10)
    for c, col in enumerate(LANDMARK_COLUMNS):
        meta["src_" + col] = src[:, c]
    meta["face_score"] = arr["score"][keep]
    meta["detected"] = status[keep] == _STATUS_OK
    meta["detector"] = np.array(["none", "onet", "cascade"])[arr["method"][keep]]
    labels = meta.pop("label").to_numpy(np.int64)
    info = {
        "requested": n, "n_corrupt": n_corrupt,
        "n_no_face": int(((status == _STATUS_NOFACE_DROPPED) | (status == _STATUS_NOFACE_KEPT)).sum()),
        "n_dropped": int((~keep).sum()),
        "dropped": idx["path"].iloc[arr["rows"][~keep]].tolist(),
        "aligned_by": "source (ArcFace template); landmarks from our MTCNN"
        if _spec(name).prealigned and not _spec(name).realign
        else "our MTCNN + similarity transform to the ArcFace template",
    }
    return FaceSet(arr["images"][keep], labels, meta, name=name, source="real", info=info)


def _subset_rows(name: str, limit: int | None, seed: int) -> np.ndarray:
    idx = index(name)
    n = len(idx)
    if limit is None or limit >= n:
        return np.arange(n)
    if limit <= 0:
        raise DataError(f"load({name!r}): limit must be a positive number of images, got {limit}")
    rng = np.random.default_rng(seed)
    if _spec(name).identities:  # whole identities in a seeded order, so subsets keep same-identity images
        labels = idx["label"].to_numpy()
        order = rng.permutation(labels.max() + 1)
        by_label = pd.Series(np.arange(n)).groupby(labels).apply(list)
        picked: list[int] = []
        for lab in order:
            picked.extend(by_label[lab])
            if len(picked) >= limit:
                break
        return np.sort(np.asarray(picked[:limit]))
    return np.sort(rng.permutation(n)[:limit])


def load(name: str, limit: int | None = None, seed: int = 0) -> FaceSet:
    """A real dataset as an aligned 112x112 :class:`FaceSet` (chapter "Data").

    ``limit`` loads a deterministic subset of about ``limit`` images (whole identities in a ``seed``-ed
    order for identity datasets; a seeded sample for UTKFace), preparing only those images on a fresh cache.
    Meta columns: ``path``, ``identity``, ``lmk_x0..lmk_y4`` (in the aligned image), ``face_score``,
    ``detected``, plus CelebA's 40 attributes and ``image_id`` or UTKFace's ``age``, ``gender``, ``race``.
    Images without a face (CelebA-10k, UTKFace) and corrupt images are dropped and counted in ``info``.
    """
    _spec(name)
    return _faceset(name, _subset_rows(name, limit, seed), f"limit={limit}, seed={seed}")


def lfw_pairs(n_per_fold: int | None = None, as_shipped: bool = False,
              folds: int | None = None) -> tuple[FaceSet, pd.DataFrame]:
    """LFW View-2 protocol: the FaceSet of the images the pairs use, and the pairs table (columns ``a``,
    ``b`` = row indices into that FaceSet, ``same`` bool, ``fold`` 0..9). ``n_per_fold`` keeps the first
    ceil(n/2) same and floor(n/2) different pairs of each fold (balanced), loading only their images;
    ``folds`` keeps folds 0..folds-1 only (>= 2: each fold's threshold is chosen on the others; the
    rehearsals' cap).

    ``as_shipped=True`` returns the tar's images exactly as shipped (the SphereFace 96x112 layout on a
    112 canvas, no detection, no re-alignment, no landmarks): the protocol behind the numbers quoted in
    the data README, and fast on a fresh cache (no MTCNN)."""
    raw = read_lfw_pairs(locate("lfw", "pairs.txt"))
    if folds is not None:
        if not 2 <= int(folds) <= 10:
            raise DataError(f"lfw_pairs: folds must be 2..10 (View 2 has ten), got {folds}")
        raw = raw[raw["fold"] < int(folds)]
    if n_per_fold is not None:
        if n_per_fold < 2:
            raise DataError(f"lfw_pairs: n_per_fold must be >= 2 (one same, one different), got {n_per_fold}")
        parts = []
        for _, g in raw.groupby("fold", sort=True):
            parts.append(g[g["same"]].head(math.ceil(n_per_fold / 2)))
            parts.append(g[~g["same"]].head(n_per_fold // 2))
        raw = pd.concat(parts).sort_index()
    idx = index("lfw")
    pos = pd.Series(np.arange(len(idx)), index=idx["path"].to_numpy())

    def member(name_col: str, num_col: str) -> pd.Series:
        return ("lfw-112X112/" + raw[name_col] + "/" + raw[name_col] + "_"
                + raw[num_col].map(lambda v: f"{v:04d}") + ".jpg")

    ma, mb = member("name_a", "num_a"), member("name_b", "num_b")
    missing = sorted(set(ma[~ma.isin(pos.index)]) | set(mb[~mb.isin(pos.index)]))
    if missing:
        raise DataError(f"lfw_pairs: pairs.txt names images missing from the LFW tar, e.g. {missing[:3]}; "
                        f"use the files listed in data_manifests/lfw.yaml")
    rows = np.unique(np.concatenate([pos[ma].to_numpy(), pos[mb].to_numpy()]))
    if as_shipped:
        faces = _as_shipped("lfw", idx.iloc[rows])
    else:
        faces = _faceset("lfw", rows, f"pairs n_per_fold={n_per_fold}")
    if faces.info["n_dropped"]:
        raise DataError(f"lfw_pairs: {faces.info['n_dropped']} pair images are corrupt: "
                        f"{faces.info['dropped'][:3]}; replace lfw-112x112.tar")
    where = pd.Series(np.arange(len(faces)), index=faces.meta["path"].to_numpy())
    pairs = pd.DataFrame({"a": where[ma].to_numpy(), "b": where[mb].to_numpy(),
                          "same": raw["same"].to_numpy(bool), "fold": raw["fold"].to_numpy(np.int64)})
    return faces, pairs


# ---------------------------------------------------------------------------------------------- prepare
def _as_shipped(name: str, rows: pd.DataFrame) -> FaceSet:
    """Images of a prealigned dataset straight from its tar (no detection, no warp)."""
    spec = _spec(name)
    with TarReader(locate(name, spec.tar)) as reader:
        blobs = [reader.read(m) for m in rows["path"]]
    images, bad = decode_many(blobs, list(rows["path"]), what=f"{name} (as shipped)")
    keep = [i for i in range(len(images)) if i not in set(bad)]
    if bad:
        raise DataError(f"{name}: {len(bad)} images are corrupt, e.g. {rows['path'].iloc[bad[0]]}; "
                        f"replace {spec.tar} (see data_manifests/{name}.yaml)")
    meta = rows.iloc[keep].reset_index(drop=True)
    labels = pd.factorize(meta["identity"])[0] if "identity" in meta else np.full(len(meta), -1)
    return FaceSet(np.stack([images[i] for i in keep]), labels, meta, name=f"{name}-as-shipped", source="real",
                   info={"n_dropped": 0, "as_shipped": True})


def _complete_marker(name: str) -> Path:
    return _prep_dir(name) / "complete.json"


def _read_marker(name: str) -> dict | None:
    """The completion record of a fully prepared dataset; None when absent; {"_damaged": why} if unreadable."""
    path = _complete_marker(name)
    if not path.exists():
        return None
    try:
        doc = json.loads(path.read_text())
        if not isinstance(doc, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as exc:
        return {"_damaged": f"{path} cannot be read ({exc})"}
    return doc


def prepared_state(name: str) -> tuple[str, list[tuple[Path, str]]]:
    """``("yes" | "no" | "damaged", [(path, what is wrong)])`` of a dataset's prepared cache. Each prepared
    file is checked against the sha256 recorded when it was written (hashes are remembered: quick)."""
    marker = _read_marker(name)
    if marker is None:
        return "no", []
    if "_damaged" in marker:
        return "damaged", [(_complete_marker(name), marker["_damaged"])]
    folder = _prep_dir(name)
    files = marker.get("files")
    if files is None:  # prepared by an older version: only the shard files' presence is known
        files = {f"shard_{k:04d}.npz": None for k in range(int(marker.get("shards", 0)))}
    problems = []
    for rel, sha in files.items():
        path = folder / rel
        if not path.is_file():
            problems.append((path, f"{path} is missing"))
        elif sha is not None and file_sha256(path) != sha:
            problems.append((path, f"{path} is damaged (its sha256 differs from the one recorded when it was "
                                   f"prepared)"))
    return ("damaged", problems) if problems else ("yes", [])


def is_prepared(name: str) -> bool:
    try:
        return prepared_state(name)[0] == "yes"
    except DataError:
        return False


def _prepare_full(name: str, progress: bool) -> str:
    """Prepare every shard of ``name`` under the dataset's lock; returns a note ("already prepared",
    "full", or "rebuilt: <what>"). Corrupt or missing prepared files are reported by path and rebuilt;
    leftover temp files of killed runs are removed."""
    folder = _prep_dir(name)
    with file_lock(folder / ".lock", f"preparing {name}"):
        clean_temps(folder, recursive=True)
        state, problems = prepared_state(name)
        marker = _read_marker(name) or {}
        if state == "yes" and "files" in marker:
            return "already prepared"
        note = "full"
        if state == "damaged":
            import warnings

            from .store import CacheRebuilt

            for bad, why in problems:
                warnings.warn(f"prepared {name}: {why}; rebuilding it", CacheRebuilt, stacklevel=2)
                if bad.is_file():
                    bad.unlink()
            note = f"rebuilt {len(problems)} damaged file(s)"
        _complete_marker(name).unlink(missing_ok=True)
        idx = index(name)
        n_shards = math.ceil(len(idx) / SHARD)
        with TarReader(locate(name, _spec(name).tar)) as reader:
            ks = range(n_shards)
            if progress:
                from tqdm.auto import tqdm

                ks = tqdm(ks, desc=f"prepare {name}", unit="shard")
            shards = [_prepare_shard(name, k, idx, reader) for k in ks]
        faces = _faceset(name, np.arange(len(idx)), "prepare")
        cols = ["path", "identity", *LANDMARK_COLUMNS, "face_score", "detected"]
        with atomic_path(folder / "landmarks.csv") as tmp:
            faces.meta[cols].to_csv(tmp, index=False)
        shard_secs = [float(sh["seconds"]) if "seconds" in sh else float("nan") for sh in shards]
        files = {f"shard_{k:04d}.npz": file_sha256(_shard_path(name, k)) for k in range(n_shards)}
        files["landmarks.csv"] = file_sha256(folder / "landmarks.csv")
        summary = {"images": len(idx), "kept": len(faces), "dropped": faces.info["n_dropped"],
                   "no_face": faces.info["n_no_face"], "corrupt": faces.info["n_corrupt"],
                   "aligned_rate": len(faces) / len(idx),
                   "detected_rate": float(faces.meta["detected"].mean()),
                   "shard_seconds_total": round(float(np.nansum(shard_secs)), 1),
                   "shards_timed": int(np.isfinite(shard_secs).sum()), "shards": n_shards, "files": files}
        with atomic_path(_complete_marker(name)) as tmp:
            Path(tmp).write_text(json.dumps(summary))
        return note


def prepare(names: Sequence[str] | str | None = None, limit: int | None = None, progress: bool = True,
            seed: int = 0) -> pd.DataFrame:
    """Build the cached aligned datasets (chapter "Data"): idempotent, resumable (per shard), atomic.

    ``names``: datasets (default: every one whose files are present; a damaged one stops with DataError);
    ``limit``: prepare only the subset ``load(name, limit, seed)`` uses. Writes ``landmarks.csv`` and the
    sha256 of every prepared file beside a fully prepared dataset (``data status`` checks them). Two
    processes preparing the same dataset take turns (a lock); a killed run resumes at its last shard.
    Returns a table of what was done (images, kept, dropped, seconds).
    """
    from .store import available

    if names is None:
        names = [n for n in DATASETS if available(n)]
    elif isinstance(names, str):
        names = [names]
    for name in names:
        _spec(name)
    if limit is not None and (isinstance(limit, bool) or int(limit) < 1):
        raise DataError(f"prepare: limit must be a positive number of images, got {limit}")
    rows_out = []
    for name in names:
        t0 = time.perf_counter()
        if limit is None:
            note = _prepare_full(name, progress)
            marker = _read_marker(name) or {}
            rows_out.append({"dataset": name, "images": marker.get("images"), "kept": marker.get("kept"),
                             "dropped": marker.get("dropped"), "seconds": round(time.perf_counter() - t0, 2),
                             "note": note})
            continue
        rows = _subset_rows(name, limit, seed)
        faces = _faceset(name, rows, "prepare")
        rows_out.append({"dataset": name, "images": len(rows), "kept": len(faces),
                         "dropped": faces.info["n_dropped"], "seconds": round(time.perf_counter() - t0, 2),
                         "note": f"limit={limit}"})
    return pd.DataFrame(rows_out, columns=["dataset", "images", "kept", "dropped", "seconds", "note"])


def status_table(check_hashes: bool = True) -> pd.DataFrame:
    """One row per manifest: files present / missing / damaged, sha256 ok, prepared (``facestudy data
    status``). ``.attrs["problems"]`` holds one sentence per damaged file or prepared entry, and
    ``.attrs["missing_roots"]`` the data roots that do not exist. Reads only: works on a read-only cache.

    Hashes are computed once per file and remembered in the cache, so a second call is instant.
    """
    from .store import damaged_message, missing_roots

    out, problems = [], []
    for name, m in manifests().items():
        present, missing, damaged = [], [], []
        for f in m["files"]:
            state, p, why = check_file(name, f, verify=check_hashes)
            if state == "missing":
                if not f.get("optional"):
                    missing.append(f["path"])
                continue
            present.append(f["path"])
            if state == "damaged":
                damaged.append(f["path"])
                problems.append(damaged_message(name, p, why))
        prepared = "-"
        if name in SPECS:
            prepared = "no"
            if present and not missing and not damaged:
                state, why = prepared_state(name)
                prepared = state
                problems += [f"prepared {name}: {w}; run `facestudy data prepare {name}` to rebuild it"
                             for _, w in why]
        out.append({
            "name": name, "kind": m["kind"], "user_supplied": bool(m.get("user_supplied")),
            "present": f"{len(present)}/{len(m['files'])}",
            "missing": ", ".join(missing) if missing else "",
            "damaged": ", ".join(damaged) if damaged else "",
            "hash_ok": (not damaged) if present and check_hashes else None,
            "prepared": prepared,
            "title": m["title"],
        })
    df = pd.DataFrame(out)
    df.attrs["problems"] = problems
    df.attrs["missing_roots"] = [str(r) for r in missing_roots()]
    return df

"""Standard face-data formats in pure python/numpy (book page "Data", book/data.md).

* InsightFace verification ``.bin`` (``lfw.bin``, ``cfp_fp.bin``, ``agedb_30.bin``, ...): a pickle of
  (list of JPEG byte arrays, list of bools). :func:`read_bin` uses a **restricted unpickler** that only admits
  the few numpy types that format needs, so a malicious pickle cannot run code.
* MXNet RecordIO ``.rec`` + ``.idx`` (CASIA-WebFace, MS1M, Glint ship in it): :class:`RecordIOReader`,
  :class:`RecordIOWriter`, with the InsightFace image header (flag, label, id, id2).
* Identity folders (``<root>/<identity>/<file>.jpg``), LFW ``pairs.txt``, CelebA identity and attribute
  lists, UTKFace file-name labels.
* :class:`LazyImageDataset`: a ``torch.utils.data.Dataset`` over any of them yielding uint8 images.
"""
from __future__ import annotations

import io
import os
import pickle
import struct
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import pandas as pd
import torch
from PIL import Image, UnidentifiedImageError

from ..errors import DataError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


# ---------------------------------------------------------------------------------------------- images
def decode_image(data: bytes, what: str = "image") -> np.ndarray:
    """JPEG/PNG bytes -> (H, W, 3) uint8 RGB. A corrupt image raises DataError naming ``what``."""
    try:
        with Image.open(io.BytesIO(bytes(data))) as im:
            im.load()
            arr = np.array(im.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataError(f"{what} is not a readable image ({e}); replace the file") from None
    return arr


def encode_jpeg(image: np.ndarray, quality: int = 95) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.asarray(image, dtype=np.uint8)).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def check_corrupt(n_bad: int, n_total: int, what: str, max_fraction: float = 0.01) -> None:
    """Corrupt images are skipped and counted; more than ``max_fraction`` of them is an error."""
    if n_total and n_bad / n_total > max_fraction:
        raise DataError(f"{what}: {n_bad} of {n_total} images ({100 * n_bad / n_total:.1f} %) are corrupt, more "
                        f"than {100 * max_fraction:.0f} %; the archive is damaged - download it again")


def decode_many(blobs: Sequence[bytes], names: Sequence[str] | None = None,
                what: str = "images") -> tuple[list[np.ndarray | None], list[int]]:
    """Decode many images; corrupt ones become None and are counted (DataError above 1 %)."""
    out: list[np.ndarray | None] = []
    bad: list[int] = []
    for i, b in enumerate(blobs):
        try:
            out.append(decode_image(b, what=names[i] if names is not None else f"{what}[{i}]"))
        except DataError:
            out.append(None)
            bad.append(i)
    check_corrupt(len(bad), len(blobs), what)
    return out, bad


# --------------------------------------------------------------------------------- InsightFace .bin
class _RestrictedUnpickler(pickle.Unpickler):
    """Admits only what a verification .bin contains: numpy arrays of bytes (and py2-style byte strings)."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED:
            if module.startswith("numpy") and name == "_reconstruct":
                try:
                    from numpy._core.multiarray import _reconstruct
                except ImportError:  # numpy < 2
                    from numpy.core.multiarray import _reconstruct
                return _reconstruct
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a verification .bin")


def read_bin(path: str | os.PathLike, decode: bool = True) -> tuple[list, np.ndarray]:
    """Read an InsightFace verification ``.bin`` -> (images, issame).

    ``images``: list of (H, W, 3) uint8 arrays (``decode=True``) or of JPEG bytes; consecutive images
    2k, 2k+1 form pair k; ``issame``: (n_pairs,) bool. Uses a restricted unpickler (chapter "Data").
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            obj = _RestrictedUnpickler(f, encoding="bytes").load()
    except FileNotFoundError:
        raise DataError(f"verification file {path} not found; see data_manifests/insightface_bins.yaml") from None
    except (pickle.UnpicklingError, EOFError, AttributeError, ValueError, TypeError) as e:
        raise DataError(f"{path} is not a safe InsightFace verification .bin ({e}); refused") from None
    if not (isinstance(obj, tuple) and len(obj) == 2):
        raise DataError(f"{path}: expected a pickle of (images, issame), got {type(obj).__name__}")
    bins, issame = obj
    blobs = []
    for i, b in enumerate(bins):
        if isinstance(b, np.ndarray):
            if b.dtype != np.uint8:
                raise DataError(f"{path}: image {i} is a {b.dtype} array, expected uint8 JPEG bytes")
            b = b.tobytes()
        elif not isinstance(b, (bytes, bytearray)):
            raise DataError(f"{path}: image {i} is a {type(b).__name__}, expected JPEG bytes")
        blobs.append(bytes(b))
    issame = np.asarray([bool(x) for x in issame], dtype=bool)
    if len(blobs) != 2 * len(issame):
        raise DataError(f"{path}: {len(blobs)} images for {len(issame)} pairs (need exactly 2 per pair)")
    if not decode:
        return blobs, issame
    images, bad = decode_many(blobs, what=str(path))
    if bad:
        raise DataError(f"{path}: images {bad[:5]} are corrupt; a verification .bin cannot skip pair members")
    return images, issame


def write_bin(path: str | os.PathLike, images: Iterable, issame: Sequence[bool], quality: int = 95) -> Path:
    """Write an InsightFace-style verification ``.bin`` (images: uint8 arrays or JPEG bytes)."""
    blobs = []
    for img in images:
        b = img if isinstance(img, (bytes, bytearray)) else encode_jpeg(img, quality)
        blobs.append(np.frombuffer(bytes(b), dtype=np.uint8))
    issame = [bool(x) for x in issame]
    if len(blobs) != 2 * len(issame):
        raise DataError(f"write_bin {path}: {len(blobs)} images for {len(issame)} pairs (need 2 per pair)")
    from .store import atomic_path

    with atomic_path(Path(path)) as tmp, open(tmp, "wb") as f:
        pickle.dump((blobs, issame), f, protocol=4)
    return Path(path)


# ------------------------------------------------------------------------------------ MXNet RecordIO
_MAGIC = 0xCED7230A
_HEADER = struct.Struct("<IfQQ")  # InsightFace / MXNet IRHeader: flag, label, id, id2


def pack_record(label: float | Sequence[float], payload: bytes, id: int = 0, id2: int = 0) -> bytes:
    """MXNet ``recordio.pack``: IRHeader (+ label vector when ``flag`` > 0) followed by the payload."""
    if np.ndim(label) == 0:
        return _HEADER.pack(0, float(label), id, id2) + payload
    lab = np.asarray(label, dtype=np.float32)
    return _HEADER.pack(len(lab), 0.0, id, id2) + lab.tobytes() + payload


def unpack_record(record: bytes) -> tuple[dict, bytes]:
    """Inverse of :func:`pack_record` -> (header dict with flag/label/id/id2, payload)."""
    if len(record) < _HEADER.size:
        raise DataError(f"RecordIO record of {len(record)} bytes is shorter than its {_HEADER.size}-byte header")
    flag, label, id_, id2 = _HEADER.unpack_from(record)
    rest = record[_HEADER.size:]
    if flag > 0:
        lab = np.frombuffer(rest[: 4 * flag], dtype=np.float32).copy()
        rest = rest[4 * flag:]
        return {"flag": flag, "label": lab, "id": id_, "id2": id2}, rest
    return {"flag": flag, "label": label, "id": id_, "id2": id2}, rest


class RecordIOWriter:
    """Write an indexed MXNet RecordIO pair (``.rec`` + ``.idx``), dmlc's on-disk format: per part a magic
    word, a length word (upper 3 bits continuation flag), the bytes and padding to 4; a payload containing the
    magic word at an aligned position is split there, as dmlc does."""

    def __init__(self, rec_path: str | os.PathLike, idx_path: str | os.PathLike | None = None):
        self.rec_path = Path(rec_path)
        self.idx_path = Path(idx_path) if idx_path else self.rec_path.with_suffix(".idx")
        self._rec = open(self.rec_path, "wb")
        self._idx = open(self.idx_path, "w")

    def _part(self, cflag: int, data: bytes) -> None:
        if len(data) >= 1 << 29:
            raise DataError(f"{self.rec_path}: a record part of {len(data)} bytes exceeds RecordIO's 512 MiB limit")
        self._rec.write(struct.pack("<II", _MAGIC, (cflag << 29) | len(data)))
        self._rec.write(data)
        self._rec.write(b"\0" * ((4 - len(data) % 4) % 4))

    def write(self, key: int, record: bytes) -> None:
        self._idx.write(f"{int(key)}\t{self._rec.tell()}\n")
        magic = struct.pack("<I", _MAGIC)
        cuts = [i for i in range(0, len(record) - 3, 4) if record[i:i + 4] == magic]
        if not cuts:
            self._part(0, record)
            return
        start = 0
        for n, c in enumerate(cuts):
            self._part(1 if n == 0 else 2, record[start:c])
            start = c + 4
        self._part(3, record[start:])

    def write_image(self, key: int, image: np.ndarray | bytes, label: float | Sequence[float],
                    quality: int = 95) -> None:
        payload = image if isinstance(image, (bytes, bytearray)) else encode_jpeg(image, quality)
        self.write(key, pack_record(label, bytes(payload), id=int(key)))

    def close(self) -> None:
        self._rec.close()
        self._idx.close()

    def __enter__(self) -> "RecordIOWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class RecordIOReader:
    """Random access to an indexed MXNet RecordIO file (``train.rec`` + ``train.idx``) without mxnet."""

    def __init__(self, rec_path: str | os.PathLike, idx_path: str | os.PathLike | None = None):
        self.rec_path = Path(rec_path)
        self.idx_path = Path(idx_path) if idx_path else self.rec_path.with_suffix(".idx")
        for p in (self.rec_path, self.idx_path):
            if not p.is_file():
                raise DataError(f"RecordIO file {p} not found; a .rec needs its .idx beside it "
                                f"(see data_manifests/train_rec.yaml)")
        self.index: dict[int, int] = {}
        for line_no, line in enumerate(self.idx_path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                k, off = line.split("\t")
                self.index[int(k)] = int(off)
            except ValueError:
                raise DataError(f"{self.idx_path}: line {line_no} is not 'key<TAB>offset'") from None
        self._fh = open(self.rec_path, "rb")

    @property
    def keys(self) -> list[int]:
        return list(self.index)

    def __len__(self) -> int:
        return len(self.index)

    def read(self, key: int) -> bytes:
        if key not in self.index:
            raise DataError(f"{self.rec_path}: no record with key {key}")
        self._fh.seek(self.index[key])
        parts: list[bytes] = []
        while True:
            head = self._fh.read(8)
            if len(head) < 8:
                raise DataError(f"{self.rec_path}: truncated record {key}")
            magic, lrec = struct.unpack("<II", head)
            if magic != _MAGIC:
                raise DataError(f"{self.rec_path}: bad magic at record {key}; the file is corrupt")
            cflag, length = lrec >> 29, lrec & ((1 << 29) - 1)
            data = self._fh.read(length)
            self._fh.read((4 - length % 4) % 4)
            parts.append(data)
            if cflag in (0, 3):
                break
        return struct.pack("<I", _MAGIC).join(parts)

    def read_image(self, key: int) -> tuple[dict, np.ndarray]:
        header, payload = unpack_record(self.read(key))
        return header, decode_image(payload, what=f"{self.rec_path} record {key}")

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> "RecordIOReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# -------------------------------------------------------------------------------- folders and lists
def identity_folder_index(names: Iterable[str]) -> pd.DataFrame:
    """``.../<identity>/<file>.jpg`` names (files or tar members) -> DataFrame(path, identity), sorted."""
    rows = [(n, Path(n).parent.name) for n in names if n.lower().endswith(IMAGE_SUFFIXES)]
    df = pd.DataFrame(sorted(rows), columns=["path", "identity"])
    return df


def scan_image_folder(root: str | os.PathLike) -> pd.DataFrame:
    """Identity image folder on disk (``root/<identity>/<file>``) -> DataFrame(path, identity)."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"image folder {root} not found; expected <root>/<identity>/<image>.jpg")
    return identity_folder_index(str(p) for p in root.glob("*/*") if p.is_file())


def read_lfw_pairs(path: str | os.PathLike, cv_folds: int = 10) -> pd.DataFrame:
    """LFW ``pairs.txt`` -> DataFrame(name_a, num_a, name_b, num_b, same, fold).

    View 2 (header ``10 300``) keeps its 10 folds. A one-fold file (View 1 ``pairsDevTest.txt``, header
    ``1 500`` or a single number) gets ``cv_folds`` contiguous cross-validation folds, each half (same,
    different) split in order, so every fold holds both kinds and a threshold is never chosen on the pairs
    it is tested on; a one-fold file too small for that is refused (DataError)."""
    path = Path(path)
    try:
        lines = path.read_text().split("\n")
    except OSError as e:
        raise DataError(f"pairs file {path} cannot be read ({e.strerror or e}); see data_manifests/lfw.yaml") from None
    except UnicodeDecodeError:
        raise DataError(f"{path} is not a text pairs file (not UTF-8); see data_manifests/lfw.yaml") from None
    head = lines[0].split()
    try:
        if len(head) == 1:
            n_folds, n_per = 1, int(head[0])  # View 1 files: one number, the pairs per half
        else:
            n_folds, n_per = (int(x) for x in head)
        if n_folds < 1 or n_per < 1:
            raise ValueError
    except ValueError:
        raise DataError(f"{path}: first line must be '<folds> <pairs per half-fold>', e.g. '10 300', "
                        f"got {lines[0][:40]!r}") from None
    rows = []
    body = [ln.split() for ln in lines[1:] if ln.strip()]
    if len(body) != 2 * n_folds * n_per:
        raise DataError(f"{path}: {len(body)} pair lines, expected {2 * n_folds * n_per} (header "
                        f"{lines[0].strip()!r}); the file is truncated or the header is wrong")
    for i, parts in enumerate(body):
        fold = i // (2 * n_per)
        try:
            if len(parts) == 3:
                rows.append((parts[0], int(parts[1]), parts[0], int(parts[2]), True, fold))
            elif len(parts) == 4:
                rows.append((parts[0], int(parts[1]), parts[2], int(parts[3]), False, fold))
            else:
                raise DataError(f"{path}: line {i + 2} has {len(parts)} fields, expected 3 or 4")
        except ValueError:
            raise DataError(f"{path}: line {i + 2} {' '.join(parts)!r}: image numbers must be integers") from None
    df = pd.DataFrame(rows, columns=["name_a", "num_a", "name_b", "num_b", "same", "fold"])
    if n_folds == 1:
        if n_per < cv_folds:
            raise DataError(f"{path} holds one fold of {n_per} same + {n_per} different pairs: too few to split "
                            f"into {cv_folds} cross-validation folds (a threshold must never be chosen on the "
                            f"pairs it is tested on); use a file with >= {cv_folds} pairs per half, or View 2")
        within = np.arange(len(df)) % n_per  # position inside its half (same block, then different block)
        df["fold"] = (within * cv_folds) // n_per
        df.attrs["folds"] = f"one-fold file split into {cv_folds} contiguous folds"
    return df


def read_celeba_identities(path: str | os.PathLike) -> pd.DataFrame:
    """CelebA ``identity_CelebA.txt`` (optionally with a header ``image identity``) -> (image_id, identity)."""
    try:
        df = pd.read_csv(path, sep=r"\s+", header=None, names=["image_id", "identity"], dtype=str)
        if df.iloc[0, 0] == "image":
            df = df.iloc[1:]
        df["identity"] = df["identity"].astype(np.int64)
    except (ValueError, IndexError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        raise DataError(f"{path}: not a CelebA identity list ('<image> <identity number>' per line): "
                        f"{' '.join(str(e).split())[:120]}; replace the file") from None
    return df.reset_index(drop=True)


def read_celeba_attributes(path: str | os.PathLike) -> pd.DataFrame:
    """CelebA ``list_attr_celeba.txt`` -> DataFrame(image_id, <40 attributes as 0/1 int8>)."""
    path = Path(path)
    try:
        with open(path) as f:
            n = int(f.readline().strip())
            names = f.readline().split()
        df = pd.read_csv(path, sep=r"\s+", skiprows=2, header=None, names=["image_id", *names])
    except (ValueError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        raise DataError(f"{path}: not a CelebA attribute list (a count line, a line of names, then "
                        f"'<image> <+1/-1 ...>' rows): {' '.join(str(e).split())[:120]}; replace the file") from None
    if len(df) != n:
        raise DataError(f"{path}: header says {n} rows but {len(df)} were read; the file is truncated")
    vals = df[names].to_numpy()
    if not np.isin(vals, (-1, 1)).all():
        raise DataError(f"{path}: attribute values must be -1 or 1")
    df[names] = (vals > 0).astype(np.int8)
    return df


def parse_utkface_name(name: str) -> tuple[int, int, int]:
    """``<age>_<gender>_<race>_<timestamp>.jpg.chip.jpg`` -> (age, gender, race); -1 for a missing field."""
    parts = Path(name).name.split("_")
    out = []
    for k in range(3):
        try:
            out.append(int(parts[k]) if k < len(parts) - 1 else -1)
        except ValueError:
            out.append(-1)
    return out[0], out[1], out[2]


# ------------------------------------------------------------------------------------ lazy dataset
class LazyImageDataset(torch.utils.data.Dataset):
    """(uint8 CHW image, label, index) decoded on demand from any byte source (folder, tar, .rec, .bin).

    The model applies its own normalisation; ``transform`` (optional) acts on the uint8 tensor.
    """

    def __init__(self, fetch: Callable[[int], bytes], n: int, labels: Sequence[int] | None = None,
                 meta: pd.DataFrame | None = None, transform: Callable | None = None):
        self.fetch, self.n, self.transform = fetch, int(n), transform
        self.labels = np.full(self.n, -1, np.int64) if labels is None else np.asarray(labels, np.int64)
        self.meta = meta

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        img = torch.from_numpy(np.ascontiguousarray(decode_image(self.fetch(i), what=f"item {i}"))).permute(2, 0, 1)
        if self.transform is not None:
            img = self.transform(img)
        return img, int(self.labels[i]), i

    @classmethod
    def from_folder(cls, root: str | os.PathLike, **kw) -> "LazyImageDataset":
        df = scan_image_folder(root)
        labels = pd.factorize(df["identity"], sort=True)[0]
        return cls(lambda i: Path(df["path"].iloc[i]).read_bytes(), len(df), labels, df, **kw)

    @classmethod
    def from_tar(cls, tar_path: str | os.PathLike, **kw) -> "LazyImageDataset":
        from .store import TarReader

        reader = TarReader(Path(tar_path))
        df = identity_folder_index(reader.names())
        labels = pd.factorize(df["identity"], sort=True)[0]
        return cls(lambda i: reader.read(df["path"].iloc[i]), len(df), labels, df, **kw)

    @classmethod
    def from_rec(cls, rec_path: str | os.PathLike, **kw) -> "LazyImageDataset":
        reader = RecordIOReader(rec_path)
        keys = reader.keys
        first = unpack_record(reader.read(keys[0]))[0]
        if first["flag"] > 0 and len(keys) > 1:  # InsightFace: record 0 is a header (label = [start, end))
            keys = keys[1:int(first["label"][0])] if first["label"][0] > 1 else keys[1:]
        labels = []
        for k in keys:
            h, _ = unpack_record(reader.read(k))
            lab = h["label"]
            labels.append(int(lab[0] if np.ndim(lab) else lab))
        return cls(lambda i: unpack_record(reader.read(keys[i]))[1], len(keys), labels, None, **kw)

    @classmethod
    def from_bin(cls, bin_path: str | os.PathLike, **kw) -> "LazyImageDataset":
        blobs, _ = read_bin(bin_path, decode=False)
        return cls(lambda i: blobs[i], len(blobs), None, None, **kw)

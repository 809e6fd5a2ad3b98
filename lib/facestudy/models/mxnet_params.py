"""A reader for MXNet's NDArray-list ``.params`` files, with no mxnet dependency (chapter 0b).

Layout (little endian), as written by ``mx.nd.save``:

- ``uint64`` list magic ``0x112``, ``uint64`` reserved, ``uint64`` number of arrays;
- each array: ``uint32`` array magic (``0xF993FAC9`` = v2, ``0xF993FACA`` = v3; older files start with
  the shape directly), v2/v3: ``int32`` storage type (0 = dense; sparse is not supported), then the
  shape (``uint32`` ndim + ``int64`` dims; legacy: ``uint32`` dims), ``int32`` device type + ``int32``
  device id, ``int32`` dtype flag, then the raw values;
- ``uint64`` number of names, then each name as ``uint64`` length + bytes (``arg:...`` / ``aux:...``).
"""
from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from ..errors import DataError

LIST_MAGIC = 0x112
V2_MAGIC = 0xF993FAC9
V3_MAGIC = 0xF993FACA
V1_MAGIC = 0xF993FAC8
DTYPES = {0: np.float32, 1: np.float64, 2: np.float16, 3: np.uint8, 4: np.int32, 5: np.int8, 6: np.int64}


class _Reader:
    def __init__(self, data: bytes, path: str) -> None:
        self.data, self.pos, self.path = data, 0, path

    def take(self, fmt: str):
        size = struct.calcsize(fmt)
        if self.pos + size > len(self.data):
            raise DataError(f"{self.path}: truncated MXNet .params file (wanted {size} bytes at offset "
                            f"{self.pos}); re-download it")
        out = struct.unpack_from("<" + fmt, self.data, self.pos)
        self.pos += size
        return out if len(out) > 1 else out[0]

    def raw(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise DataError(f"{self.path}: truncated MXNet .params file; re-download it")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out


def _read_array(r: _Reader) -> np.ndarray:
    magic = r.take("I")
    if magic in (V2_MAGIC, V3_MAGIC):
        stype = r.take("i")
        if stype != 0:
            raise DataError(f"{r.path}: sparse NDArray (storage type {stype}) is not supported")
        ndim = r.take("I")
        shape = tuple(r.take(f"{ndim}q")) if ndim > 1 else ((r.take("q"),) if ndim == 1 else ())
    elif magic == V1_MAGIC:
        ndim = r.take("I")
        shape = tuple(r.take(f"{ndim}q")) if ndim > 1 else ((r.take("q"),) if ndim == 1 else ())
    else:  # legacy: the magic word was the ndim, dims are uint32
        ndim = magic
        if ndim > 32:
            raise DataError(f"{r.path}: not an MXNet NDArray (bad magic {magic:#x})")
        shape = tuple(r.take(f"{ndim}I")) if ndim > 1 else ((r.take("I"),) if ndim == 1 else ())
    if ndim == 0:
        return np.zeros((0,), np.float32)
    r.take("ii")  # device type, device id
    flag = r.take("i")
    if flag not in DTYPES:
        raise DataError(f"{r.path}: unknown MXNet dtype flag {flag}")
    dtype = np.dtype(DTYPES[flag])
    count = int(np.prod(shape))
    return np.frombuffer(r.raw(count * dtype.itemsize), dtype=dtype).reshape(shape).copy()


def read_params(path: str | Path) -> dict[str, np.ndarray]:
    """``{name: array}`` of an MXNet ``.params`` file; the ``arg:`` / ``aux:`` prefixes are kept."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"MXNet params file {path} does not exist")
    r = _Reader(path.read_bytes(), str(path))
    magic, _reserved = r.take("QQ")
    if magic != LIST_MAGIC:
        raise DataError(f"{path}: not an MXNet NDArray list (magic {magic:#x}, expected {LIST_MAGIC:#x})")
    n = r.take("Q")
    arrays = [_read_array(r) for _ in range(n)]
    n_names = r.take("Q")
    if n_names != n:
        raise DataError(f"{path}: {n} arrays but {n_names} names; the file is corrupt")
    names = []
    for _ in range(n_names):
        length = r.take("Q")
        names.append(r.raw(length).decode("utf-8"))
    return dict(zip(names, arrays, strict=True))

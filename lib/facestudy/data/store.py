"""Manifests, data roots, the writable cache and verified files (book page "Data", book/data.md).

* Real files live under one or more **read-only data roots** (``FACESTUDY_DATA``, an ``os.pathsep``
  separated list; when unset, ``<repo>/../shared/data`` is used if it exists). Nothing is ever written there.
* Everything derived (hash records, tar indexes, extracted members, prepared aligned faces) goes to the
  **cache** (``FACESTUDY_CACHE``, default ``~/.cache/facestudy``), always written atomically (temp + rename).
* Every file is described by a manifest in ``data_manifests/*.yaml`` (name, sha256, size, provenance,
  licence, how to obtain it). :func:`locate` checks a file's sha256 once and remembers the result keyed by
  (path, size, mtime), so a 50 MB tar is not re-hashed on every run.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tarfile
import tempfile
import threading
from pathlib import Path
from typing import Any, Iterator

import yaml

from ..errors import DataError

REPO_ROOT = Path(__file__).resolve().parents[3]
_LOCK = threading.Lock()
_MANIFEST_CACHE: dict[str, Any] = {}


# ------------------------------------------------------------------------------------------------ roots
def roots() -> list[Path]:
    """The read-only data roots, in search order (chapter "Data": where the real files live)."""
    env = os.environ.get("FACESTUDY_DATA", "").strip()
    if env:
        return [Path(p).expanduser() for p in env.split(os.pathsep) if p.strip()]
    default = REPO_ROOT.parent / "shared" / "data"
    return [default] if default.is_dir() else []


def cache_dir() -> Path:
    """The writable cache (``FACESTUDY_CACHE`` or ``~/.cache/facestudy``); created on first use."""
    env = os.environ.get("FACESTUDY_CACHE", "").strip()
    path = Path(env).expanduser() if env else Path.home() / ".cache" / "facestudy"
    path.mkdir(parents=True, exist_ok=True)
    return path


def manifest_dir() -> Path:
    """Where the manifests live: ``FACESTUDY_MANIFESTS`` or ``<repo>/data_manifests``."""
    env = os.environ.get("FACESTUDY_MANIFESTS", "").strip()
    return Path(env) if env else REPO_ROOT / "data_manifests"


# ------------------------------------------------------------------------------------------- manifests
_REQUIRED_TOP = ("name", "title", "kind", "description", "source", "licence", "obtain", "files")
_REQUIRED_FILE = ("path", "description")
_KINDS = ("dataset", "weights", "benchmark", "fixture")


def parse_manifest(path: Path) -> dict:
    """Read and validate one manifest YAML; a problem raises DataError naming the file and the key."""
    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise DataError(f"manifest {path} is not valid YAML ({e}); fix the file") from None
    if not isinstance(doc, dict):
        raise DataError(f"manifest {path} must be a YAML mapping with keys {', '.join(_REQUIRED_TOP)}")
    for key in _REQUIRED_TOP:
        if key not in doc:
            raise DataError(f"manifest {path} lacks the key {key!r}; add it (required: {', '.join(_REQUIRED_TOP)})")
    if doc["kind"] not in _KINDS:
        raise DataError(f"manifest {path}: key 'kind' is {doc['kind']!r}; use one of {', '.join(_KINDS)}")
    if doc["name"] != path.stem:
        raise DataError(f"manifest {path}: key 'name' is {doc['name']!r} but must equal the file stem {path.stem!r}")
    files = doc["files"]
    if not isinstance(files, list) or not files:
        raise DataError(f"manifest {path}: key 'files' must be a non-empty list")
    for i, f in enumerate(files):
        if not isinstance(f, dict):
            raise DataError(f"manifest {path}: key 'files[{i}]' must be a mapping")
        for key in _REQUIRED_FILE:
            if key not in f:
                raise DataError(f"manifest {path}: key 'files[{i}].{key}' is missing")
        sha = f.get("sha256")
        if sha is not None and (not isinstance(sha, str) or len(sha) != 64
                                or any(c not in "0123456789abcdef" for c in sha)):
            raise DataError(f"manifest {path}: key 'files[{i}].sha256' must be 64 lowercase hex digits or null")
        if f.get("size") is not None and not isinstance(f["size"], int):
            raise DataError(f"manifest {path}: key 'files[{i}].size' must be an integer number of bytes")
        if Path(f["path"]).is_absolute() or ".." in Path(f["path"]).parts:
            raise DataError(f"manifest {path}: key 'files[{i}].path' must be relative to a data root")
        f.setdefault("sha256", None)
        f.setdefault("size", None)
        f.setdefault("optional", bool(doc.get("user_supplied", False)))
    doc.setdefault("user_supplied", False)
    doc["_path"] = str(path)
    return doc


def manifests() -> dict[str, dict]:
    """Every manifest in :func:`manifest_dir`, by name (parsed and validated once per process)."""
    d = manifest_dir()
    key = str(d)
    if key not in _MANIFEST_CACHE:
        if not d.is_dir():
            raise DataError(f"manifest folder {d} not found; set FACESTUDY_MANIFESTS to the repo's data_manifests/")
        _MANIFEST_CACHE[key] = {p.stem: parse_manifest(p) for p in sorted(d.glob("*.yaml"))}
    return _MANIFEST_CACHE[key]


def manifest(name: str) -> dict:
    """One manifest by name; an unknown name raises DataError listing the known ones."""
    all_ = manifests()
    if name not in all_:
        raise DataError(f"no manifest named {name!r}; known: {', '.join(all_)}")
    return all_[name]


def _file_entry(name: str, file: str | None) -> dict:
    m = manifest(name)
    files = m["files"]
    if file is None:
        if len(files) != 1:
            raise DataError(f"dataset {name!r} has {len(files)} files; pass file= one of "
                            f"{', '.join(f['path'] for f in files)}")
        return files[0]
    for f in files:
        if file in (f["path"], Path(f["path"]).name):
            return f
    raise DataError(f"dataset {name!r} has no file {file!r}; its files: {', '.join(f['path'] for f in files)}")


def _missing_message(m: dict, entry: dict) -> str:
    sha = entry.get("sha256") or "not fixed (any version)"
    rts = ", ".join(str(r) for r in roots()) or "(none: FACESTUDY_DATA is unset)"
    return (f"dataset {m['name']!r}: file {entry['path']} (sha256 {sha}) was not found under the data roots "
            f"[{rts}]; get it from {m['obtain'].strip()} and put it at <root>/{entry['path']}, then set "
            f"FACESTUDY_DATA=<root> (several roots: separate with {os.pathsep!r}).")


def find(name: str, file: str | None = None) -> Path | None:
    """The first existing copy of a manifest file under the data roots, unverified (None if absent)."""
    entry = _file_entry(name, file)
    for r in roots():
        p = r / entry["path"]
        if p.is_file():
            return p
    return None


# ------------------------------------------------------------------------------------- hashing, verify
def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def _hash_db_path() -> Path:
    return cache_dir() / "verified.json"


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def file_sha256(path: Path) -> str:
    """sha256 of ``path``, computed once and remembered in the cache keyed by (path, size, mtime)."""
    path = Path(path).resolve()
    st = path.stat()
    key = f"{path}|{st.st_size}|{st.st_mtime_ns}"
    with _LOCK:
        db = _read_json(_hash_db_path())
    if key in db:
        return db[key]
    digest = sha256_file(path)
    with _LOCK:
        db = _read_json(_hash_db_path())
        db[key] = digest
        atomic_write_bytes(_hash_db_path(), json.dumps(db, indent=0, sort_keys=True).encode())
    return digest


def locate(name: str, file: str | None = None, verify: bool = True) -> Path:
    """The verified path of a manifest file (chapter "Data").

    Raises DataError with one actionable sentence when the file is missing, and refuses a file whose
    sha256 differs from the manifest (both hashes are printed).
    """
    m = manifest(name)
    entry = _file_entry(name, file)
    p = find(name, file)
    if p is None:
        raise DataError(_missing_message(m, entry))
    if verify and entry.get("sha256"):
        got = file_sha256(p)
        if got != entry["sha256"]:
            raise DataError(f"dataset {name!r}: file {p} has sha256 {got} but the manifest {m['_path']} expects "
                            f"{entry['sha256']}; the file is corrupt or a different version - replace it with "
                            f"the one from {m['obtain'].strip()}")
    return p


def available(name: str) -> bool:
    """True when every non-optional file of the manifest exists with the expected size (no hashing)."""
    try:
        m = manifest(name)
    except DataError:
        return False
    required = [e for e in m["files"] if not e.get("optional")]
    if not required:  # user-supplied manifests: available when any of their files is present
        return any(find(name, e["path"]) is not None for e in m["files"])
    for entry in required:
        p = find(name, entry["path"])
        if p is None:
            return False
        if entry.get("size") is not None and p.stat().st_size != entry["size"]:
            return False
    return True


# ------------------------------------------------------------------------------------ atomic cache I/O
@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temp path beside ``path``; on success it is renamed onto ``path`` (never half-written)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + "".join(path.suffixes[-1:]),
                               dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(data)


# ---------------------------------------------------------------------------------------------- tars
def _unsafe_member(member: tarfile.TarInfo) -> str | None:
    name = member.name
    if name.startswith(("/", "\\")) or os.path.isabs(name) or ".." in Path(name).parts:
        return "path leaves the extraction folder"
    if member.issym() or member.islnk():
        return "links are not allowed"
    if not (member.isfile() or member.isdir()):
        return "only regular files and folders are allowed"
    return None


def safe_extract(tar_path: Path, dest: Path, members: list[str] | None = None) -> Path:
    """Extract (some members of) a tar into ``dest`` safely: any member that would escape ``dest``
    (absolute path, ``..``, links, devices) is refused with DataError before anything is written; uses
    tarfile's ``filter="data"``. Extraction goes to a temp folder renamed into place (atomic)."""
    dest = Path(dest)
    if dest.exists():
        return dest
    with tarfile.open(tar_path) as tf:
        chosen = tf.getmembers() if members is None else [tf.getmember(n) for n in members]
        for mem in chosen:
            why = _unsafe_member(mem)
            if why:
                raise DataError(f"tar {tar_path}: member {mem.name!r} refused ({why}); the archive is unsafe, "
                                f"do not use it")
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
        try:
            tf.extractall(tmp, members=chosen, filter="data")
            os.replace(tmp, dest)
        finally:
            if tmp.exists():
                import shutil

                shutil.rmtree(tmp, ignore_errors=True)
    return dest


def tar_index(tar_path: Path) -> dict[str, tuple[int, int]]:
    """Member name -> (data offset, size) for the regular files of an uncompressed tar, cached by sha256
    (so members can be read by ``seek`` without extracting or rescanning the archive)."""
    tar_path = Path(tar_path)
    digest = file_sha256(tar_path)
    cpath = cache_dir() / "tar_index" / f"{digest}.json"
    if cpath.exists():
        return {k: tuple(v) for k, v in json.loads(cpath.read_text()).items()}
    index: dict[str, tuple[int, int]] = {}
    with tarfile.open(tar_path) as tf:
        for mem in tf:
            if mem.isfile():
                why = _unsafe_member(mem)
                if why:
                    raise DataError(f"tar {tar_path}: member {mem.name!r} refused ({why})")
                index[mem.name] = (mem.offset_data, mem.size)
    atomic_write_bytes(cpath, json.dumps(index).encode())
    return index


class TarReader:
    """Random access to members of an uncompressed tar via its cached index (no extraction)."""

    def __init__(self, tar_path: Path):
        self.path = Path(tar_path)
        self.index = tar_index(self.path)
        self._fh = None

    def names(self) -> list[str]:
        return sorted(self.index)

    def read(self, name: str) -> bytes:
        if name not in self.index:
            raise DataError(f"tar {self.path} has no member {name!r}")
        if self._fh is None:
            self._fh = open(self.path, "rb")
        off, size = self.index[name]
        self._fh.seek(off)
        return self._fh.read(size)

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def __enter__(self) -> "TarReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

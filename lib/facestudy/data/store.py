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
import errno
import hashlib
import json
import os
import re
import tarfile
import tempfile
import threading
import time
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


def cache_path() -> Path:
    """Where the cache is (``FACESTUDY_CACHE`` or ``~/.cache/facestudy``), without creating it."""
    env = os.environ.get("FACESTUDY_CACHE", "").strip()
    return Path(env).expanduser() if env else Path.home() / ".cache" / "facestudy"


def cache_dir() -> Path:
    """The writable cache (``FACESTUDY_CACHE`` or ``~/.cache/facestudy``); created on first use.

    A cache that is a file or cannot be created raises DataError naming it and the fix."""
    path = cache_path()
    if path.exists() and not path.is_dir():
        raise DataError(f"the cache FACESTUDY_CACHE={path} is a file, not a folder; set FACESTUDY_CACHE to a "
                        f"folder you can write (default ~/.cache/facestudy)")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(os_error_message(exc, path, "create the cache folder")) from None
    return path


def missing_roots() -> list[Path]:
    """Data roots that are named (``FACESTUDY_DATA``) but are not existing folders."""
    return [r for r in roots() if not r.is_dir()]


# --------------------------------------------------------------------------------- file-system errors
_READ_ONLY = (errno.EACCES, errno.EPERM, errno.EROFS)
_FULL = (errno.ENOSPC, errno.EDQUOT)


def os_error_message(exc: OSError, path: Path | str, action: str) -> str:
    """One sentence for an OSError while doing ``action`` on ``path``: what happened and the fix."""
    path = Path(path)
    in_cache = False
    with contextlib.suppress(OSError, ValueError):
        in_cache = path.resolve().is_relative_to(cache_path().resolve())
    where = "FACESTUDY_CACHE to a folder you can write" if in_cache else "a folder you can write"
    if exc.errno in _FULL:
        return (f"cannot {action} {path}: no space left on the device; free some space (or set "
                f"{'FACESTUDY_CACHE to a folder on a disk with room' if in_cache else 'another folder'}) and "
                f"run again - finished work is kept")
    if exc.errno in _READ_ONLY:
        return f"cannot {action} {path}: it is read-only ({exc.strerror}); set {where}"
    if exc.errno in (errno.ENOTDIR, errno.EEXIST):
        return f"cannot {action} {path}: a part of that path is a file, not a folder; set {where}"
    return f"cannot {action} {path} ({exc.strerror or exc}); check the path, or set {where}"


def check_writable(folder: Path, what: str = "the cache") -> Path:
    """Create ``folder`` if needed and write + delete a probe file there; DataError (naming the folder, the
    reason and the fix) when that fails. Used before any chapter kernel starts."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        fix = "set FACESTUDY_CACHE to a folder you can write" if what == "the cache" else "choose a folder"
        raise DataError(f"{what} {folder} is a file, not a folder; {fix}")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=f".probe.{os.getpid()}.", suffix=".tmp", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise DataError(os_error_message(exc, folder, f"write {what}")) from None
    return folder


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
    return cache_path() / "verified.json"


_MEMO: dict[str, str] = {}  # this process's hash records (used as is when the cache is read-only)


def _read_json(path: Path) -> dict:
    try:
        d = json.loads(path.read_text())
    except (OSError, ValueError):  # absent, unreadable or damaged record: hashes are simply recomputed
        return {}
    return d if isinstance(d, dict) else {}


def _stat_key(path: Path) -> str:
    """(path, size, mtime, ctime, inode): any write to the file changes ctime, which no user tool can set
    back, so a byte flipped after verification (with size and mtime restored) is hashed again."""
    st = path.stat()
    return f"{path}|{st.st_size}|{st.st_mtime_ns}|{st.st_ctime_ns}|{st.st_ino}"


def file_sha256(path: Path) -> str:
    """sha256 of ``path``, computed once and remembered in the cache keyed by (path, size, mtime, ctime,
    inode). A read-only or full cache only loses the record (the hash is recomputed next process)."""
    path = Path(path).resolve()
    key = _stat_key(path)
    if key in _MEMO:
        return _MEMO[key]
    with _LOCK:
        db = _read_json(_hash_db_path())
    if key in db:
        _MEMO[key] = db[key]
        return db[key]
    digest = sha256_file(path)
    _MEMO[key] = digest
    with _LOCK:
        db = _read_json(_hash_db_path())
        db[key] = digest
        with contextlib.suppress(OSError, DataError):
            atomic_write_bytes(_hash_db_path(), json.dumps(db, indent=0, sort_keys=True).encode())
    return digest


def check_file(name: str, entry: dict, verify: bool = True) -> tuple[str, Path | None, str]:
    """State of one manifest file: ``("ok" | "missing" | "damaged", path, why)``. The size is a quick
    pre-check (a truncated download is damaged at once); the verdict is the sha256 when ``verify``."""
    p = find(name, entry["path"])
    if p is None:
        return "missing", None, ""
    size = p.stat().st_size
    why = []
    if entry.get("size") is not None and size != entry["size"]:
        why.append(f"it has {size:,} bytes but the manifest says {entry['size']:,} "
                   f"({'an interrupted download?' if size < entry['size'] else 'a different file?'})")
    if verify and entry.get("sha256"):
        got = file_sha256(p)
        if got != entry["sha256"]:
            why.append(f"its sha256 is {got}, the manifest expects {entry['sha256']}")
    return ("damaged", p, "; ".join(why)) if why else ("ok", p, "")


def damaged_message(name: str, path: Path, why: str) -> str:
    m = manifest(name)
    return (f"dataset {name!r}: file {path} is damaged: {why}; the file is corrupt, truncated or a different "
            f"version - replace it with the one from {m['obtain'].strip()} (data_manifests/{name}.yaml)")


def locate(name: str, file: str | None = None, verify: bool = True) -> Path:
    """The verified path of a manifest file (chapter "Data").

    Raises DataError with one actionable sentence when the file is missing, and refuses a file whose
    sha256 differs from the manifest (both hashes are printed).
    """
    m = manifest(name)
    entry = _file_entry(name, file)
    state, p, why = check_file(name, entry, verify=verify)
    if state == "missing":
        raise DataError(_missing_message(m, entry))
    if state == "damaged":
        raise DataError(damaged_message(name, p, why))
    return p


def available(name: str) -> bool:
    """True when the dataset's files are there (chapters then use the real data; chapter "Data").

    False only when its files are absent (an unknown manifest too): the chapter may then use the
    synthetic world. A file that is there but damaged (wrong size: a truncated download), or a dataset
    with some files present and others missing, raises DataError naming the files - a damaged dataset is
    never mistaken for an absent one. The sha256 is checked when a file is used (:func:`locate`)."""
    try:
        m = manifest(name)
    except DataError:
        return False
    required = [e for e in m["files"] if not e.get("optional")]
    states = {e["path"]: check_file(name, e, verify=False) for e in m["files"]}
    damaged = [(p, why) for (s, p, why) in states.values() if s == "damaged"]
    if damaged:
        raise DataError(" ".join(damaged_message(name, p, why) for p, why in damaged))
    if not required:  # user-supplied manifests: available when any of their files is present
        return any(s == "ok" for s, _, _ in states.values())
    present = [e["path"] for e in required if states[e["path"]][0] == "ok"]
    if not present:
        return False
    if len(present) < len(required):
        gone = [e for e in required if states[e["path"]][0] == "missing"]
        raise DataError(f"dataset {name!r} is incomplete: {', '.join(present)} found but "
                        f"{', '.join(e['path'] for e in gone)} missing under the data roots "
                        f"[{', '.join(str(r) for r in roots())}]; " + _missing_message(m, gone[0]))
    return True


# ------------------------------------------------------------------------------------ atomic cache I/O
#: Temp names carry the writer's pid: ``.<name>.<pid>.<random>.tmp<suffix>`` (files and folders), so a
#: leftover of a killed writer can be told from one being written right now (:func:`clean_temps`).
_TEMP_RE = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.[A-Za-z0-9_]+\.tmp(\.\w+)?$")
_LEGACY_TEMP_RE = re.compile(r"^(?P<name>.+)\.tmp(?P<pid>\d+)(\.\w+)?$")  # older writers: <name>.tmp<pid>
STALE_SECONDS = 24 * 3600  # a temp of a live pid older than this is stale too (pid reuse)


def temp_prefix(path: Path) -> str:
    return f".{Path(path).name}.{os.getpid()}."


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def clean_temps(folder: Path, recursive: bool = False) -> list[Path]:
    """Remove leftover temp files/folders of killed writers in ``folder`` (those whose writer pid is gone,
    or older than a day); returns what was removed. Never fails (a read-only folder is left as it is)."""
    import shutil

    folder = Path(folder)
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    walker = os.walk(folder) if recursive else [(str(folder), [], [])]
    for top, _, _ in walker:
        try:
            entries = list(os.scandir(top))
        except OSError:
            continue
        for ent in entries:
            m = _TEMP_RE.match(ent.name) or _LEGACY_TEMP_RE.match(ent.name)
            if not m:
                continue
            try:
                age = time.time() - ent.stat(follow_symlinks=False).st_mtime
                if _pid_alive(int(m["pid"])) and age < STALE_SECONDS:
                    continue
                if ent.is_dir(follow_symlinks=False):
                    shutil.rmtree(ent.path)
                else:
                    os.unlink(ent.path)
                removed.append(Path(ent.path))
            except OSError:
                continue
    return removed


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temp path beside ``path``; on success it is renamed onto ``path`` (never half-written).

    A full or read-only disk raises DataError naming ``path`` and the fix; the temp is always removed
    (a kill leaves it, and :func:`clean_temps` removes it later)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path), suffix=".tmp" + "".join(path.suffixes[-1:]),
                                   dir=path.parent)
        os.close(fd)
    except OSError as exc:
        raise DataError(os_error_message(exc, path, "write")) from None
    try:
        try:
            yield Path(tmp)
            os.replace(tmp, path)
        except OSError as exc:
            if exc.errno in _FULL + _READ_ONLY and exc.filename in (None, tmp, str(path)):
                raise DataError(os_error_message(exc, path, "write")) from None
            raise
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(data)


@contextlib.contextmanager
def file_lock(path: Path, what: str = "") -> Iterator[None]:
    """An exclusive inter-process lock on ``path`` (created); a second holder waits, saying why."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(path, "a+")
    except OSError as exc:
        raise DataError(os_error_message(exc, path, "create the lock file")) from None
    try:
        try:
            import fcntl
        except ImportError:  # not POSIX: no lock (writes stay atomic, so two writers only duplicate work)
            yield
            return
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"waiting for another process to finish {what or path} (lock {path})", flush=True)
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
    finally:
        fh.close()


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
        tmp = Path(tempfile.mkdtemp(prefix=temp_prefix(dest), suffix=".tmp", dir=dest.parent))
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
        try:
            return {k: (int(v[0]), int(v[1])) for k, v in json.loads(cpath.read_text()).items()}
        except (OSError, ValueError, TypeError, IndexError, AttributeError) as exc:
            _warn_rebuild(cpath, exc, "tar index")
    index: dict[str, tuple[int, int]] = {}
    size = tar_path.stat().st_size
    try:
        with tarfile.open(tar_path) as tf:
            for mem in tf:
                if mem.isfile():
                    why = _unsafe_member(mem)
                    if why:
                        raise DataError(f"tar {tar_path}: member {mem.name!r} refused ({why})")
                    if mem.offset_data + mem.size > size:
                        raise tarfile.ReadError(f"member {mem.name!r} runs past the end of the file")
                    index[mem.name] = (mem.offset_data, mem.size)
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise DataError(f"tar {tar_path} cannot be read ({exc}); the archive is truncated or corrupt - "
                        f"download it again") from None
    atomic_write_bytes(cpath, json.dumps(index).encode())
    return index


def _warn_rebuild(path: Path, exc: BaseException, what: str) -> None:
    """Report a corrupt cache entry by path, delete it; the caller rebuilds it."""
    import warnings

    why = " ".join(str(exc).split())[:120]
    warnings.warn(f"{what} {path} is corrupt or unsafe to load ({type(exc).__name__}: {why}); deleted, "
                  f"rebuilding it", CacheRebuilt, stacklevel=3)
    with contextlib.suppress(OSError):
        Path(path).unlink()


class CacheRebuilt(UserWarning):
    """A corrupt cache entry (prepared shard, checkpoint, index, embeddings) was found, deleted and rebuilt."""


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
        data = self._fh.read(size)
        if len(data) != size:
            raise DataError(f"tar {self.path}: member {name!r} is cut short ({len(data)} of {size} bytes); the "
                            f"archive is truncated - download it again")
        return data

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def __enter__(self) -> "TarReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

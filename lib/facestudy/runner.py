"""Execute chapters with papermill at a profile and record how they ran (chapter 0 shows the records).

``run_chapters`` validates everything (chapter ids, profile, parameters and their types, profile-table
overrides) before any kernel starts, then executes each chapter, writes the executed notebook to ``out``
with versions / device / threads / wall time in its metadata, hides papermill's injected cell in the book,
and returns one row per chapter. A failing chapter is named with the cell that failed.
"""
from __future__ import annotations

import json
import math
import os
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from . import chapters as chapters_mod
from . import profiles
from .errors import DataError, ParameterError
from .report import atomic_write_text


@dataclass
class RunResult:
    chapter: str
    profile: str
    status: str  # "ok" | "failed"
    wall_s: float
    output: str
    error: str = ""


def plan(selection: str, profile: str, params: dict[str, str], overrides: dict[str, str], base: Path | None = None):
    """Validate a run request; returns [(chapter, typed parameters, typed overrides)]. Raises ParameterError."""
    if profile not in profiles.PROFILES:
        raise ParameterError(f"unknown profile {profile!r}; valid profiles: {', '.join(profiles.PROFILES)}")
    chosen = chapters_mod.chapters(base) if selection == "all" else [chapters_mod.get(selection, base)]
    out = []
    for ch in chosen:
        decl = ch.parameters()
        typed: dict[str, Any] = {}
        for key, value in params.items():
            if key == "profile":
                raise ParameterError("give the profile with --profile, not -p profile=...")
            if key not in decl:
                raise ParameterError(f"unknown parameter {key!r} for chapter {ch.id}; valid parameters: "
                                     f"{', '.join(k for k in decl if k != 'profile')}")
            typed[key] = chapters_mod.coerce(decl[key], value)
            _check_range(f"parameter {key!r} of chapter {ch.id}", key, typed[key], None)
        if typed.get("data_root"):
            parts = [r for r in str(typed["data_root"]).split(os.pathsep) if r.strip()]
            gone = [r for r in parts if not Path(r).expanduser().is_dir()]
            if gone:
                raise ParameterError(f"parameter 'data_root' of chapter {ch.id}: {gone[0]} is not an existing "
                                     f"folder; give the folder holding the data files (several: separate with "
                                     f"{os.pathsep!r})")
        if "device" in typed:
            from .runtime import DEVICES
            if typed["device"] not in DEVICES:
                raise ParameterError(f"unknown device {typed['device']!r}; valid devices: {', '.join(DEVICES)}")
        typed["profile"] = profile
        table_over = {}
        if overrides:
            base_cfg = profiles.resolve(ch.id, profile)
            for key, value in overrides.items():
                if key not in base_cfg or key in ("profile", "chapter"):
                    raise ParameterError(f"unknown setting {key!r} for chapter {ch.id}; valid settings: "
                                         f"{', '.join(sorted(k for k in base_cfg if k not in ('profile', 'chapter')))}")
                table_over[key] = _yaml_value(key, value)
            resolved = profiles.resolve(ch.id, profile, **table_over)  # type check
            for key in table_over:
                _check_range(f"setting {key!r} of chapter {ch.id}", key, resolved[key], _table_values(ch.id, key))
        out.append((ch, typed, table_over))
    return out


SEED_LIMIT = 2**32  # numpy's legacy seeding takes 0 <= seed < 2**32; torch and numpy Generators accept it too
_COUNT_RE = re.compile(r"(^n_|_n$|size$|batch|epochs$|_ids$|per_id|identities$|^dim$|_dim$|heads$|depth$|"
                       r"patch$|width$|repeats$|limit$)")


def _yaml_value(key: str, value: str) -> Any:
    import yaml

    try:
        return yaml.safe_load(value)
    except yaml.YAMLError as exc:
        first = " ".join(str(exc).split())[:120]
        raise ParameterError(f"--set {key}={value!r} is not valid YAML ({first}); write numbers as 3 or 0.1, "
                             f"lists as [a, b], and quote text with a colon or brackets: {key}='\"...\"'") from None


def _table_values(chapter: str, key: str) -> list[Any]:
    """Every value ``key`` takes in the profile table of ``chapter`` (base and each profile)."""
    entry = profiles.TABLE.get(chapter, {})
    return [d[key] for d in entry.values() if isinstance(d, dict) and key in d]


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _check_range(what: str, key: str, value: Any, table: list[Any] | None) -> None:
    """Out-of-range values stop before any kernel starts: a seed outside [0, 2**32), a non-finite number, a
    negative value where every profile uses >= 0, zero for a count/size where every profile uses >= 1."""
    if not _number(value):
        return
    if isinstance(value, float) and not math.isfinite(value):
        raise ParameterError(f"{what} must be a finite number, got {value!r}")
    if key == "seed" or key.endswith("_seed"):
        if not (isinstance(value, int) and 0 <= value < SEED_LIMIT):
            raise ParameterError(f"{what} must be an integer in [0, {SEED_LIMIT}) (numpy and torch seed range), "
                                 f"got {value!r}")
        return
    nums = [v for v in (table or []) if _number(v)]
    if not nums:
        return
    if value < 0 and all(v >= 0 for v in nums):
        raise ParameterError(f"{what} must be >= 0 (the profiles use {sorted(set(nums))}), got {value!r}")
    if value == 0 and all(v >= 1 for v in nums) and _COUNT_RE.search(key):
        raise ParameterError(f"{what} is a count or size and must be >= 1 (the profiles use "
                             f"{sorted(set(nums))}), got {value!r}")


def preflight(jobs, out: Path) -> Path:
    """Checks that need no kernel, run before the first one starts: ``out`` writable (ParameterError),
    the cache writable (DataError), each chapter's real data not damaged (DataError naming the file; absent
    data is fine: the chapter then uses the synthetic world). Leftover temp files in the cache are removed."""
    import sys

    from .data import store

    out = Path(out)
    try:
        store.check_writable(out, "the output folder")
    except DataError as exc:
        raise ParameterError(f"--out: {exc}") from None
    store.check_writable(store.cache_path(), "the cache")
    store.clean_temps(store.cache_path(), recursive=True)
    for root in store.missing_roots():
        print(f"facestudy: note: data root {root} (FACESTUDY_DATA) does not exist; chapters use the data they "
              f"find under the other roots, or the synthetic world", file=sys.stderr)
    needs = sorted({n for ch, _, _ in jobs for n in chapters_mod.DATA_NEEDS.get(ch.id, [])})
    for name in needs:
        if not store.available(name):  # absent: fine; damaged (size) or incomplete: DataError
            continue
        for entry in store.manifest(name)["files"]:
            state, path, why = store.check_file(name, entry, verify=True)
            if state == "damaged":
                raise DataError(store.damaged_message(name, path, why))
    return out


def _hide_injected(nb_path: Path, meta: dict) -> None:
    nb = json.loads(nb_path.read_text())
    for cell in nb["cells"]:
        tags = cell.get("metadata", {}).get("tags", [])
        if "injected-parameters" in tags and "remove-cell" not in tags:
            tags.append("remove-cell")
            cell["metadata"]["tags"] = tags
    nb["metadata"]["facestudy"] = meta
    atomic_write_text(nb_path, json.dumps(nb, indent=1))


def _failure(exc: Exception) -> str:
    ename = getattr(exc, "ename", type(exc).__name__)
    evalue = getattr(exc, "evalue", str(exc))
    cell = getattr(exc, "exec_count", None)
    where = f"cell [{cell}]" if cell is not None else "a cell"
    return f"{where} raised {ename}: {str(evalue).splitlines()[0] if evalue else ''}"


REHEARSAL_DIR = Path("_build") / "rehearsal"  # default output of a rehearsal (never the book's executed/)
# bump when data.fixtures writes different files (2: calibrated IResNet BN; 3: AdaFace IR-101)
REHEARSAL_FIXTURES_VERSION = "3"


def rehearsal_fixtures() -> Path:
    """The paper-format fixtures a ``paper`` rehearsal reads when the user gave no manifests of their own
    (``FACESTUDY_MANIFESTS`` unset): written once, with the big models, into the cache's
    ``rehearsal-fixtures/`` (see :mod:`facestudy.data.fixtures`)."""
    from .data import store
    from .data.fixtures import write_fixtures

    folder = store.cache_dir() / "rehearsal-fixtures"
    done = folder / ".complete"

    def current() -> bool:
        return done.exists() and done.read_text().strip() == REHEARSAL_FIXTURES_VERSION

    if not current():
        # one writer at a time (parallel test workers, two shells): the others wait, then find them done
        with store.file_lock(store.cache_dir() / "locks" / "rehearsal-fixtures.lock", "the rehearsal fixtures"):
            if not current():
                print(f"facestudy: writing the paper-format fixtures for the rehearsal into {folder} (once)",
                      flush=True)
                done.unlink(missing_ok=True)
                write_fixtures(folder, big=True)
                done.write_text(REHEARSAL_FIXTURES_VERSION + "\n")
    return folder


def run_chapters(selection: str, profile: str, params: dict[str, str] | None = None,
                 overrides: dict[str, str] | None = None, out: Path | None = None, progress: bool = True,
                 base: Path | None = None, rehearse: bool = False) -> list[RunResult]:
    """``rehearse=True``: the profile's shapes with :data:`facestudy.profiles.REHEARSAL`'s capped work, on
    the CPU unless ``-p device=...`` says otherwise, into ``_build/rehearsal/<profile>`` by default; a
    ``paper`` rehearsal without ``FACESTUDY_MANIFESTS`` reads :func:`rehearsal_fixtures`."""
    import papermill as pm

    from .runtime import environment

    base = base or chapters_mod.root()
    params = dict(params or {})
    if rehearse:
        params.setdefault("device", "cpu")
    jobs = plan(selection, profile, params, overrides or {}, base)
    if out is None and rehearse:
        out = base / REHEARSAL_DIR / profile
        out.mkdir(parents=True, exist_ok=True)
    out = preflight(jobs, Path(out or base / chapters_mod.EXECUTED_DIR).resolve())
    env_run = {"FACESTUDY_REHEARSE": "1" if rehearse else ""}
    if rehearse and profile == "paper" and not os.environ.get("FACESTUDY_MANIFESTS", "").strip():
        from .data import store

        fx = rehearsal_fixtures()
        env_run["FACESTUDY_MANIFESTS"] = str(fx / "manifests")
        env_run["FACESTUDY_DATA"] = os.pathsep.join(str(r) for r in [fx, *store.roots()])
    results = []
    for ch, typed, table_over in jobs:
        target = out / f"{ch.id}.ipynb"
        tmp = out / f".{ch.id}.running.ipynb"
        tmp.unlink(missing_ok=True)  # a killed earlier run's partial copy
        from .runtime import MALLOC_ENV

        env_backup = {k: os.environ.get(k) for k in ("FACESTUDY_RECORDS", "FACESTUDY_OVERRIDES", *MALLOC_ENV,
                                                     *env_run)}
        for k, v in MALLOC_ENV.items():
            os.environ.setdefault(k, v)  # the kernel inherits them (see runtime.MALLOC_ENV)
        os.environ.update(env_run)
        os.environ["FACESTUDY_RECORDS"] = str(out)
        os.environ["FACESTUDY_OVERRIDES"] = json.dumps(table_over)
        print(f"==> {ch.id} (profile={profile}{', rehearsal' if rehearse else ''})", flush=True)
        t0 = time.perf_counter()
        status, error = "ok", ""
        try:
            pm.execute_notebook(str(ch.source), str(tmp), parameters=typed, kernel_name="python3",
                                progress_bar=progress, cwd=str(ch.source.parent), log_output=False)
        except Exception as exc:  # papermill wraps kernel errors; keep going with the other chapters
            status, error = "failed", _failure(exc)
        finally:
            for k, v in env_backup.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        wall = time.perf_counter() - t0
        meta = {"chapter": ch.id, "profile": profile, "rehearsal": rehearse, "parameters": typed,
                "overrides": table_over, "status": status, "error": error, "wall_s": round(wall, 2),
                "environment": environment(),
                "finished": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
        if tmp.exists():
            try:
                _hide_injected(tmp, meta)
                os.replace(tmp, target)
            finally:
                tmp.unlink(missing_ok=True)
        res = RunResult(ch.id, profile, status, wall, str(target), error)
        atomic_write_text(out / f"{ch.id}.run.json", json.dumps({**asdict(res), **meta}, indent=2))
        results.append(res)
        print(f"    {status} in {wall:.1f} s" + (f" — {ch.id}: {error}" if error else ""), flush=True)
    return results


def table(results: list[RunResult]) -> str:
    lines = [f"{'chapter':<20} {'profile':<8} {'status':<7} {'wall time':>10}", "-" * 48]
    for r in results:
        lines.append(f"{r.chapter:<20} {r.profile:<8} {r.status:<7} {r.wall_s:>9.1f}s")
    for r in results:
        if r.status != "ok":
            lines.append(f"FAILED {r.chapter}: {r.error} (executed copy with the traceback: {r.output})")
    return "\n".join(lines)


def timings(directory: Path) -> list[dict]:
    """The records of the last runs in ``directory`` (chapter 0 shows them)."""
    rows = []
    for f in sorted(Path(directory).glob("*.run.json")):
        d = json.loads(f.read_text())
        rows.append({k: d.get(k) for k in ("chapter", "profile", "status", "wall_s", "finished")})
    return rows

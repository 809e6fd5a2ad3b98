"""The chapter registry: which notebooks make the book (from ``_toc.yml``) and their parameters.

A chapter is a source notebook ``notebooks/<id>.ipynb`` whose executed copy ``book/executed/<id>.ipynb``
is listed in ``_toc.yml``. Its parameters are read from its one ``parameters`` cell (typed and commented,
so ``papermill --help-notebook`` and ``facestudy list`` document them).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from .errors import ParameterError
from .runtime import repo_root

EXECUTED_DIR = "book/executed"

# Real data (manifest names, see data_manifests/) each chapter uses when present; chapter 0 turns this
# into the "which chapters fall back to the synthetic world here" table.
DATA_NEEDS: dict[str, list[str]] = {
    "00_setup": ["lfw"],
    "00a_faceworld": ["mtcnn", "mobilefacenet_ms1m"],
    "00b_models": ["lfw", "mobilefacenet_ms1m", "mobilefacenet_casia"],
    "01_geometry": ["celeba10k", "lfw", "mobilefacenet_ms1m", "mobilefacenet_casia"],
    "02_uiface": ["celeba_id299", "lfw", "mobilefacenet_ms1m"],
    "03_kprpe": ["celeba_id299", "lfw", "mtcnn"],
    "04_facemint": ["lfw", "celeba10k", "celeba_id299", "utkface", "mobilefacenet_ms1m", "mtcnn"],
    "05_distillation": ["celeba_id299", "lfw", "mobilefacenet_ms1m"],
}


@dataclass(frozen=True)
class Parameter:
    name: str
    type: str
    default: str
    help: str


@dataclass(frozen=True)
class Chapter:
    id: str
    source: Path

    @property
    def title(self) -> str:
        nb = json.loads(self.source.read_text())
        for cell in nb["cells"]:
            if cell["cell_type"] == "markdown":
                for line in "".join(cell["source"]).splitlines():
                    if line.startswith("# "):
                        return line[2:].strip()
        return self.id

    def parameters(self) -> dict[str, Parameter]:
        return read_parameters(self.source)


def root() -> Path:
    r = repo_root()
    if r is None:
        raise ParameterError("cannot find the book's checkout (a folder with _toc.yml and lib/facestudy); "
                             "run facestudy from inside the repository")
    return r


def _toc_files(node) -> list[str]:
    out: list[str] = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("file", "root") and isinstance(value, str):
                out.append(value)
            else:
                out.extend(_toc_files(value))
    elif isinstance(node, list):
        for item in node:
            out.extend(_toc_files(item))
    return out


def chapters(base: Path | None = None) -> list[Chapter]:
    """Chapters in book order (as listed in _toc.yml)."""
    base = base or root()
    toc = yaml.safe_load((base / "_toc.yml").read_text())
    found = []
    for f in _toc_files(toc):
        f = f.removesuffix(".ipynb")
        if f.startswith(EXECUTED_DIR + "/"):
            cid = f.split("/")[-1]
            src = base / "notebooks" / f"{cid}.ipynb"
            if src.exists():
                found.append(Chapter(cid, src))
    return found


def get(chapter: str, base: Path | None = None) -> Chapter:
    """A chapter by id, or by a unique prefix (``01`` -> ``01_geometry``)."""
    all_ = chapters(base)
    exact = [c for c in all_ if c.id == chapter]
    if exact:
        return exact[0]
    pref = [c for c in all_ if c.id.startswith(chapter)]
    if len(pref) == 1:
        return pref[0]
    valid = ", ".join(c.id for c in all_)
    raise ParameterError(f"unknown chapter {chapter!r}; valid chapters: {valid} (or 'all')")


_PARAM_RE = re.compile(
    r"^(?P<name>[A-Za-z_]\w*)\s*:\s*(?P<type>[\w\[\], ]+?)\s*=\s*(?P<default>.+?)\s*(#\s*(?P<help>.*))?$")


def parameters_cell(nb: dict) -> dict:
    cells = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    if len(cells) != 1:
        raise ParameterError(f"a chapter notebook needs exactly one cell tagged 'parameters', found {len(cells)}")
    return cells[0]


def read_parameters(path: Path) -> dict[str, Parameter]:
    """Parse ``name: type = default  # help`` lines of the parameters cell."""
    nb = json.loads(Path(path).read_text())
    cell = parameters_cell(nb)
    params: dict[str, Parameter] = {}
    for line in "".join(cell["source"]).splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if "#" in line and "=" in line.split("#", 1)[1]:
            raise ParameterError(f"{path.name}: parameters line {line!r}: no '=' in the comment "
                                 "(papermill cannot parse it)")
        m = _PARAM_RE.match(line)
        if not m:
            raise ParameterError(f"{path.name}: parameters line {line!r} is not of the form "
                                 "'name: type = default  # help'")
        params[m["name"]] = Parameter(m["name"], m["type"].strip(), m["default"], (m["help"] or "").strip())
    return params


def coerce(param: Parameter, value: str):
    """Turn a command-line string into the parameter's declared type (ParameterError if it does not fit)."""
    kind = param.type
    try:
        if kind == "int":
            return int(value)
        if kind == "float":
            return float(value)
        if kind == "bool":
            low = str(value).lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if kind == "str":
            return str(value)
        return yaml.safe_load(value)
    except ValueError:
        raise ParameterError(
            f"parameter {param.name!r} must be {kind} (default {param.default}), got {value!r}") from None

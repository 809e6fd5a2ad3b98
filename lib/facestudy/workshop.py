"""Teaching mode: student / teacher notebooks, the start-anywhere bootstrap cell, the data hint.

Conventions (book page "Teaching with this book", ``book/workshop.md``):

* **Exercises** are `sphinx-exercise <https://ebp-sphinx-exercise.readthedocs.io>`_ directives in markdown
  cells: an ``{exercise}`` block with a ``:label:``, then its solution as a *gated* block —
  a markdown cell ``{solution-start} <label>`` (``:class: dropdown``, collapsed in the HTML), any code cells,
  and a markdown cell ``{solution-end}``.
* **Solution cells** carry the cell tag ``solution`` (every cell of a gated solution: its markdown and its
  code). Inside a code cell the answer sits between nbgrader's markers ``### BEGIN SOLUTION`` and
  ``### END SOLUTION``; what follows ``### END SOLUTION`` is the self-check (assertions) that stays in the
  student copy. We use plain cell tags — the mechanism Jupyter, papermill (``parameters``) and Jupyter Book
  (``remove-input``) already share — plus nbgrader's in-cell markers, rather than nbgrader's own metadata,
  because nbgrader would add a course database, a grading workflow and a second notebook schema that a
  workshop without grading does not need; a course that does grade can still map the markers onto nbgrader.
* **Student copy**: markdown solution cells are dropped, code solution cells keep their self-check and get
  nbgrader's stub (``# YOUR CODE HERE`` / ``raise NotImplementedError()``) in place of the answer, and the
  ``parameters`` cell is preset for the workshop's hardware. **Teacher copy**: the full notebook, preset
  the same way.
* **Bootstrap cell** (tag ``bootstrap``, removed from the HTML): the first cell of every chapter installs
  facestudy when the kernel lacks it (Colab, JupyterHub, a fresh virtual environment) — from a local
  checkout or from the repository URL, which is configured in ONE place, ``repository.url`` in
  ``_config.yml`` — and says when the chapter will run on the synthetic world. ``sync_bootstrap`` rewrites
  the cells from ``_config.yml`` (``facestudy workshop --sync-bootstrap``); a test checks they agree.
"""
from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import yaml

from .errors import ParameterError

SOLUTION_TAG = "solution"
BOOTSTRAP_TAG = "bootstrap"
BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
STUB = "# YOUR CODE HERE\nraise NotImplementedError()"

_EXERCISE_RE = re.compile(r"```\{exercise\}\s*(?P<title>[^\n]*)\n(?::[^\n]*\n)*?:label:\s*(?P<label>\S+)")


# --------------------------------------------------------------------------------------------- helpers
def _source(cell: dict) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def lines(text: str) -> list[str]:
    """A cell source as Jupyter stores it: a list of lines with their newlines."""
    return text.splitlines(keepends=True)


def _tags(cell: dict) -> list[str]:
    return list(cell.get("metadata", {}).get("tags", []))


def _read(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def _write(path: Path, nb: dict) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(nb, indent=1, ensure_ascii=False, sort_keys=True) + "\n")


def repository_url(root: Path) -> str:
    """The book's repository (``repository.url`` in ``_config.yml``): the ONE place a fork changes."""
    cfg = yaml.safe_load((Path(root) / "_config.yml").read_text())
    url = (cfg.get("repository") or {}).get("url", "")
    if not url:
        raise ParameterError(f"{Path(root) / '_config.yml'} has no repository.url")
    return url


# --------------------------------------------------------------------------------------- the bootstrap
def bootstrap_source(chapter: str, repo_url: str) -> str:
    """The first cell of a chapter: install facestudy if missing, then say whether real data was found."""
    return f'''# Start anywhere (Colab, JupyterHub, a fresh virtual environment): install facestudy when it is missing.
# Written by `facestudy workshop --sync-bootstrap` from repository.url in _config.yml; edit that, not this.
FACESTUDY_REPO = "{repo_url}"
import importlib.util, os, subprocess, sys
from pathlib import Path

if importlib.util.find_spec("facestudy") is None:
    source = os.environ.get("FACESTUDY_SOURCE", FACESTUDY_REPO)  # a git URL or a local checkout
    if not Path(source).is_dir():
        checkout = Path.home() / source.rstrip("/").split("/")[-1].removesuffix(".git")
        if not checkout.exists():
            subprocess.run(["git", "clone", "--depth", "1", source, str(checkout)], check=True)
        source = str(checkout)
    print(f"facestudy is not installed in this kernel: installing it from {{source}} (once; a few minutes)")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-e", source], check=True)
    sys.path.insert(0, str(Path(source, "lib").resolve()))  # this kernel sees the install at once
from facestudy.workshop import data_hint

data_hint("{chapter}")'''


def _bootstrap_cell(chapter: str, repo_url: str) -> dict:
    return {"cell_type": "code", "execution_count": None, "id": f"bootstrap-{chapter}"[:64],
            "metadata": {"tags": [BOOTSTRAP_TAG, "remove-cell"]}, "outputs": [],
            "source": lines(bootstrap_source(chapter, repo_url))}


def sync_bootstrap(root: Path, chapter_ids: list[str] | None = None) -> list[Path]:
    """Insert or refresh the bootstrap cell (first cell) of each chapter notebook; returns changed files."""
    from . import chapters

    url = repository_url(root)
    changed = []
    for ch in chapters.chapters(Path(root)):
        if chapter_ids is not None and ch.id not in chapter_ids:
            continue
        nb = _read(ch.source)
        cell = _bootstrap_cell(ch.id, url)
        existing = [i for i, c in enumerate(nb["cells"]) if BOOTSTRAP_TAG in _tags(c)]
        if existing:
            old = nb["cells"][existing[0]]
            if _source(old) == _source(cell) and existing[0] == 0:
                continue
            cell["id"] = old.get("id", cell["id"])
            del nb["cells"][existing[0]]
        nb["cells"].insert(0, cell)
        _write(ch.source, nb)
        changed.append(ch.source)
    return changed


def data_hint(chapter: str) -> str | None:
    """Print (and return) what a chapter will fall back to when its real data is not found; None if all found."""
    from . import chapters, data

    roots = data.roots()
    needs = chapters.DATA_NEEDS.get(chapter, [])
    missing = [n for n in needs if not data.available(n)]
    if roots and not missing:
        return None
    where = ("no data root was found (FACESTUDY_DATA is unset and there is no ../shared/data beside the "
             "checkout)" if not roots else
             f"the data root(s) {', '.join(map(str, roots))} lack {', '.join(missing)}")
    msg = (f"NOTE {chapter}: {where}.\n"
           "This chapter will run on the procedural SYNTHETIC FACE WORLD instead of real faces / pretrained "
           "weights: it runs to the end, but its numbers are not the paper's and say nothing about real data.\n"
           "To add the real data: put the files described in data_manifests/*.yaml (book page 'Data and "
           "models') in a folder, then `export FACESTUDY_DATA=/that/folder` (or set os.environ['FACESTUDY_DATA'] "
           "before this cell), run `facestudy data prepare` once, and restart the kernel.")
    print(msg)
    return msg


# --------------------------------------------------------------------------- exercises, student copies
def exercises(nb: dict) -> list[dict]:
    """The exercises of a notebook in order: ``[{label, title, has_code}]``."""
    out = []
    for cell in nb["cells"]:
        if cell["cell_type"] != "markdown":
            continue
        for m in _EXERCISE_RE.finditer(_source(cell)):
            out.append({"label": m["label"], "title": m["title"].strip(), "has_code": False})
    labels = {e["label"]: e for e in out}
    current = None
    for cell in nb["cells"]:
        src = _source(cell)
        m = re.search(r"```\{solution-start\}\s*(\S+)", src)
        if m:
            current = m.group(1)
        elif "```{solution-end}" in src:
            current = None
        elif cell["cell_type"] == "code" and current in labels:
            labels[current]["has_code"] = True
    return out


def strip_solution(source: str) -> str:
    """nbgrader's rule: the text between BEGIN/END SOLUTION becomes the stub (all of it when unmarked)."""
    if BEGIN not in source:
        return STUB
    out, inside = [], False
    for line in source.splitlines():
        s = line.strip()
        if s == BEGIN:
            inside = True
            indent = line[: len(line) - len(line.lstrip())]
            out.extend(indent + stub for stub in STUB.splitlines())
        elif s == END:
            inside = False
        elif not inside:
            out.append(line)
    if inside:
        raise ParameterError(f"a solution cell opens {BEGIN!r} without {END!r}")
    return "\n".join(out)


def show_solution(source: str) -> str:
    """The teacher's view: the markers removed (the answer and its check stay)."""
    return "\n".join(line for line in source.splitlines() if line.strip() not in (BEGIN, END))


def preset_parameters(nb: dict, values: dict[str, Any]) -> dict:
    """Set the defaults of the ``parameters`` cell (e.g. profile, device) to the workshop's choices."""
    from .chapters import _PARAM_RE, parameters_cell

    cell = parameters_cell(nb)
    src_lines = _source(cell).splitlines()
    seen = set()
    for i, line in enumerate(src_lines):
        m = _PARAM_RE.match(line)
        if m and m["name"] in values:
            default = json.dumps(values[m["name"]]) if isinstance(values[m["name"]], str) else repr(values[m["name"]])
            comment = f"  # {m['help']}" if m["help"] else ""
            src_lines[i] = f"{m['name']}: {m['type']} = {default}{comment}"
            seen.add(m["name"])
    unknown = set(values) - seen
    if unknown:
        raise ParameterError(f"unknown notebook parameter(s) {sorted(unknown)}")
    cell["source"] = [ln + "\n" for ln in src_lines[:-1]] + src_lines[-1:]
    return nb


def _clear_outputs(nb: dict) -> None:
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            cell["outputs"], cell["execution_count"] = [], None


def student_copy(nb: dict, **params) -> dict:
    nb = copy.deepcopy(nb)
    cells = []
    for cell in nb["cells"]:
        if SOLUTION_TAG in _tags(cell):
            if cell["cell_type"] != "code":
                continue
            cell["source"] = lines(strip_solution(_source(cell)))
            cell["metadata"]["tags"] = [t for t in _tags(cell) if t != SOLUTION_TAG] + ["exercise-stub"]
        cells.append(cell)
    nb["cells"] = cells
    _clear_outputs(nb)
    return preset_parameters(nb, params) if params else nb


def teacher_copy(nb: dict, **params) -> dict:
    nb = copy.deepcopy(nb)
    for cell in nb["cells"]:
        if SOLUTION_TAG in _tags(cell) and cell["cell_type"] == "code":
            cell["source"] = lines(show_solution(_source(cell)))
    _clear_outputs(nb)
    return preset_parameters(nb, params) if params else nb


def write_workshop(out: Path, chapter_ids: list[str] | None = None, profile: str = "default", device: str = "auto",
                   root: Path | None = None) -> dict[str, list[Path]]:
    """``facestudy workshop``: ``out/student/<id>.ipynb``, ``out/teacher/<id>.ipynb`` and ``out/README.md``."""
    from . import chapters, profiles
    from .runtime import DEVICES

    if profile not in profiles.PROFILES:
        raise ParameterError(f"unknown profile {profile!r}; valid profiles: {', '.join(profiles.PROFILES)}")
    if device not in DEVICES:
        raise ParameterError(f"unknown device {device!r}; valid devices: {', '.join(DEVICES)}")
    root = Path(root or chapters.root())
    chosen = chapters.chapters(root) if not chapter_ids else [chapters.get(c, root) for c in chapter_ids]
    out = Path(out)
    written: dict[str, list[Path]] = {"student": [], "teacher": []}
    readme = ["# Workshop notebooks", "",
             f"Made by `facestudy workshop` at profile `{profile}`, device `{device}` (preset in each "
             "notebook's parameters cell). `student/` has the exercises with stubs (`raise "
             "NotImplementedError()` where your code goes; the assertions after it check your answer); "
             "`teacher/` has the same notebooks with the solutions.", "",
             "| chapter | exercises (label: title, * = asks for code) |", "|---|---|"]
    for ch in chosen:
        nb = _read(ch.source)
        ex = exercises(nb)
        for kind, fn in (("student", student_copy), ("teacher", teacher_copy)):
            path = out / kind / f"{ch.id}.ipynb"
            _write(path, fn(nb, profile=profile, device=device))
            written[kind].append(path)
        listing = "; ".join(f"{e['label']}: {e['title']}{' *' if e['has_code'] else ''}" for e in ex) or "-"
        readme.append(f"| {ch.id} | {listing} |")
    (out / "README.md").write_text("\n".join(readme) + "\n")
    return written

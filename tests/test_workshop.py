"""Teaching mode (issue 22): exercises and solution cells, student / teacher copies, the bootstrap cell.

The code solutions themselves execute inside every chapter's smoke run (tests/test_notebooks.py); here:
structure checks (fast), the `facestudy workshop` command, and — marked slow — a student copy executed
with its stubs, the teacher copy executed fully, and the bootstrap cell in a fresh virtual environment.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from facestudy import chapters, cli, workshop
from facestudy.errors import ParameterError

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = chapters.chapters(ROOT)
# chapters that must carry 3-5 exercises (chapter 0 has a few warm-ups too)
TEACHING = ["00a_faceworld", "00b_models", "01_geometry", "02_uiface", "03_kprpe", "04_facemint",
            "05_distillation"]
EXERCISED = [c for c in CHAPTERS if c.id in TEACHING or c.id == "00_setup"]


def _nb(ch) -> dict:
    return json.loads(ch.source.read_text())


def _tags(cell) -> list[str]:
    return cell.get("metadata", {}).get("tags", [])


def _src(cell) -> str:
    return "".join(cell["source"])


@pytest.mark.parametrize("ch", CHAPTERS, ids=lambda c: c.id)
def test_bootstrap_cell_is_first_and_matches_config(ch):
    nb = _nb(ch)
    first = nb["cells"][0]
    assert workshop.BOOTSTRAP_TAG in _tags(first) and "remove-cell" in _tags(first)
    expected = workshop.bootstrap_source(ch.id, workshop.repository_url(ROOT))
    assert _src(first) == expected, "run `facestudy workshop --sync-bootstrap` after changing repository.url"


@pytest.mark.parametrize("ch", [c for c in CHAPTERS if c.id in TEACHING], ids=lambda c: c.id)
def test_chapter_has_three_to_five_exercises(ch):
    ex = workshop.exercises(_nb(ch))
    assert 3 <= len(ex) <= 5, [e["label"] for e in ex]
    assert any(e["has_code"] for e in ex), "at least one exercise asks for code"


def test_exercise_labels_are_unique_across_the_book():
    labels = [e["label"] for ch in CHAPTERS for e in workshop.exercises(_nb(ch))]
    assert len(labels) == len(set(labels))


@pytest.mark.parametrize("ch", EXERCISED, ids=lambda c: c.id)
def test_code_solutions_are_marked_and_self_checking(ch):
    nb = _nb(ch)
    code = [c for c in nb["cells"] if c["cell_type"] == "code" and workshop.SOLUTION_TAG in _tags(c)]
    assert code
    for cell in code:
        src = _src(cell)
        assert src.count(workshop.BEGIN) == 1 and src.count(workshop.END) == 1
        check = src.split(workshop.END, 1)[1]
        assert "assert " in check, "the lines after END SOLUTION check the answer"
    student = workshop.student_copy(nb, profile="smoke", device="cpu")
    assert not any(c["cell_type"] == "markdown" and "{solution" in _src(c) for c in student["cells"])
    stubs = [c for c in student["cells"] if "exercise-stub" in _tags(c)]
    assert len(stubs) == len(code)
    for stub, cell in zip(stubs, code, strict=True):
        answer = _src(cell).split(workshop.BEGIN, 1)[1].split(workshop.END, 1)[0].strip()
        assert "raise NotImplementedError()" in _src(stub) and answer not in _src(stub)
    params = _src(chapters.parameters_cell(student))
    assert 'profile: str = "smoke"' in params and 'device: str = "cpu"' in params


def test_strip_solution_keeps_indentation_and_refuses_unclosed_markers():
    src = "x = 1\nif True:\n    ### BEGIN SOLUTION\n    y = 2\n    ### END SOLUTION\nassert y == 2"
    out = workshop.strip_solution(src)
    assert "y = 2" not in out and "    raise NotImplementedError()" in out and out.endswith("assert y == 2")
    assert workshop.strip_solution("z = 3") == workshop.STUB
    assert workshop.show_solution(src) == "x = 1\nif True:\n    y = 2\nassert y == 2"
    with pytest.raises(ParameterError, match="without"):
        workshop.strip_solution("### BEGIN SOLUTION\nx = 1")


def test_preset_parameters_refuses_unknown_names():
    nb = _nb(CHAPTERS[0])
    with pytest.raises(ParameterError, match="unknown notebook parameter"):
        workshop.preset_parameters(nb, {"no_such": 1})


def test_workshop_command_writes_student_teacher_and_readme(tmp_path, capsys):
    assert cli.main(["workshop", str(tmp_path), "--chapters", "00_setup", "00a", "--profile", "smoke",
                     "--device", "cpu"]) == 0
    for kind in ("student", "teacher"):
        assert sorted(p.name for p in (tmp_path / kind).iterdir()) == ["00_setup.ipynb", "00a_faceworld.ipynb"]
    teacher = json.loads((tmp_path / "teacher" / "00a_faceworld.ipynb").read_text())
    assert any("{solution" in _src(c) for c in teacher["cells"])
    assert not any(workshop.BEGIN in _src(c) for c in teacher["cells"])
    readme = (tmp_path / "README.md").read_text()
    assert "ex-00a-yaw" in readme and "profile `smoke`" in readme
    assert cli.main(["workshop", str(tmp_path), "--profile", "laptop"]) == 2
    assert "valid profiles" in capsys.readouterr().err


def test_data_hint_names_the_synthetic_fallback(tmp_path, monkeypatch):
    monkeypatch.setenv("FACESTUDY_DATA", str(tmp_path))  # a root without any of the files
    msg = workshop.data_hint("02_uiface")
    assert "SYNTHETIC FACE WORLD" in msg and "FACESTUDY_DATA" in msg and "celeba_id299" in msg


# ------------------------------------------------------------------------------------------- executed
def _execute(path: Path, cwd: Path, python: str | None = None) -> subprocess.CompletedProcess:
    """papermill in a subprocess (its own kernel), one thread; returns the finished process."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "FACESTUDY_THREADS": "1"}
    cmd = [python or sys.executable, "-m", "papermill", str(path), str(path), "--cwd", str(cwd),
           "-k", "python3", "--no-progress-bar"]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)


@pytest.mark.slow
@pytest.mark.notebooks
def test_student_copy_runs_to_its_first_exercise_and_teacher_copy_fully(tmp_path):
    assert cli.main(["workshop", str(tmp_path), "--chapters", "00_setup", "--profile", "smoke"]) == 0
    student, teacher = tmp_path / "student" / "00_setup.ipynb", tmp_path / "teacher" / "00_setup.ipynb"
    proc = _execute(student, ROOT / "notebooks")
    assert proc.returncode != 0, "the student copy stops at its first stub"
    nb = json.loads(student.read_text())
    first_stub = next(i for i, c in enumerate(nb["cells"]) if "exercise-stub" in _tags(c))
    for cell in nb["cells"][:first_stub]:
        if cell["cell_type"] == "code":
            assert not any(o.get("output_type") == "error" for o in cell["outputs"]), _src(cell)[:200]
    errors = [o for o in nb["cells"][first_stub]["outputs"] if o.get("output_type") == "error"]
    assert errors and errors[0]["ename"] == "NotImplementedError"
    proc = _execute(teacher, ROOT / "notebooks")
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.slow
@pytest.mark.notebooks
def test_bootstrap_installs_facestudy_into_a_fresh_kernel(tmp_path):
    """Chapter 0 in a fresh virtual environment that lacks facestudy: the first cell installs it from this
    checkout (FACESTUDY_SOURCE) and says that the chapter runs on the synthetic world (an empty data root).
    The dependencies (torch, papermill, pip, setuptools, ...) are borrowed from this venv through a .pth line
    and the build runs without isolation, so nothing is downloaded; pip never removes a package outside the
    environment it installs into, so this venv's own editable facestudy is left alone."""
    import sysconfig

    venv = tmp_path / "fresh"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=300)
    py = str(venv / "bin" / "python")
    site = subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    # a plain path line: this venv's packages become importable, its editable facestudy finder does not
    Path(site, "borrowed.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    probe = subprocess.run([py, "-c", "import torch, papermill; import facestudy"], capture_output=True, text=True,
                           cwd=tmp_path)
    assert "No module named 'facestudy'" in probe.stderr, probe.stderr[-2000:]
    subprocess.run([py, "-m", "ipykernel", "install", "--prefix", str(venv), "--name", "python3"],
                   check=True, capture_output=True, timeout=120)
    empty = tmp_path / "no_data"
    empty.mkdir()
    nb_path = tmp_path / "00_setup.ipynb"
    nb_path.write_text((ROOT / "notebooks" / "00_setup.ipynb").read_text())
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PYTHONPATH"))}
    env.update(FACESTUDY_SOURCE=str(ROOT), FACESTUDY_DATA=str(empty), FACESTUDY_CACHE=str(tmp_path / "cache"),
               PIP_NO_BUILD_ISOLATION="0",  # pip's spelling of --no-build-isolation
               OMP_NUM_THREADS="1", FACESTUDY_THREADS="1", PATH=f"{venv / 'bin'}:{os.environ.get('PATH', '')}")
    proc = subprocess.run([py, "-m", "papermill", str(nb_path), str(nb_path), "-p", "profile", "smoke",
                           "--cwd", str(ROOT / "notebooks"), "-k", "python3", "--no-progress-bar"],
                          capture_output=True, text=True, env=env, timeout=900)
    nb = json.loads(nb_path.read_text())
    first = "".join("".join(o.get("text", "")) for o in nb["cells"][0]["outputs"])
    print(first)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"installing it from {ROOT}" in first
    assert "SYNTHETIC FACE WORLD" in first and "FACESTUDY_DATA" in first
    assert list(Path(site).glob("facestudy-*.dist-info")), "installed into the fresh environment itself"


def test_book_drops_the_notebooks_own_section_numbers():
    """book/_ext/heading_numbers.py: "## 1. The pieces" renders as "3.1. The pieces", not "3.1. 1. The pieces"."""
    sys.path.insert(0, str(ROOT / "book" / "_ext"))
    try:
        from heading_numbers import strip_number
    finally:
        sys.path.remove(str(ROOT / "book" / "_ext"))
    assert strip_number("1. The pieces") == "The pieces"
    assert strip_number("6.2. Results") == strip_number("6.2 Results") == "Results"
    for keep in ("2026 results", "3D faces", "The 5 landmarks", "1.", "Claims"):
        assert strip_number(keep) == keep


def test_book_renumbers_the_chapters_references_to_their_sections():
    """"section 6" in a chapter's prose becomes the book's number ("3.6"); a paper's "section 5.4", an unknown
    number and other words are left alone."""
    sys.path.insert(0, str(ROOT / "book" / "_ext"))
    try:
        from heading_numbers import renumber_references
    finally:
        sys.path.remove(str(ROOT / "book" / "_ext"))
    nums = {"4": "3.4", "5": "3.5", "6": "3.6"}
    assert renumber_references("Section 6 knocks attention out", nums) == "Section 3.6 knocks attention out"
    assert renumber_references("see sections 4 and 5, then section 6.", nums) == \
        "see sections 3.4 and 3.5, then section 3.6."
    for keep in ("the paper's section 5.4, human study", "section 12 of nothing", "cross-section 4x", "Table 6"):
        assert renumber_references(keep, nums) == keep

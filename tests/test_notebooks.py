"""Every chapter executed at the smoke profile with papermill, then a -W Jupyter Book build of the outputs.

This is what CI runs on every change. Each chapter must finish its smoke run within ~60 s (its timing is
printed, not asserted: speed targets live in benchmarks/).
"""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from facestudy import chapters, runner

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = [c.id for c in chapters.chapters(ROOT)]

pytestmark = pytest.mark.notebooks


@pytest.fixture(scope="session")
def smoke_book(tmp_path_factory) -> Path:
    """A copy of the book's sources whose book/executed/ receives the smoke outputs."""
    base = tmp_path_factory.mktemp("smoke_book")
    for name in ("_config.yml", "_toc.yml"):
        shutil.copy(ROOT / name, base / name)
    shutil.copytree(ROOT / "book", base / "book", ignore=shutil.ignore_patterns("executed", "_build"))
    (base / "book" / "executed").mkdir()
    return base


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_chapter_runs_at_smoke(chapter, smoke_book):
    results = runner.run_chapters(chapter, "smoke", out=smoke_book / "book" / "executed", progress=False,
                                  base=ROOT)
    print(runner.table(results))
    assert results[0].status == "ok", results[0].error


def test_book_builds_with_W(smoke_book):
    from facestudy.scorecard import write_scorecard

    executed = smoke_book / "book" / "executed"
    missing = [c for c in CHAPTERS if not (executed / f"{c}.ipynb").exists()]
    if missing:
        pytest.fail(f"chapters without a smoke output (their smoke test failed first): {missing}")
    write_scorecard(executed, executed / "scorecard.md")
    jb = Path(sys.executable).with_name("jupyter-book")
    proc = subprocess.run([str(jb), "build", str(smoke_book), "-W", "-n", "--keep-going"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    html = smoke_book / "_build" / "html"
    intro = (html / "book" / "intro.html").read_text()
    import torch

    assert torch.__version__.split("+")[0] in intro, "the intro page shows glued numbers from chapter 0"
    for c in CHAPTERS:
        assert (html / "book" / "executed" / f"{c}.html").exists()
    score = (html / "book" / "executed" / "scorecard.html").read_text()
    assert "Claims scorecard" in score


# Calls that build or train a model in a chapter must say where: a GPU run of chapter 5 at the `gpu` profile
# (2026-11-30, H200) trained every student on the CPU (4 MiB of GPU memory used; 238 s per tail) because its
# teacher and `train_tail` were never given the run's device. Each listed call must carry the device.
DEVICE_CALLS = ("models.pretrained(", "study.load_teacher(", "heads.train_tail(", "dtail.train_tail(",
                "heads.train_network(")


def _calls(source: str, name: str) -> list[str]:
    """The text of every call of ``name`` in ``source`` (up to its closing parenthesis) and what follows."""
    out, start = [], source.find(name)
    while start >= 0:
        depth, i = 0, start + len(name) - 1
        while i < len(source):
            depth += {"(": 1, ")": -1}.get(source[i], 0)
            if depth == 0:
                break
            i += 1
        out.append(source[start:i + 1] + source[i + 1:i + 20])
        start = source.find(name, i)
    return out


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_models_and_training_use_the_run_device(chapter):
    import nbformat

    nb = nbformat.read(chapters.get(chapter, ROOT).source, as_version=4)
    src = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    for name in DEVICE_CALLS:
        for call in _calls(src, name):
            assert "run.device" in call, f"{chapter}: {call.splitlines()[0]}... runs on the CPU whatever the device"

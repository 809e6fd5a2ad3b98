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

"""The study-book pipeline: conventions of the chapter notebooks, profiles, CLI errors, claims, runner."""
from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import numpy as np
import pytest
import yaml

from facestudy import chapters, cli, profiles, report, runner
from facestudy.errors import ParameterError

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
REQUIRED = {"profile": "str", "seed": "int", "device": "str", "data_root": "str"}


def test_environment_yml_matches_pyproject():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    assert sorted(pip) == sorted(deps)
    assert "python=3.11" in env["dependencies"]
    assert "torch==2.13.0" in deps, "torch must stay pinned to the CPU build on disk"
    assert not any(d.startswith("torchvision") for d in deps)
    assert any(re.fullmatch(r"jupyter-book.*<2", d) for d in deps)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_conventions(path: Path):
    nb = json.loads(path.read_text())
    ks = nb["metadata"]["kernelspec"]
    assert ks["name"] == "python3" and ks["language"] == "python", "kernelspec python3 with language python"
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            assert not cell.get("outputs"), f"{path.name}: commit notebooks without outputs"
            assert cell.get("execution_count") is None, f"{path.name}: commit without execution counts"
    params = chapters.read_parameters(path)
    for name, kind in REQUIRED.items():
        assert name in params, f"{path.name}: parameters cell lacks {name}"
        assert params[name].type == kind
        assert params[name].help, f"{path.name}: parameter {name} needs a comment"
    assert all(p.help for p in params.values()), f"{path.name}: every parameter needs a comment"
    from papermill.translators import PythonTranslator

    cell = chapters.parameters_cell(nb)
    parsed = [p.name for p in PythonTranslator.inspect({"source": "".join(cell["source"])})]
    assert parsed == list(params), f"{path.name}: papermill cannot parse every parameter line (no '=' in comments)"
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    idx = next(i for i, c in enumerate(code) if "parameters" in c["metadata"].get("tags", []))
    after = "".join(code[idx + 1]["source"])
    assert f'start("{path.stem}"' in after, "the cell after parameters calls facestudy.runtime.start(<chapter>)"
    assert path.stem in profiles.TABLE, "the chapter's sizes live in profiles.TABLE"


def test_notebook_with_outputs_is_detected(tmp_path):
    """The convention test above really fails on a notebook committed with outputs."""
    src = json.loads((ROOT / "notebooks" / "00_setup.ipynb").read_text())
    src["cells"][2]["outputs"] = [{"output_type": "stream", "name": "stdout", "text": ["hi\n"]}]
    bad = tmp_path / "00_setup.ipynb"
    bad.write_text(json.dumps(src))
    with pytest.raises(AssertionError, match="without outputs"):
        test_notebook_conventions(bad)


def test_toc_lists_every_notebook():
    listed = {c.id for c in chapters.chapters(ROOT)}
    assert listed == {p.stem for p in NOTEBOOKS}


def test_profiles_resolve_and_reject():
    cfg = profiles.resolve("00_setup", "smoke")
    assert cfg.n_render == 8 and cfg.profile == "smoke"
    with pytest.raises(ParameterError, match="valid profiles: smoke, default, gpu, paper"):
        profiles.resolve("00_setup", "bogus")
    with pytest.raises(ParameterError, match="valid settings: image_size, n_render"):
        profiles.resolve("00_setup", "smoke", n_rendr=3)
    with pytest.raises(ParameterError, match="must be int"):
        profiles.resolve("00_setup", "smoke", n_render="many")
    assert profiles.resolve("00_setup", "default", n_render=4).n_render == 4
    for chapter, entry in profiles.TABLE.items():
        for prof in profiles.PROFILES:
            assert set(entry.get(prof, {})) <= set(entry["base"]), f"{chapter}/{prof} sets keys not in base"
            profiles.resolve(chapter, prof)


def test_cli_rejects_bad_requests_before_running(capsys):
    assert cli.main(["run", "00_setup", "--profile", "bogus"]) == 2
    err = capsys.readouterr().err
    assert "bogus" in err and "smoke, default, gpu, paper" in err
    assert cli.main(["run", "99_nothing", "--profile", "smoke"]) == 2
    assert "valid chapters: 00_setup" in capsys.readouterr().err
    assert cli.main(["run", "00_setup", "--profile", "smoke", "-p", "sed=1"]) == 2
    assert "valid parameters" in capsys.readouterr().err
    assert cli.main(["run", "00_setup", "--profile", "smoke", "-p", "seed=abc"]) == 2
    assert "must be int" in capsys.readouterr().err
    assert cli.main(["run", "00_setup", "--profile", "smoke", "--set", "n_render=lots"]) == 2
    assert "must be int" in capsys.readouterr().err
    assert cli.main(["run", "00_setup", "--profile", "smoke", "-p", "device=tpu"]) == 2
    assert "valid devices" in capsys.readouterr().err


def test_cli_list(capsys):
    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    assert "00_setup: How this book runs" in out
    assert "profile" in out and "smoke | default | gpu | paper" in out


def test_rules_give_four_verdicts_from_estimates():
    from facestudy import stats

    up = stats.mean_ci([1.0, 1.2, 0.9, 1.1], unit="seeds")
    assert report.effect(up, what="gain").verdict == "reproduced"
    down = stats.mean_ci([-1.0, -1.2, -0.9, -1.1], unit="seeds")
    assert report.effect(down, what="gain").verdict == "not reproduced"
    few = stats.mean_ci([1.0, 2.0], unit="seeds")
    v = report.effect(few, what="gain")
    assert v.verdict == "untestable here" and ">= 3 seeds" in v.needs
    noisy = stats.mean_ci([3.0, -2.0, 1.0, -1.5], unit="seeds")
    v = report.effect(noisy, what="gain", smallest=0.5)
    assert v.verdict == "untestable here" and "power" in v.why
    tight = stats.mean_ci(np.r_[np.full(20, 0.01), np.full(20, -0.01)], unit="folds")
    assert report.effect(tight, what="gain", smallest=1.0).verdict == "not reproduced"
    assert report.effect(tight, what="gain").verdict == "inconclusive"
    assert report.noninferior(tight, delta=0.5, what="aligned").verdict == "reproduced"
    assert report.equivalent(tight, delta=0.5, what="no change").verdict == "reproduced"
    assert report.exact(0.18, at_most=1.0, what="% parameters").verdict == "reproduced"
    both = report.all_of([report.effect(up, what="a"), report.effect(noisy, what="b", smallest=0.5)])
    assert both.verdict == "untestable here"
    gated = report.requires(0.0, 0.01, report.effect(up, what="a"), what="keypoint sensitivity")
    assert gated.verdict == "untestable here" and "keypoint sensitivity" in gated.why
    assert report.requires(0.5, 0.01, report.effect(down, what="a"), what="s").verdict == "not reproduced"


def test_claim_records_and_refuses_typed_verdicts(tmp_path, monkeypatch):
    from facestudy import stats

    monkeypatch.setenv("FACESTUDY_RECORDS", str(tmp_path))
    report._begin_chapter("00_setup", "smoke")
    with pytest.raises(TypeError, match="never a typed string"):
        report.claim("X1", "s", paper="p", ours=1.0, verdict="reproduced")
    est = stats.mean_ci([0.11, 0.09, 0.1, 0.12], unit="seeds")
    report.claim("X1", "a beats b", paper="+0.1", verdict=report.effect(est, what="gain"), scale="points")
    report.claim("X2", "c", paper="p", ours="n/a", verdict=report.untestable(why="no GPU", needs="gpu profile"))
    rec = json.loads((tmp_path / "00_setup.claims.json").read_text())
    assert [c["id"] for c in rec["claims"]] == ["X1", "X2"]
    x1, x2 = rec["claims"]
    assert x1["verdict"] == "reproduced" and x1["n"] == 4 and x1["unit"] == "seeds" and x1["low"] > 0
    assert "[" in x1["ours"] and x2["verdict"] == "untestable here" and x2["needs"] == "gpu profile"
    from facestudy.scorecard import write_scorecard

    page = write_scorecard(tmp_path, tmp_path / "scorecard.md").read_text()
    assert "X1" in page and "a beats b" in page and "1 ✅ reproduced" in page and "1 ⊘ untestable here" in page
    assert "{dropdown}" in page and (tmp_path / "scorecard.csv").exists()
    assert (tmp_path / "scorecard_forest.png").exists() and (tmp_path / "scorecard_verdicts.png").exists()


def _mini_book(tmp_path: Path, cell_source: str) -> Path:
    base = tmp_path / "book"
    (base / "notebooks").mkdir(parents=True)
    (base / "lib" / "facestudy").mkdir(parents=True)
    (base / "_toc.yml").write_text("format: jb-book\nroot: intro\nchapters:\n  - file: book/executed/00_setup\n")
    nb = json.loads((ROOT / "notebooks" / "00_setup.ipynb").read_text())
    params = next(c for c in nb["cells"] if "parameters" in c["metadata"].get("tags", []))
    broken = {"cell_type": "code", "id": "broken", "metadata": {}, "execution_count": None, "outputs": [],
              "source": cell_source}
    nb["cells"] = [nb["cells"][0], params, broken]
    (base / "notebooks" / "00_setup.ipynb").write_text(json.dumps(nb))
    return base


@pytest.mark.notebooks
def test_runner_names_the_failing_chapter_and_cell(tmp_path):
    base = _mini_book(tmp_path, "x = 1\nraise RuntimeError('deliberately broken chapter')")
    results = runner.run_chapters("all", "smoke", out=tmp_path / "out", progress=False, base=base)
    assert [r.status for r in results] == ["failed"]
    msg = runner.table(results)
    assert "FAILED 00_setup" in msg and "RuntimeError: deliberately broken chapter" in msg and "cell [" in msg
    meta = json.loads((tmp_path / "out" / "00_setup.ipynb").read_text())["metadata"]["facestudy"]
    assert meta["status"] == "failed" and meta["environment"]["torch"].startswith("2.13")


def test_runtime_start_validates_before_work(monkeypatch):
    from facestudy import runtime

    with pytest.raises(ParameterError, match="valid devices"):
        runtime.start("00_setup", profile="smoke", device="tpu")
    with pytest.raises(ParameterError, match="valid profiles"):
        runtime.start("00_setup", profile="fast")
    with pytest.raises(ParameterError, match="seed must be an int"):
        runtime.start("00_setup", profile="smoke", seed="0")
    monkeypatch.setenv("FACESTUDY_OVERRIDES", json.dumps({"n_render": 3}))
    run = runtime.start("00_setup", profile="smoke", device="cpu")
    assert run.cfg.n_render == 3 and str(run.device) == "cpu"


def test_seeding_repeats_exactly():
    import torch

    from facestudy import runtime

    runtime.seed_everything(7)
    a = torch.randn(5)
    runtime.seed_everything(7)
    assert torch.equal(a, torch.randn(5))

"""benchmarks/gpu_chapters.py on the CPU: it runs a chapter through facestudy run and writes the record that
chapter 0 reads (the GPU columns stay empty here: no nvidia-smi)."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("gpu_chapters", ROOT / "benchmarks" / "gpu_chapters.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
def test_gpu_chapters_records_a_smoke_run(tmp_path):
    mod = _script()
    record = tmp_path / "gpu_test.json"
    assert mod.main(["00_setup", "--profile", "smoke", "--out", str(tmp_path / "out"), "--timeout", "300",
                     "--record", str(record)]) == 0
    rec = json.loads(record.read_text())
    (row,) = rec["rows"]
    assert row["chapter"] == "00_setup" and row["status"] == "ok" and row["cells_done"] == row["cells"] > 0
    assert row["chapter_wall_s"] > 0 and all(c["seconds"] is not None for c in row["cell_times"])
    # what chapter 0's "Measured on a GPU" cell reads from every kept record
    for kept in [record, *sorted((ROOT / "benchmarks" / "results").glob("gpu_*.json"))]:
        r = json.loads(kept.read_text())
        assert {"gpu", "gpu_memory_mib", "cpu_count", "torch"} <= set(r["machine"]) and r["when"]
        for x in r["rows"]:
            assert {"chapter", "profile", "status", "chapter_wall_s", "wall_s", "cells_done", "cells",
                    "peak_mem_mib"} <= set(x)


def test_cell_times_of_a_partial_notebook(tmp_path):
    nb = {"cells": [{"cell_type": "markdown", "source": "# t"},
                    {"cell_type": "code", "source": "\n# load the data\nx = 1",
                     "metadata": {"papermill": {"status": "completed", "duration": 1.234}}},
                    {"cell_type": "code", "source": "y = 2", "metadata": {"papermill": {"status": "running"}}}]}
    p = tmp_path / ".ch.running.ipynb"
    p.write_text(json.dumps(nb))
    rows = _script().cell_times(p)
    assert [r["cell"] for r in rows] == [1, 2]
    assert rows[0]["label"] == "# load the data" and rows[0]["seconds"] == 1.23
    assert rows[1]["seconds"] is None and rows[1]["status"] == "running"
    assert _script().cell_times(tmp_path / "missing.ipynb") == []

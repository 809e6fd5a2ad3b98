"""Shared test fixtures. Tests that need the real files in ../shared/data are marked `realdata` and skip
when the data root is absent; everything else runs anywhere."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

if not os.environ.get("FACESTUDY_DATA") and (ROOT.parent / "shared" / "data").is_dir():
    os.environ["FACESTUDY_DATA"] = str((ROOT.parent / "shared" / "data").resolve())


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return ROOT

"""Shared test fixtures. Tests that need the real files in ../shared/data are marked `realdata` and skip
when the data root is absent; everything else runs anywhere."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

if not os.environ.get("FACESTUDY_DATA") and (ROOT.parent / "shared" / "data").is_dir():
    os.environ["FACESTUDY_DATA"] = str((ROOT.parent / "shared" / "data").resolve())


@pytest.fixture(autouse=True)
def _one_torch_thread(request):
    """Unit tests use tiny tensors: one thread is fastest (no oversubscription on a busy 2-core machine)
    and repeatable. Slow real-data tests and notebook runs keep every core."""
    import torch

    if request.node.get_closest_marker("slow") or request.node.get_closest_marker("notebooks"):
        yield
        return
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return ROOT

"""Shared fixtures and helpers for the cryolens test suite."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
HAVE_RELION = shutil.which("relion_project") is not None and shutil.which("relion_reconstruct") is not None


def pytest_collection_modifyitems(config, items):
    skip_relion = pytest.mark.skip(reason="RELION 3.1 binaries not on PATH (apt-get install relion)")
    for item in items:
        if "relion" in item.keywords and not HAVE_RELION:
            item.add_marker(skip_relion)


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data folder not found at {SHARED_DATA}")
    return SHARED_DATA


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=DEVICES)
def device(request) -> torch.device:
    return torch.device(request.param)

"""Shared fixtures and helpers for the cryolens test suite.

Besides the fixtures, this module holds the one way the tests run the ``cryolens`` command:

- :func:`run_cli` runs it as a user would, ``python -m cryolens.cli.main ARGS`` in a subprocess with
  the current interpreter (``PYTHONPATH`` and the rest of the environment are inherited);
- :func:`invoke_cli` runs it in this process through typer's ``CliRunner`` (fast; no new interpreter).

Test modules import them with ``from conftest import run_cli, invoke_cli`` (the tests folder is on
``sys.path`` under pytest's default import mode).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
HAVE_RELION = shutil.which("relion_project") is not None and shutil.which("relion_reconstruct") is not None

#: The ``cryolens`` command line with the interpreter running the tests (for ``subprocess.Popen`` uses).
CLI = [sys.executable, "-m", "cryolens.cli.main"]


def run_cli(*args: str, cwd: Path | str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    """Run ``cryolens ARGS`` in a subprocess from folder ``cwd`` (default: the current one).

    Output is captured as text (``p.stdout``, ``p.stderr``). By default (``check=True``) a non-zero
    exit status fails the test with the command's stderr; with ``check=False`` the caller checks
    ``p.returncode`` (hostile-input tests).
    """
    p = subprocess.run([*CLI, *args], cwd=cwd, capture_output=True, text=True)
    if check:
        assert p.returncode == 0, p.stderr
    return p


def invoke_cli(*args: str, cwd: Path | str | None = None, code: int | None = 0, catch_exceptions: bool = True):
    """Run ``cryolens ARGS`` in this process (typer's ``CliRunner``) from folder ``cwd``; returns the
    ``click.testing.Result``.

    The working directory is restored afterwards. When ``code`` is not None the exit status must equal
    it (the assertion shows the output and any exception). ``catch_exceptions=False`` lets an
    exception raised by the command propagate into the test with its traceback.
    """
    from typer.testing import CliRunner

    from cryolens.cli.main import app
    here = Path.cwd()
    if cwd is not None:
        os.chdir(cwd)
    try:
        result = CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=catch_exceptions)
    finally:
        os.chdir(here)
    if code is not None:
        assert result.exit_code == code, (result.output[-3000:], result.exception)
    return result


def job_results(folder: Path | str) -> dict:
    """The ``results`` of a job folder's ``job.json``."""
    import json
    return json.loads((Path(folder) / "job.json").read_text())["results"]


def assert_user_error(result, *fragments: str) -> None:
    """A user error as the house wants it: exit 2, no traceback, one sentence holding every fragment
    (``result``: a ``click.testing.Result``)."""
    assert result.exit_code == 2, (result.exit_code, result.output)
    assert "Traceback" not in result.output
    text = " ".join(result.output.split())
    for f in fragments:
        assert f in text, text


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


HAVE_CUDA = torch.cuda.is_available()
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not HAVE_CUDA, reason="no CUDA device"))]


@pytest.fixture(params=DEVICES)
def device(request) -> torch.device:
    """Each device a kernel test runs on: ``cpu`` always, ``cuda`` (skipped where there is no GPU)."""
    return torch.device(request.param)


def unfinish(folder: Path | str) -> None:
    """Make a finished job folder look interrupted (killed before its SUCCESS marker), so the next run
    into it resumes there instead of being refused (a finished folder needs ``--overwrite``)."""
    from cryolens.jobs.folders import ABORTED_MARKER, SUCCESS_MARKER
    (Path(folder) / SUCCESS_MARKER).unlink()
    (Path(folder) / ABORTED_MARKER).touch()

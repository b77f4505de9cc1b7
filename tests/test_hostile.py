"""Hostile input for every command of the CLI: each case must be refused as the house wants it.

For every command (the Typer app is walked, so a new command without cases fails
:func:`test_every_command_has_cases`) a table of cases gives truncated, NaN, empty, missing
and mismatched inputs and impossible values (0, negative, huge, wrong type). Each case
asserts exit status 2, no traceback, one sentence naming the file or the flag, and that
nothing previously written changed: every file in the shared input folder (valid inputs,
hostile inputs, a project and an unrelated folder) keeps its size, modification time and
inode, and no file appears there. Each case writes into its own fresh ``--out`` folder.

The valid inputs are built once per module and are small (box 32, 40 particles, two
256 x 256 micrographs, one 4-frame movie); commands run in this process (``invoke_cli``).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import assert_user_error, invoke_cli
from hostile_cases import CASES, ROWS, Case, command_names
from hostile_world import build_world, snapshot


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """Valid inputs, hostile ones and an unrelated folder, built once (see ``hostile_world``)."""
    return build_world(tmp_path_factory.mktemp("hostile"))


def test_every_command_has_cases():
    """A new command needs hostile cases here: its name must be a key of ``ROWS`` (``hostile_cases``)."""
    commands = command_names()
    assert commands == set(ROWS), (f"commands without hostile cases: {sorted(commands - set(ROWS))}; "
                                   f"cases for no command: {sorted(set(ROWS) - commands)}")
    assert all(ROWS.values())
    assert len({(c.command, c.id) for c in CASES}) == len(CASES), "case ids repeat"


@pytest.mark.parametrize("case", [pytest.param(c, id=f"{c.command}:{c.id}", marks=c.marks) for c in CASES])
def test_hostile_input(case: Case, world: Path, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("CRYOLENS_PROFILES", str(world / "bad" / "no_profiles.toml"))
    out = tmp_path / "out"
    args = [a.replace("{out}", str(out)) for a in case.args]
    before = snapshot(world)
    result = invoke_cli(*args, cwd=world, code=None)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert_user_error(result, *case.names)
    assert snapshot(world) == before, "a file written before the command changed or appeared"

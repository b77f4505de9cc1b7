"""Every workflow in examples/ is valid: ``cryolens run FILE --dry-run`` plans all its steps.

The dry run checks each step's stage and option names, their values against the declared types and
bounds, and every ``{step.output}`` reference, without data (it reads no input file and creates no
project): each file is copied into a temporary folder first so nothing lands in the repository.
"""

from __future__ import annotations

import shutil
import tomllib
from pathlib import Path

import pytest
from conftest import invoke_cli

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.toml"))


def test_examples_exist():
    names = {p.name for p in EXAMPLES}
    assert {"empiar10291_innexin.toml", "empiar10248_apoferritin.toml", "empiar10028_ribosome.toml"} <= names


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_workflow_dry_run(path: Path, tmp_path: Path):
    copy = tmp_path / path.name
    shutil.copy(path, copy)
    doc = tomllib.loads(path.read_text())
    steps = doc.get("steps") or {s["name"]: s for s in doc.get("step", [])}
    assert path.read_text().startswith("#"), f"{path.name}: start with a comment (what it is, where the data goes)"
    result = invoke_cli("run", copy, "--dry-run", cwd=tmp_path)
    text = " ".join(result.output.split())
    for name in steps:
        assert name in text, (name, result.output)
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name], "a dry run must not create the project"

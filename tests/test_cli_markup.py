"""Text in [brackets] is printed as written: in every command's --help and in error messages (rich markup would
eat ``[profiles.NAME]`` or ``[the current folder]`` as unknown style tags)."""

from __future__ import annotations

import typer.main

from conftest import invoke_cli


def flat(text: str) -> str:
    return " ".join(text.split())


def test_help_keeps_brackets(tmp_path, monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")  # one line per option: no panel border inside a sentence
    monkeypatch.setenv("TERMINAL_WIDTH", "400")
    out = flat(invoke_cli("run", "--help", cwd=tmp_path).output)
    assert "Project folder [the workflow's project, else the folder of the TOML]; created when missing." in out
    out = flat(invoke_cli("profiles", "list", "--help", cwd=tmp_path).output)
    assert "Profiles are [profiles.NAME] tables in" in out
    out = flat(invoke_cli("project", "group", "--help", cwd=tmp_path).output)
    assert "[by table: rlnMicrographMovieName, rlnMicrographName, rlnImageName]" in out
    assert "\\[" not in out  # no escape shows


def test_every_help_string_is_escaped_once():
    """The whole command tree, built twice (as every run of the CLI builds it), holds each help escaped once."""
    from cryolens.cli.main import app

    for _ in range(2):
        root = typer.main.get_command(app)
        stack, texts = [root], []
        while stack:
            cmd = stack.pop()
            texts += [cmd.help or ""] + [p.help or "" for p in cmd.params if getattr(p, "help", None)]
            stack += list(getattr(cmd, "commands", {}).values())
        assert any("\\[the current folder]" in t for t in texts)
        assert not any("\\\\[" in t for t in texts)


def test_error_messages_keep_brackets(tmp_path):
    result = invoke_cli("reconstruct", "--in", "[run]/particles.star", "--out", "rec", cwd=tmp_path, code=2)
    assert "[run]/particles.star" in flat(result.output)

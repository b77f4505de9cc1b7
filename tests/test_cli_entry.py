"""The ``cryolens`` program's entry point: only the invoked command is built, the same help and
behaviour as the whole command tree, and the garbage collector is running again afterwards."""

from __future__ import annotations

import subprocess
import sys

from typer.testing import CliRunner

from cryolens.cli.main import COMMANDS, build_app


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={"CRYOLENS_FAST_EXIT": "0", "PATH": "/usr/bin:/bin"})


def test_entry_imports_only_the_invoked_command():
    r = _run("import gc, sys\n"
             "sys.argv = ['cryolens', 'motion', '--help']\n"
             "from cryolens.cli.entry import run\n"
             "try:\n    run()\nexcept SystemExit as e:\n    code = e.code\n"
             "cli = sorted(m for m in sys.modules if m.startswith('cryolens.cli.'))\n"
             "print('CODE', code, 'GC', gc.isenabled(), 'FROZEN', gc.get_freeze_count() > 0)\n"
             "print('MODULES', ' '.join(cli))\n")
    assert r.returncode == 0, r.stderr
    assert "Usage: cryolens motion" in r.stdout
    assert "CODE 0 GC True FROZEN True" in r.stdout
    modules = r.stdout.split("MODULES", 1)[1].split()
    assert "cryolens.cli.motion" in modules
    assert not {"cryolens.cli.class2d", "cryolens.cli.refine", "cryolens.cli.abinitio"} & set(modules)


def test_single_command_app_matches_the_whole_tree():
    runner = CliRunner()
    whole = build_app()
    for name in ("motion", "pick", "select", "fsc"):
        one = build_app(name)
        assert list(one.registered_commands or []) or list(one.registered_groups or [])
        a = runner.invoke(whole, [name, "--help"], terminal_width=100)
        b = runner.invoke(one, [name, "--help"], terminal_width=100)
        assert a.exit_code == b.exit_code == 0
        assert a.output == b.output
    assert len({c[0] for c in COMMANDS}) == len(COMMANDS)
    # an unknown name builds the whole tree, so click can suggest the right command
    r = runner.invoke(build_app("motoin"), ["motoin"])
    assert r.exit_code == 2 and "motion" in r.output


def test_version_and_root_help_from_the_program():
    r = _run("import sys\nsys.argv = ['cryolens', '--version']\nfrom cryolens.cli.entry import run\nrun()\n")
    assert r.returncode == 0 and r.stdout.strip().startswith("cryolens ")

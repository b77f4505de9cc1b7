"""One declaration per parameter: the Params fields drive the CLI options, validation, job.json and workflows."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import typer.main
from conftest import invoke_cli

from cryolens.cli.declare import DECLARED_ATTR, build_params, help_text
from cryolens.ctf.params import CTFFitParams
from cryolens.errors import InputError
from cryolens.params import Params, apply_preset, declared, flag_of, option
from cryolens.refine.params import RefineParams
from cryolens.simulate.particles import ParticleSimParams


@dataclasses.dataclass
class Toy(Params):
    size: int = option(64, unit="px", ge=16, rule=(lambda n: n % 2 == 0, "even"), help="Box")
    low: float = option(30.0, flag="--band", join=("high",), unit="Å", gt=0, help="Band LOW HIGH")
    high: float = option(5.0, cli=False, unit="Å", gt=0, help="High end")
    kind: str = option("a", choices=("a", "b"), help="Kind")
    grid: tuple[int, int] | None = option(None, parse=lambda t: tuple(int(v) for v in t.split("x")),
                                          text=lambda g: f"{g[0]}x{g[1]}", help="Grid")
    PRESETS = {"big": {"size": 256, "kind": "b"}}

    def check(self) -> None:
        if not self.low > self.high:
            raise ValueError(f"{self.flag('low')} {self.low:g} {self.high:g}: give LOW > HIGH")


@pytest.mark.parametrize("kw, message", [
    (dict(size=8), "--size 8: must be ≥ 16 px"),
    (dict(size=65), "--size 65: must be even"),
    (dict(size=0), "--size 0: must be ≥ 16 px"),
    (dict(high=-1.0), "--band -1: must be > 0 Å"),  # a joined field answers with its option's flag
    (dict(kind="c"), "--kind c: must be one of a, b"),
    (dict(low=float("nan")), "--band nan: must be a number, not NaN"),
    (dict(low=4.0), "--band 4 5: give LOW > HIGH"),
])
def test_validate_names_the_flag(kw, message):
    with pytest.raises(ValueError, match="^" + message.replace("(", r"\(")):
        Toy(**kw).validate()


def test_declarations_give_flags_help_and_presets():
    assert flag_of(Toy, "high") == "--band" and flag_of(RefineParams, "global_order") == "--healpix-order"
    assert help_text(declared(Toy)["size"]) == "Box (px, ≥ 16, even)."
    assert help_text(declared(RefineParams)["ini_high"]).endswith("(Å, > 0).")
    p = build_params(Toy, {"size": 32, "low": (20.0, 6.0), "kind": "a", "grid": "3x4", "preset": None})
    assert (p.size, p.low, p.high, p.grid) == (32, 20.0, 6.0, (3, 4))
    # a preset fills what was not given; what was given wins
    p = build_params(Toy, {"size": 32, "low": (30.0, 5.0), "kind": "a", "grid": None, "preset": "big"}, {"size"})
    assert (p.size, p.kind) == (32, "b")
    with pytest.raises(InputError, match="--preset nope: unknown preset; use one of big"):
        build_params(Toy, {"size": 64, "low": (30.0, 5.0), "kind": "a", "grid": None, "preset": "nope"})
    assert apply_preset(ParticleSimParams(), "tutorial", set()).snr == 0.05


def test_every_declared_field_has_an_option_and_a_workflow_key():
    """Every field a user may tune is reachable from the CLI and from a workflow step, by its flag."""
    from cryolens.cli.main import app
    from cryolens.cli.run import stage_catalog

    catalog = stage_catalog()
    seen = 0
    for words, spec in catalog.items():
        cmd = typer.main.get_command(app)
        for w in words.split():
            cmd = cmd.commands[w]
        for cls, names in getattr(cmd.callback, DECLARED_ATTR, {}).values():
            offered = set(names.values())  # a command may omit a field on purpose (declare(omit=...))
            for field, d in declared(cls).items():
                if not d.cli or field not in offered:
                    continue
                flag = flag_of(cls, field)
                assert flag[2:].replace("-", "_") in spec.options, (words, field, flag)
                assert flag in {o for p in cmd.params for o in (*p.opts, *p.secondary_opts)}, (words, flag)
                seen += 1
    assert seen > 100  # refine, ctf, motion, postprocess, simulate, select, import, extract ...


def test_bad_value_exits_2_before_a_job_is_taken(tmp_path: Path):
    """An impossible value is one sentence naming the flag; inside a project no job number is used up."""
    from cryolens.project.db import open_project

    invoke_cli("project", "init", str(tmp_path / "p"))
    out = invoke_cli("refine", "--in", "x.star", "--ref", "y.mrc", "--ini-high", "0", cwd=tmp_path / "p", code=2).output
    assert "error: --ini-high 0: must be > 0 Å." in out and "Traceback" not in out
    assert open_project(tmp_path / "p").jobs() == [] and not list((tmp_path / "p").glob("Refine*"))
    out = invoke_cli("ctf", "--in", "x.star", "--box", "101", "--out", str(tmp_path / "c"), code=2).output
    assert "error: --box 101: must be even." in out
    out = invoke_cli("ctf", "--in", "x.star", "--res", "5", "30", "--out", str(tmp_path / "c"), code=2).output
    assert "--res 5 30: give LOW HIGH with LOW > HIGH" in out
    out = invoke_cli("motion", "--in", "x.star", "--gain-rot", "90", "--out", str(tmp_path / "c"), code=2).output
    assert "--gain-rot 90: give quarter turns 0-3 as relion_run_motioncorr --gain_rot, i.e. --gain-rot 1" in out
    for args, message in ((("--box", "0"), "--box 0: must be 8–1024 px"),
                          (("--box", "-64"), "--box -64: must be 8–1024 px"),
                          (("--pixel-size", "-1"), "--pixel-size -1: must be > 0 Å"),
                          (("--voltage", "0"), "--voltage 0: must be > 0, ≤ 3000 kV")):
        out = invoke_cli("simulate", "particles", *args, "--out", str(tmp_path / "c"), code=2).output
        assert f"error: {message}." in out
    assert not (tmp_path / "c").exists()


def test_params_reach_job_json(tmp_path: Path):
    """Joined and text options land in job.json as the dataclass fields they fill."""
    p = build_params(CTFFitParams, {"res_low_A": (25.0, 6.0), "patches": "3x2", "box": 256})
    assert dataclasses.asdict(p)["res_high_A"] == 6.0 and p.patches == (3, 2)


def test_preset_fills_what_the_command_line_did_not_give(tmp_path: Path):
    """Through the real CLI: --preset fills the fields not given; the ones given win."""
    import json

    invoke_cli("simulate", "particles", "--preset", "tutorial", "--n", "12", "--box", "24", "--pixel-size", "6",
               "--voltage", "200", "--out", str(tmp_path / "sim"), "--quiet", "--device", "cpu")
    job = json.loads((tmp_path / "sim" / "job.json").read_text())
    assert job["params"]["n_particles"] == 12 and job["params"]["voltage"] == 200.0  # given
    assert job["params"]["snr"] == 0.05 and job["params"]["defocus_min"] == 8000.0  # from the preset
    assert job["results"]["box"] == 24

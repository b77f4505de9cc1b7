"""Workflows (``cryolens run``): validation, skip/re-run by hash, --until/--force, resume after SIGKILL.

Each step runs as a real ``cryolens`` process recorded in the project database; the
steps are tiny (100-300 particles) except the killed one, sized to run a few seconds.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import textwrap
import time
from pathlib import Path

import pytest

from cryolens.cli.run import stage_catalog
from cryolens.errors import InputError
from cryolens.jobs.runner import SUCCESS_MARKER
from cryolens.project.db import Project, open_project
from cryolens.project.workflow import build_argv, load_workflow
from cryolens.project.workflow_run import plan_workflow, run_workflow, state_path

SIM = 'stage = "simulate particles"\nparams = { n = 100, box = 24, pixel_size = 5, seed = 3, defocus = [12000, 20000] }'


def write(folder: Path, text: str, name: str = "wf.toml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture(scope="module")
def catalog():
    return stage_catalog()


def jobs_of(root: Path) -> list[tuple[int, str, str]]:
    return [(j.number, j.stage, j.status) for j in open_project(root).jobs()]


def mtimes(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}


def integrity(root: Path) -> str:
    con = sqlite3.connect(root / "cryolens.db")
    try:
        return con.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        con.close()


# -- validation (nothing runs) ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("body, message", [
    ('[steps.a]\nstage = "simulate banana"', r"step a: unknown stage 'simulate banana'; use one of: .*reconstruct"),
    (f'[steps.sim]\n{SIM}\n[steps.rec]\nstage = "reconstruct"\nparams = {{ in = "{{nope.particles}}" }}',
     r"step rec: \{nope.particles\} names no step; steps above: sim"),
    (f'[steps.rec]\nstage = "reconstruct"\nparams = {{ in = "{{sim.particles}}" }}\n[steps.sim]\n{SIM}',
     r"step rec: \{sim.particles\} refers to a later step"),
    (f'[steps.sim]\n{SIM}\n[steps.rec]\nstage = "reconstruct"\nparams = {{ in = "{{sim.mapp}}" }}',
     r"step rec: \{sim.mapp\}: simulate particles has no output mapp; outputs: particles, stack"),
    ('[steps.rec]\nstage = "reconstruct"\nparams = { in = "x.star", symetry = "C2" }',
     r"step rec: reconstruct has no option symetry; options: .*sym"),
    ('[steps.rec]\nstage = "reconstruct"\nparams = { in = "x.star", out = "here" }', r"step rec: out is set by the workflow runner"),
    ('[steps.rec]\nstage = "reconstruct"\nparams = { in = "x.star", no-ctf = 1 }', r"step rec: no-ctf is a flag; give true or false"),
    ('[steps.rec]\nstage = "reconstruct"\nparams = { in = "x.star", pad = "two" }', r"step rec: reconstruct: Invalid value for '--pad'"),
    ('[steps.rec]\nstage = "reconstruct"\nparams = { sym = "C2" }', r"step rec: reconstruct: Missing option '--in'"),
    ('[steps.sim]\nstage = "simulate particles"\nparams = { defocus = [1, 2, 3] }', r"step sim: defocus takes 2 values"),
    ('[steps.a]\nstage = "reconstruct"\nparams = { in = "x.star" }\n[[step]]\nname = "b"', r"either \[\[step\]\] or"),
    ('[steps.a\nstage = 1', r"not valid TOML"),
    ('[workflow]\nname = "x"', r"no steps"),
])
def test_invalid_workflows_name_file_and_step(tmp_path: Path, catalog, body: str, message: str):
    path = write(tmp_path, body)
    with pytest.raises(InputError, match=message) as info:
        load_workflow(path, catalog)
    assert str(path) in str(info.value)


def test_both_step_forms_and_argv(tmp_path: Path, catalog):
    a = load_workflow(write(tmp_path, f"""
        [workflow]
        name = "w1"
        project = "P"
        [steps.sim]
        {SIM}
        [steps.rec]
        stage = "reconstruct"
        params = {{ in = "{{sim.particles}}", no_ctf = true, wiener = false, batch-size = 64 }}
        [steps.sel]
        stage = "select_particles"
        params = {{ in = "{{rec.particles}}", where = ["rlnDefocusU < 15000", "rlnDefocusV > 1"], class = "1" }}
        """), catalog)
    b = load_workflow(write(tmp_path, f"""
        [[step]]
        name = "sim"
        {SIM}
        [[step]]
        name = "rec"
        stage = "reconstruct"
        params = {{ in = "{{sim.folder}}/particles.star" }}
        """, "other.toml"), catalog, project=tmp_path / "Q")
    assert (a.name, a.project, [s.name for s in a.steps]) == ("w1", tmp_path / "P", ["sim", "rec", "sel"])
    assert (b.name, b.project, [s.name for s in b.steps]) == ("other", tmp_path / "Q", ["sim", "rec"])
    rec, sel = a.steps[1], a.steps[2]
    assert build_argv(rec.stage, {**rec.params, "in": "S/p.star"}) == [
        "--in", "S/p.star", "--no-ctf", "--batch-size", "64"]
    assert build_argv(sel.stage, {**sel.params, "in": "R/p.star"}) == [
        "--in", "R/p.star", "--where", "rlnDefocusU < 15000", "--where", "rlnDefocusV > 1", "--class", "1"]
    assert build_argv(a.steps[0].stage, a.steps[0].params)[-3:] == ["--defocus", "12000", "20000"]
    assert rec.refs == [("sim", "particles")] and b.steps[1].refs == [("sim", "folder")]


def test_example_workflow_is_valid(tmp_path: Path, catalog):
    example = Path(__file__).resolve().parents[1] / "examples" / "workflow.toml"
    wf = load_workflow(example, catalog, project=tmp_path)
    assert [s.name for s in wf.steps] == ["sim", "rec", "close_to_focus", "rec_close", "post"]
    assert [(r.action, r.reason) for r in plan_workflow(wf)] == [
        ("run", "never run"), ("run", "new input from sim"), ("run", "new input from rec"),
        ("run", "new input from close_to_focus"), ("run", "new input from rec")]
    assert [(r.action, r.reason) for r in plan_workflow(wf, until="rec")][2:] == [("stop", "after --until rec")] * 3
    for kw in ({"until": "nope"}, {"force": ["rec", "nope"]}):
        with pytest.raises(InputError, match=r"workflow.toml: --(until|force) nope: no such step \(steps: sim, rec"):
            plan_workflow(wf, **kw)


# -- running ------------------------------------------------------------------------------------------------------------
def test_run_skip_fail_change_force_until(tmp_path: Path, catalog):
    from typer.testing import CliRunner

    from cryolens.cli.main import app
    rec_step = '[steps.rec]\nstage = "reconstruct"\nparams = {{ in = "{inp}", sym = "{sym}" }}'
    path = write(tmp_path, f"[steps.sim]\n{SIM}\n" + rec_step.format(inp="{sim.particles}", sym="C1"))
    root = tmp_path

    # --until sim: only the first step (the project is created)
    assert run_workflow(load_workflow(path, catalog), until="sim") == {"sim": "ran"}
    assert jobs_of(root) == [(1, "simulate_particles", "finished")]
    wf = load_workflow(path, catalog)
    assert [(r.step, r.action, r.reason) for r in plan_workflow(wf)] == [
        ("sim", "skip", "unchanged"), ("rec", "run", "never run")]

    # full run: sim skipped, rec runs on sim's particles
    assert run_workflow(wf) == {"sim": "skipped", "rec": "ran"}
    assert jobs_of(root) == [(1, "simulate_particles", "finished"), (2, "reconstruct", "finished")]
    rec = json.loads((root / "Reconstruct/job002/job.json").read_text())
    assert rec["inputs"]["particles"] == "Simulate/job001/particles.star"
    assert rec["results"]["n_particles_half1"] + rec["results"]["n_particles_half2"] == 100
    before = {f: mtimes(root / f) for f in ("Simulate/job001", "Reconstruct/job002")}
    state_before = json.loads(state_path(root, "wf").read_text())

    # rerun: both skipped, nothing rewritten, no new job
    assert run_workflow(load_workflow(path, catalog)) == {"sim": "skipped", "rec": "skipped"}
    assert {f: mtimes(root / f) for f in before} == before and len(jobs_of(root)) == 2
    assert json.loads(state_path(root, "wf").read_text())["steps"] == state_before["steps"]

    # an impossible value is refused when the workflow is read, before anything runs
    write(tmp_path, f"[steps.sim]\n{SIM}\n" + rec_step.format(inp="{sim.particles}", sym="C0"))
    with pytest.raises(InputError, match=r"step rec: reconstruct: --sym C0: must be C1, Cn, Dn, T, O or I"):
        load_workflow(path, catalog)

    # a param of step 2 changes: only step 2 re-runs; here to an input the step rejects while running,
    # so the run exits 2 with the step's message and step 1's results stay
    write(tmp_path, f"[steps.sim]\n{SIM}\n" + rec_step.format(inp="Simulate/job001/none.star", sym="C1"))
    assert [(r.action, r.reason) for r in plan_workflow(load_workflow(path, catalog))] == [
        ("skip", "unchanged"), ("run", "params or inputs changed")]
    result = CliRunner().invoke(app, ["run", str(path), "--quiet"])
    assert result.exit_code == 2, result.output
    assert "2/2 rec" not in result.output  # no progress lines with --quiet
    assert "step rec (reconstruct) failed: Simulate/job001/none.star: file not found" in result.output
    assert "Traceback" not in result.output
    assert jobs_of(root)[1:] == [(2, "reconstruct", "finished"), (3, "reconstruct", "failed")]
    failed = json.loads(state_path(root, "wf").read_text())["steps"]["rec"]
    assert (failed["status"], failed["folder"]) == ("failed", "Reconstruct/job003") and "none.star" in failed["error"]
    assert mtimes(root / "Simulate/job001") == before["Simulate/job001"]

    # back to C1: the earlier finished run of rec matches again and is reused, nothing runs
    write(tmp_path, f"[steps.sim]\n{SIM}\n" + rec_step.format(inp="{sim.particles}", sym="C1"))
    wf = load_workflow(path, catalog)
    assert run_workflow(wf) == {"sim": "skipped", "rec": "skipped"} and len(jobs_of(root)) == 3
    assert {f: mtimes(root / f) for f in before} == before

    # --force sim: sim runs again (a new job), so does rec, which now reads the new particles
    assert [r.action for r in plan_workflow(wf, force=["sim"])] == ["run", "run"]
    assert run_workflow(wf, force=["sim"]) == {"sim": "ran", "rec": "ran"}
    assert [j[:2] for j in jobs_of(root)[3:]] == [(4, "simulate_particles"), (5, "reconstruct")]
    assert json.loads((root / "Reconstruct/job005/job.json").read_text())["inputs"]["particles"] == \
        "Simulate/job004/particles.star"
    state = json.loads(state_path(root, "wf").read_text())["steps"]
    assert (state["sim"]["folder"], state["rec"]["folder"]) == ("Simulate/job004", "Reconstruct/job005")
    assert integrity(root) == "ok"


@pytest.mark.slow
def test_select_step_fails_on_missing_column_then_resumes(tmp_path: Path, catalog):
    from typer.testing import CliRunner

    from cryolens.cli.main import app
    sel = '[steps.sel]\nstage = "select particles"\nparams = {{ in = "{{sim.particles}}", where = ["{rule}"] }}'
    path = write(tmp_path, f"[steps.sim]\n{SIM}\n" + sel.format(rule="rlnCtfFigureOfMerit > 0.1"))
    result = CliRunner().invoke(app, ["run", str(path), "--quiet"])
    assert result.exit_code == 2, result.output
    assert "2/2 rec" not in result.output  # no progress lines with --quiet
    assert "step sel (select particles) failed" in result.output and "rlnCtfFigureOfMerit" in result.output
    assert "Traceback" not in result.output
    assert [j[1:] for j in jobs_of(tmp_path)] == [("simulate_particles", "finished"), ("select_particles", "failed")]
    sim_files = mtimes(tmp_path / "Simulate/job001")
    write(tmp_path, f"[steps.sim]\n{SIM}\n" + sel.format(rule="rlnDefocusU < 16000"))
    assert [(r.action, r.reason) for r in plan_workflow(load_workflow(path, catalog))] == [
        ("skip", "unchanged"), ("run", "last run failed")]
    result = CliRunner().invoke(app, ["run", str(path), "--quiet"])
    assert result.exit_code == 0, result.output
    assert mtimes(tmp_path / "Simulate/job001") == sim_files
    kept = json.loads((tmp_path / "Select/job003/job.json").read_text())["results"]
    assert kept["n_kept"] + kept["n_rejected"] == 100 and 0 < kept["n_kept"] < 100


def test_sigkill_in_second_step_then_resume(tmp_path: Path):
    """Kill the runner and its step (the whole process group) while step 2 runs; the rerun resumes at step 2."""
    # step 2 inserts each image 24 times (octahedral symmetry): a few seconds of real work
    path = write(tmp_path, """
        [steps.sim]
        stage = "simulate particles"
        params = { n = 300, box = 48, pixel_size = 3, seed = 5 }
        [steps.rec]
        stage = "reconstruct"
        params = { in = "{sim.particles}", sym = "O", batch-size = 32 }
        """)
    from conftest import CLI
    cmd = [*CLI, "run", str(path), "--quiet"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, start_new_session=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            assert proc.poll() is None, f"the workflow ended before step 2 was caught: {proc.stdout.read()}"
            try:
                running = [j for j in Project(tmp_path).jobs() if j.stage == "reconstruct" and j.status == "running"] \
                    if (tmp_path / "cryolens.db").exists() else []
                if running and json.loads((tmp_path / running[0].folder / "job.json").read_text())["status"] == "running":
                    break
            except (sqlite3.OperationalError, OSError, ValueError):
                pass  # the project or the job folder is being created
            time.sleep(0.05)
        else:
            pytest.fail("step 2 was never seen running")
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    killed = running[0]
    assert not (tmp_path / killed.folder / SUCCESS_MARKER).exists()
    sim = open_project(tmp_path).job("Simulate/job001")
    sim_files = mtimes(tmp_path / sim.folder)
    assert integrity(tmp_path) == "ok"

    assert run_workflow(load_workflow(path, stage_catalog())) == {"sim": "skipped", "rec": "ran"}
    jobs = open_project(tmp_path).jobs()
    assert [(j.number, j.stage, j.status) for j in jobs] == [
        (1, "simulate_particles", "finished"), (2, "reconstruct", "killed"), (3, "reconstruct", "finished")]
    assert jobs[0].id == sim.id and mtimes(tmp_path / sim.folder) == sim_files  # step 1 not redone
    assert killed.id == jobs[1].id and (tmp_path / jobs[2].folder / SUCCESS_MARKER).is_file()
    state = json.loads(state_path(tmp_path, "wf").read_text())["steps"]
    assert (state["sim"]["job_id"], state["rec"]["job_id"], state["rec"]["status"]) == (sim.id, jobs[2].id, "finished")
    assert jobs[2].inputs["particles"] == "Simulate/job001/particles.star"
    assert integrity(tmp_path) == "ok"


@pytest.mark.slow  # ~25 s: runs the example workflow end to end; test_examples dry-runs every example
def test_example_workflow_runs_and_sets_a_tuning_option(tmp_path: Path, catalog):
    """examples/workflow.toml runs as shipped; its postprocess step sets --filter-edge-shells (no option before)."""
    example = Path(__file__).resolve().parents[1] / "examples" / "workflow.toml"
    path = tmp_path / "workflow.toml"
    text = example.read_text()
    assert "n = 1000," in text
    path.write_text(text.replace("n = 1000,", "n = 200,"))  # as shipped, on fewer particles
    wf = load_workflow(path, catalog)
    assert [s.name for s in wf.steps] == ["sim", "rec", "close_to_focus", "rec_close", "post"]
    assert run_workflow(wf) == {name: "ran" for name in ("sim", "rec", "close_to_focus", "rec_close", "post")}
    job = json.loads((tmp_path / "project" / "Postprocess" / "job005" / "job.json").read_text())
    assert job["status"] == "finished" and job["params"]["filter_edge_shells"] == 3
    assert job["params"]["mask"]["kind"] == "loose"


def test_a_workflow_starts_from_raw_files(tmp_path: Path, catalog):
    """import micrographs|movies|coords are steps too: the files come by --glob or --files, not positionally."""
    import numpy as np

    from cryolens.io import write_mrc

    (tmp_path / "raw").mkdir()
    for k in range(2):
        write_mrc(tmp_path / "raw" / f"mic_{k}.mrc", np.random.default_rng(k).normal(size=(64, 64)).astype(np.float32),
                  1.5)
    path = write(tmp_path, '[steps.mics]\nstage = "import micrographs"\n'
                           'params = { glob = ["raw/*.mrc"], pixel_size = 1.5, voltage = 200 }\n'
                           '[steps.good]\nstage = "select micrographs"\n'
                           'params = { in = "{mics.micrographs}", where = ["rlnMicrographOriginalPixelSize > 0"] }\n')
    assert "import movies" in catalog and "import coords" in catalog
    assert run_workflow(load_workflow(path, catalog)) == {"mics": "ran", "good": "ran"}
    star = (tmp_path / "Import" / "job001" / "micrographs.star").read_text()
    assert "raw/mic_0.mrc" in star and "raw/mic_1.mrc" in star and "200" in star


@pytest.mark.slow  # 12 s; relative paths inside a project are also pinned by test_project_db
def test_a_moved_project_still_runs_and_keeps_its_lineage(tmp_path: Path, catalog):
    """Inside a project every STAR names files relative to the project root, so the folder can move: after `mv`,
    `cryolens run` skips the finished steps and runs a new one on their outputs, and `project lineage` works."""
    from conftest import invoke_cli

    old, new = tmp_path / "A", tmp_path / "elsewhere" / "B"
    invoke_cli("simulate", "particles", "--n", "100", "--box", "24", "--pixel-size", "5", "--seed", "3", "--out",
               "A/raw", "--quiet", cwd=tmp_path)  # raw data inside the project folder, written before it is one
    path = write(old, '[steps.imp]\nstage = "import particles"\nparams = { in = "raw/particles.star" }\n'
                      '[steps.rec]\nstage = "reconstruct"\nparams = { in = "{imp.particles}" }\n')
    assert run_workflow(load_workflow(path, catalog)) == {"imp": "ran", "rec": "ran"}
    names = (old / "Import/job001/particles.star").read_text()
    assert "000001@raw/particles.mrcs" in names and str(tmp_path) not in names
    # a command run from outside the project (--project) names files relative to the project, not to its folder
    invoke_cli("import", "particles", "--in", old / "raw/particles.star", "--project", "A", "--quiet", cwd=tmp_path)
    assert "000001@raw/particles.mrcs" in (old / "Import/job003/particles.star").read_text()

    new.parent.mkdir()
    old.rename(new)
    with (new / "wf.toml").open("a") as f:
        f.write('[steps.rec2]\nstage = "reconstruct"\nparams = { in = "{imp.particles}", sym = "C2" }\n')
    out = " ".join(invoke_cli("run", "wf.toml", cwd=new).output.split())
    assert "skip imp" in out and "skip rec " in out and "1 step(s) run, 2 skipped" in out
    # one progress line per step (n/N, step, elapsed, status) on stderr
    assert "1/3 imp (import particles)" in out and "skipped (Import/job001)" in out
    assert "3/3 rec2 (reconstruct)" in out and "done -> Reconstruct/job004" in out
    rec2 = json.loads((new / "Reconstruct/job004/job.json").read_text())
    assert rec2["status"] == "finished" and rec2["inputs"]["particles"] == "Import/job001/particles.star"
    out = " ".join(invoke_cli("project", "lineage", "Reconstruct/job004/map.mrc", cwd=new).output.split())
    assert "Import/job001/particles.star <- job001 import_particles finished" in out
    assert "raw/particles.star" in out
    assert integrity(new) == "ok"


# -- per-step run profiles ---------------------------------------------------------------------------------------------
REFINE = 'stage = "refine"\nparams = { in = "x.star", ref = "r.mrc" }'


@pytest.mark.parametrize("step, message", [
    ('stage = "reconstruct"\nprofile = "gpu-queue"\nparams = { in = "x.star" }',
     r"step a: reconstruct runs in one process and takes no profile; profiles apply to: .*refine"),
    (f'{REFINE}\nprofile = "nosuch"', r"step a: no run profile named 'nosuch' in .*profiles.toml \(known: gpu-queue\)"),
    ('stage = "refine"\nprofile = "gpu-queue"\nparams = { in = "x.star", ref = "r.mrc", backend = "threads" }',
     r"step a: profile and params.backend both say where to compute; keep one"),
    (f'{REFINE}\nprofile = 3', r"step a: profile must be the name of a run profile"),
])
def test_step_profile_is_validated(tmp_path: Path, catalog, monkeypatch, step: str, message: str):
    monkeypatch.setenv("CRYOLENS_PROFILES", str(write(tmp_path, '[profiles.gpu-queue]\nscheduler = "slurm"\n',
                                                      "profiles.toml")))
    with pytest.raises(InputError, match=message):
        load_workflow(write(tmp_path, f"[steps.a]\n{step}\n"), catalog)


def test_step_profile_goes_to_the_command_not_the_hash(tmp_path: Path, catalog, monkeypatch):
    monkeypatch.setenv("CRYOLENS_PROFILES", str(write(tmp_path, '[profiles.gpu-queue]\nscheduler = "slurm"\n',
                                                      "profiles.toml")))
    wf = load_workflow(write(tmp_path, f'[steps.a]\n{REFINE}\nprofile = "gpu-queue"\n'), catalog)
    step = wf.steps[0]
    assert step.profile == "gpu-queue"
    assert "--profile" not in build_argv(step.stage, step.params)  # the hashed options: where it runs is not one

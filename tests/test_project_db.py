"""The project database: init/open, jobs recorded by the CLI, lineage, killed jobs, concurrent writers.

The two process tests (SIGKILL, two commands at once) run once by default; set
``CRYOLENS_STRESS_REPEAT=20`` to run each 20 times in a row.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import CLI, invoke_cli, run_cli

from cryolens.errors import InputError
from cryolens.jobs.runner import FAILURE_MARKER, Job
from cryolens.project.db import SCHEMA_VERSION, Project, init_project, open_project, stage_folder_name
from cryolens.project.recording import ProjectObserver

REPEAT = range(int(os.environ.get("CRYOLENS_STRESS_REPEAT", "1")))


def cli(*args: str, cwd: Path, code: int = 0) -> str:
    """Run a ``cryolens`` command in this process (fast; for the project commands); returns its output."""
    return invoke_cli(*args, cwd=cwd, code=code).output


def integrity(project: Path) -> str:
    con = sqlite3.connect(project / "cryolens.db")
    try:
        return con.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        con.close()


def test_init_open_and_schema(tmp_path: Path):
    with pytest.raises(InputError, match="not a cryolens project .*cryolens project init"):
        open_project(tmp_path)
    p = init_project(tmp_path / "P")
    assert (tmp_path / "P" / "cryolens.db").is_file() and p.schema_version() == SCHEMA_VERSION >= 1
    again = open_project(tmp_path / "P")  # idempotent migration
    assert again.schema_version() == SCHEMA_VERSION and again.jobs() == []
    con = sqlite3.connect(tmp_path / "P" / "cryolens.db")
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    con.close()
    assert stage_folder_name("simulate_particles") == "Simulate" and stage_folder_name("reconstruct") == "Reconstruct"
    a, b = p.new_job("reconstruct"), p.new_job("simulate_movies")
    assert (a.folder, b.folder, a.status) == ("Reconstruct/job001", "Simulate/job002", "queued")
    assert (tmp_path / "P" / "Reconstruct" / "job001").is_dir()
    assert p.job("job002").id == b.id == p.job("Simulate/job002").id == p.job(str(b.id)).id
    with pytest.raises(InputError, match="no such job"):
        p.job("job099")


def test_job_observer_records_failure_and_notes(tmp_path: Path):
    p = init_project(tmp_path)
    rec = p.new_job("reconstruct")
    with pytest.raises(RuntimeError):
        with Job("reconstruct", p.abs(rec.folder), params={"a": 1}, inputs={}, observer=ProjectObserver(p, rec.id)):
            raise RuntimeError("boom")
    j = p.job(rec.id)
    assert j.status == "failed" and "boom" in j.error and j.params == {"a": 1}
    assert (p.abs(rec.folder) / FAILURE_MARKER).is_file()
    p.add_note("bad run", job="job001")
    assert [n["text"] for n in p.notes("job001")] == ["bad run"]


def test_killed_detection_on_read(tmp_path: Path):
    p = init_project(tmp_path, stale_s=60)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    ids = [p.new_job("reconstruct").id for _ in range(3)]
    p.record_start(ids[0], pid=dead.pid)  # gone on this host
    p.record_start(ids[1], pid=os.getpid())  # alive
    p.record_start(ids[2], pid=os.getpid(), host="elsewhere")
    con = sqlite3.connect(tmp_path / "cryolens.db")
    con.execute("UPDATE jobs SET heartbeat=? WHERE id=?", (time.time() - 120, ids[2]))  # stale heartbeat
    con.commit()
    con.close()
    assert [j.status for j in p.jobs()] == ["killed", "running", "killed"]
    subprocess.run([sys.executable, "-c", "import sys; from cryolens.project.db import open_project; "
                    "open_project(sys.argv[1]).new_job('ctf')", str(tmp_path)], check=True)
    waiting = p.new_job("motion")  # queued by this live process
    assert [j.status for j in p.jobs()][3:] == ["killed", "queued"] and waiting.status == "queued"


def test_reconstruct_in_project_recorded_with_lineage(tmp_path: Path):
    cli("project", "init", "P", cwd=tmp_path)
    proj = tmp_path / "P"
    run_cli("simulate", "particles", "--n", "200", "--box", "32", "--pixel-size", "4", "--seed", "1", "--quiet",
            cwd=proj)
    run_cli("reconstruct", "--in", "Simulate/job001/particles.star", "--quiet", "--project", ".", cwd=proj)
    assert (proj / "Reconstruct" / "job002" / "map.mrc").is_file()
    jobs = json.loads(cli("project", "jobs", "--json", cwd=proj))
    assert [(j["name"], j["stage"], j["status"]) for j in jobs] == [
        ("job001", "simulate_particles", "finished"), ("job002", "reconstruct", "finished")]
    rec = json.loads(cli("project", "show", "job002", "--json", "--project", "P", cwd=tmp_path))
    assert rec["inputs"] == {"particles": "Simulate/job001/particles.star"}
    assert rec["outputs"]["map"] == "Reconstruct/job002/map.mrc" and rec["seed"] == 0
    assert rec["results"]["n_particles_half1"] == 100 and rec["versions"]["cryolens"]
    tree = json.loads(cli("project", "lineage", "Reconstruct/job002/map.mrc", "--json", cwd=proj))
    assert tree["job"]["name"] == "job002"
    (parent,) = tree["inputs"]
    assert parent["path"] == "Simulate/job001/particles.star" and parent["job"]["name"] == "job001"
    assert parent["job"]["params"]["n_particles"] == 200 and parent["job"]["seed"] == 1
    status = json.loads(cli("project", "status", "--json", cwd=proj))
    assert status["by_status"]["finished"] == 2 and status["integrity"] == "ok"
    cli("project", "note", "job002", "first map", cwd=proj)
    cli("project", "note", "Simulate/job001/particles.star", "the truth", cwd=proj)
    assert "first map" in cli("project", "show", "2", cwd=proj)
    assert [n["text"] for n in open_project(proj).notes()] == ["first map", "the truth"]
    for args in (["project", "jobs"], ["project", "status"], ["project", "lineage", "Reconstruct/job002/map.mrc"]):
        assert "job002" in cli(*args, cwd=proj) or "finished" in cli(*args, cwd=proj)
    assert "not a cryolens project" in cli("project", "jobs", "--project", str(tmp_path), cwd=tmp_path, code=2)
    assert "not a file recorded" in cli("project", "lineage", "nothing.mrc", cwd=proj, code=2)
    cli("reconstruct", "--in", "Simulate/job001/particles.star", "--out", "rec_here", "--quiet", cwd=proj)
    here = open_project(proj).job("rec_here")
    assert here.status == "finished" and here.number == 3 and here.outputs["map"] == "rec_here/map.mrc"
    # outside a project --out is required (one sentence, exit 2)
    bad = run_cli("reconstruct", "--in", "P/Simulate/job001/particles.star", cwd=tmp_path, check=False)
    assert bad.returncode == 2 and "--out is required" in bad.stderr and "Traceback" not in bad.stderr

SLOW_JOB = textwrap.dedent("""
    import sys, time
    from cryolens.jobs.runner import Job
    from cryolens.project.db import open_project
    from cryolens.project.recording import ProjectObserver
    p = open_project(sys.argv[1])
    rec = p.new_job("reconstruct")
    with Job("reconstruct", p.abs(rec.folder), params={}, inputs={}, observer=ProjectObserver(p, rec.id),
             heartbeat_s=0.01) as job:
        for i in range(6000):  # heartbeats write to the database all the time; the kill lands among them
            p.heartbeat(rec.id)
            time.sleep(0.005)
""")


def test_simulation_lineage_names_its_map_and_runs_from_outside(tmp_path: Path):
    """A simulation records the map it used as an input; a job run with --project from another folder finds
    the images its STAR names relative to the project root."""
    import numpy as np

    from cryolens.io import write_mrc
    cli("project", "init", "P", cwd=tmp_path)
    proj = tmp_path / "P"
    vol = np.zeros((24, 24, 24), np.float32)
    vol[8:16, 10:14, 9:15] = 1.0
    write_mrc(proj / "blob.mrc", vol, 4.0)
    run_cli("simulate", "particles", "--map", "blob.mrc", "--n", "60", "--seed", "2", "--quiet", cwd=proj)
    tree = json.loads(cli("project", "lineage", "Simulate/job001/particles.star", "--json", cwd=proj))
    assert [n["path"] for n in tree["inputs"]] == ["blob.mrc"]
    run_cli("reconstruct", "--in", "P/Simulate/job001/particles.star", "--project", "P", "--quiet", cwd=tmp_path)
    assert (proj / "Reconstruct" / "job002" / "map.mrc").is_file()


@pytest.mark.parametrize("attempt", REPEAT)
def test_sigkill_while_running_leaves_database_ok_and_job_killed(tmp_path: Path, attempt: int):
    init_project(tmp_path / "P")
    script = tmp_path / "slow_job.py"
    script.write_text(SLOW_JOB)
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path / "P")])
    project = Project(tmp_path / "P")
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            if (tmp_path / "P" / "cryolens.db").exists() and [j.status for j in project.jobs()] == ["running"]:
                break
            assert proc.poll() is None, "the job process ended early"
            time.sleep(0.05)
        else:
            pytest.fail("the job was never recorded as running")
        time.sleep(0.2)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert integrity(tmp_path / "P") == "ok"
    (job,) = open_project(tmp_path / "P").jobs()
    assert job.status == "killed" and job.pid == proc.pid
    assert open_project(tmp_path / "P").status()["by_status"]["killed"] == 1


@pytest.mark.parametrize("attempt", REPEAT)
def test_two_commands_at_once_in_one_project(tmp_path: Path, attempt: int):
    init_project(tmp_path / "P")
    proj = tmp_path / "P"
    args = ["simulate", "particles", "--n", "100", "--box", "32", "--pixel-size", "4", "--quiet"]
    procs = [subprocess.Popen([*CLI, *args, "--seed", str(s)], cwd=proj, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for s in (1, 2)]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    assert integrity(proj) == "ok"
    jobs = open_project(proj).jobs()
    assert sorted(j.number for j in jobs) == [1, 2] and {j.status for j in jobs} == {"finished"}
    assert sorted(j.seed for j in jobs) == [1, 2]
    assert sorted(j.folder for j in jobs) == ["Simulate/job001", "Simulate/job002"]
    for j in jobs:
        assert (proj / j.folder / "particles.star").is_file()
        assert json.loads((proj / j.folder / "job.json").read_text())["seed"] == j.seed


WRITER = textwrap.dedent("""
    import sys
    from cryolens.project.db import open_project
    p = open_project(sys.argv[1])
    for i in range(15):
        rec = p.new_job("reconstruct")
        p.record_start(rec.id, params={"writer": sys.argv[2], "i": i})
        p.heartbeat(rec.id)
        p.record_finish(rec.id, results={"i": i})
        p.jobs()
""")


def test_many_writers_get_distinct_job_numbers(tmp_path: Path):
    """Six processes allocating and finishing jobs at once: WAL + busy_timeout serialise them."""
    init_project(tmp_path / "P")
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    procs = [subprocess.Popen([sys.executable, str(script), str(tmp_path / "P"), str(w)], stderr=subprocess.PIPE,
                              text=True) for w in range(6)]
    for p in procs:
        assert p.wait(timeout=120) == 0, p.stderr.read()
    jobs = open_project(tmp_path / "P").jobs()
    assert [j.number for j in jobs] == list(range(1, 91)) and {j.status for j in jobs} == {"finished"}
    assert len({j.folder for j in jobs}) == 90 and integrity(tmp_path / "P") == "ok"

"""Job folders as transactions (issue [8·guard] items 1, 2 and 5): a finished job is refused unless
``--overwrite``, an overwrite swaps in only on success, outputs are checked before SUCCESS, a folder
belongs to one job of a project, and a killed job is reconciled when the project is next read."""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import time
from pathlib import Path

import mrcfile
import numpy as np
from conftest import CLI, assert_user_error, invoke_cli

from cryolens.io.paths import star_name
from cryolens.jobs.folders import ABORTED_MARKER, FAILURE_MARKER, SUCCESS_MARKER, folder_state, staged
from cryolens.jobs.output_checks import check_mrc, check_outputs, check_star
from cryolens.project.db import init_project, open_project

SIM = ("simulate", "particles", "--n", "12", "--box", "24", "--quiet")


def snapshot(folder: Path) -> dict[str, str]:
    """Every file below ``folder`` (relative name -> sha256)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def leftovers(parent: Path) -> list[Path]:
    """Staging folders or temporary files anywhere below ``parent``."""
    return [p for p in parent.rglob(".*") if ".tmp" in p.name]


def test_finished_folder_refused_then_overwritten_in_place_of_the_old(tmp_path: Path):
    invoke_cli(*SIM, "--out", "sim", cwd=tmp_path)
    before = snapshot(tmp_path / "sim")
    r = invoke_cli(*SIM, "--seed", "5", "--out", "sim", cwd=tmp_path, code=None)
    assert_user_error(r, "sim: holds a finished job", "--overwrite", "another --out")
    assert snapshot(tmp_path / "sim") == before
    invoke_cli(*SIM, "--n", "7", "--out", "sim", "--overwrite", cwd=tmp_path)
    job = json.loads((tmp_path / "sim" / "job.json").read_text())
    assert job["status"] == "finished" and job["params"]["n_particles"] == 7
    assert job["outputs"]["particles"] == "sim/particles.star"  # named as before, not in the staging folder
    text = (tmp_path / "sim" / "particles.star").read_text()
    assert "000007@sim/particles.mrcs" in text and ".tmp" not in text
    assert leftovers(tmp_path) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["sim"]


def nan_stacks(monkeypatch) -> None:
    """From now on the particle simulator writes NaN images (a diverged computation)."""
    from cryolens.io.stack_writer import StackWriter
    write = StackWriter.write
    monkeypatch.setattr(StackWriter, "write", lambda self, start, images: write(self, start, images * np.nan))


def test_nan_output_ends_failure_and_a_failed_overwrite_keeps_the_old_job(tmp_path: Path, monkeypatch):
    invoke_cli(*SIM, "--out", "sim", cwd=tmp_path)
    before = snapshot(tmp_path / "sim")
    nan_stacks(monkeypatch)
    r = invoke_cli(*SIM, "--out", "sim", "--overwrite", cwd=tmp_path, code=None)
    assert_user_error(r, "sim/particles.mrcs", "non-finite")
    assert snapshot(tmp_path / "sim") == before and leftovers(tmp_path) == []
    r = invoke_cli(*SIM, "--out", "bad", cwd=tmp_path, code=None)
    assert_user_error(r, "bad/particles.mrcs", "non-finite", "FAILURE")
    job = json.loads((tmp_path / "bad" / "job.json").read_text())
    assert job["status"] == "failed" and "non-finite" in job["error"]
    assert (tmp_path / "bad" / FAILURE_MARKER).exists() and not (tmp_path / "bad" / SUCCESS_MARKER).exists()
    assert folder_state(tmp_path / "bad") == "failed"


def test_output_checks(tmp_path: Path):
    data = np.arange(2 * 8 * 8, dtype=np.float32).reshape(2, 8, 8)
    with mrcfile.new(tmp_path / "ok.mrcs") as m:
        m.set_data(data)
    assert check_mrc(tmp_path / "ok.mrcs") is None
    raw = (tmp_path / "ok.mrcs").read_bytes()
    (tmp_path / "cut.mrcs").write_bytes(raw[:-4])
    assert "header" in check_mrc(tmp_path / "cut.mrcs") and "bytes" in check_mrc(tmp_path / "cut.mrcs")
    data[1, 3, 4] = np.inf
    with mrcfile.new(tmp_path / "inf.mrc") as m:
        m.set_data(data)
    assert "non-finite" in check_mrc(tmp_path / "inf.mrc")
    header = "data_optics\n\nloop_\n_rlnOpticsGroup #1\n1\n\ndata_particles\n\nloop_\n_rlnImageName #1\n"
    (tmp_path / "empty.star").write_text(header)
    (tmp_path / "one.star").write_text(header + "1@a.mrcs\n")
    (tmp_path / "kv.star").write_text("data_micrographs\n\n_rlnMicrographName a.mrc\n")
    (tmp_path / "fsc.star").write_text("data_fsc\n\nloop_\n_rlnResolution #1\n")  # no rows required here
    assert "data_particles table has no rows" in check_star(tmp_path / "empty.star")
    assert check_star(tmp_path / "one.star") is None and check_star(tmp_path / "kv.star") is None
    assert check_star(tmp_path / "fsc.star") is None
    assert "not written" in check_outputs({"map": tmp_path / "gone.mrc"})
    assert check_outputs({"a": tmp_path / "ok.mrcs", "b": tmp_path / "one.star"}) is None


def test_recorded_names_point_at_the_final_folder(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with staged(Path("job")) as s:
        assert s.path.parent == Path(".") and s.path.name.startswith(".job.overwrite.")
        assert star_name(s.path / "Particles" / "a.mrcs", into=s.path, up=True) == "job/Particles/a.mrcs"
        assert star_name(tmp_path / "other.mrc", into=s.path, up=True) == "other.mrc"
        s.path.mkdir()
    assert not s.path.exists()  # never committed: removed


def test_project_folder_belongs_to_one_job(tmp_path: Path, monkeypatch):
    init_project(tmp_path / "P")
    P = tmp_path / "P"
    invoke_cli(*SIM, cwd=P)  # Simulate/job001
    star = "Simulate/job001/particles.star"
    r = invoke_cli("reconstruct", "--in", star, "--out", "Simulate/job001", "--quiet", cwd=P, code=None)
    assert_user_error(r, "Simulate/job001: is the folder of job001 (simulate_particles, finished)")
    r = invoke_cli(*SIM, "--out", "Simulate/job001", cwd=P, code=None)
    assert_user_error(r, "job001", "--overwrite")
    before = snapshot(P / "Simulate" / "job001")
    invoke_cli(*SIM, "--n", "5", "--out", "Simulate/job001", "--overwrite", cwd=P)
    jobs = open_project(P).jobs()
    assert [(j.name, j.status, j.folder) for j in jobs] == [("job001", "finished", "Simulate/job001")]
    assert jobs[0].params["n_particles"] == 5 and snapshot(P / "Simulate" / "job001") != before
    assert open_project(P).lineage(P / star)["job"]["name"] == "job001"
    # a failing overwrite leaves the job's folder and its record as they were
    record = open_project(P).job(1)
    before = snapshot(P / "Simulate" / "job001")
    nan_stacks(monkeypatch)
    r = invoke_cli(*SIM, "--out", "Simulate/job001", "--overwrite", cwd=P, code=None)
    assert_user_error(r, "non-finite")
    assert snapshot(P / "Simulate" / "job001") == before
    after = open_project(P).job(1)
    assert after.status == "finished" and after.outputs == record.outputs and after.params == record.params
    # an overwrite killed mid-way: the old job is intact, so is its record once the project is read
    proj = open_project(P)
    proj.reopen_job(1)
    proj.record_start(1, pid=2**22 + 17)  # above pid_max: a process that is gone
    stale = P / "Simulate" / ".job001.overwrite.0123456789ab.tmp"
    stale.mkdir()
    (stale / ".particles.mrcs.0123456789ab.tmp").write_bytes(b"x")
    rec = open_project(P).job(1)
    assert rec.status == "finished" and rec.params == record.params and not stale.exists()
    assert snapshot(P / "Simulate" / "job001") == before
    # an option error after the job number was taken: no folder left without a marker
    r = invoke_cli("reconstruct", "--in", "nothere.star", "--quiet", cwd=P, code=None)
    assert r.exit_code == 2
    failed = open_project(P).jobs()[-1]
    folder = P / failed.folder
    assert failed.status == "failed" and (not folder.exists() or (folder / FAILURE_MARKER).exists())


def _spawn_and_kill(args: list[str], cwd: Path, folder: Path, timeout: float = 120.0) -> None:
    """Start ``cryolens ARGS``; SIGKILL it as soon as a temporary stack file appears in ``folder``."""
    proc = subprocess.Popen([*CLI, *args], cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        t0 = time.time()
        while not list(folder.glob(".particles.mrcs.*.tmp")):
            assert proc.poll() is None, "the command ended before its temporary file was seen"
            assert time.time() - t0 < timeout
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()


def test_sigkill_is_reconciled_when_the_project_is_read(tmp_path: Path):
    P = tmp_path / "P"
    init_project(P)
    job = P / "Simulate" / "job001"
    _spawn_and_kill(["simulate", "particles", "--n", "4000", "--box", "64", "--quiet"], P, job)
    assert list(job.glob(".*.tmp"))  # the half-written stack, before anyone reads the project
    r = invoke_cli("project", "jobs", "--json", cwd=P)
    (rec,) = json.loads(r.output)
    assert rec["status"] == "killed" and rec["folder"] == "Simulate/job001"
    assert not list(job.glob(".*.tmp")) and (job / ABORTED_MARKER).exists()
    assert json.loads((job / "job.json").read_text())["status"] == "killed"
    # rerunning into the killed folder is allowed (unfinished); the same job number is run again
    invoke_cli(*SIM, "--out", "Simulate/job001", cwd=P)
    (rec,) = open_project(P).jobs()
    assert rec.status == "finished" and not (job / ABORTED_MARKER).exists()


def test_killed_folder_outside_a_project_cleaned_by_next_job(tmp_path: Path):
    folder = tmp_path / "sim"
    folder.mkdir()
    (folder / "job.json").write_text(json.dumps({"status": "running", "pid": 2**22 + 17,  # above pid_max: no process
                                                          "started": time.time()}))
    (folder / ".particles.mrcs.0123456789ab.tmp").write_bytes(b"x" * 100)
    assert folder_state(folder) == "killed"
    invoke_cli(*SIM, "--out", "sim", cwd=tmp_path)
    assert not list(folder.glob(".*.tmp")) and folder_state(folder) == "finished"

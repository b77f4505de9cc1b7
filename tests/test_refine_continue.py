"""Per-iteration state and ``cryolens refine --continue``: a killed refinement resumes to the same result.

The checkpoint store (:mod:`cryolens.jobs.checkpoint`) is checked on its own (atomic commit, latest
finished iteration, pruning, RNG states); :func:`cryolens.refine.auto_refine` resumed from any saved
state gives bitwise the maps and poses of the uninterrupted run; and the command is killed for real
(SIGKILL after an iteration's state appears) inside a project, continued, and compared with an
uninterrupted run of the same command.
"""

from __future__ import annotations

import json
import math
import random
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import CLI, assert_user_error, invoke_cli, run_cli

from cryolens.io import merge_optics, read_mrc, read_particles, read_star, write_mrc, write_particles
from cryolens.jobs.checkpoint import (capture_rng, clear_iterations, continue_point, finished_iterations,
                                      iteration_path, latest_iteration, load_iteration, prune_iterations,
                                      remove_unfinished, restore_rng, save_iteration, state_path)
from cryolens.particles import assign_half_sets
from cryolens.refine import RefineParams, RefineState, auto_refine
from cryolens.simulate.particles import ParticleSimParams, simulate_particles
from cryolens.simulate.phantom import asymmetric_phantom

APIX = 5.0


# -- the checkpoint store ----------------------------------------------------------------------

def test_save_and_load_round_trip_exactly(tmp_path):
    t = {"rot": torch.randn(5, 3, 3), "subset": torch.tensor([1, 2, 1], dtype=torch.int64),
         "gen": torch.Generator().manual_seed(3).get_state()}
    values = {"resolution": 1 / 3, "best": math.inf, "stall": 2, "history": [{"mode": "cc-global", "s": 0.1}]}
    save_iteration(tmp_path, 4, tensors=t, values=values)
    got = load_iteration(tmp_path)
    assert got.iteration == 4 and got.path == state_path(tmp_path, 4) and latest_iteration(tmp_path) == 4
    assert got.values == values and got.values["resolution"] == 1 / 3  # every bit of a float
    for k in t:
        assert torch.equal(got.tensors[k], t[k]) and got.tensors[k].dtype == t[k].dtype
    assert load_iteration(tmp_path / "none") is None and latest_iteration(tmp_path / "none") is None


def test_unfinished_states_are_invisible_and_removed(tmp_path):
    save_iteration(tmp_path, 1, tensors={"a": torch.ones(2)})
    # a job killed while writing iteration 2: its visible files and a temporary state folder, no committed state
    write_mrc(iteration_path(tmp_path, 2, "half1.mrc"), np.zeros((4, 4, 4), np.float32), 1.0)
    (tmp_path / ".run_it002_state.0123456789ab.tmp").mkdir()
    (tmp_path / ".run_it002_state.0123456789ab.tmp" / "tensors.pt").write_bytes(b"half")
    assert latest_iteration(tmp_path) == 1 and load_iteration(tmp_path).iteration == 1
    removed = remove_unfinished(tmp_path)
    assert {p.name for p in removed} == {"run_it002_half1.mrc", ".run_it002_state.0123456789ab.tmp"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run_it001_state"]


def test_only_the_last_iterations_are_kept(tmp_path):
    for it in range(1, 6):
        write_mrc(iteration_path(tmp_path, it, "half1.mrc"), np.zeros((4, 4, 4), np.float32), 1.0)
        save_iteration(tmp_path, it, tensors={"x": torch.full((2,), float(it))})  # default: keep 2
    assert finished_iterations(tmp_path) == [4, 5]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run_it004_half1.mrc", "run_it004_state",
                                                          "run_it005_half1.mrc", "run_it005_state"]
    save_iteration(tmp_path, 6, keep=None)
    assert finished_iterations(tmp_path) == [4, 5, 6] and prune_iterations(tmp_path, keep=1) == [4, 5]
    assert float(load_iteration(tmp_path, 6).tensors.get("x", torch.zeros(1))[0]) == 0.0
    assert clear_iterations(tmp_path) == [6] and list(tmp_path.iterdir()) == []  # a fresh start


def test_rng_states_restore_the_same_draws():
    state = json.loads(json.dumps(capture_rng()))  # JSON values, as saved
    a = (random.random(), np.random.rand(3), torch.rand(3))
    restore_rng(state)
    b = (random.random(), np.random.rand(3), torch.rand(3))
    assert a[0] == b[0] and np.array_equal(a[1], b[1]) and torch.equal(a[2], b[2])


def test_an_unreadable_state_is_one_sentence(tmp_path):
    from cryolens.errors import InputError
    save_iteration(tmp_path, 2, tensors={"a": torch.ones(2)})
    (state_path(tmp_path, 2) / "tensors.pt").write_bytes(b"not a torch file")
    with pytest.raises(InputError, match="delete that folder"):
        load_iteration(tmp_path)
    with pytest.raises(InputError, match="no job.json"):
        continue_point(tmp_path, "refine")


# -- the stage resumes exactly ---------------------------------------------------------------

def test_auto_refine_resumed_from_any_iteration_equals_the_uninterrupted_run():
    vol = asymmetric_phantom(24, APIX)
    sim = simulate_particles(vol, pixel_size=APIX, params=ParticleSimParams(
        n_particles=60, snr=2.0, max_shift=2.0, defocus_min=8000, defocus_max=15000, seed=2))
    images = np.concatenate([b for _, b in sim.batches])
    table = assign_half_sets(merge_optics(sim.optics, sim.particles), seed=0)

    def batches():
        return ((np.arange(s, min(60, s + 25)), images[s:s + 25]) for s in range(0, 60, 25))

    params = RefineParams(ini_high=30.0, max_iterations=3, global_iterations=1, offset_range=2.0,
                          auto_mask_resolution=40.0)  # dynamic masks from iteration 2: part of the state
    states: list[RefineState] = []
    full = auto_refine(batches, table, vol, pixel_size=APIX, params=params, on_iteration=states.append)
    assert [s.iteration for s in states] == [1, 2]  # not the final one
    assert states[0].masks is not None and states[0].half1.shape == (24, 24, 24)
    for k in (1,):  # the next iterations: one local, then the final one
        saved = states[k - 1]
        again = RefineState.from_saved(k, {n: v.clone() for n, v in saved.to_tensors().items()},
                                       json.loads(json.dumps(saved.to_values())))
        res = auto_refine(batches, table, vol, pixel_size=APIX, params=params, resume=again)
        for name in ("half1", "half2", "full", "full_unweighted"):
            assert torch.equal(getattr(res, name), getattr(full, name)), (k, name)
        assert np.array_equal(res.rotations, full.rotations) and np.array_equal(res.shifts, full.shifts)
        assert [h.resolution for h in res.history] == [h.resolution for h in full.history]
        assert res.converged == full.converged


# -- the command, killed for real --------------------------------------------------------------

@pytest.fixture(scope="module")
def sim_set(tmp_path_factory):
    work = tmp_path_factory.mktemp("continue")
    invoke_cli("simulate", "particles", "--out", work / "sim", "--n", "60", "--box", "24", "--pixel-size", "5",
               "--snr", "2", "--seed", "4", "--quiet", "--device", "cpu")
    from cryolens.core.fourier import bandpass
    truth, apix = read_mrc(work / "sim" / "truth_map.mrc")
    write_mrc(work / "ref.mrc", bandpass(torch.as_tensor(np.array(truth)), pixel_size=apix, high_res=30.0,
                                         ndim=3).numpy(), apix)
    return work


def _refine_args(work: Path) -> list[str]:
    return ["refine", "--in", str(work / "sim" / "particles.star"), "--ref", str(work / "ref.mrc"), "--ini-high", "30",
            "--max-iter", "5", "--offset-range", "2", "--quiet", "--device", "cpu"]


def _kill_after_state(args: list[str], folder: Path, iteration: int, cwd: Path) -> None:
    """Run ``cryolens ARGS`` in a subprocess and SIGKILL it as soon as ``iteration``'s state is committed."""
    p = subprocess.Popen([*CLI, *args], cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 120
        while not (state_path(folder, iteration) / "state.json").is_file():
            assert p.poll() is None, p.stderr.read().decode()[-2000:]
            assert time.time() < deadline
            time.sleep(0.005)
        p.send_signal(signal.SIGKILL)
    finally:
        p.kill()
        p.wait()


def test_killed_refine_continues_to_the_uninterrupted_result(sim_set, tmp_path, monkeypatch):
    """SIGKILL after iteration 2's state, `--continue` inside the project: the same maps and poses, bitwise."""
    work = sim_set
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the three runs alike (and light on a busy machine)
    run_cli(*_refine_args(work), "--out", str(tmp_path / "whole"))
    project = tmp_path / "proj"
    invoke_cli("project", "init", project)
    folder = project / "Refine" / "job001"
    _kill_after_state(_refine_args(work), folder, 2, cwd=project)
    assert json.loads((folder / "job.json").read_text())["status"] == "running"  # killed, not finished
    assert not (folder / "map.mrc").exists() and latest_iteration(folder) >= 2
    run_cli("refine", "--continue", "Refine/job001", "--quiet", cwd=project)

    whole = tmp_path / "whole"
    for name in ("half1.mrc", "half2.mrc", "map.mrc"):
        a, b = read_mrc(whole / name)[0], read_mrc(folder / name)[0]
        assert np.array_equal(a, b), (name, float(np.abs(a - b).max()))
    _, pa = read_particles(whole / "particles.star")
    _, pb = read_particles(folder / "particles.star")
    num = [c for c in pa.columns if c != "rlnImageName"]
    assert np.array_equal(pa[num].to_numpy(float), pb[num].to_numpy(float))
    ia, ib = (read_star(f / "iterations.star")["iterations"].drop(columns="rlnCryolensSeconds")
              for f in (whole, folder))
    assert ia.equals(ib) and len(ia) == 5
    job = json.loads((folder / "job.json").read_text())
    assert job["status"] == "finished" and job["results"]["iterations"] == 5
    assert "continuing from iteration" in (folder / "run.log").read_text()
    assert finished_iterations(folder) == finished_iterations(whole) == [3, 4]  # disk bounded: the last two
    assert (folder / "run_it004_half1.mrc").is_file() and (folder / "run_it004_data.star").is_file()
    listed = json.loads(invoke_cli("project", "jobs", "--json", cwd=project).stdout)
    assert [(j["number"], j["status"]) for j in listed] == [(1, "finished")]  # the same job, no new number
    again = invoke_cli("refine", "--continue", folder)
    assert "already finished" in " ".join(again.output.split())


def test_continue_refuses_what_it_cannot_continue(sim_set, tmp_path):
    work = sim_set
    assert_user_error(invoke_cli("refine", "--continue", tmp_path / "nothing", code=None), "no job.json")
    folder = tmp_path / "killed"
    folder.mkdir()
    (folder / "job.json").write_text(json.dumps({"stage": "refine", "status": "running", "params": {}, "inputs": {}}))
    assert_user_error(invoke_cli("refine", "--continue", folder, code=None), "before its first iteration finished")
    (folder / "job.json").write_text(json.dumps({"stage": "reconstruct", "status": "running"}))
    assert_user_error(invoke_cli("refine", "--continue", folder, code=None), "not a refine job")
    # a real job stopped after iteration 1 (its later state removed): options that differ are refused
    invoke_cli(*_refine_args(work), "--max-iter", "2", "--out", tmp_path / "two")
    stopped = tmp_path / "two"
    (stopped / "CRYOLENS_JOB_EXIT_SUCCESS").unlink()
    record = json.loads((stopped / "job.json").read_text())
    (stopped / "job.json").write_text(json.dumps({**record, "status": "running"}))
    before = read_mrc(stopped / "map.mrc")[0].copy()
    assert_user_error(invoke_cli("refine", "--continue", stopped, "--max-iter", "3", code=None),
                      "--max-iter 3", "started with 2")
    assert_user_error(invoke_cli("refine", "--continue", stopped, "--ref", work / "sim" / "truth_map.mrc", code=None),
                      "--ref")
    assert_user_error(invoke_cli("refine", "--continue", stopped, "--out", tmp_path / "elsewhere", code=None), "--out")
    assert np.array_equal(read_mrc(stopped / "map.mrc")[0], before) and not (tmp_path / "elsewhere").exists()
    # particles that are not the saved state's (here: 40 of the 60) are refused before anything runs
    optics, parts = read_particles(work / "sim" / "particles.star")
    fewer = work / "sim" / "fewer.star"  # next to the stack its rows name
    write_particles(fewer, optics, parts.iloc[:40])
    from cryolens.errors import InputError
    from cryolens.jobs.refine import run_refine
    with pytest.raises(InputError, match="not those of the saved state"):
        run_refine(fewer, work / "ref.mrc", stopped, RefineParams(**record["params"]), resume=True)
    assert json.loads((stopped / "job.json").read_text())["status"] == "running"  # untouched
    # the same values repeated are fine; the job ends with its final iteration redone from the state of iteration 1
    invoke_cli("refine", "--continue", stopped, "--max-iter", "2", "--in", work / "sim" / "particles.star", "--quiet")
    assert json.loads((stopped / "job.json").read_text())["status"] == "finished"
    assert np.array_equal(read_mrc(stopped / "map.mrc")[0], before)
    assert_user_error(invoke_cli("refine", "--out", tmp_path / "o", "--ref", work / "ref.mrc", code=None),
                      "--in is required")

"""``cryolens abinitio --continue``: a killed ab-initio job resumes to the result of the uninterrupted run.

:func:`cryolens.abinitio.abinitio` resumed from a saved state (before the starts are pruned, after,
and between the final passes) gives bitwise the maps and poses of the uninterrupted run; the command
is killed for real (SIGKILL after a step's state appears), continued, and compared with an
uninterrupted run of the same command; what cannot be continued is refused in one sentence.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import CLI, assert_user_error, invoke_cli, run_cli

from cryolens.abinitio import AbinitioParams, AbinitioState, abinitio
from cryolens.io import merge_optics, read_mrc, read_particles, read_star
from cryolens.jobs.checkpoint import finished_iterations, state_path
from cryolens.simulate.particles import ParticleSimParams, simulate_particles
from cryolens.simulate.phantom import asymmetric_phantom

APIX = 5.0


def test_abinitio_resumed_from_any_step_equals_the_uninterrupted_run():
    vol = asymmetric_phantom(24, APIX)
    sim = simulate_particles(vol, pixel_size=APIX, params=ParticleSimParams(
        n_particles=80, snr=2.0, max_shift=2.0, defocus_min=8000, defocus_max=15000, seed=2))
    images = np.concatenate([b for _, b in sim.batches])
    table = merge_optics(sim.optics, sim.particles)

    def batches():
        return ((np.arange(s, min(80, s + 30)), images[s:s + 30]) for s in range(0, 80, 30))

    params = AbinitioParams(iterations=4, batch_size=30, starts=2, prune_after=2, ini_resolution=30.0,
                            final_resolution=15.0, seed=3, healpix_order=1, top_k=2, final_passes=2, classes=2)
    states: list[AbinitioState] = []
    full = abinitio(batches, table, pixel_size=APIX, params=params, on_iteration=states.append)
    assert [s.iteration for s in states] == [1, 2, 3, 4, 5]  # 4 iterations, the first final pass; not the last
    assert len(states[0].starts) == 2 and len(states[2].starts) == 1  # pruned after iteration 2
    for saved in (states[0], states[2], states[4]):
        again = AbinitioState.from_saved(saved.iteration, {k: v.clone() for k, v in saved.to_tensors().items()},
                                         json.loads(json.dumps(saved.to_values())))
        res = abinitio(batches, table, pixel_size=APIX, params=params, resume=again)
        assert torch.equal(res.maps, full.maps), saved.iteration
        for name in ("rotations", "shifts", "classes", "probability"):
            assert np.array_equal(getattr(res, name), getattr(full, name)), (saved.iteration, name)
        assert [h.log_likelihood for h in res.history] == [h.log_likelihood for h in full.history]
        assert res.best_start == full.best_start and [s[0] for s in res.snapshots] == [s[0] for s in full.snapshots]


@pytest.fixture(scope="module")
def sim_set(tmp_path_factory):
    work = tmp_path_factory.mktemp("abinitio_continue")
    invoke_cli("simulate", "particles", "--out", work / "sim", "--n", "60", "--box", "24", "--pixel-size", "5",
               "--snr", "2", "--seed", "4", "--quiet", "--device", "cpu")
    return work


def _args(work: Path) -> list[str]:
    return ["abinitio", "--in", str(work / "sim" / "particles.star"), "--iterations", "4", "--batch-size", "30",
            "--starts", "2", "--prune-after", "2", "--ini-resolution", "30", "--final-resolution", "15",
            "--healpix-order", "1", "--top-k", "2", "--quiet", "--device", "cpu"]


def test_killed_abinitio_continues_to_the_uninterrupted_result(sim_set, tmp_path, monkeypatch):
    """SIGKILL after step 2's state, then `--continue`: the same maps and poses, bitwise."""
    work = sim_set
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the runs alike (and light on a busy machine)
    whole, folder = tmp_path / "whole", tmp_path / "killed"
    run_cli(*_args(work), "--out", str(whole))
    p = subprocess.Popen([*CLI, *_args(work), "--out", str(folder)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 120
        while not (state_path(folder, 2) / "state.json").is_file():
            assert p.poll() is None, p.stderr.read().decode()[-2000:]
            assert time.time() < deadline
            time.sleep(0.005)
        p.send_signal(signal.SIGKILL)
    finally:
        p.kill()
        p.wait()
    assert json.loads((folder / "job.json").read_text())["status"] == "running"  # killed, not finished
    assert not (folder / "map.mrc").exists()
    run_cli("abinitio", "--continue", str(folder), "--quiet")
    for name in ("map.mrc",):
        a, b = read_mrc(whole / name)[0], read_mrc(folder / name)[0]
        assert np.array_equal(a, b), (name, float(np.abs(a - b).max()))
    _, pa = read_particles(whole / "particles.star")
    _, pb = read_particles(folder / "particles.star")
    num = [c for c in pa.columns if c != "rlnImageName"]
    assert np.array_equal(pa[num].to_numpy(float), pb[num].to_numpy(float))
    ia, ib = (read_star(f / "iterations.star")["iterations"].drop(columns="rlnCryolensSeconds") for f in (whole, folder))
    assert ia.equals(ib) and len(ia) == 4
    assert json.loads((folder / "job.json").read_text())["status"] == "finished"
    assert "continuing from step" in (folder / "run.log").read_text()
    assert finished_iterations(folder) == finished_iterations(whole) == [4, 5]  # the last two steps kept
    assert (folder / "run_it005_class001.mrc").is_file()
    again = invoke_cli("abinitio", "--continue", folder)
    assert "already finished" in " ".join(again.output.split())


def test_continue_refuses_what_it_cannot_continue(sim_set, tmp_path):
    assert_user_error(invoke_cli("abinitio", "--continue", tmp_path / "nothing", code=None), "no job.json")
    folder = tmp_path / "killed"
    folder.mkdir()
    (folder / "job.json").write_text(json.dumps({"stage": "abinitio", "status": "running", "params": {},
                                                 "inputs": {}}))
    assert_user_error(invoke_cli("abinitio", "--continue", folder, code=None), "before its first iteration finished")
    assert_user_error(invoke_cli("abinitio", "--quiet", code=None), "--in is required")

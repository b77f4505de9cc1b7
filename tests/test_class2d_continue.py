"""``cryolens class2d --continue``: an interrupted classification resumes to the uninterrupted result, bitwise."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import assert_user_error, invoke_cli
from cryolens.class2d import Class2DParams
from cryolens.io import read_mrc, read_particles, read_star
from cryolens.jobs.checkpoint import finished_iterations

ARGS = ["--classes", "3", "--iter", "4", "--particle-diameter", "100", "--res-start", "30", "--res-end", "15",
        "--quiet", "--device", "cpu"]


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    work = tmp_path_factory.mktemp("c2d_continue")
    invoke_cli("simulate", "particles", "--out", work / "sim", "--n", "60", "--box", "24", "--pixel-size", "5",
               "--snr", "1", "--seed", "3", "--quiet", "--device", "cpu")
    return work / "sim" / "particles.star"


class Stop(Exception):
    pass


def test_interrupted_class2d_continues_to_the_uninterrupted_result(sim, tmp_path):
    from cryolens.jobs.class2d import run_class2d

    whole = tmp_path / "whole"
    invoke_cli("class2d", "--in", sim, *ARGS, "--out", whole)
    folder = tmp_path / "stopped"
    params = Class2DParams(classes=3, iterations=4, particle_diameter=100.0, res_start=30.0, res_end=15.0)

    def stop(it, done, total, res):  # dies inside iteration 3, after iteration 2's state was saved
        if it == 3:
            raise Stop

    with pytest.raises(Stop):
        run_class2d(sim, folder, params, progress=stop)
    assert finished_iterations(folder) == [1, 2] and not (folder / "classes.mrcs").exists()
    assert_user_error(invoke_cli("class2d", "--continue", folder, "--classes", "4", code=None),
                      "--classes 4", "started with 3")
    invoke_cli("class2d", "--continue", folder, "--quiet")
    assert np.array_equal(read_mrc(whole / "classes.mrcs")[0], read_mrc(folder / "classes.mrcs")[0])
    _, pa = read_particles(whole / "particles.star")
    _, pb = read_particles(folder / "particles.star")
    num = [c for c in pa.columns if c != "rlnImageName"]
    assert np.array_equal(pa[num].to_numpy(float), pb[num].to_numpy(float))
    ia, ib = (read_star(f / "iterations.star")["iterations"].drop(columns="rlnCryolensSeconds") for f in (whole, folder))
    assert ia.equals(ib) and len(ia) == 4
    assert json.loads((folder / "job.json").read_text())["status"] == "finished"
    assert "continuing from iteration 2" in (folder / "run.log").read_text()
    assert finished_iterations(folder) == finished_iterations(whole) == [2, 3]
    assert (folder / "run_it003_classes.mrcs").is_file() and (folder / "run_it003_data.star").is_file()
    assert "already finished" in " ".join(invoke_cli("class2d", "--continue", folder).output.split())


def test_continue_refuses_what_it_cannot_continue(sim, tmp_path):
    assert_user_error(invoke_cli("class2d", "--continue", tmp_path / "nothing", code=None), "no job.json")
    assert_user_error(invoke_cli("class2d", "--out", tmp_path / "o", code=None), "--in is required")
    folder = tmp_path / "early"
    folder.mkdir()
    (folder / "job.json").write_text(json.dumps({"stage": "class2d", "status": "running", "params": {},
                                                 "inputs": {"particles": str(sim)}}))
    assert_user_error(invoke_cli("class2d", "--continue", folder, code=None), "before its first iteration finished")

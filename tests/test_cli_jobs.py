"""End-to-end tests of `cryolens simulate particles`, `cryolens reconstruct` and `cryolens fsc`.

Runs the real CLI in subprocesses (as a user would) on small simulated data, checks
the job folders, the ground truth, and that bad input exits 2 with one sentence and
no traceback.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import starfile
from conftest import run_cli

from cryolens.core.fsc import fsc
from cryolens.io import read_mrc


def assert_user_error(p: subprocess.CompletedProcess, *fragments: str) -> None:
    """Exit 2, no traceback, and the message names what it should."""
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    assert "Traceback" not in p.stderr
    for f in fragments:
        assert f in p.stderr, p.stderr


@pytest.fixture(scope="module")
def simulated(tmp_path_factory) -> Path:
    """600 noise-free-ish particles of the phantom at box 32, 4 Å/px."""
    work = tmp_path_factory.mktemp("cli")
    run_cli("simulate", "particles", "--out", "sim", "--n", "600", "--box", "32", "--pixel-size", "4",
            "--snr", "1.0", "--defocus", "8000", "15000", "--seed", "3", "--quiet", cwd=work)
    return work


def test_simulate_outputs_and_ground_truth(simulated: Path):
    sim = simulated / "sim"
    for name in ("particles.mrcs", "particles.star", "truth_map.mrc", "gallery.png", "report.html", "job.json",
                 "run.log", "CRYOLENS_JOB_EXIT_SUCCESS"):
        assert (sim / name).is_file(), name
    job = json.loads((sim / "job.json").read_text())
    assert job["status"] == "finished" and job["seed"] == 3 and job["params"]["n_particles"] == 600
    star = starfile.read(sim / "particles.star")
    p, o = star["particles"], star["optics"]
    assert len(p) == 600 and float(o["rlnImagePixelSize"][0]) == 4.0 and int(o["rlnImageSize"][0]) == 32
    assert (p["rlnDefocusU"] >= p["rlnDefocusV"]).all()
    mean_df = (p["rlnDefocusU"] + p["rlnDefocusV"]) / 2
    assert mean_df.between(8000, 15000).all()
    assert p["rlnOriginXAngst"].abs().max() <= 4.0 + 1e-6
    # uniform poses: cos(tilt) uniform on [-1, 1] (mean 0, variance 1/3)
    ct = np.cos(np.deg2rad(p["rlnAngleTilt"].to_numpy()))
    assert abs(ct.mean()) < 0.08 and abs(ct.var() - 1 / 3) < 0.05
    stack, apix = read_mrc(sim / "particles.mrcs")
    assert stack.shape == (600, 32, 32) and apix == pytest.approx(4.0)
    with mrcfile.open(sim / "particles.mrcs", header_only=True) as m:
        assert m.header.ispg == 0  # an image stack, as RELION expects


def test_reconstruct_outputs_and_accuracy(simulated: Path):
    run_cli("reconstruct", "--in", "sim/particles.star", "--out", "rec", "--quiet", cwd=simulated)
    rec = simulated / "rec"
    for name in ("half1.mrc", "half2.mrc", "map.mrc", "fsc.star", "fsc.png", "map_slices.png", "particles.star",
                 "report.html", "job.json", "CRYOLENS_JOB_EXIT_SUCCESS"):
        assert (rec / name).is_file(), name
    subsets = starfile.read(rec / "particles.star")["particles"]["rlnRandomSubset"]
    assert set(subsets) == {1, 2} and abs((subsets == 1).sum() - (subsets == 2).sum()) <= 1
    curve = starfile.read(rec / "fsc.star")
    assert {"rlnSpectralIndex", "rlnResolution", "rlnFourierShellCorrelation"} <= set(curve.columns)
    job = json.loads((rec / "job.json").read_text())
    assert job["status"] == "finished" and job["results"]["resolution_0143_A"] < 14.0
    truth, apix = read_mrc(simulated / "sim" / "truth_map.mrc")
    full, _ = read_mrc(rec / "map.mrc")
    import torch
    r = fsc(torch.tensor(full), torch.tensor(truth), pixel_size=apix)
    assert r.resolution_at(0.5) < 12.0  # 600 particles at SNR 1, Nyquist 8 Å
    # the fsc command reports the same curve
    p = run_cli("fsc", "rec/map.mrc", "sim/truth_map.mrc", cwd=simulated)
    assert f"{r.resolution_at(0.5):.2f}" in p.stdout


@pytest.mark.slow  # 13 s, three reconstructions; test_job_folders covers --overwrite in-process
def test_reconstruct_overwrites_existing_folder(simulated: Path):
    """Running again into a finished job's folder needs --overwrite; the new job replaces it and succeeds."""
    run_cli("reconstruct", "--in", "sim/particles.star", "--out", "rec2", "--quiet", cwd=simulated)
    first = read_mrc(simulated / "rec2" / "map.mrc")[0]
    assert_user_error(run_cli("reconstruct", "--in", "sim/particles.star", "--out", "rec2", "--quiet",
                              cwd=simulated, check=False), "rec2", "--overwrite")
    run_cli("reconstruct", "--in", "sim/particles.star", "--out", "rec2", "--quiet", "--overwrite", cwd=simulated)
    assert np.allclose(read_mrc(simulated / "rec2" / "map.mrc")[0], first, atol=1e-5)
    assert not list((simulated / "rec2").glob("*.tmp")) and not list(simulated.glob(".rec2.*"))


def test_bad_inputs_exit_2_without_traceback(simulated: Path, tmp_path: Path):
    # truncated MRC as the structure
    good = (simulated / "sim" / "truth_map.mrc").read_bytes()
    (tmp_path / "cut.mrc").write_bytes(good[: len(good) // 2])
    assert_user_error(run_cli("simulate", "particles", "--map", str(tmp_path / "cut.mrc"), "--out", str(tmp_path / "o"),
                              cwd=tmp_path, check=False), "cut.mrc")
    # STAR without the angles
    star = starfile.read(simulated / "sim" / "particles.star")
    star["particles"] = star["particles"].drop(columns=["rlnAngleRot"])
    starfile.write(star, tmp_path / "noangles.star")
    assert_user_error(run_cli("reconstruct", "--in", str(tmp_path / "noangles.star"), "--out", str(tmp_path / "r"),
                              cwd=simulated, check=False), "rlnAngleRot")
    # missing stack file
    star = starfile.read(simulated / "sim" / "particles.star")
    star["particles"]["rlnImageName"] = star["particles"]["rlnImageName"].str.replace("particles.mrcs", "gone.mrcs")
    starfile.write(star, tmp_path / "gone.star")
    assert_user_error(run_cli("reconstruct", "--in", str(tmp_path / "gone.star"), "--out", str(tmp_path / "r"),
                              cwd=simulated, check=False), "gone.mrcs")
    # unknown symmetry, missing input file, impossible parameters
    assert_user_error(run_cli("reconstruct", "--in", "sim/particles.star", "--out", str(tmp_path / "r"), "--sym", "X5",
                              cwd=simulated, check=False), "X5")
    assert_user_error(run_cli("reconstruct", "--in", "nothere.star", "--out", str(tmp_path / "r"), cwd=simulated,
                              check=False), "nothere.star")
    assert_user_error(run_cli("simulate", "particles", "--out", str(tmp_path / "o"), "--n", "0", cwd=tmp_path,
                              check=False), "--n 0")


def test_nan_image_is_refused(simulated: Path, tmp_path: Path):
    stack, apix = read_mrc(simulated / "sim" / "particles.mrcs")
    stack = stack.copy()
    stack[5, 3, 3] = np.nan
    from cryolens.io import write_mrc
    write_mrc(tmp_path / "nan.mrcs", stack, apix)
    star = starfile.read(simulated / "sim" / "particles.star")
    star["particles"]["rlnImageName"] = [f"{i + 1:06d}@nan.mrcs" for i in range(len(star["particles"]))]
    starfile.write(star, tmp_path / "nan.star")
    p = run_cli("reconstruct", "--in", "nan.star", "--out", "r", cwd=tmp_path, check=False)
    assert_user_error(p, "000006@nan.mrcs", "NaN")
    assert (tmp_path / "r" / "CRYOLENS_JOB_EXIT_FAILURE").is_file()
    assert json.loads((tmp_path / "r" / "job.json").read_text())["status"] == "failed"


def test_simulated_noise_matches_snr(tmp_path: Path):
    """Same seed with and without noise: the difference has variance signal_var / snr."""
    import torch
    from cryolens.simulate.particles import ParticleSimParams, simulate_particles
    from cryolens.simulate.phantom import asymmetric_phantom
    vol = asymmetric_phantom(32, 4.0)
    clean = simulate_particles(vol, pixel_size=4.0, params=ParticleSimParams(n_particles=300, snr=float("inf")))
    noisy = simulate_particles(vol, pixel_size=4.0, params=ParticleSimParams(n_particles=300, snr=0.25))
    a = np.concatenate([b for _, b in clean.batches])
    b = np.concatenate([b for _, b in noisy.batches])
    signal_var = a.var(axis=(1, 2)).mean()
    noise = b - a
    assert noise.std() == pytest.approx(noisy.noise_sigma, rel=0.02)
    assert noise.var() / signal_var == pytest.approx(1 / 0.25, rel=0.1)
    assert abs(np.corrcoef(noise[:, 0, 0], noise[:, 5, 7])[0, 1]) < 0.2  # white
    assert torch.isfinite(torch.tensor(b)).all()

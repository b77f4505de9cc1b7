"""End-to-end tests of ``cryolens ctf``: the job folder, RELION columns against the simulator's
truth, diagnostics, ``--power-spectrum`` mode, resuming, patch planes and user errors.

Runs the real CLI in-process (typer's CliRunner) on two small simulated micrographs, and on a
third, strongly tilted one for the patch plane's gradient.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import pytest
import starfile
import torch
from conftest import unfinish
from typer.testing import CliRunner

from cryolens.cli.main import app
from cryolens.io import write_micrographs

runner = CliRunner()
#: Quick fit options for 1024² micrographs (the defaults: box 512, exhaustive search, 0.5-5 µm).
FAST = ("--box", "256", "--search", "fast", "--defocus", "8000", "22000", "--patches", "2x2")


def cli(*args: str, ok: bool = True):
    r = runner.invoke(app, list(args), catch_exceptions=False)
    if ok:
        assert r.exit_code == 0, r.output
    return r


def assert_user_error(r, *fragments: str) -> None:
    """Exit 2, one sentence naming what it should, no traceback."""
    assert r.exit_code == 2, (r.exit_code, r.output)
    text = r.output
    assert "Traceback" not in text
    for f in fragments:
        assert f in text, text


def angle_error(a: float, b: float) -> float:
    """Difference of two astigmatism angles (degrees, modulo 180)."""
    d = (a - b) % 180.0
    return min(d, 180.0 - d)


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """Two 1024² micrographs at 1.5 Å/px, 300 kV, defocus 1.0-2.0 µm, astigmatism up to 800 Å,
    specimen tilt up to 20° (a defocus gradient), plus the CTF job on them."""
    d = tmp_path_factory.mktemp("ctf")
    cwd = os.getcwd()
    os.chdir(d)
    try:
        cli("simulate", "micrographs", "--n-micrographs", "2", "--size", "1024", "1024", "--pixel-size", "1.5",
            "--box", "64", "--particles-per-micrograph", "40", "--defocus", "10000", "20000", "--astigmatism", "800",
            "--tilt-max", "20", "--seed", "4", "--out", "sim", "--quiet")
        cli("ctf", "--in", "sim/micrographs.star", "--out", "ctf", *FAST, "--j", "1", "--device", "cpu", "--quiet")
    finally:
        os.chdir(cwd)
    return d


def test_star_columns_and_values_near_truth(work: Path):
    truth = starfile.read(work / "sim" / "micrographs.star")["micrographs"]
    star = starfile.read(work / "ctf" / "micrographs_ctf.star")
    assert set(star) == {"optics", "micrographs"}
    out = star["micrographs"]
    for c in ("rlnMicrographName", "rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle", "rlnPhaseShift",
              "rlnCtfAstigmatism", "rlnCtfFigureOfMerit", "rlnCtfMaxResolution", "cryolensDose",
              "cryolensDefocusPlaneC0", "cryolensDefocusGradientX", "cryolensDefocusGradientY"):
        assert c in out.columns, c
    assert list(out["rlnMicrographName"]) == list(truth["rlnMicrographName"])
    assert float(star["optics"]["rlnVoltage"][0]) == 300.0
    for (_, t), (_, f) in zip(truth.iterrows(), out.iterrows()):
        assert f["rlnDefocusU"] >= f["rlnDefocusV"]
        mean_t = (t["rlnDefocusU"] + t["rlnDefocusV"]) / 2
        mean_f = (f["rlnDefocusU"] + f["rlnDefocusV"]) / 2
        assert abs(mean_f - mean_t) < 0.02 * mean_t, (mean_f, mean_t)
        assert abs(f["rlnCtfAstigmatism"] - (f["rlnDefocusU"] - f["rlnDefocusV"])) < 1.0
        assert abs(f["rlnDefocusU"] - t["rlnDefocusU"]) < 400 and abs(f["rlnDefocusV"] - t["rlnDefocusV"]) < 400
        if t["rlnDefocusU"] - t["rlnDefocusV"] > 500:  # the angle of a smaller astigmatism is ill-defined here
            assert angle_error(f["rlnDefocusAngle"], t["rlnDefocusAngle"]) < 15
        assert 0 < f["rlnCtfFigureOfMerit"] <= 1
        assert 3.0 <= f["rlnCtfMaxResolution"] < 30
        assert f["rlnPhaseShift"] == 0.0


def test_patch_plane_columns(work: Path):
    """Cheap check on the untilted-ish pair (tilts of 1.6° and 5.7°, gradients below the patch precision
    at the default dose): centre defocus and the plane's units; the gradient itself is pinned on the
    tilted micrograph below."""
    truth = starfile.read(work / "sim" / "micrographs.star")["micrographs"]
    out = starfile.read(work / "ctf" / "micrographs_ctf.star")["micrographs"]
    for (_, t), (_, f) in zip(truth.iterrows(), out.iterrows()):
        mean_t = (t["rlnDefocusU"] + t["rlnDefocusV"]) / 2
        assert abs(f["cryolensDefocusPlaneC0"] - mean_t) < 0.03 * mean_t
        g_f = np.array([f["cryolensDefocusGradientX"], f["cryolensDefocusGradientY"]])
        # a <= 20 degree tilt at 1.5 Å/px changes the defocus by < 300 Å over the half width (512 px);
        # a plane in other units or conventions (µm, per patch, per Å) would not stay within 10 %
        assert np.isfinite(g_f).all() and np.abs(g_f).max() * 512 < 0.1 * mean_t, g_f


@pytest.fixture(scope="module")
def tilted(tmp_path_factory) -> Path:
    """One 1024² micrograph at 1.5 Å/px and 200 e⁻/Å² through a 37.9° specimen tilt (seed 35: axis −145°,
    gradient (0.67, −0.96) Å/px, i.e. ±340/∓490 Å of defocus across the half widths), and the CTF job
    with 2 × 2 patches on it."""
    d = tmp_path_factory.mktemp("ctf_tilt")
    cwd = os.getcwd()
    os.chdir(d)
    try:
        cli("simulate", "micrographs", "--n-micrographs", "1", "--size", "1024", "1024", "--pixel-size", "1.5",
            "--box", "64", "--particles-per-micrograph", "40", "--defocus", "10000", "20000", "--astigmatism", "500",
            "--tilt-max", "40", "--dose", "200", "--seed", "35", "--out", "sim", "--quiet")
        cli("ctf", "--in", "sim/micrographs.star", "--out", "ctf", *FAST, "--j", "1", "--device", "cpu", "--quiet")
    finally:
        os.chdir(cwd)
    return d


def test_patch_plane_gradient_matches_the_simulated_tilt(tilted: Path):
    """The STAR plane columns against the simulator's tilt: both gradient components with their signs
    (they have opposite signs here, so swapped or mirrored axes fail), the magnitude within 15 % and
    each component within 0.15 Å/px (0.03-0.04 Å/px seen), the centre defocus within 1 %."""
    t = starfile.read(tilted / "sim" / "micrographs.star")["micrographs"].iloc[0]
    f = starfile.read(tilted / "ctf" / "micrographs_ctf.star")["micrographs"].iloc[0]
    g_t = np.array([t["cryolensDefocusGradientX"], t["cryolensDefocusGradientY"]])
    g_f = np.array([f["cryolensDefocusGradientX"], f["cryolensDefocusGradientY"]])
    assert t["cryolensTiltAngle"] > 30 and np.abs(g_t).min() > 0.5  # the scene is what the test is about
    assert (np.sign(g_f) == np.sign(g_t)).all(), (g_f, g_t)
    assert abs(np.linalg.norm(g_f) / np.linalg.norm(g_t) - 1) < 0.15, (g_f, g_t)
    assert np.abs(g_f - g_t).max() < 0.15, (g_f, g_t)
    mean_t = (t["rlnDefocusU"] + t["rlnDefocusV"]) / 2
    assert abs(f["cryolensDefocusPlaneC0"] / mean_t - 1) < 0.01


def test_diagnostics_summary_report_and_job_json(work: Path):
    job = json.loads((work / "ctf" / "job.json").read_text())
    assert job["status"] == "finished" and (work / "ctf" / "CRYOLENS_JOB_EXIT_SUCCESS").is_file()
    r = job["results"]
    assert r["n_micrographs"] == 2 and r["n_reused"] == 0
    assert 9000 < r["median_defocus_A"] < 21000
    assert set(r["fit_resolution_A"]) == {"median", "best", "worst"} and "n_warnings" in r
    for stem in ("mic_0001", "mic_0002"):
        png = work / "ctf" / "diagnostics" / f"{stem}_ctf.png"
        assert png.is_file() and png.read_bytes()[:4] == b"\x89PNG"
        assert json.loads((png.parent / f"{stem}_ctf.json").read_text())["png"] == png.name
    assert (work / "ctf" / "summary.png").is_file()
    html = (work / "ctf" / "report.html").read_text()
    assert "summary.png" in html and "diagnostics/mic_0001_ctf.png" in html


def test_rerun_reuses_results(work: Path, monkeypatch):
    monkeypatch.chdir(work)
    before = starfile.read(work / "ctf" / "micrographs_ctf.star")["micrographs"]
    png = work / "ctf" / "diagnostics" / "mic_0001_ctf.png"
    stamp = png.stat().st_mtime_ns
    unfinish(work / "ctf")  # a finished folder is refused (or overwritten afresh); an interrupted one resumes
    cli("ctf", "--in", "sim/micrographs.star", "--out", "ctf", *FAST, "--j", "1", "--device", "cpu", "--quiet")
    job = json.loads((work / "ctf" / "job.json").read_text())
    assert job["results"]["n_reused"] == 2
    assert png.stat().st_mtime_ns == stamp
    after = starfile.read(work / "ctf" / "micrographs_ctf.star")["micrographs"]
    assert np.allclose(before["rlnDefocusU"], after["rlnDefocusU"])


def test_power_spectrum_mode_fits_a_given_spectrum(work: Path, monkeypatch):
    from cryolens.ctf import power_spectrum
    from cryolens.io import read_mrc, write_mrc

    monkeypatch.chdir(work)
    img, apix = read_mrc(work / "sim" / "micrographs" / "mic_0002.mrc")
    ps = power_spectrum(torch.from_numpy(img.copy()), box=256, overlap=0.5).numpy()
    write_mrc(work / "mic2_PS.mrc", ps.astype(np.float32), apix)
    r = cli("ctf", "--power-spectrum", "mic2_PS.mrc", "--voltage", "300", "--cs", "2.7",
            "--amplitude-contrast", "0.07", "--search", "fast", "--defocus", "8000", "22000", "--out", "ps",
            "--device", "cpu")
    assert "defocus U" in r.output
    truth = starfile.read(work / "sim" / "micrographs.star")["micrographs"].iloc[1]
    f = starfile.read(work / "ps" / "micrographs_ctf.star")["micrographs"].iloc[0]
    mean_t = (truth["rlnDefocusU"] + truth["rlnDefocusV"]) / 2
    assert abs((f["rlnDefocusU"] + f["rlnDefocusV"]) / 2 - mean_t) < 0.02 * mean_t
    assert (work / "ps" / "diagnostics" / "mic2_PS_ctf.png").is_file()
    job = json.loads((work / "ps" / "job.json").read_text())
    assert job["params"]["pixel_size"] == pytest.approx(1.5) and job["inputs"]["power_spectrum"].endswith("mic2_PS.mrc")


def test_bad_inputs_exit_2_naming_the_file(work: Path, monkeypatch, tmp_path):
    monkeypatch.chdir(work)
    star = starfile.read(work / "sim" / "micrographs.star")
    mics = star["micrographs"].copy()
    mics.loc[1, "rlnMicrographName"] = "sim/micrographs/missing.mrc"
    starfile.write({"optics": star["optics"], "micrographs": mics}, tmp_path / "missing.star")
    assert_user_error(cli("ctf", "--in", str(tmp_path / "missing.star"), "--out", str(tmp_path / "o1"), ok=False),
                      "missing.mrc")
    with warnings.catch_warnings(), mrcfile.new(tmp_path / "nan.mrc") as m:
        warnings.simplefilter("ignore", RuntimeWarning)  # mrcfile notes the NaNs we write on purpose
        m.set_data(np.full((600, 600), np.nan, np.float32))
        m.voxel_size = 1.5
    mics = star["micrographs"].iloc[:1].copy()
    mics["rlnMicrographName"] = str(tmp_path / "nan.mrc")
    starfile.write({"optics": star["optics"], "micrographs": mics}, tmp_path / "nan.star")
    assert_user_error(cli("ctf", "--in", str(tmp_path / "nan.star"), "--out", str(tmp_path / "o2"), "--box", "256",
                          ok=False), "nan.mrc", "NaN")
    with mrcfile.new(tmp_path / "flat.mrc") as m:  # a failed export: every pixel 0
        m.set_data(np.zeros((600, 600), np.float32))
        m.voxel_size = 1.5
    mics["rlnMicrographName"] = str(tmp_path / "flat.mrc")
    starfile.write({"optics": star["optics"], "micrographs": mics}, tmp_path / "flat.star")
    assert_user_error(cli("ctf", "--in", str(tmp_path / "flat.star"), "--out", str(tmp_path / "o6"), "--box", "256",
                          ok=False), "flat.mrc", "every pixel holds the same value")
    assert_user_error(cli("ctf", "--in", "sim/micrographs.star", "--out", str(tmp_path / "o3"), "--res", "5", "30",
                          ok=False), "res")
    assert_user_error(cli("ctf", "--power-spectrum", "sim/micrographs/mic_0001.mrc", "--out", str(tmp_path / "o4"),
                          ok=False), "--voltage")
    assert_user_error(cli("ctf", "--in", "sim/micrographs.star", "--patches", "5by5", "--out", str(tmp_path / "o5"),
                          ok=False), "5by5")


def test_real_betagal_power_spectrum(shared_data: Path, tmp_path: Path, monkeypatch):
    """RELION's PS of a real beta-gal micrograph (200 kV, Cs 1.4, Q0 0.1, 1.3996 Å/px): a fit inside
    the search range with its diagnostic, whichever candidate the estimator decides for."""
    monkeypatch.chdir(tmp_path)
    ps = shared_data / "metadata/relion5_betagal_project/MotionCorr/job002/Movies/20170629_00021_frameImage_PS.mrc"
    cli("ctf", "--power-spectrum", str(ps), "--voltage", "200", "--cs", "1.4", "--amplitude-contrast", "0.1",
        "--search", "fast", "--out", "ps", "--device", "cpu", "--quiet")
    f = starfile.read(tmp_path / "ps" / "micrographs_ctf.star")["micrographs"].iloc[0]
    assert 5000 <= f["rlnDefocusV"] <= f["rlnDefocusU"] <= 50000
    assert math.isfinite(f["rlnCtfFigureOfMerit"])
    assert (tmp_path / "ps" / "diagnostics" / "20170629_00021_frameImage_PS_ctf.png").is_file()
    # the mistake that made CTFFIND fit noise on this file: the spectrum given as a micrograph
    star = tmp_path / "ps_as_micrograph.star"
    optics = pd.DataFrame({"rlnOpticsGroup": [1], "rlnOpticsGroupName": ["opticsGroup1"],
                           "rlnMicrographPixelSize": [1.3996], "rlnVoltage": [200.0],
                           "rlnSphericalAberration": [1.4], "rlnAmplitudeContrast": [0.1]})
    write_micrographs(star, optics, pd.DataFrame({"rlnMicrographName": [str(ps)], "rlnOpticsGroup": [1]}))
    assert_user_error(cli("ctf", "--in", str(star), "--out", "mic", "--box", "256", ok=False),
                      "20170629_00021_frameImage_PS.mrc", "--power-spectrum")


@pytest.mark.slow
def test_from_movies_and_local_workers(tmp_path: Path, monkeypatch):
    """``--from-movies`` on a movies.star (movie, gain and dose per frame from the motion metadata;
    3 e-/Å² frames summed in pairs), through two local worker processes."""
    monkeypatch.chdir(tmp_path)
    cli("simulate", "movies", "--n-movies", "2", "--frames", "12", "--dose-per-frame", "3", "--size", "768", "768",
        "--pixel-size", "1.5", "--particles-per-movie", "20", "--defocus", "12000", "16000", "--gain", "--seed", "3",
        "--out", "mov", "--quiet")
    cli("ctf", "--in", "mov/movies.star", "--from-movies", "--out", "ctf", "--box", "256", "--search", "fast",
        "--defocus", "8000", "22000", "--j", "2", "--device", "cpu", "--quiet")
    truth = starfile.read(tmp_path / "mov" / "micrographs_truth.star")["micrographs"]
    star = starfile.read(tmp_path / "ctf" / "micrographs_ctf.star")
    out = star["movies"]
    assert list(out["rlnMicrographMovieName"]) == list(truth["rlnMicrographMovieName"])
    for (_, t), (_, f) in zip(truth.iterrows(), out.iterrows()):
        mean_t = (t["rlnDefocusU"] + t["rlnDefocusV"]) / 2
        assert abs((f["rlnDefocusU"] + f["rlnDefocusV"]) / 2 - mean_t) < 0.08 * mean_t
    job = json.loads((tmp_path / "ctf" / "job.json").read_text())
    assert job["params"]["from_movies"] and job["results"]["n_micrographs"] == 2

"""``cryolens motion`` end to end on simulated movies: RELION-layout outputs against the simulator's
truth STAR, hot pixels, resumability, rejection, bad input, and RELION reading what we write.

Two small movies (256² × 16 frames, 4 e⁻/Å² per frame, 12 Å drift, gain, hot and dead pixels)
keep the suite fast; the shift tolerance (RMSE < 1.5 px on shifts up to ~6 px) fails for a
wrong sign (errors of twice the shifts) or a failed alignment.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import starfile
from conftest import unfinish
from typer.testing import CliRunner

from cryolens.cli.main import app

SHIFT = ["rlnMicrographShiftX", "rlnMicrographShiftY"]
runner = CliRunner()


def run(*args: str, cwd: Path, ok: bool = True):
    """The real CLI, in process (typer's CliRunner), from folder ``cwd``."""
    old = os.getcwd()
    os.chdir(cwd)
    try:
        r = runner.invoke(app, list(args), catch_exceptions=False)
    finally:
        os.chdir(old)
    if ok:
        assert r.exit_code == 0, r.output[-3000:]
    return r


@pytest.fixture(scope="module")
def aligned(tmp_path_factory) -> Path:
    """Simulate two movies, then align them with two local worker processes."""
    work = tmp_path_factory.mktemp("motion")
    run("simulate", "movies", "--preset", "tutorial", "--n-movies", "2", "--frames", "16", "--size", "256", "256",
        "--dose-per-frame", "4", "--drift", "12", "--no-local-motion", "--particles-per-movie", "4",
        "--hot-pixels", "6", "--dead-pixels", "3", "--gain", "--seed", "5", "--quiet", "--device", "cpu",
        "--out", "sim", cwd=work)
    run("motion", "--in", "sim/movies.star", "--out", "mc", "--dose-per-frame", "4", "--j", "2", "--quiet",
        "--device", "cpu", cwd=work)
    return work


def test_outputs_and_per_movie_star_match_the_truth_layout(aligned: Path):
    mc = aligned / "mc"
    for name in ("micrographs.star", "drift.png", "report.html", "job.json", "run.log", "CRYOLENS_JOB_EXIT_SUCCESS",
                 "Movies/movie_0001.mrc", "Movies/movie_0001_noDW.mrc", "Movies/movie_0001.star",
                 "Movies/movie_0001_shifts.png", "Movies/movie_0002.mrc"):
        assert (mc / name).is_file(), name
    assert not (mc / "rejected.star").exists()
    job = json.loads((mc / "job.json").read_text())
    r = job["results"]
    assert job["status"] == "finished" and r["n_movies"] == 2 and r["n_rejected"] == 0 and r["dose_weighted"]
    assert r["backend"] == "local:2"
    for k in (1, 2):
        ours = starfile.read(mc / f"Movies/movie_000{k}.star", always_dict=True)
        truth = starfile.read(aligned / f"sim/Movies/movie_000{k}.star", always_dict=True)
        assert list(ours) == list(truth) == ["general", "global_shift", "hot_pixels"]
        # RELION MotionCorr's data_general, in order (no defect file given here: hot pixels are found)
        assert list(ours["general"]) == [k for k in truth["general"] if k != "rlnMicrographDefectFile"]
        for key, value in truth["general"].items():
            if key not in ("rlnMicrographDoseRate", "rlnMicrographDefectFile"):
                assert ours["general"][key] == value, key
        assert ours["general"]["rlnMicrographDoseRate"] == 4.0
        est, true = ours["global_shift"], truth["global_shift"]
        assert list(est.columns) == list(true.columns)
        assert list(est["rlnMicrographFrameNumber"]) == list(range(1, 17))
        e, t = est[SHIFT].to_numpy(), true[SHIFT].to_numpy()
        rmse = float(np.sqrt(((e - t) ** 2).sum(1).mean()))
        assert np.abs(t).max() > 4 and rmse < 1.5, (rmse, e - t)
        assert np.all(e[0] == 0)
        # the simulator's hot pixels, found without a defect file
        hot = lambda d: set(zip(d["hot_pixels"]["rlnCoordinateX"], d["hot_pixels"]["rlnCoordinateY"]))  # noqa: E731
        assert hot(ours) == hot(truth)


def test_micrographs_star_has_relions_motioncorr_layout(aligned: Path, shared_data: Path):
    mc = aligned / "mc"
    ours = starfile.read(mc / "micrographs.star", always_dict=True)
    real = starfile.read(shared_data / "metadata/relion5_betagal_project/MotionCorr/job002/corrected_micrographs.star",
                         always_dict=True)
    wanted = [c for c in real["micrographs"].columns if c != "rlnCtfPowerSpectrum"]
    assert list(ours["micrographs"].columns) == wanted
    assert set(real["optics"].columns) - {"rlnMtfFileName"} <= set(ours["optics"].columns)
    assert float(ours["optics"]["rlnMicrographPixelSize"][0]) == 1.75
    mics = ours["micrographs"]
    assert list(mics["rlnMicrographName"]) == ["mc/Movies/movie_0001.mrc", "mc/Movies/movie_0002.mrc"]
    assert all((aligned / m).is_file() for m in mics["rlnMicrographMetadata"])
    # RELION's accumulated motion: frame-to-frame travel of the global shifts, in movie pixels;
    # early = frames up to 4 e/Å² (frame 1 only at 4 e/Å² per frame, so no step)
    for k, row in mics.iterrows():
        s = starfile.read(aligned / row["rlnMicrographMetadata"], always_dict=True)["global_shift"][SHIFT].to_numpy()
        travel = np.linalg.norm(np.diff(s, axis=0), axis=1).sum()
        assert row["rlnAccumMotionTotal"] == pytest.approx(travel, rel=1e-6)
        assert row["rlnAccumMotionEarly"] == 0 and row["rlnAccumMotionLate"] == pytest.approx(travel, rel=1e-6)
    results = json.loads((mc / "job.json").read_text())["results"]  # the summary says both units
    assert results["mean_total_motion_px"] == pytest.approx(mics["rlnAccumMotionTotal"].mean(), rel=1e-3)
    assert results["mean_total_motion_A"] == pytest.approx(results["mean_total_motion_px"] * 1.75, rel=1e-3)
    with mrcfile.open(mc / "Movies/movie_0001.mrc") as m:
        assert m.data.shape == (256, 256) and float(m.voxel_size.x) == pytest.approx(1.75)
        dw = np.asarray(m.data)
    with mrcfile.open(mc / "Movies/movie_0001_noDW.mrc") as m:
        nodw = np.asarray(m.data)
    assert np.isfinite(dw).all() and not np.allclose(dw, nodw)
    # the aligned sum is protein-dark counts: ~16 frames x 4 e/Å² x 1.75² Å² per pixel
    assert nodw.mean() == pytest.approx(16 * 4 * 1.75 ** 2, rel=0.1)


def test_rerun_skips_done_movies_and_changed_options_redo_them(aligned: Path, tmp_path: Path):
    one = tmp_path / "one.star"
    blocks = starfile.read(aligned / "sim/movies.star", always_dict=True)
    blocks["movies"] = blocks["movies"].iloc[1:]
    blocks["optics"]["rlnMicrographDoseRate"] = 4.0  # the exposure per frame as `cryolens import movies` records it
    starfile.write(blocks, one)
    out = str(tmp_path / "mc")
    common = ("motion", "--in", str(one), "--out", out, "--backend", "inprocess", "--no-plots",
              "--quiet", "--device", "cpu")
    run(*common, cwd=aligned)
    assert starfile.read(tmp_path / "mc/Movies/movie_0002.star")["general"]["rlnMicrographDoseRate"] == 4.0
    assert (tmp_path / "mc/Movies/movie_0002_noDW.mrc").is_file()  # dose-weighted with the STAR's exposure
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "mc/Movies").iterdir()}
    unfinish(tmp_path / "mc")  # a finished folder is refused (or overwritten afresh); an interrupted one resumes
    r = run(*common, cwd=aligned)
    assert "(1 done before)" in r.output
    assert {q.name: q.stat().st_mtime_ns for q in (tmp_path / "mc/Movies").iterdir()} == before
    assert json.loads((tmp_path / "mc/job.json").read_text())["results"]["n_skipped"] == 1
    # other options (a rejection threshold) redo the movie: rejected, as its 12 Å drift travels > 5 Å
    unfinish(tmp_path / "mc")
    run(*common, "--max-travel", "5", cwd=aligned)
    r = json.loads((tmp_path / "mc/job.json").read_text())["results"]
    assert r["n_movies"] == 1 and r["n_skipped"] == 0 and r["n_rejected"] == 1
    rej = starfile.read(tmp_path / "mc/rejected.star", always_dict=True)["micrographs"]
    assert list(rej["rlnMicrographName"]) == [os.path.relpath(tmp_path / "mc/Movies/movie_0002.mrc", aligned)]
    assert rej["cryolensRejectReason"].str.contains("total travel").all()
    kept = starfile.read(tmp_path / "mc/micrographs.star", always_dict=True)
    assert len(kept.get("micrographs", [])) == 0


@pytest.mark.parametrize("args, fragment", [
    (["--patches", "5by5"], "--patches"),
    (["--first-frame", "40"], "frame range"),
    (["--gain", "sim/gain.mrc", "--gain-rot", "1", "--size-check"], None),
    (["--gain-rot", "5"], "--gain-rot 5"),
    (["--bin", "0.5"], "--bin 0.5"),
    (["--in", "nothing.star"], "nothing.star"),
])
def test_bad_input_exits_2_with_one_sentence(aligned: Path, tmp_path: Path, args, fragment):
    if "--size-check" in args:  # a gain of the wrong orientation for non-square movies
        import mrcfile as mf
        with mf.new(tmp_path / "gain.mrc") as m:
            m.set_data(np.ones((256, 200), np.float32))
        args, fragment = ["--gain", str(tmp_path / "gain.mrc")], "gain.mrc"
    base = ["motion", "--in", "sim/movies.star", "--out", str(tmp_path / "x"), "--quiet", "--device", "cpu",
            "--backend", "inprocess"]
    if "--in" in args:
        base = base[:1] + base[3:]
    r = run(*base, *args, cwd=aligned, ok=False)
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output and fragment in r.output, r.output


def test_missing_movie_names_the_star_file(aligned: Path, tmp_path: Path):
    text = (aligned / "sim/movies.star").read_text().replace("movie_0002.mrcs", "movie_0009.mrcs")
    (aligned / "broken.star").write_text(text)
    r = run("motion", "--in", "broken.star", "--out", str(tmp_path / "x"), "--quiet", "--backend", "inprocess",
            cwd=aligned, ok=False)
    assert r.exit_code == 2 and "movie_0009.mrcs" in r.output and "Traceback" not in r.output, r.output


def test_local_motion_blocks_have_relions_layout(shared_data: Path, tmp_path: Path):
    """With a local model the per-movie STAR has RELION's five blocks in RELION's order and columns,
    in unbinned pixels (a bin-2 result is scaled by 2)."""
    import torch
    from types import SimpleNamespace

    from cryolens.jobs.motion_unit import MovieTask, motion_star_blocks
    from cryolens.motion.preprocess import PreprocessParams
    from cryolens.core.motion import PolynomialMotion

    real = starfile.read(shared_data / "metadata/relion5_betagal_project/MotionCorr/job002/Movies/"
                         "20170629_00021_frameImage.star", always_dict=True)
    coeffs = real["local_motion_model"]["rlnMotionModelCoeff"].to_numpy()
    f, p = 4, 2
    result = SimpleNamespace(shifts_px=torch.tensor([[0.0, 0.0], [1.0, -0.5], [1.5, -1.0], [2.0, -1.2]]),
                             local_model=PolynomialMotion.from_coefficients(coeffs / 2),
                             patch_centres=torch.tensor([[100.0, 50.0], [300.0, 50.0]]),
                             patch_shifts=torch.full((p, f, 2), 0.25))
    task = MovieTask(movie="m.tif", movie_name="Movies/m.tif", out_stem="x", rel_stem="x", gain=None,
                     gain_name="gain.mrc", defect=None, defect_name=None, pixel_size=0.885, voltage=200.0,
                     dose_per_frame=1.277, pre_exposure=0.0, first_frame=1, last_frame=None, eer_grouping=40,
                     eer_upsampling=1, preprocess=PreprocessParams(bin_factor=2), motion=None, device="cpu",
                     plots=False)
    blocks = motion_star_blocks(task, result, n_frames_movie=4, height=3838, width=3710,
                                hot_pixels=np.array([[5, 7]]), bin_factor=2.0)
    write = tmp_path / "m.star"
    from cryolens.io import write_star
    write_star(write, blocks)
    ours = starfile.read(write, always_dict=True)
    assert list(ours) == list(real)
    assert list(ours["general"]) == list(real["general"])
    for name in ("global_shift", "local_motion_model", "hot_pixels", "local_shift"):
        assert list(ours[name].columns) == list(real[name].columns), name
    assert ours["general"]["rlnMotionModelVersion"] == 1 and ours["general"]["rlnMicrographBinning"] == 2.0
    assert np.allclose(ours["local_motion_model"]["rlnMotionModelCoeff"], coeffs)
    assert np.allclose(ours["global_shift"]["rlnMicrographShiftX"], [0, 2, 3, 4])
    ls = ours["local_shift"]
    assert len(ls) == p * f and np.allclose(ls["rlnMicrographShiftX"], 0.5)
    assert list(ls["rlnCoordinateX"][:f]) == [200] * f


@pytest.mark.filterwarnings("ignore:Data array contains NaN")
@pytest.mark.parametrize("backend", ["inprocess", "threads:2"])
def test_nan_frames_are_a_user_error(tmp_path: Path, backend: str):
    """Also in threads: the error of one movie ends the job (exit 2) without waiting on the others."""
    frames = np.ones((3, 32, 32), np.float32)
    with mrcfile.new(tmp_path / "ok.mrcs") as m:
        m.set_data(frames.copy())
        m.voxel_size = 1.0
    frames[1, 4, 5] = np.nan
    with mrcfile.new(tmp_path / "nan.mrcs") as m:
        m.set_data(frames)
        m.voxel_size = 1.0
    (tmp_path / "movies.star").write_text(
        "data_optics\nloop_\n_rlnOpticsGroup\n_rlnOpticsGroupName\n_rlnMicrographOriginalPixelSize\n_rlnVoltage\n"
        "1 opticsGroup1 1.0 300\n\ndata_movies\nloop_\n_rlnMicrographMovieName\n_rlnOpticsGroup\n"
        "nan.mrcs 1\nok.mrcs 1\n")
    r = run("motion", "--in", "movies.star", "--out", "x", "--backend", backend, "--quiet", "--device", "cpu",
            "--no-plots", cwd=tmp_path, ok=False)
    assert r.exit_code == 2 and "nan.mrcs" in r.output and "NaN" in r.output, r.output


@pytest.mark.relion
def test_relion_reads_our_micrographs_star_and_micrographs(aligned: Path):
    p = subprocess.run(["relion_star_handler", "--i", "mc/micrographs.star", "--o", "relion_copy.star"], cwd=aligned,
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    copy = starfile.read(aligned / "relion_copy.star", always_dict=True)
    assert list(copy["micrographs"]["rlnMicrographName"]) == ["mc/Movies/movie_0001.mrc", "mc/Movies/movie_0002.mrc"]
    assert float(copy["optics"]["rlnMicrographPixelSize"][0]) == pytest.approx(1.75)
    p = subprocess.run(["relion_image_handler", "--i", "mc/Movies/movie_0001.mrc", "--stats"], cwd=aligned,
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    with mrcfile.open(aligned / "mc/Movies/movie_0001.mrc") as m:
        mean = float(np.asarray(m.data, dtype=np.float64).mean())
    avg = re.search(r"avg=\s*([-0-9.eE+]+)", p.stdout)
    assert avg and float(avg.group(1)) == pytest.approx(mean, rel=1e-4), p.stdout
    # RELION's own reader of per-movie motion (the Polish input) accepts our STAR: relion_star_printtable
    p = subprocess.run(["relion_star_printtable", "mc/Movies/movie_0001.star", "data_global_shift",
                        "rlnMicrographShiftX", "rlnMicrographShiftY"], cwd=aligned, capture_output=True, text=True)
    assert p.returncode == 0 and len(p.stdout.split()) == 32, p.stdout
    ours = starfile.read(aligned / "mc/Movies/movie_0001.star", always_dict=True)["global_shift"][SHIFT].to_numpy()
    assert np.allclose(np.array(p.stdout.split(), float).reshape(16, 2), ours, atol=1e-5)


def test_binning_halves_the_micrograph_and_keeps_shifts_in_movie_pixels(aligned: Path, tmp_path: Path):
    """--bin 2: micrographs at twice the pixel size; STAR shifts stay in unbinned movie pixels."""
    one = tmp_path / "one.star"
    blocks = starfile.read(aligned / "sim/movies.star", always_dict=True)
    blocks["movies"] = blocks["movies"].iloc[:1]
    starfile.write(blocks, one)
    run("motion", "--in", str(one), "--out", str(tmp_path / "b2"), "--bin", "2", "--dose-per-frame", "4",
        "--no-plots", "--quiet", "--device", "cpu", cwd=aligned)
    mics = starfile.read(tmp_path / "b2/micrographs.star", always_dict=True)
    assert float(mics["optics"]["rlnMicrographPixelSize"][0]) == pytest.approx(3.5)
    assert float(mics["optics"]["rlnMicrographOriginalPixelSize"][0]) == pytest.approx(1.75)
    with mrcfile.open(tmp_path / "b2/Movies/movie_0001.mrc") as m:
        assert m.data.shape == (128, 128) and float(m.voxel_size.x) == pytest.approx(3.5)
    meta = starfile.read(tmp_path / "b2/Movies/movie_0001.star", always_dict=True)
    assert meta["general"]["rlnMicrographBinning"] == 2.0
    e = meta["global_shift"][SHIFT].to_numpy()
    t = starfile.read(aligned / "sim/Movies/movie_0001.star", always_dict=True)["global_shift"][SHIFT].to_numpy()
    assert float(np.sqrt(((e - t) ** 2).sum(1).mean())) < 2.0


def test_default_threads_match_worker_processes_and_restore_torch_threads(aligned: Path, tmp_path: Path):
    """A few movies on the CPU run in threads in this process (backend threads:N): the same files and
    shifts as the worker processes, the torch thread count restored; a rerun skips both movies."""
    import torch

    before = torch.get_num_threads()
    out = tmp_path / "th"
    run("motion", "--in", "sim/movies.star", "--out", str(out), "--dose-per-frame", "4", "--backend", "threads:2",
        "--quiet", "--device", "cpu", cwd=aligned)
    assert torch.get_num_threads() == before
    r = json.loads((out / "job.json").read_text())["results"]
    assert r["backend"] == "threads:2" and r["n_movies"] == 2 and r["n_skipped"] == 0
    for k in (1, 2):
        for suffix in (".mrc", "_noDW.mrc", "_shifts.png", ".json"):
            assert (out / f"Movies/movie_000{k}{suffix}").is_file()
        ours = starfile.read(out / f"Movies/movie_000{k}.star", always_dict=True)["global_shift"][SHIFT].to_numpy()
        procs = starfile.read(aligned / f"mc/Movies/movie_000{k}.star", always_dict=True)["global_shift"]
        assert np.allclose(ours, procs[SHIFT].to_numpy(), atol=1e-3)
        with mrcfile.open(out / f"Movies/movie_000{k}.mrc") as a, \
                mrcfile.open(aligned / f"mc/Movies/movie_000{k}.mrc") as b:
            assert np.allclose(a.data, b.data, rtol=1e-4, atol=1e-3 * float(np.abs(b.data).mean()))
    unfinish(out)
    r = run("motion", "--in", "sim/movies.star", "--out", str(out), "--dose-per-frame", "4", "--quiet",
            "--device", "cpu", cwd=aligned)
    assert "(2 done before)" in r.output
    from cryolens.compute.backends import cpu_count
    if cpu_count() >= 2:  # the default for 2 movies on 2+ cores
        assert json.loads((out / "job.json").read_text())["results"]["backend"] == "threads:2"
    bad = run("motion", "--in", "sim/movies.star", "--out", str(tmp_path / "x"), "--backend", "threads:two",
              "--quiet", "--device", "cpu", cwd=aligned, ok=False)
    assert bad.exit_code == 2 and "threads:" in bad.output and "Traceback" not in bad.output, bad.output

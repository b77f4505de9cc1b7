"""Movie simulator: shot noise, damage filter, motion truth, detector, file formats, RELION.

Small movies (256² × 12 frames) keep the suite fast; the full-size benchmark movie is marked slow.
Sign convention checked throughout: RELION's rlnMicrographShiftX/Y is the shift that
aligns a frame with frame 1, i.e. minus the simulated specimen displacement.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import starfile
import tifffile
import torch
from conftest import invoke_cli, run_cli

from cryolens.io import write_star
from cryolens.core.dose import critical_exposure, damage_filter, damage_weights, frame_exposures
from cryolens.core.motion import PolynomialMotion, relion_patch_centres
from cryolens.simulate.motion import random_drift, random_local_motion
from cryolens.simulate.movie_params import MOVIE_PRESETS, MovieDataSet
from cryolens.simulate.movies import MovieParams, field_shape, make_detector, movie_margin, simulate_movie, storage_dtype

HAVE_RELION_MC = shutil.which("relion_run_motioncorr") is not None


# ------------------------------------------------------------------------------------ helpers


def synthetic_contrast(shape: tuple[int, int], *, seed: int, std: float = 0.05, discs: int = 8) -> torch.Tensor:
    """A band-limited random field (correlation ~3 px) with a few dark soft discs (particles)."""
    g = torch.Generator().manual_seed(seed)
    h, w = shape
    k2 = torch.fft.fftfreq(h)[:, None] ** 2 + torch.fft.rfftfreq(w)[None, :] ** 2
    f = torch.fft.rfft2(torch.randn(h, w, generator=g)) * torch.exp(-k2 / (2 * 0.12 ** 2))
    c = torch.fft.irfft2(f, s=shape)
    c = c / c.std() * std
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    for cx, cy in torch.rand(discs, 2, generator=g).tolist():
        r = torch.sqrt((xx - cx * w) ** 2 + (yy - cy * h) ** 2)
        c -= 0.2 * torch.sigmoid((10.0 - r) / 1.5)
    return c


def make_movie(params: MovieParams, *, size: int = 256, pixel_size: float = 1.5, contrast=None, seed: int = 0,
               **kw):
    det = make_detector(size, size, params)
    hf, wf = field_shape(size, size, movie_margin(params, pixel_size))
    c = synthetic_contrast((hf, wf), seed=seed) if contrast is None else contrast((hf, wf))
    return simulate_movie(c, pixel_size=pixel_size, params=params, detector=det, **kw), det


def quiet_params(**kw) -> MovieParams:
    """No motion, damage, gain or defects unless asked."""
    base = dict(n_frames=12, dose_per_frame=1.0, drift=0.0, local_motion=False, damage=False, frame_blur=False,
                gain=False, hot_pixels=0, dead_pixels=0, seed=1)
    base.update(kw)
    return MovieParams(**base)


def estimate_shift(ref: np.ndarray, img: np.ndarray, *, upsample: int = 100) -> tuple[float, float]:
    """Displacement ``(dx, dy)`` px with ``img(x) ≈ ref(x - d)``: windowed cross-correlation, DFT-upsampled peak."""
    h, w = ref.shape
    win = np.outer(np.hanning(h), np.hanning(w))
    a = np.fft.fft2((ref - ref.mean()) * win)
    b = np.fft.fft2((img - img.mean()) * win)
    cross = np.conj(a) * b
    cc = np.fft.ifft2(cross).real
    py, px = np.unravel_index(np.argmax(cc), cc.shape)
    py, px = (py + h // 2) % h - h // 2, (px + w // 2) % w - w // 2
    u = np.arange(-1.5, 1.5 + 1e-9, 1.0 / upsample)
    ey = np.exp(2j * np.pi * np.outer(py + u, np.fft.fftfreq(h)))
    ex = np.exp(2j * np.pi * np.outer(np.fft.fftfreq(w), px + u))
    fine = (ey @ cross @ ex).real
    iy, ix = np.unravel_index(np.argmax(fine), fine.shape)
    return px + u[ix], py + u[iy]


def read_movie(path: Path) -> np.ndarray:
    with mrcfile.open(path, permissive=False) as m:
        return np.asarray(m.data).astype(np.int64)


# ------------------------------------------------------------------------------- dose model


def test_critical_exposure_and_damage_filter_match_grant_grigorieff():
    k = torch.tensor([0.05, 0.1, 0.25, 0.4], dtype=torch.float64)
    ne300 = 0.245 * k ** -1.665 + 2.81
    assert torch.allclose(critical_exposure(k, 300.0), ne300, rtol=1e-12)
    assert torch.allclose(critical_exposure(k, 200.0), 0.8 * ne300, rtol=1e-12)
    # hand values: k = 0.25 1/Å -> N_e = 0.245 * 0.25^-1.665 + 2.81 = 3.9924...
    assert float(critical_exposure(torch.tensor(0.25, dtype=torch.float64))) == pytest.approx(
        0.245 * 4 ** 1.665 + 2.81, rel=1e-12)
    for n in (1.0, 10.0, 40.0):
        assert torch.allclose(damage_filter(n, k, 300.0), torch.exp(-n / (2 * ne300)), rtol=1e-12)
    assert float(damage_filter(50.0, 0.0)) == 1.0  # DC never fades
    with pytest.raises(ValueError):
        critical_exposure(k, 120.0)
    w = damage_weights(4, 2.0, k, 300.0, pre_exposure=1.0)
    assert w.shape == (4, 4)
    assert torch.allclose(w[2], torch.exp(-(1.0 + 2.5 * 2.0) / (2 * ne300)))  # middle of frame 3
    assert torch.allclose(frame_exposures(3, 2.0, at="end"), torch.tensor([2.0, 4.0, 6.0], dtype=torch.float64))
    wn = damage_weights(4, 2.0, k, normalize=True)
    assert torch.allclose((wn ** 2).sum(0), torch.ones(4, dtype=torch.float64))


def test_frame_spectra_follow_the_damage_filter():
    """Power of a late over an early noise-free frame = D_late² / D_early² per frequency shell."""
    p = quiet_params(damage=True, dose_per_frame=1.5)
    white = lambda shape: 0.02 * torch.randn(shape, generator=torch.Generator().manual_seed(5))  # noqa: E731
    movie, _ = make_movie(p, contrast=white, pixel_size=1.0)
    frames = [f for _, f in movie.frames(noise=False)]
    e = p.dose_per_frame * 1.0 ** 2
    win = np.outer(np.hanning(256), np.hanning(256))  # no leakage from the crop's edges
    spec = [np.abs(np.fft.rfft2((f / e - 1.0) * win)) ** 2 for f in (frames[0], frames[-1])]
    ky, kx = np.fft.fftfreq(256)[:, None], np.fft.rfftfreq(256)[None, :]
    kr = np.sqrt(ky ** 2 + kx ** 2)  # cycles/px = 1/Å here
    n0, n1 = movie.truth.exposures[0], movie.truth.exposures[-1]
    expected = (damage_filter(n1, torch.tensor(kr)) / damage_filter(n0, torch.tensor(kr))).numpy() ** 2
    worst = 0.0
    for lo in np.arange(0.05, 0.45, 0.05):
        sel = (kr >= lo) & (kr < lo + 0.05)
        ratio = spec[1][sel].sum() / spec[0][sel].sum()
        model = (spec[0][sel] * expected[sel]).sum() / spec[0][sel].sum()  # D² varies within a shell
        worst = max(worst, abs(ratio / model - 1))
    assert worst < 0.02, worst


# ------------------------------------------------------------------------------- shot noise


@pytest.mark.parametrize("accelerate", [False, pytest.param(True, marks=pytest.mark.slow)],  # compiling: 17 s
                         ids=["eager", "compiled"])
def test_shot_noise_is_poisson_with_the_set_dose(accelerate):
    from cryolens.simulate import movie_frames as mf
    p = quiet_params(dose_per_frame=0.8)
    movie, _ = make_movie(p, contrast=lambda shape: torch.zeros(shape), accelerate=accelerate)
    x = np.stack([f for _, f in movie.frames(np.uint16)]).astype(np.float64)
    if accelerate and mf.COUNTS_KERNEL.failed:
        pytest.skip("torch.compile is not available here; the eager sampler was used")
    lam = p.dose_per_frame * 1.5 ** 2
    n = x.size
    assert abs(x.mean() - lam) < 4 * math.sqrt(lam / n), (x.mean(), lam)
    dispersion = x.var() / x.mean()
    assert abs(dispersion - 1) < 4 * math.sqrt((1 / lam + 2) / n), dispersion
    # the whole distribution: chi-square against the Poisson pmf
    from scipy.stats import chi2, poisson
    kmax = 8
    obs = np.array([(x == k).sum() for k in range(kmax)] + [(x >= kmax).sum()])
    exp = n * np.r_[poisson.pmf(np.arange(kmax), lam), poisson.sf(kmax - 1, lam)]
    stat = ((obs - exp) ** 2 / exp).sum()
    assert chi2.sf(stat, len(obs) - 1) > 1e-4, (obs, exp.round())
    # frames are independent and equally exposed
    assert np.abs(x.mean(axis=(1, 2)) - lam).max() < 5 * math.sqrt(lam / x[0].size)


@pytest.mark.slow  # 16 s of compiling
def test_compiled_and_eager_frames_agree():
    """The fused (torch.compile) spectrum kernel computes the same frames as the eager one."""
    from cryolens.simulate import movie_frames as mf
    p = quiet_params(drift=8.0, damage=True, frame_blur=True, local_motion=True, local_motion_rms=2.0, n_frames=4)
    eager, _ = make_movie(p, accelerate=False)
    fast, _ = make_movie(p, accelerate=True)
    a = np.stack([f for _, f in eager.frames(noise=False)])
    b = np.stack([f for _, f in fast.frames(noise=False)])
    if mf.FOURIER_KERNEL.failed:
        pytest.skip("torch.compile is not available here")
    assert np.abs(a - b).max() < 1e-4 * np.abs(a).max()


def test_storage_dtype_and_saturation_bound():
    assert storage_dtype(100, "mrc") == np.int8 and storage_dtype(128, "mrc") == np.uint16
    assert storage_dtype(255, "tiff") == np.uint8 and storage_dtype(256, "tiff") == np.uint16
    p = quiet_params(dose_per_frame=3.0, hot_pixels=4)
    movie, _ = make_movie(p)
    x = np.stack([f for _, f in movie.frames(np.uint16)])
    assert x.max() <= movie.truth.max_count and sum(movie.saturated) == 0


# ------------------------------------------------------------------------------------ motion


def test_trajectory_shape_and_relion_model_conventions():
    g = torch.Generator().manual_seed(3)
    d = random_drift(40, 20.0, generator=g)
    disp = d.frame_displacements(40)
    assert torch.allclose(disp[0], torch.zeros(2, dtype=torch.float64))
    assert float(torch.linalg.vector_norm(disp[-1])) == pytest.approx(20.0, rel=1e-9)
    assert float(torch.linalg.vector_norm(disp, dim=1).max()) < 1.25 * 20.0
    speed = torch.linalg.vector_norm(d.frame_travel(40), dim=1)
    assert float(speed[:3].mean()) > 2 * float(speed[-10:].mean())  # fast initial phase
    m = random_local_motion(24, 2.0, generator=g)
    sx, sy = m.shift_at(0, torch.rand(5), torch.rand(5))
    assert float(sx.abs().max()) == 0 and float(sy.abs().max()) == 0  # zero at the first frame
    u = torch.linspace(-0.5, 0.5, 33, dtype=torch.float64)
    sx, sy = m.shift_at(23, u[None, :], u[:, None])
    assert float(torch.sqrt((sx ** 2 + sy ** 2).mean())) == pytest.approx(2.0, rel=1e-6)
    assert abs(float(sx.mean())) < 0.05 and abs(float(sy.mean())) < 0.05  # no net (global) motion
    assert PolynomialMotion.from_coefficients(m.coefficients) == m
    assert relion_patch_centres(3710, 5) == [370, 1112, 1854, 2596, 3338]  # as in a RELION 5 MotionCorr STAR
    assert relion_patch_centres(3838, 5) == [382, 1149, 1916, 2683, 3450]


def test_global_shifts_in_the_truth_star_are_recovered(tmp_path):
    """Cross-correlating noise-free frames with frame 1 gives -rlnMicrographShiftX/Y within 0.1 px."""
    p = quiet_params(drift=9.0, damage=True, frame_blur=True, dose_per_frame=2.0, seed=4)
    movie, det = make_movie(p, pixel_size=1.5)
    from cryolens.jobs.simulate_movies import movie_truth_blocks
    star = tmp_path / "movie.star"
    write_star(star, movie_truth_blocks(movie.truth, movie_name="movie.mrcs", gain_name=None, defect_name=None,
                                        binning=1, hot_pixels=det.hot_pixels))
    table = starfile.read(star, always_dict=True)["global_shift"]
    shifts = table[["rlnMicrographShiftX", "rlnMicrographShiftY"]].to_numpy()
    assert np.all(shifts[0] == 0) and np.abs(shifts).max() > 3.0
    frames = [f for _, f in movie.frames(noise=False)]
    est = np.array([estimate_shift(frames[0], f) for f in frames])
    err = np.abs(-est - shifts).max()
    assert err < 0.1, (err, np.c_[-est, shifts])


def test_local_motion_moves_patches_as_the_model_says():
    """Noise-free, no global drift: a patch of the last frame is displaced by minus RELION's local correction."""
    p = quiet_params(local_motion=True, local_motion_rms=4.0, dose_per_frame=2.0, seed=7)
    movie, _ = make_movie(p, size=384, pixel_size=1.0)
    t = movie.truth
    frames = [f for _, f in movie.frames(noise=False)]
    worst, moved = 0.0, 0.0
    for cy in (96, 288):
        for cx in (96, 288):
            sl = np.s_[cy - 48:cy + 48, cx - 48:cx + 48]
            dx, dy = estimate_shift(frames[0][sl], frames[-1][sl])
            sx, sy = t.local_model.shift_at_pixels(t.n_frames - 1, cx - 0.5, cy - 0.5, width=384, height=384)
            worst = max(worst, math.hypot(dx + float(sx), dy + float(sy)))
            moved = max(moved, math.hypot(float(sx), float(sy)))
    assert moved > 1.5 and worst < 0.15, (moved, worst)
    table = t.local_shift_table()
    assert len(table) == 25 * t.n_frames and (table.query("rlnMicrographFrameNumber == 1")
                                              [["rlnMicrographShiftX", "rlnMicrographShiftY"]] == 0).all().all()


# ---------------------------------------------------------------------------------- detector


def test_gain_reference_flattens_the_raw_frames():
    p = quiet_params(gain=True, gain_variation=0.1, gain_pixel_variation=0.05, dose_per_frame=8.0, hot_pixels=5,
                     dead_pixels=5)
    movie, det = make_movie(p, contrast=lambda shape: torch.zeros(shape))
    raw = np.stack([f for _, f in movie.frames(np.uint16)]).astype(np.float64).sum(0)
    gain = det.gain_reference.numpy().astype(np.float64)
    good = np.ones(raw.shape, bool)
    for x, y in np.concatenate([det.hot_pixels, det.dead_pixels]):
        good[y, x] = False
    assert np.all(gain[det.dead_pixels[:, 1], det.dead_pixels[:, 0]] == 0)  # RELION: gain 0 = defect
    expected = p.n_frames * p.dose_per_frame * 1.5 ** 2
    corrected = raw * gain
    sens = det.sensitivity.numpy()
    assert np.corrcoef(raw[good], sens[good])[0, 1] > 0.8  # raw frames carry the gain pattern
    assert abs(np.corrcoef(corrected[good], sens[good])[0, 1]) < 0.02  # corrected = raw × gain is flat
    z = (corrected[good] - expected) / np.sqrt(gain[good] * expected)  # Poisson scaled by the gain
    assert abs(z.mean()) < 0.02 and abs(z.var() - 1) < 0.03, (z.mean(), z.var())


# ------------------------------------------------------------------------- job, files, RELION


@pytest.fixture(scope="module")
def movie_job(tmp_path_factory) -> Path:
    """The same small data set as MRC and TIFF (2 movies of 256² × 12 frames, hot/dead pixels, gain)."""
    work = tmp_path_factory.mktemp("movies")
    common = ["simulate", "movies", "--n-movies", "2", "--frames", "12", "--size", "256", "256",
              "--particles-per-movie", "4", "--hot-pixels", "6", "--dead-pixels", "3", "--gain", "--seed", "3",
              "--quiet"]
    run_cli(*common, "--out", "sim", cwd=work)
    run_cli(*common, "--format", "tiff", "--out", "sim_tif", cwd=work)
    return work


def test_job_outputs_and_star_files(movie_job: Path):
    sim = movie_job / "sim"
    for name in ("movies.star", "gain.mrc", "defects.txt", "detector.star", "micrographs_truth.star",
                 "particles_truth.star", "truth_map.mrc", "drift.png", "report.html", "job.json",
                 "CRYOLENS_JOB_EXIT_SUCCESS", "Movies/movie_0001.mrcs", "Movies/movie_0001.star",
                 "Movies/movie_0002_truth.star"):
        assert (sim / name).is_file(), name
    job = json.loads((sim / "job.json").read_text())
    assert job["status"] == "finished" and job["seed"] == 3 and job["results"]["n_movies"] == 2
    assert "drift.png" in (sim / "report.html").read_text()
    mv = starfile.read(sim / "movies.star", always_dict=True)
    assert list(mv["optics"].columns) == ["rlnOpticsGroup", "rlnOpticsGroupName", "rlnMicrographOriginalPixelSize",
                                          "rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast"]
    assert list(mv["movies"]["rlnMicrographMovieName"]) == ["sim/Movies/movie_0001.mrcs", "sim/Movies/movie_0002.mrcs"]
    assert (movie_job / mv["movies"]["rlnMicrographMetadata"][0]).is_file()
    meta = starfile.read(sim / "Movies/movie_0001.star", always_dict=True)
    assert list(meta) == ["general", "global_shift", "local_motion_model", "hot_pixels", "local_shift"]
    g = meta["general"]
    assert (g["rlnImageSizeX"], g["rlnImageSizeY"], g["rlnImageSizeZ"]) == (256, 256, 12)
    assert g["rlnMicrographOriginalPixelSize"] == 1.75 and g["rlnMicrographDoseRate"] == 1.25
    assert g["rlnMotionModelVersion"] == 1 and g["rlnMicrographGainName"] == "sim/gain.mrc"
    assert len(meta["local_motion_model"]) == 36 and len(meta["local_shift"]) == 25 * 12
    gs = meta["global_shift"]
    assert list(gs["rlnMicrographFrameNumber"]) == list(range(1, 13)) and gs.iloc[0, 1:].abs().sum() == 0
    parts = starfile.read(sim / "particles_truth.star", always_dict=True)["particles"]
    assert set(parts["rlnMicrographMovieName"]) <= set(mv["movies"]["rlnMicrographMovieName"])
    assert parts["rlnCoordinateX"].between(0, 256).all() and parts["rlnCoordinateY"].between(0, 256).all()


def test_hot_and_dead_pixels_are_where_the_star_lists_them(movie_job: Path):
    sim = movie_job / "sim"
    frames = read_movie(sim / "Movies/movie_0001.mrcs")
    hot = starfile.read(sim / "Movies/movie_0001.star", always_dict=True)["hot_pixels"]
    det = starfile.read(sim / "detector.star", always_dict=True)
    hx, hy = hot["rlnCoordinateX"].astype(int).to_numpy(), hot["rlnCoordinateY"].astype(int).to_numpy()
    assert len(hx) == 6 and np.array_equal(hx, det["hot_pixels"]["rlnCoordinateX"].astype(int))
    total = frames.sum(0)
    brightest = set(zip(*np.unravel_index(np.argsort(total.ravel())[-6:], total.shape)))
    assert brightest == set(zip(hy, hx))
    dx = det["dead_pixels"]["rlnCoordinateX"].astype(int).to_numpy()
    dy = det["dead_pixels"]["rlnCoordinateY"].astype(int).to_numpy()
    assert len(dx) == 3 and np.all(frames[:, dy, dx] == 0)
    defects = np.loadtxt(sim / "defects.txt", dtype=int).reshape(-1, 4)
    assert {(x, y) for x, y, _, _ in defects} == set(zip(dx, dy)) | set(zip(hx, hy))


def test_tiff_reads_back_identical_to_the_mrc(movie_job: Path):
    for k in (1, 2):
        mrc = read_movie(movie_job / f"sim/Movies/movie_000{k}.mrcs")
        tif = tifffile.imread(movie_job / f"sim_tif/Movies/movie_000{k}.tif")
        assert tif.dtype in (np.uint8, np.uint16) and tif.shape == mrc.shape
        # stored flipped in y, as RELION / MotionCor2 / IMOD read TIFFs
        assert np.array_equal(tif[:, ::-1, :].astype(np.int64), mrc)
    with tifffile.TiffFile(movie_job / "sim_tif/Movies/movie_0001.tif") as t:
        assert len(t.pages) == 12 and t.pages[0].compression == tifffile.COMPRESSION.LZW


@pytest.mark.slow  # 15 s: the map at the super-resolution pixel
def test_super_resolution_movies(tmp_path):
    """Frames twice as large at half the pixel; shifts in movie pixels; particle truth in output pixels."""
    run_cli("simulate", "movies", "--n-movies", "1", "--frames", "6", "--size", "128", "160",
            "--particles-per-movie", "2", "--super-resolution", "--drift", "7", "--no-local-motion", "--seed", "2",
            "--quiet", "--out", "sr", cwd=tmp_path)
    sr = tmp_path / "sr"
    with mrcfile.open(sr / "Movies/movie_0001.mrcs") as m:
        assert m.data.shape == (6, 320, 256) and float(m.voxel_size.x) == pytest.approx(0.875)
    meta = starfile.read(sr / "Movies/movie_0001.star", always_dict=True)
    g = meta["general"]
    assert (g["rlnImageSizeX"], g["rlnImageSizeY"], g["rlnMicrographBinning"]) == (256, 320, 2.0)
    assert g["rlnMicrographOriginalPixelSize"] == 0.875 and g["rlnMotionModelVersion"] == 0
    last = meta["global_shift"][["rlnMicrographShiftX", "rlnMicrographShiftY"]].to_numpy()[-1]
    assert float(np.hypot(*last)) * 0.875 == pytest.approx(7.0, rel=1e-6)  # end-to-end drift in Å
    optics = starfile.read(sr / "movies.star", always_dict=True)["optics"]
    assert float(optics["rlnMicrographOriginalPixelSize"][0]) == 0.875
    mics = starfile.read(sr / "micrographs_truth.star", always_dict=True)
    assert float(mics["optics"]["rlnMicrographPixelSize"][0]) == 1.75
    parts = starfile.read(sr / "particles_truth.star", always_dict=True)["particles"]
    assert parts["rlnCoordinateX"].between(0, 128).all() and parts["rlnCoordinateY"].between(0, 160).all()
    with mrcfile.open(sr / "truth_map.mrc") as m:
        assert float(m.voxel_size.x) == pytest.approx(1.75)


@pytest.mark.relion
def test_relion_reads_the_movies_and_movies_star(movie_job: Path):
    mrc = read_movie(movie_job / "sim/Movies/movie_0001.mrcs")
    for name in ("sim/Movies/movie_0001.mrcs", "sim_tif/Movies/movie_0001.tif"):
        out = movie_job / (Path(name).stem + "_avg.mrc")
        p = subprocess.run(["relion_image_handler", "--i", name, "--o", str(out), "--average"], cwd=movie_job,
                           capture_output=True, text=True)
        assert p.returncode == 0 and out.is_file(), p.stderr
        with mrcfile.open(out) as m:
            assert np.allclose(m.data, mrc.mean(0), atol=1e-4), name
    p = subprocess.run(["relion_star_handler", "--i", "sim/movies.star", "--o", "copy.star"], cwd=movie_job,
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    copy = starfile.read(movie_job / "copy.star", always_dict=True)
    assert list(copy["movies"]["rlnMicrographMetadata"]) == ["sim/Movies/movie_0001.star", "sim/Movies/movie_0002.star"]
    assert float(copy["optics"]["rlnMicrographOriginalPixelSize"][0]) == 1.75


@pytest.mark.relion
def test_relion_reads_int8_mrc_and_uint8_tiff_movies(tmp_path):
    """Low-dose counts are written as int8 (mode 0) MRC and uint8 TIFF; RELION reads both as the same frames."""
    from cryolens.io.movie_writer import MovieWriter
    movie, _ = make_movie(quiet_params(dose_per_frame=1.0, drift=5.0))
    frames = np.stack([f for _, f in movie.frames(np.uint8)])
    assert frames.max() <= 127
    for name, dtype in (("m.mrcs", np.int8), ("m.tif", np.uint8)):
        with MovieWriter(tmp_path / name, n_frames=len(frames), shape=frames.shape[1:], dtype=dtype,
                         pixel_size=1.5) as w:
            for f in frames:
                w.write(f)
        p = subprocess.run(["relion_image_handler", "--i", name, "--o", "avg.mrc", "--average"], cwd=tmp_path,
                           capture_output=True, text=True)
        assert p.returncode == 0, p.stderr
        with mrcfile.open(tmp_path / "avg.mrc") as m:
            assert np.allclose(m.data, frames.mean(0), atol=1e-4), name
    with mrcfile.open(tmp_path / "m.mrcs") as m:
        assert int(m.header.mode) == 0 and float(m.voxel_size.x) == pytest.approx(1.5)


@pytest.mark.relion
@pytest.mark.skipif(not HAVE_RELION_MC, reason="relion_run_motioncorr not on PATH")
def test_relion_motioncorr_recovers_the_true_shifts(tmp_path):
    """RELION's own motion correction (with our gain and defect files) finds the shifts of the truth STAR,
    with the same sign."""
    run_cli("simulate", "movies", "--n-movies", "1", "--frames", "16", "--size", "512", "512",
            "--dose-per-frame", "3", "--drift", "12", "--no-local-motion", "--hot-pixels", "4", "--seed", "5",
            "--quiet", "--out", "sim", cwd=tmp_path)
    p = subprocess.run(["relion_run_motioncorr", "--i", "sim/movies.star", "--o", "MC/", "--use_own", "--j", "2",
                        "--gainref", "sim/gain.mrc", "--defect_file", "sim/defects.txt", "--bfactor", "150",
                        "--patch_x", "1", "--patch_y", "1"], cwd=tmp_path, capture_output=True, text=True)
    est = starfile.read(tmp_path / "MC/sim/Movies/movie_0001.star", always_dict=True)["global_shift"]
    true = starfile.read(tmp_path / "sim/Movies/movie_0001.star", always_dict=True)["global_shift"]
    cols = ["rlnMicrographShiftX", "rlnMicrographShiftY"]
    t, e = true[cols].to_numpy(), est[cols].to_numpy()
    rms = float(np.sqrt(((e - t) ** 2).sum(1).mean()))
    slope = float((e * t).sum() / (t * t).sum())
    # RELION stops iterating once its update is below 0.5 px RMSD, so expect errors of that order;
    # the opposite sign convention would give errors of twice the shifts (up to ~14 px here)
    assert np.abs(t).max() > 4 and rms < 1.0 and 0.8 < slope < 1.2, (p.stdout[-300:], rms, slope, e - t)


# ----------------------------------------------------------------------------------------- CLI


@pytest.mark.parametrize("args, fragment", [
    (["--preset", "huge"], "--preset huge: unknown preset"),
    (["--format", "eer"], "--format eer: must be one of mrc, tiff"),
    (["--frames", "0"], "--frames 0: must be ≥ 1"),
    (["--dose-per-frame", "-1"], "--dose-per-frame -1: must be > 0 e⁻/Å²"),
    (["--voltage", "120"], "--voltage 120: the radiation-damage model knows 100, 200 and 300 kV"),
    (["--voltage", "0", "--no-damage"], "--voltage 0: must be > 0 kV"),
    (["--size", "10", "10"], "--size 10: must be ≥ 64 px"),
    (["--pixel-size", "0"], "--pixel-size 0: must be > 0 Å"),
    (["--n-movies", "0"], "--n-movies 0: must be ≥ 1"),
    (["--particles-per-movie", "-2"], "--particles-per-movie -2: must be ≥ 0"),
    (["--drift", "nan"], "--drift nan: must be a number, not NaN"),
    (["--gain-variation", "0.7"], "--gain-variation 0.7"),
    (["--defocus", "9000", "8000"], "--defocus 9000 8000"),
])
def test_cli_bad_input_exits_2_with_one_sentence(tmp_path, args, fragment):
    """An impossible value: exit 2, one sentence naming the flag and the value, no job folder."""
    r = invoke_cli("simulate", "movies", "--out", "x", "--quiet", *args, cwd=tmp_path, code=2)
    assert "Traceback" not in r.stderr and fragment in r.stderr, r.stderr
    assert r.stderr.strip().count("\n") <= 1, r.stderr
    assert not (tmp_path / "x").exists()


def test_presets_match_the_issue():
    t, b = MOVIE_PRESETS["tutorial"], MOVIE_PRESETS["benchmark"]
    assert t["n_movies"] == 20 and (t["width"], t["height"]) == (1024, 1024)
    assert t["pixel_size"] == 1.75 and 24 <= t["n_frames"] <= 40
    assert (b["width"], b["height"], b["n_frames"]) == (3710, 3838, 40)
    assert b["pixel_size"] == 1.232 and b["voltage"] == 300
    assert 40 <= b["n_frames"] * b["dose_per_frame"] <= 50
    for preset in MOVIE_PRESETS.values():
        MovieDataSet(**preset).validate()
    assert MovieDataSet() == MovieDataSet(**t), "the defaults are the tutorial's"


def test_cli_preset_fills_what_is_not_given(tmp_path, monkeypatch):
    """--preset benchmark with explicit options: those win, the preset fills the rest (movie and specimen
    alike); options that had no flag before (--hot-pixel-factor, --no-frame-blur, --ice-thickness) are settable."""
    import cryolens.jobs.simulate_movies as job_module
    from cryolens.errors import InputError

    args = ["simulate", "movies", "--preset", "benchmark", "--n-movies", "1", "--frames", "3", "--size", "128", "96",
            "--pixel-size", "4", "--box", "24", "--particles-per-movie", "2", "--hot-pixels", "5",
            "--hot-pixel-factor", "7", "--no-frame-blur", "--ice-thickness", "450", "--quiet"]
    seen = []

    def capture(out, params, micrograph_params, **kw):
        seen.append((params, micrograph_params, kw))
        raise InputError("stop")

    with monkeypatch.context() as m:  # first only the params the command builds (a wrong build must not run)
        m.setattr(job_module, "run_simulate_movies", capture)
        invoke_cli(*args, "--out", "a", cwd=tmp_path, code=2)
    movie, specimen, kw = seen[0]
    assert (kw["n_movies"], movie.n_frames, specimen.width) == (1, 3, 128), "explicit options must win over the preset"
    invoke_cli(*args, "--format", "tiff", "--out", "b", cwd=tmp_path, code=0)
    job = json.loads((tmp_path / "b/job.json").read_text())
    movie, specimen, bench = job["params"]["movie"], job["params"]["micrograph"], MOVIE_PRESETS["benchmark"]
    assert (job["params"]["n_movies"], job["params"]["format"]) == (1, "tiff")
    assert (movie["n_frames"], movie["hot_pixels"], movie["hot_pixel_factor"], movie["frame_blur"]) == (3, 5, 7.0, False)
    assert (movie["dose_per_frame"], movie["drift"], movie["dead_pixels"]) == (bench["dose_per_frame"], bench["drift"],
                                                                               bench["dead_pixels"])
    assert (specimen["width"], specimen["height"], specimen["particles_per_micrograph"]) == (128, 96, 2)
    assert (specimen["pixel_size"], specimen["box"], specimen["structures"]) == (4.0, 24, ["phantom"])
    assert (specimen["defocus_max"], specimen["contaminants"], specimen["bfactor"]) == (bench["defocus_max"],
                                                                                        bench["contaminants"], 20.0)
    assert specimen["ice_thickness"] == 450.0
    assert job["results"]["hot_pixels"] == 5 and (tmp_path / "b/Movies/movie_0001.tif").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["mrc", "tiff"])
def test_benchmark_preset_writes_one_full_size_movie(tmp_path, fmt):
    """One benchmark movie (3710x3838x40) in each format; its speed is measured by
    ``benchmarks/motion.py --preset-movie`` (target: 20 s on 2 CPU cores)."""
    run_cli("simulate", "movies", "--preset", "benchmark", "--n-movies", "1", "--format", fmt, "--device", "cpu",
            "--quiet", "--out", "bench", cwd=tmp_path)
    assert json.loads((tmp_path / "bench/job.json").read_text())["status"] == "finished"
    if fmt == "mrc":
        with mrcfile.open(tmp_path / "bench/Movies/movie_0001.mrcs", header_only=True) as m:
            shape = (int(m.header.nz), int(m.header.ny), int(m.header.nx))
    else:
        with tifffile.TiffFile(tmp_path / "bench/Movies/movie_0001.tif") as t:
            shape = (len(t.pages), *t.pages[0].shape)
    assert shape == (40, 3838, 3710)

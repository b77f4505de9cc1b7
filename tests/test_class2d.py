"""2D classification (``cryolens class2d``): kernels, classes against ground truth, RELION-style outputs, bad input.

The fast case: 300 particles (box 32, 8 Å/px, CTF, SNR 0.1) of three distinct views of a blob
model at random in-plane angles and shifts; four classes must separate the views and their
averages must match the truth's projections; the same run, stopped inside iteration 5 and
continued with ``--continue``, must end with the same files bitwise. The slow case runs the
simulator's ribosome set (1 000 particles, box 64, SNR 0.05) with K 20 and 10 iterations, as
the benchmark does.
"""

from __future__ import annotations

import json
import math
import subprocess

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import assert_user_error, invoke_cli, run_cli
from cryolens.class2d import BandRotator, Class2DParams, class_truth_ncc
from cryolens.class2d.evaluate import aligned_ncc
from cryolens.class2d.maximisation import resolution_shell
from cryolens.class2d.rotation import inplane_matrices
from cryolens.core.ctf import CTFParams, ctf_2d
from cryolens.core.fourier import ft2, ift2
from cryolens.core.projector import prepare_volume, project
from cryolens.core.rotations import euler_to_matrix
from cryolens.io import read_mrc, read_particles, read_star, write_mrc, write_particles
from cryolens.refine.pose_search import FrequencyBand
from helpers import centred_coords, gaussian_blobs

BOX, APIX = 32, 8.0
VIEWS = [(0.0, 0.0), (0.0, 90.0), (90.0, 90.0)]  # (rot, tilt) in degrees


def blob_model(n: int = BOX) -> torch.Tensor:
    """An asymmetric arrangement of Gaussian blobs (distinct projections along x, y and z)."""
    centres = [(0, 0, 0), (6, 0, 0), (-3, 5, 0), (0, -4, 5), (2, 2, -6)]
    return gaussian_blobs(n, centres, [2.5, 2.0, 2.0, 1.8, 1.5], [1.0, 0.8, 0.9, 0.7, 0.6])


def make_views(folder, *, n: int = 300, snr: float = 0.1, seed: int = 0, box: int = BOX, apix: float = APIX):
    """Write ``folder/particles.mrcs|star``: ``n`` images of the three views (random psi, shifts ±1 px, CTF, noise)."""
    rng = np.random.default_rng(seed)
    vol = blob_model(box)
    view = rng.integers(0, len(VIEWS), n)
    rot = np.array([VIEWS[v][0] for v in view])
    tilt = np.array([VIEWS[v][1] for v in view])
    psi = rng.uniform(-180, 180, n)
    origin = rng.uniform(-1, 1, (n, 2))
    du = rng.uniform(8000, 20000, n)
    mats = euler_to_matrix(torch.as_tensor(rot), torch.as_tensor(tilt), torch.as_tensor(psi)).float()
    f = project(prepare_volume(vol), mats, torch.as_tensor(origin, dtype=torch.float32))
    ctf = ctf_2d(CTFParams(defocus_u=torch.as_tensor(du, dtype=torch.float32),
                           defocus_v=torch.as_tensor(du - 200, dtype=torch.float32),
                           defocus_angle=torch.as_tensor(rng.uniform(0, 180, n), dtype=torch.float32)),
                 box=box, pixel_size=apix)
    clean = ift2(f * ctf, box)
    sigma = float(clean.std()) / math.sqrt(snr)
    images = (clean + sigma * torch.as_tensor(rng.standard_normal(clean.shape), dtype=torch.float32)).numpy()
    folder.mkdir(parents=True, exist_ok=True)
    write_mrc(folder / "particles.mrcs", images.astype(np.float32), apix, is_stack=True)
    optics = pd.DataFrame({"rlnOpticsGroup": [1], "rlnOpticsGroupName": ["opticsGroup1"], "rlnVoltage": [300.0],
                           "rlnSphericalAberration": [2.7], "rlnAmplitudeContrast": [0.1],
                           "rlnImagePixelSize": [apix], "rlnImageSize": [box], "rlnImageDimensionality": [2]})
    parts = pd.DataFrame({"rlnImageName": [f"{i + 1:06d}@{folder / 'particles.mrcs'}" for i in range(n)],
                          "rlnAngleRot": rot, "rlnAngleTilt": tilt, "rlnAnglePsi": psi,
                          "rlnOriginXAngst": origin[:, 0] * apix, "rlnOriginYAngst": origin[:, 1] * apix,
                          "rlnDefocusU": du, "rlnDefocusV": du - 200, "rlnDefocusAngle": 0.0, "rlnOpticsGroup": 1})
    write_particles(folder / "particles.star", optics, parts)
    return folder / "particles.star", view, vol


@pytest.fixture(scope="module")
def classified(tmp_path_factory):
    """The fast case run once through the command: (input STAR, true views, model, output folder)."""
    root = tmp_path_factory.mktemp("class2d")
    star, view, vol = make_views(root / "sim")
    out = root / "c2d"
    invoke_cli("class2d", "--in", star, "--out", out, "--classes", "4", "--iter", "10", "--particle-diameter", "200",
               "--res-start", "30", "--res-end", "16", "--device", "cpu", "--quiet")
    return star, view, vol, out


class _Stop(Exception):
    pass


def test_interrupted_class2d_continues_to_the_uninterrupted_result(classified, tmp_path):
    """Stopped inside iteration 5 (states of 3 and 4 kept), `--continue` ends with the fixture's result, bitwise."""
    from cryolens.jobs.checkpoint import finished_iterations
    from cryolens.jobs.class2d import run_class2d

    star, _, _, whole = classified
    folder = tmp_path / "stopped"
    params = Class2DParams(classes=4, iterations=10, particle_diameter=200.0, res_start=30.0, res_end=16.0)

    def stop(it, done, total, res):
        if it == 5:
            raise _Stop

    with pytest.raises(_Stop):
        run_class2d(star, folder, params, progress=stop)
    assert finished_iterations(folder) == [3, 4] and not (folder / "classes.mrcs").exists()
    assert_user_error(invoke_cli("class2d", "--continue", folder, "--classes", "5", code=None),
                      "--classes 5", "started with 4")
    invoke_cli("class2d", "--continue", folder, "--quiet")
    assert np.array_equal(read_mrc(whole / "classes.mrcs")[0], read_mrc(folder / "classes.mrcs")[0])
    _, pa = read_particles(whole / "particles.star")
    _, pb = read_particles(folder / "particles.star")
    num = [c for c in pa.columns if c != "rlnImageName"]
    assert np.array_equal(pa[num].to_numpy(float), pb[num].to_numpy(float))
    ia, ib = (read_star(f / "iterations.star")["iterations"].drop(columns="rlnCryolensSeconds")
              for f in (whole, folder))
    assert ia.equals(ib) and len(ia) == 10
    assert json.loads((folder / "job.json").read_text())["status"] == "finished"
    assert "continuing from iteration 4" in (folder / "run.log").read_text()
    assert finished_iterations(folder) == finished_iterations(whole) == [8, 9]
    assert (folder / "run_it009_classes.mrcs").is_file() and (folder / "run_it009_data.star").is_file()
    assert "already finished" in " ".join(invoke_cli("class2d", "--continue", folder).output.split())
    assert_user_error(invoke_cli("class2d", "--continue", tmp_path / "nothing", code=None), "no job.json")
    assert_user_error(invoke_cli("class2d", "--out", tmp_path / "o", code=None), "--in is required")
    early = tmp_path / "early"
    early.mkdir()
    (early / "job.json").write_text(json.dumps({"stage": "class2d", "status": "running", "params": {},
                                                "inputs": {"particles": str(star)}}))
    assert_user_error(invoke_cli("class2d", "--continue", early, code=None), "before its first iteration finished")


def test_band_rotator_matches_an_analytic_rotation():
    """Rotating a band-limited image by F(R q) equals the analytically rotated image's transform (1-2 %)."""
    n = 64
    y, x = centred_coords(n, ndim=2)

    def image(xx, yy):
        return (torch.exp(-((xx - 8.0) ** 2 + (yy - 3.0) ** 2) / 18.0)
                + 0.5 * torch.exp(-((xx + 5) ** 2 + (yy + 9) ** 2) / 8.0))

    band = FrequencyBand.build(n, 14.0)
    rot = BandRotator(band)
    angles = torch.tensor([0.0, 30.0, 90.0, 217.0])
    out = rot.rotate(band.gather(ft2(image(x, y)[None])), inplane_matrices(angles)[None])[0]
    for a, got in zip(angles, out):
        r = inplane_matrices(a)
        xs, ys = r[0, 0] * x + r[0, 1] * y, r[1, 0] * x + r[1, 1] * y  # the image at R r
        want = band.gather(ft2(image(xs, ys)[None]))[0]
        assert float((got - want).abs().norm() / want.abs().norm()) < 0.03, float(a)


def test_aligned_ncc_finds_rotation_and_shift():
    n = 48
    y, x = centred_coords(n, ndim=2)
    img = torch.exp(-((x - 6.0) ** 2 + (y - 2.0) ** 2) / 10.0) + 0.6 * torch.exp(-((x + 4) ** 2 + (y + 7) ** 2) / 6.0)
    band = FrequencyBand.build(n, n / 2)
    turned = BandRotator(band).rotate(band.gather(ft2(img[None])), inplane_matrices(torch.tensor([[40.0]])))[:, 0]
    grid = torch.zeros(1, n * (n // 2 + 1), dtype=torch.complex64)
    grid[:, band.flat] = turned
    moved = torch.roll(ift2(grid.reshape(1, n, n // 2 + 1), n), shifts=(2, -1), dims=(-2, -1))
    ncc = aligned_ncc(img, torch.cat([moved, torch.randn(1, n, n)]), psi_step=2.0, max_shift=3)
    assert ncc[0] > 0.98 and ncc[1] < 0.3


def test_class2d_separates_views_and_matches_truth(classified):
    """Every view is the majority of a sizeable class, and those classes match their members' true projections
    (purity is checked over data seeds in :func:`test_class2d_view_purity_over_data_seeds`)."""
    star, view, vol, out = classified
    _, parts = read_particles(out / "particles.star")
    cls = parts["rlnClassNumber"].to_numpy()
    assert set(cls) <= {1, 2, 3, 4, 5}  # class 5: the empty class
    confusion = np.zeros((6, len(VIEWS)), dtype=int)  # class x view
    np.add.at(confusion, (cls, view), 1)
    majority = confusion.argmax(axis=1)
    big = confusion.sum(axis=1) >= 0.05 * len(cls)
    assert set(majority[big]) == set(range(len(VIEWS))), confusion
    majority = set(np.flatnonzero(big))
    classes, apix = read_mrc(out / "classes.mrcs")
    classes = np.array(classes)
    assert classes.shape == (5, BOX, BOX) and abs(apix - APIX) < 1e-3 and not classes[4].any()
    members = [np.array([VIEWS[v] for v in view[cls == c + 1]]).reshape(-1, 2) for c in range(4)]
    ncc = class_truth_ncc(classes[:4], vol.numpy(), members, pixel_size=APIX, resolution=20.0, diameter=200.0)
    for c in majority:
        assert ncc[c - 1] >= 0.9, ncc


def test_class2d_view_purity_over_data_seeds(tmp_path):
    """Three views, 300 particles, K 4, SNR 0.1, data seeds 0-7: particles outside their class's majority view
    (mean over the seeds) and the least pure sizeable class. One run is one draw of a chaotic process (data seed 0's
    least pure class read 0.62-0.84 across the variants measured), so the bars are on the mean. Measured 2026-12-05 over
    data seeds 0-15 (command-line runs, as the fixture): 7.3 % misassigned (at most 11.7 %), least pure class 0.81
    (0.77 on seeds 0-7); before the empty class and the power match 7.1 % and 0.82 (0.74). ML with the true
    projections as references misassigns 2-4 of the 300."""
    from cryolens.class2d import classify_2d
    from cryolens.jobs.particles import open_particles
    params = Class2DParams(classes=4, iterations=10, particle_diameter=200.0, res_start=30.0, res_end=16.0)
    wrong, least = [], []
    for seed in range(8):
        star, view, _ = make_views(tmp_path / f"d{seed}", seed=seed)
        parts = open_particles(star, pose=False)
        res = classify_2d(lambda: parts.batches(128), parts.table(), pixel_size=APIX, box=BOX, params=params)
        confusion = np.zeros((params.model_classes(), len(VIEWS)), dtype=int)
        np.add.at(confusion, (res.particle_class, view), 1)
        wrong.append(1 - confusion.max(axis=1).sum() / len(view))
        big = confusion.sum(axis=1) >= 0.05 * len(view)
        least.append(min(confusion[c].max() / confusion[c].sum() for c in np.flatnonzero(big)))
    assert np.mean(wrong) <= 0.09 and max(wrong) <= 0.15, wrong
    assert np.mean(least) >= 0.7, least


def test_class2d_outputs_are_relion_style(classified):
    star, view, vol, out = classified
    optics, table = read_particles(out / "classes.star")
    assert list(table["rlnClassNumber"]) == [1, 2, 3, 4, 5]  # 5: the empty class
    for col in ("rlnReferenceImage", "rlnImageName", "rlnClassDistribution", "rlnEstimatedResolution",
                "rlnAccuracyRotations", "rlnAccuracyTranslationsAngst"):
        assert col in table.columns, col
    assert table["rlnReferenceImage"].iloc[1].startswith("000002@") and table["rlnReferenceImage"].iloc[1].endswith(
        "classes.mrcs")
    assert abs(table["rlnClassDistribution"].sum() - 1) < 1e-3
    assert (table["rlnEstimatedResolution"] > 0).all()
    _, parts = read_particles(out / "particles.star")
    for col in ("rlnClassNumber", "rlnAnglePsi", "rlnOriginXAngst", "rlnOriginYAngst", "rlnMaxValueProbDistribution",
                "rlnLogLikeliContribution", "rlnNrOfSignificantSamples", "rlnDefocusU", "rlnAngleTilt"):
        assert col in parts.columns, col
    assert parts["rlnMaxValueProbDistribution"].between(0, 1).all()
    assert (parts["rlnOriginXAngst"].abs() <= 10.0 + 1e-6).all()
    its = read_star(out / "iterations.star")["iterations"]
    assert len(its) == 10 and its["rlnCryolensResolutionLimit"].iloc[-1] < its["rlnCryolensResolutionLimit"].iloc[0]
    job = json.loads((out / "job.json").read_text())
    assert job["status"] == "finished" and job["params"]["classes"] == 4
    for name in ("classes.png", "convergence.png", "report.html", "CRYOLENS_JOB_EXIT_SUCCESS"):
        assert (out / name).is_file(), name


def test_class_averages_and_references_have_no_dc(classified):
    """The Fourier origin of every class average scored (the state ``--continue`` resumes from) and of every
    reference is 0 (a nonzero DC made a class carry a bright disc that attracted dense junk; see
    cryolens.class2d.maximisation); the averages written have their background, not their mean, at 0."""
    from cryolens.class2d.estep import class_references
    from cryolens.jobs.checkpoint import load_iteration

    out = classified[3]
    classes = load_iteration(out).tensors["classes"]
    assert classes.abs().sum() > 0
    assert (classes.sum((-2, -1)).abs() <= 1e-4 * classes.abs().sum((-2, -1))).all()
    band = FrequencyBand.build(BOX, 8.0)
    offset = classes + 0.5  # a constant under and outside the mask: DC only
    refs = class_references(offset, band, BandRotator(band), inplane_matrices(torch.tensor([0.0, 33.0, 90.0])))
    dc = band.shell == 0
    assert dc.sum() == 1 and (refs[..., dc].abs() == 0).all() and refs[..., ~dc].abs().sum() > 0
    written = np.array(read_mrc(out / "classes.mrcs")[0])[:4]
    r = np.hypot(*np.meshgrid(np.arange(BOX) - BOX // 2, np.arange(BOX) - BOX // 2))
    radius = 200.0 / 2 / APIX
    ring = (r >= radius - 2) & (r < radius)
    assert np.abs(np.median(written[:, ring], axis=1)).max() < 1e-3 * np.abs(written).max()
    assert (written.sum((-2, -1)) > 0).all()  # the particle is bright on a zero background


def test_class2d_psi_follows_relion_convention(classified):
    """Within a class of one view, true psi minus ours is the same for every member (RELION's psi sense; doubled
    angles, as a low-resolution view may be matched at psi + 180°); the sum, for the opposite sense, is not."""
    star, view, vol, out = classified
    _, truth = read_particles(star)
    _, parts = read_particles(out / "particles.star")
    cls = parts["rlnClassNumber"].to_numpy()
    same, opposite = [], []
    for c in np.flatnonzero(np.bincount(cls) >= 0.1 * len(cls)):
        m = cls == c
        t, ours = np.deg2rad(truth["rlnAnglePsi"].to_numpy()[m]), np.deg2rad(parts["rlnAnglePsi"].to_numpy()[m])
        same.append(abs(np.exp(2j * (t - ours)).mean()))
        opposite.append(abs(np.exp(2j * (t + ours)).mean()))
    assert np.median(same) > 0.85 and max(opposite) < 0.35, (same, opposite)


@pytest.mark.relion
def test_relion_reads_class2d_outputs(classified, tmp_path):
    out = classified[3]
    for name in ("classes.star", "particles.star"):
        p = subprocess.run(["relion_star_handler", "--i", str(out / name), "--o", str(tmp_path / name),
                            "--select", "rlnClassNumber", "--minval", "1"], capture_output=True, text=True)
        assert p.returncode == 0, p.stderr
        assert (tmp_path / name).read_text().count("@") >= 4
    p = subprocess.run(["relion_image_handler", "--i", str(out / "classes.mrcs"), "--stats"], capture_output=True,
                       text=True)
    assert p.returncode == 0 and p.stdout.count("angpix") == 5, p.stdout


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Ten noise images (box 16) with a valid STAR: enough for the bad-input checks."""
    root = tmp_path_factory.mktemp("class2d_bad")
    images = np.random.default_rng(0).standard_normal((10, 16, 16)).astype(np.float32)
    write_mrc(root / "p.mrcs", images, 5.0, is_stack=True)
    optics = pd.DataFrame({"rlnOpticsGroup": [1], "rlnOpticsGroupName": ["g"], "rlnVoltage": [300.0],
                           "rlnSphericalAberration": [2.7], "rlnAmplitudeContrast": [0.1], "rlnImagePixelSize": [5.0],
                           "rlnImageSize": [16], "rlnImageDimensionality": [2]})
    parts = pd.DataFrame({"rlnImageName": [f"{i + 1:06d}@{root / 'p.mrcs'}" for i in range(10)], "rlnOpticsGroup": 1})
    write_particles(root / "p.star", optics, parts)
    write_particles(root / "noimages.star", optics, parts.drop(columns="rlnImageName").assign(rlnDefocusU=1e4,
                                                                                               rlnDefocusV=1e4))
    return root


@pytest.mark.parametrize("args,fragments", [
    (("--in", "noimages.star"), ("noimages.star", "rlnImageName")),
    (("--in", "p.star", "--classes", "11"), ("only 10 particles", "--classes 11")),
    (("--in", "p.star", "--classes", "2", "--particle-diameter", "100"), ("--particle-diameter 100", "box")),
    (("--in", "p.star", "--res-start", "20", "--res-end", "30"), ("--res-end 30", "--res-start")),
    (("--in", "p.star", "--classes", "0"), ("--classes",)),
])
def test_class2d_bad_input(tiny, args, fragments):
    out = tiny / f"out_{abs(hash(args))}"
    result = invoke_cli("class2d", *args, "--out", out, "--quiet", cwd=tiny, code=None)
    assert_user_error(result, *fragments)
    assert not (out / "classes.mrcs").exists()


def test_classify_2d_runs_on_device(tmp_path, device):
    """The engine on each device (cuda where present): two views, two classes, a few iterations."""
    from cryolens.class2d import classify_2d
    from cryolens.jobs.particles import open_particles
    star, view, _ = make_views(tmp_path / "sim", n=80, snr=0.5, seed=3)
    parts = open_particles(star, pose=False)
    params = Class2DParams(classes=3, iterations=3, particle_diameter=200.0, res_end=20.0, batch_size=32)
    res = classify_2d(lambda: parts.batches(32), parts.table(), pixel_size=APIX, box=BOX, params=params,
                      device=device)
    assert res.classes.shape == (4, BOX, BOX) and np.isfinite(res.classes).all()  # the last: the empty class
    assert len(res.history) == 3 and (res.particle_class >= 0).all()
    assert abs(res.distribution.sum() - 1) < 1e-4 and res.state.iteration == 3


def test_temper_last_keeps_the_poses_and_softens_the_posteriors(tmp_path):
    """The last iteration at the temperature `--last-temperature` / mean(mask²) (`--temper-last`): every particle
    keeps the class, psi and origin the untempered run gives it, and its best pose's posterior can only fall, the
    further the higher the temperature (the default factor is above 1)."""
    from cryolens.class2d import classify_2d
    from cryolens.class2d.data import image_mask
    from cryolens.class2d.iteration import mask_temperature
    from cryolens.jobs.particles import open_particles
    assert mask_temperature(torch.ones(16, 16)) == 1.0
    disc = image_mask(64, 40.0)  # radius 20 px plus a 5 px edge in a 64 box
    assert 1 / mask_temperature(disc) == pytest.approx(float((disc ** 2).mean()))
    assert 64 ** 2 / (math.pi * 25 ** 2) < mask_temperature(disc) < 64 ** 2 / (math.pi * 20 ** 2)
    star, _, _ = make_views(tmp_path / "sim", n=80, snr=0.5, seed=3)
    parts = open_particles(star, pose=False)
    runs = [classify_2d(lambda: parts.batches(32), parts.table(), pixel_size=APIX, box=BOX, device="cpu",
                        params=Class2DParams(classes=3, iterations=3, particle_diameter=200.0, res_end=20.0,
                                             batch_size=32, **kw))
            for kw in (dict(temper_last=False), dict(last_temperature=1.0), dict())]
    plain, tempered, hotter = runs
    assert Class2DParams().last_temperature > 1.0
    for run in (tempered, hotter):
        assert np.array_equal(plain.particle_class, run.particle_class)
        assert np.array_equal(plain.psi, run.psi) and np.array_equal(plain.shifts, run.shifts)
    assert (tempered.max_probability <= plain.max_probability + 1e-6).all()
    assert tempered.max_probability.mean() < 0.9 * plain.max_probability.mean()
    assert (hotter.max_probability <= tempered.max_probability + 1e-6).all()
    assert hotter.max_probability.mean() < tempered.max_probability.mean()


def test_offset_prior_is_a_normalised_gaussian_about_the_box_centre():
    """The prior on the origins (``--offset-prior``): per particle, a Gaussian in the origin ``centre + shift`` about
    the box centre, normalised over the grid points searched (those outside the range excluded)."""
    from cryolens.class2d.estep import offset_log_prior
    from cryolens.refine.pose_search import shift_grid
    shifts = shift_grid(1.0, 3.0)
    centre = torch.tensor([[0.0, 0.0], [1.0, -2.0]])
    lp = offset_log_prior(centre, shifts, 2.0)
    assert torch.allclose(torch.logsumexp(lp, dim=1), torch.zeros(2), atol=1e-5)
    r2 = ((centre[:, None] + shifts[None]) ** 2).sum(-1)
    assert torch.allclose(lp - lp[:, :1], -(r2 - r2[:, :1]) / 4.0, atol=1e-5)
    assert int(lp[1].argmax()) == int(r2[1].argmin())  # the grid point nearest the box centre
    outside = r2 > 9.0
    cut = offset_log_prior(centre, shifts, 2.0, outside)
    assert torch.isinf(cut[outside]).all() and torch.allclose(torch.logsumexp(cut, 1), torch.zeros(2), atol=1e-5)


def test_offset_prior_width_follows_the_origins_found():
    """Before any particle is aligned the prior is as wide as ``--offset-range``; then its variance per axis is half
    the mean of ``|origin|² + shift_sd²`` over the aligned particles (RELION's ``sigma2_offset``), never below
    :data:`MIN_OFFSET_VAR`."""
    from types import SimpleNamespace
    from cryolens.class2d.iteration import MIN_OFFSET_VAR, offset_variance
    from cryolens.class2d.state import Class2DState
    setup = SimpleNamespace(params=Class2DParams(offset_range=12.0), pixel_size=2.0)
    state = Class2DState.empty(4, 2, 16)
    assert offset_variance(state, setup) == pytest.approx(36.0)
    state.particle_class[:3] = 0
    state.particle_shift[:3] = [[3.0, 0.0], [0.0, -1.0], [2.0, 2.0]]
    state.particle_shift_sd[:3] = [1.0, 0.0, 0.0]
    state.particle_shift[3] = [50.0, 50.0]  # not aligned yet: not counted
    assert offset_variance(state, setup) == pytest.approx((10 + 1 + 8) / 3 / 2)
    state.particle_shift[:] = 0.0
    state.particle_shift_sd[:] = 0.0
    assert offset_variance(state, setup) == MIN_OFFSET_VAR


def test_offset_prior_pulls_noise_to_the_centre(tmp_path):
    """Empty boxes (noise alone) find their best origin anywhere in the range with a flat prior; with the Gaussian
    prior (its width estimated from the particles) they stay near the box centre, as the aligned particles do."""
    from cryolens.class2d import classify_2d
    from cryolens.jobs.particles import open_particles
    star, _, _ = make_views(tmp_path / "sim", n=60, snr=1e-6, seed=5)
    parts = open_particles(star, pose=False)
    runs = [classify_2d(lambda: parts.batches(32), parts.table(), pixel_size=APIX, box=BOX, device="cpu",
                        params=Class2DParams(classes=2, iterations=4, particle_diameter=200.0, res_end=20.0,
                                             offset_range=24.0, batch_size=32, offset_prior=on))
            for on in (False, True)]
    flat, prior = (np.linalg.norm(r.shifts, axis=1).mean() for r in runs)
    assert prior < 0.6 * flat


def test_particle_scale_fits_each_images_amplitude(tmp_path):
    """``--particle-scale``: each particle's amplitude scale is refitted (least squares at its best pose) from the
    second iteration, normalised to mean 1; images recorded 1.6x stronger read ~1.6x the others' scale. Off, every
    scale stays 1."""
    from cryolens.class2d import classify_2d
    from cryolens.jobs.particles import open_particles
    star, _, _ = make_views(tmp_path / "sim", n=120, snr=0.5, seed=4)
    stack = tmp_path / "sim" / "particles.mrcs"
    images, _ = read_mrc(stack)
    images = np.array(images)
    images[::2] *= 1.6
    write_mrc(stack, images.astype(np.float32), APIX, is_stack=True)
    parts = open_particles(star, pose=False)
    runs = [classify_2d(lambda: parts.batches(32), parts.table(), pixel_size=APIX, box=BOX, device="cpu",
                        params=Class2DParams(classes=3, iterations=4, particle_diameter=200.0, res_end=20.0,
                                             batch_size=32, particle_scale=on)) for on in (False, True)]
    assert (runs[0].state.particle_scale == 1.0).all()
    scale = runs[1].state.particle_scale
    assert scale.mean() == pytest.approx(1.0, abs=1e-6)
    assert 1.4 < np.median(scale[::2]) / np.median(scale[1::2]) < 1.8


def test_class_resolution_skips_a_one_shell_dip():
    """A small particle's first Fourier minimum dips the SSNR below 1 for one shell; the estimated resolution is
    where it drops below 1 to stay (RELION's first-shell rule read 48 Å for small haemoglobin classes)."""
    ssnr = torch.tensor([50.0, 0.7, 9.0, 4.0, 1.5, 0.8, 0.3, 0.2])
    assert resolution_shell(ssnr) == 6
    assert resolution_shell(torch.tensor([5.0, 3.0, 0.5])) == 3  # the last shell may end the run
    assert resolution_shell(torch.tensor([5.0, float("nan"), float("nan")])) == 2
    assert resolution_shell(torch.tensor([5.0, 3.0])) is None


def test_class2d_params_defaults():
    p = Class2DParams()
    assert p.tau2_fudge == 4.0 and p.classes == 20 and p.psi_step <= 15 and not p.uniform_prior
    p.validate()


@pytest.mark.slow
def test_class2d_ribosome_accuracy(tmp_path, shared_data):
    """Simulator ribosome, 1 000 particles, box 64, SNR 0.05, CTF; K 20, 10 iterations (the benchmark's case).

    Views are uniform, so a class spans a cone of directions: measured here, the average of its members' true
    projections aligned by our psi and origins matched the class with NCC 0.97-0.98 (15 Å), while it matched
    the best single projection only at 0.82-0.90 (and the class itself at 0.82-0.87).
    """
    from cryolens.class2d.evaluate import aligned_ncc, ideal_class_average
    from cryolens.class2d.data import image_mask
    from cryolens.core.fourier import bandpass
    sim = tmp_path / "sim"
    run_cli("simulate", "particles", "--structure", str(shared_data / "maps" / "clean70SRibosome_vol_65p.mrc"),
            "--map-pixel-size", "3.94", "--pixel-size", "4.0", "--box", "64", "--n", "1000", "--snr", "0.05",
            "--seed", "1", "--out", str(sim), "--quiet")
    out = tmp_path / "c2d"
    run_cli("class2d", "--in", str(sim / "particles.star"), "--out", str(out), "--classes", "20", "--iter", "10",
            "--particle-diameter", "240", "--quiet")
    _, truth = read_particles(sim / "particles.star")
    _, parts = read_particles(out / "particles.star")
    classes, apix = read_mrc(out / "classes.mrcs")
    classes = np.array(classes)
    vol = np.array(read_mrc(sim / "truth_map.mrc")[0])
    cls = parts["rlnClassNumber"].to_numpy() - 1
    members = [truth[["rlnAngleRot", "rlnAngleTilt"]].to_numpy()[cls == c] for c in range(20)]
    single = class_truth_ncc(classes, vol, members, pixel_size=apix, resolution=15.0, diameter=240.0)
    mask = image_mask(64, 240.0 / apix)
    ideal_ncc = []
    for c in np.flatnonzero(np.bincount(cls, minlength=20) >= 20):
        m = cls == c
        ideal = ideal_class_average(vol, truth[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].to_numpy()[m],
                                    truth[["rlnOriginXAngst", "rlnOriginYAngst"]].to_numpy()[m] / apix,
                                    parts["rlnAnglePsi"].to_numpy()[m],
                                    parts[["rlnOriginXAngst", "rlnOriginYAngst"]].to_numpy()[m] / apix)
        lp = [bandpass(torch.as_tensor(img) * mask, pixel_size=apix, high_res=15.0) for img in (classes[c], ideal)]
        ideal_ncc.append(float(aligned_ncc(lp[0], lp[1][None], psi_step=2.0, max_shift=2)[0]))
    assert np.median(ideal_ncc) >= 0.95, ideal_ncc
    assert np.nanmedian(single[np.bincount(cls, minlength=20) >= 20]) >= 0.8, single

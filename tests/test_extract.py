"""Particle extraction stage (issue [9·pick] items 3 and 6): known answers and the RELION 3.1 oracle.

Known answers: a delta at a coordinate lands at ``box//2`` (RELION truncates fractional
coordinates), binning is a Fourier crop (band-limited content is resampled exactly),
normalisation gives mean 0 / SD 1 outside the particle circle, inversion, boxes leaving
the micrograph are skipped and counted (or edge-filled as RELION does), phase flipping
makes ``F · |CTF|`` with :mod:`cryolens.core.ctf`'s CTF at each particle's own defocus.
Oracle: ``relion_preprocess --extract`` (RELION 3.1 has no relion_extract) on the same
simulated micrograph and coordinates: per-particle correlation >= 0.99 (the issue's bar;
measured 1.0000000 without phase flipping, >= 0.995 with it), and re-extraction from
refined origins gives RELION's coordinates and residual origins.
"""

from __future__ import annotations

import dataclasses
import math
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import assert_allclose, assert_images_correlated

from cryolens.core.ctf import ctf_2d
from cryolens.core.fourier import fourier_resize
from cryolens.core.rotations import euler_to_matrix
from cryolens.extract import (
    ExtractParams,
    MicrographCTF,
    background_mask,
    default_bg_radius,
    extract_particles,
    fourier_crop,
    iter_extract,
    normalise_background,
    recentre,
)
from cryolens.simulate.micrographs import local_defocus

RAW = dict(normalise=False, invert=False)


def plain(**kw) -> ExtractParams:
    """Windowing only (no normalisation, no inversion) unless overridden."""
    return ExtractParams(**{**RAW, **kw})


# ------------------------------------------------------------------------------ geometry


@pytest.mark.parametrize("x, y, at", [(100.0, 80.0, (16, 16)), (100.6, 80.4, (16, 16)), (99.6, 79.6, (17, 17)),
                                      (101.0, 80.0, (16, 15))])
def test_delta_lands_at_box_centre(device, x, y, at):
    """The integer part of a coordinate (RELION truncates: 100.6 -> 100) is the box centre ``box//2``."""
    mic = torch.zeros(200, 240, device=device)
    mic[80, 100] = 1.0  # row y=80, column x=100
    e = extract_particles(mic, torch.tensor([[x, y]]), params=plain(box=32), pixel_size=1.0)
    row, col = divmod(int(e.images[0].argmax()), 32)
    assert (row, col) == at
    assert e.images.device.type == device.type and e.images.dtype == torch.float32


def test_disc_is_centred_and_symmetric():
    """A disc centred on the coordinate is point-symmetric about ``box//2`` in the extracted box."""
    h, w, b = 160, 180, 48
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    mic = ((xx - 90) ** 2 + (yy - 70) ** 2 <= 10 ** 2).float()
    img = extract_particles(mic, torch.tensor([[90.0, 70.0]]), params=plain(box=b), pixel_size=1.0).images[0]
    inner = img[1:, 1:]  # pixels 1..b-1 mirror about b//2
    assert torch.equal(inner, inner.flip(0, 1))
    assert float(img.sum()) == float(mic.sum())


def test_edge_boxes_skipped_and_counted():
    """Boxes that leave the micrograph are skipped (kept=False) and counted; the boundary cases are exact."""
    h, w, b = 100, 120, 32
    mic = torch.randn(h, w)
    coords = torch.tensor([[16.0, 50.0],       # x0 = 0: inside
                           [15.0, 50.0],       # x0 = -1: leaves
                           [w - 16.0, 50.0],   # x0 + b = W: inside
                           [w - 15.0, 50.0],   # one column beyond
                           [60.0, 16.0], [60.0, 15.0], [60.0, h - 16.0], [60.0, h - 15.0],
                           [-50.0, 50.0]])     # entirely outside
    e = extract_particles(mic, coords, params=plain(box=b), pixel_size=1.0)
    assert e.kept.tolist() == [True, False, True, False, True, False, True, False, False]
    assert e.n_skipped == 5 and e.images.shape == (4, b, b)
    assert_allclose(e.images[0], mic[50 - 16:50 + 16, 0:b], what="box at the left edge")
    # RELION's filling: partly outside boxes kept, missing pixels = nearest edge pixel; entirely outside skipped
    r = extract_particles(mic, coords, params=plain(box=b, edge="replicate"), pixel_size=1.0)
    assert r.kept.tolist() == [True] * 8 + [False] and r.n_skipped == 1
    one = r.images[1]  # x = 15: column 0 of the box is micrograph column -1 -> column 0
    assert_allclose(one[:, 0], mic[34:66, 0], what="replicated column")
    assert_allclose(one[:, 1:], mic[34:66, 0:b - 1], what="inside pixels")


def test_batches_and_iterator_agree():
    """Batch size changes nothing; :func:`iter_extract` yields kept indices in order."""
    mic = torch.randn(150, 150)
    coords = torch.rand(23, 2) * 150
    whole = extract_particles(mic, coords, params=ExtractParams(box=32, bin_to=16), pixel_size=1.5)
    parts = list(iter_extract(mic, coords, params=ExtractParams(box=32, bin_to=16, batch_size=4), pixel_size=1.5))
    idx = torch.cat([i for i, _ in parts])
    assert torch.equal(idx, torch.nonzero(whole.kept).reshape(-1))
    assert_allclose(torch.cat([im for _, im in parts]), whole.images, atol=1e-6, what="batched particles")
    assert whole.pixel_size == pytest.approx(3.0)


# ------------------------------------------------------------------------------- binning


def test_binning_resamples_band_limited_content_exactly(device):
    """Fourier binning of a band-limited pattern equals the pattern sampled on the coarse grid."""
    b, m = 64, 16
    h = w = 200
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64),
                            indexing="ij")
    waves = [(1, 2, 0.3), (5, -3, 1.1), (7, 6, 2.0), (0, 4, 0.0)]  # (kx, ky, phase), cycles per box < m/2

    def pattern(x, y):
        return 2.0 + sum(torch.cos(2 * math.pi * (kx * x + ky * y) / b + ph) for kx, ky, ph in waves)

    mic = pattern(xx, yy).float().to(device)
    cx, cy = 97, 103
    e = extract_particles(mic, torch.tensor([[cx, cy]], dtype=torch.float64), params=plain(box=b, bin_to=m),
                          pixel_size=1.0)
    # coarse pixel i sits at fine offset (i - m//2) * b/m from the centre
    g = (torch.arange(m, dtype=torch.float64) - m // 2) * (b / m)
    gy, gx = torch.meshgrid(g + cy, g + cx, indexing="ij")
    assert_allclose(e.images[0].cpu(), pattern(gx, gy).float(), atol=2e-5, what="binned pattern")
    assert e.pixel_size == pytest.approx(b / m)
    # the same crop as the core's resampler on band-limited content
    boxes = torch.randn(3, b, b, dtype=torch.float64)
    smooth = fourier_resize(fourier_resize(boxes, 20), b)  # band-limited below the new Nyquist (12)
    assert_allclose(fourier_crop(smooth, 24), fourier_resize(smooth, 24), atol=1e-10, what="crop vs fourier_resize")


def test_binning_keeps_a_constant():
    const = torch.full((2, 64, 64), 3.5)
    assert_allclose(fourier_crop(const, 32), torch.full((2, 32, 32), 3.5), atol=1e-5)


# ------------------------------------------------------------------------- normalisation


def test_normalisation_zero_mean_unit_sd_outside_circle(device):
    """Background (outside --bg-radius about box//2) has mean 0 and SD 1; the fitted plane is gone."""
    g = torch.Generator().manual_seed(1)
    h, w = 256, 256
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    mic = 100 + 0.3 * xx - 0.2 * yy + 5 * torch.randn(h, w, generator=g)
    mic = (mic - 40 * torch.exp(-((xx - 128) ** 2 + (yy - 128) ** 2) / 200)).to(device)  # a dark particle
    coords = torch.tensor([[128.0, 128.0], [90.0, 150.0], [170.0, 100.0]])
    for bin_to, radius in ((None, 20.0), (32, None)):
        p = ExtractParams(box=64, bin_to=bin_to, bg_radius=radius, invert=False)
        imgs = extract_particles(mic, coords, params=p, pixel_size=1.0).images.double().cpu()
        b = p.out_box
        mask = background_mask(b, p.radius)
        bg = imgs[:, mask]
        assert_allclose(bg.mean(1), torch.zeros(3), atol=1e-5, what="background mean")
        assert_allclose(bg.std(1, unbiased=False), torch.ones(3), atol=1e-5, what="background SD")
        # no plane left in the background: least-squares slopes ~ 0
        r = torch.arange(b, dtype=torch.float64) - b // 2
        i, j = torch.meshgrid(r, r, indexing="ij")
        design = torch.stack([j[mask], i[mask], torch.ones_like(j[mask])], 1)
        slopes = torch.linalg.lstsq(design, bg.T).solution[:2]
        assert float(slopes.abs().max()) < 1e-6
    assert ExtractParams(box=256).radius == 96 and ExtractParams(box=256, bin_to=64).radius == 24
    assert default_bg_radius(100) == 37  # RELION truncates 37.5


def test_no_ramp_subtracts_only_the_mean():
    x = torch.randn(4, 32, 32, dtype=torch.float64) + torch.arange(32.0, dtype=torch.float64)  # a ramp along x
    flat = normalise_background(x, radius=10, ramp=False)
    mask = background_mask(32, 10)
    bg = x[:, mask]
    expected = (x - bg.mean(1)[:, None, None]) / bg.std(1, unbiased=False)[:, None, None]
    assert_allclose(flat, expected, atol=1e-12, what="--no-ramp normalisation")


def test_inversion_flips_the_sign():
    mic = torch.randn(128, 128)
    coords = torch.tensor([[64.0, 64.0], [40.0, 70.0]])
    a = extract_particles(mic, coords, params=ExtractParams(box=48, invert=True), pixel_size=1.0).images
    b = extract_particles(mic, coords, params=ExtractParams(box=48, invert=False), pixel_size=1.0).images
    assert torch.equal(a, -b)


# ------------------------------------------------------------------------ CTF and defocus


def ctf_of(**kw) -> MicrographCTF:
    return MicrographCTF(**{**dict(defocus_u=15000.0, defocus_v=13000.0, defocus_angle=30.0, voltage=300.0,
                                   cs=2.7, amplitude_contrast=0.07), **kw})


def test_phase_flip_multiplies_by_abs_ctf(device):
    """Flipping a CTF-modulated blob leaves ``F(blob) · |CTF|`` (sign from cryolens.core.ctf), dark stays dark."""
    n, apix = 128, 1.5
    ctf = ctf_of()
    r = torch.arange(n, dtype=torch.float64) - n // 2
    yy, xx = torch.meshgrid(r, r, indexing="ij")
    blob = torch.exp(-(xx ** 2 + yy ** 2) / (2 * 6.0 ** 2))
    centre = torch.tensor([[n // 2, n // 2]], dtype=torch.float64)
    c = ctf_2d(ctf.ctf_params(centre, shape=(n, n)), box=n, pixel_size=apix).double()[0]
    f_blob = torch.fft.rfft2(torch.fft.ifftshift(blob))
    mic = 50 - torch.fft.fftshift(torch.fft.irfft2(f_blob * c, s=(n, n)))  # protein dark, as recorded
    p = plain(box=n, phase_flip=True)
    got = extract_particles(mic.float().to(device), centre, params=p, pixel_size=apix, ctf=ctf).images[0].cpu()
    want = 50 - torch.fft.fftshift(torch.fft.irfft2(f_blob * c.abs(), s=(n, n)))
    assert_allclose(got, want.float(), atol=2e-4, what="phase-flipped blob")
    # normalised and inverted, the flipped particle is bright at its centre
    q = ExtractParams(box=n, phase_flip=True)
    img = extract_particles(mic.float(), centre, params=q, pixel_size=apix, ctf=ctf).images[0]
    assert float(img[n // 2, n // 2]) > 3.0
    with pytest.raises(ValueError, match="--phase-flip"):
        extract_particles(mic.float(), centre, params=q, pixel_size=apix)


def test_defocus_plane_per_particle():
    """U/V at (x, y) = rlnDefocusU/V + gx (x - W/2) + gy (y - H/2): the simulator's and patch CTF's convention."""
    row = {"rlnDefocusU": 20000.0, "rlnDefocusV": 19000.0, "rlnDefocusAngle": 40.0, "rlnVoltage": 200.0,
           "rlnSphericalAberration": 1.4, "rlnAmplitudeContrast": 0.1, "cryolensDefocusGradientX": 0.8,
           "cryolensDefocusGradientY": -0.5, "cryolensDefocusPlaneC0": 19400.0}
    ctf = MicrographCTF.from_row(row)
    assert (ctf.voltage, ctf.cs, ctf.gradient_x, ctf.gradient_y) == (200.0, 1.4, 0.8, -0.5)
    coords = torch.tensor([[0.0, 0.0], [512.0, 384.0], [1000.0, 10.0]])
    u, v = ctf.defocus_at(coords, shape=(768, 1024))
    sim = dict(gradient_x=0.8, gradient_y=-0.5)
    off = torch.as_tensor(local_defocus(sim, coords[:, 0].double(), coords[:, 1].double(), width=1024, height=768))
    assert_allclose(u, 20000.0 + off, atol=1e-9) and assert_allclose(v, 19000.0 + off, atol=1e-9)
    assert float(u[1]) == 20000.0  # the centre (W/2, H/2) keeps the micrograph's value
    flat = MicrographCTF.from_row({"rlnDefocusU": 1e4, "rlnDefocusV": 1e4, "cryolensDefocusGradientX": float("nan")})
    assert flat.gradient_x == 0.0 and flat.gradient_y == 0.0
    with pytest.raises(KeyError, match="rlnDefocusV"):
        MicrographCTF.from_row({"rlnDefocusU": 1e4})


def test_phase_flip_uses_each_particles_own_defocus():
    """With a defocus plane, a particle is flipped with the defocus at its coordinate."""
    g = torch.Generator().manual_seed(3)
    mic = torch.randn(300, 400, generator=g)
    coords = torch.tensor([[100.0, 80.0], [300.0, 220.0]])
    tilted = ctf_of(gradient_x=3.0, gradient_y=2.0)
    got = extract_particles(mic, coords, params=plain(box=64, phase_flip=True), pixel_size=2.0, ctf=tilted).images
    u, v = tilted.defocus_at(coords, shape=(300, 400))
    for k in range(2):
        flat = ctf_of(defocus_u=float(u[k]), defocus_v=float(v[k]))
        one = extract_particles(mic, coords[k:k + 1], params=plain(box=64, phase_flip=True), pixel_size=2.0,
                                ctf=flat).images[0]
        assert_allclose(got[k], one, atol=1e-5, what=f"particle {k}")
    assert float(u[1] - u[0]) == pytest.approx(3.0 * 200 + 2.0 * 140)


# ---------------------------------------------------------------------------- re-extraction


def test_recentre_known_answers():
    """RELION 3.1.3's numbers: coordinate - ROUND(origin / px) (halves away from zero), remainder kept in Å."""
    coords = torch.tensor([[177.0, 273.0], [42.0, 257.0], [100.0, 100.0]], dtype=torch.float64)
    origins = torch.tensor([[3.0, -3.0], [-6.405, 0.0], [0.9, -0.9]], dtype=torch.float64)
    c, o = recentre(coords, origins, pixel_size=2.0)
    assert c.tolist() == [[175.0, 275.0], [45.0, 257.0], [100.0, 100.0]]
    assert_allclose(o, torch.tensor([[-1.0, 1.0], [-0.405, 0.0], [0.9, -0.9]], dtype=torch.float64), atol=1e-12)
    # the particle centre x - ox/p is unchanged
    assert_allclose(c - o / 2.0, coords - origins / 2.0, atol=1e-12)
    # re-centring on a reference point: identity pose moves the centre by the point's x, y
    c2, o2 = recentre(coords[:1], torch.zeros(1, 2), pixel_size=2.0, centre_A=torch.tensor([4.0, -6.0, 10.0]),
                      rotations=torch.eye(3)[None])
    assert c2.tolist() == [[179.0, 270.0]] and o2.abs().max() == 0
    with pytest.raises(ValueError):
        recentre(coords, origins, pixel_size=2.0, centre_A=torch.ones(3))


# ------------------------------------------------------------------------------- parameters


@pytest.mark.parametrize("kw, fragment", [
    (dict(box=63), "--box 63: must be even"),
    (dict(box=64, bin_to=128), "--bin-to 128: must be at most --box 64"),
    (dict(box=64, bin_to=33), "--bin-to 33: must be even"),
    (dict(box=64, bg_radius=40), "--bg-radius 40"),
    (dict(box=64, flip_box=32), "--flip-box 32: must be at least --box 64"),
    (dict(edge="zero"), "--edge zero"),
])
def test_impossible_parameters_name_the_flag(kw, fragment):
    with pytest.raises(ValueError, match=fragment.replace("-", r"\-")):
        ExtractParams(**kw).validate()


def test_bad_coordinates():
    mic = torch.zeros(64, 64)
    for bad in (torch.zeros(3), torch.tensor([[1.0, float("nan")]])):
        with pytest.raises(ValueError, match="coordinates"):
            extract_particles(mic, bad, params=ExtractParams(box=16), pixel_size=1.0)


# ------------------------------------------------------------------------------ RELION oracle

APIX = 2.0
HAVE_PREPROCESS = shutil.which("relion_preprocess") is not None


def run_relion(cmd: list[str], cwd: Path) -> None:
    p = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    assert p.returncode == 0, f"{' '.join(cmd)}\n{p.stdout[-1500:]}\n{p.stderr[-1500:]}"


@pytest.fixture(scope="module")
def relion_mic(tmp_path_factory):
    """A simulated 448 x 384 micrograph with 30 particles (+ 2 coordinates near edges) in RELION's layout."""
    import mrcfile
    import pandas as pd
    import starfile

    from cryolens.simulate.micrographs import MicrographParams, simulate_micrograph
    from cryolens.simulate.structures import phantom_structure

    work = tmp_path_factory.mktemp("relext")
    p = MicrographParams(n_micrographs=1, width=448, height=384, particles_per_micrograph=30, seed=5,
                         astigmatism=500.0)
    counts, truth = simulate_micrograph([phantom_structure(48, APIX)], None, pixel_size=APIX, params=p, index=0)
    (work / "Mics").mkdir()
    with mrcfile.new(work / "Mics" / "m1.mrc") as f:
        f.set_data(counts.numpy().astype(np.float32))
        f.voxel_size = APIX
    ctf = truth.ctf
    optics = pd.DataFrame({"rlnOpticsGroupName": ["opticsGroup1"], "rlnOpticsGroup": [1],
                           "rlnMicrographPixelSize": [APIX], "rlnVoltage": [300.0], "rlnSphericalAberration": [2.7],
                           "rlnAmplitudeContrast": [ctf["amplitude_contrast"]]})
    row = {"rlnMicrographName": "Mics/m1.mrc", "rlnOpticsGroup": 1, "rlnDefocusU": ctf["defocus_u"],
           "rlnDefocusV": ctf["defocus_v"], "rlnDefocusAngle": ctf["defocus_angle"], "rlnCtfBfactor": 0.0,
           "rlnCtfScalefactor": 1.0, "rlnPhaseShift": 0.0}
    starfile.write({"optics": optics, "micrographs": pd.DataFrame([row])}, work / "mics.star")
    xy = np.c_[truth.particles.rlnCoordinateX.round(), truth.particles.rlnCoordinateY.round()]
    xy = np.r_[xy, [[10.0, 100.0], [440.0, 380.0]]]
    starfile.write(pd.DataFrame({"rlnCoordinateX": xy[:, 0], "rlnCoordinateY": xy[:, 1]}),
                   work / "Mics" / "m1_pick.star")
    micrograph = torch.from_numpy(np.array(counts.numpy(), dtype=np.float32))
    mctf = MicrographCTF.from_row({**row, **optics.iloc[0].to_dict()})
    return work, micrograph, torch.from_numpy(xy), mctf


@pytest.mark.relion
@pytest.mark.skipif(not HAVE_PREPROCESS, reason="relion_preprocess (RELION 3.1) not on PATH")
@pytest.mark.parametrize("box, bin_to, radius, flags, min_corr", [
    (64, None, 24, ["--invert_contrast"], 0.9999),
    (128, 64, None, ["--invert_contrast"], 0.9999),          # --bin-to; our default radius = RELION GUI's
    (128, 48, 18, ["--no_ramp"], 0.9999),                     # non-integer binning factor, no ramp
    (100, 50, 0, [], 0.9999),                                 # no normalisation: the values themselves agree
    (64, None, 24, ["--invert_contrast", "--phase_flip"], 0.99),
    (96, 48, 18, ["--phase_flip", "--premultiply_extract_size", "192"], 0.99),
])
def test_matches_relion_preprocess_extract(relion_mic, box, bin_to, radius, flags, min_corr):
    """Same micrograph, coordinates, box, binning, normalisation, inversion: per-particle correlation >= 0.99."""
    import mrcfile
    import starfile

    work, mic, coords, mctf = relion_mic
    params = ExtractParams(box=box, bin_to=bin_to, normalise=radius != 0, bg_radius=radius or None,
                           invert="--invert_contrast" in flags, ramp="--no_ramp" not in flags,
                           phase_flip="--phase_flip" in flags, edge="replicate",
                           flip_box=int(flags[-1]) if "--premultiply_extract_size" in flags else None)
    out = f"Part_{box}_{bin_to}_{radius}_{len(flags)}/"
    cmd = ["relion_preprocess", "--i", "mics.star", "--coord_suffix", "_pick.star", "--coord_dir", "./",
           "--part_dir", out, "--part_star", out + "particles.star", "--extract", "--extract_size", str(box), *flags]
    if bin_to is not None:
        cmd += ["--scale", str(bin_to)]
    if params.normalise:
        cmd += ["--norm", "--bg_radius", str(int(params.radius))]
    run_relion(cmd, work)  # (3.1.3 needs --coord_dir: its default ASINPUT is taken literally)
    theirs = torch.from_numpy(mrcfile.read(work / out / "Mics" / "m1.mrcs").astype(np.float64))
    assert float(starfile.read(work / out / "particles.star")["optics"]["rlnImagePixelSize"][0]) == \
        pytest.approx(APIX * box / params.out_box, rel=1e-5)
    ours = extract_particles(mic, coords, params=params, pixel_size=APIX, ctf=mctf)
    assert ours.images.shape == theirs.shape and ours.n_skipped == 0
    assert_images_correlated(ours.images, theirs, min_corr, what="cryolens vs relion_preprocess --extract")
    if min_corr > 0.999:  # identical operations: identical values (float32 vs RELION's doubles)
        assert_allclose(ours.images.double(), theirs, atol=1e-4 * float(theirs.abs().max()), what="pixel values")
    # --edge skip: the boxes that leave the micrograph (RELION edge-fills them) are left out, the rest identical
    skip = extract_particles(mic, coords, params=dataclasses.replace(params, edge="skip"), pixel_size=APIX, ctf=mctf)
    x0, y0 = coords[:, 0].long() - box // 2, coords[:, 1].long() - box // 2
    inside = (x0 >= 0) & (y0 >= 0) & (x0 + box <= mic.shape[1]) & (y0 + box <= mic.shape[0])
    assert torch.equal(skip.kept, inside) and skip.n_skipped >= 2 and not skip.kept[-2:].any()
    assert_allclose(skip.images, ours.images[inside], atol=1e-5, what="--edge skip vs replicate")


@pytest.mark.relion
@pytest.mark.skipif(not HAVE_PREPROCESS, reason="relion_preprocess (RELION 3.1) not on PATH")
@pytest.mark.parametrize("point", [None, (5.0, -3.0, 7.0)])
def test_recentre_matches_relion_reextract(relion_mic, point):
    """``--reextract_data_star --recenter [--recenter_x/y/z]``: the same new coordinates and residual origins."""
    import pandas as pd
    import starfile

    work, _, coords, _ = relion_mic
    rng = np.random.default_rng(1)
    n = 12
    parts = pd.DataFrame({"rlnCoordinateX": coords[:n, 0].numpy(), "rlnCoordinateY": coords[:n, 1].numpy(),
                          "rlnImageName": [f"{i + 1:06d}@x.mrcs" for i in range(n)],
                          "rlnMicrographName": "Mics/m1.mrc", "rlnOpticsGroup": 1,
                          "rlnOriginXAngst": rng.uniform(-9, 9, n).round(3),
                          "rlnOriginYAngst": rng.uniform(-9, 9, n).round(3),
                          "rlnAngleRot": rng.uniform(-180, 180, n), "rlnAngleTilt": rng.uniform(0, 180, n),
                          "rlnAnglePsi": rng.uniform(-180, 180, n)})
    parts.loc[0, ["rlnOriginXAngst", "rlnOriginYAngst"]] = (3.0, -3.0)  # exactly half a pixel
    optics = starfile.read(work / "mics.star")["optics"].assign(rlnImagePixelSize=APIX, rlnImageSize=64,
                                                                 rlnImageDimensionality=2)
    tag = "p" if point else "o"
    starfile.write({"optics": optics, "particles": parts}, work / f"refined_{tag}.star")
    cmd = ["relion_preprocess", "--i", "mics.star", "--reextract_data_star", f"refined_{tag}.star", "--recenter",
           "--part_star", f"re_{tag}.star", "--part_dir", f"Re_{tag}/", "--extract", "--extract_size", "64"]
    centre, rot = None, None
    if point:
        cmd += ["--recenter_x", str(point[0]), "--recenter_y", str(point[1]), "--recenter_z", str(point[2])]
        centre = torch.tensor(point) * APIX  # reference pixels -> Å (reference at the particles' pixel size)
        rot = euler_to_matrix(*(torch.tensor(parts[k].values) for k in ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")))
    run_relion(cmd, work)
    theirs = starfile.read(work / f"re_{tag}.star")["particles"]
    c, o = recentre(torch.tensor(parts[["rlnCoordinateX", "rlnCoordinateY"]].values),
                    torch.tensor(parts[["rlnOriginXAngst", "rlnOriginYAngst"]].values), pixel_size=APIX,
                    centre_A=centre, rotations=None if rot is None else rot.double())
    assert np.array_equal(c.numpy(), theirs[["rlnCoordinateX", "rlnCoordinateY"]].to_numpy(dtype=np.float64))
    assert np.abs(o.numpy() - theirs[["rlnOriginXAngst", "rlnOriginYAngst"]].to_numpy(dtype=np.float64)).max() < 1e-4

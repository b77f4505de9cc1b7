"""Particle picking (cryolens.picking) against simulator ground truth, plus unit checks.

Accuracy is measured on simulated micrographs (1024² or 1536², at least ~1800 Å across; carbon hole edge, two contaminant
clusters, ice thickness variation) of two particle shapes at two pixel sizes each, on seeds
that were not used to choose the defaults (those were 100-102 and 200-201). Particles whose
disc touches the carbon are "don't care": the picker must avoid the rim of carbon, so neither
picking nor missing them counts (picks matched to them are dropped before scoring).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from cryolens.core.ctf import CTFParams
from cryolens.picking import PickParams, consensus, match_picks, pick_micrograph, select_picks
from cryolens.picking.filters import fourier_crop_2d, local_mean_sd
from cryolens.picking.peaks import suppress_non_maxima
from cryolens.picking.templates import map_projections
from cryolens.simulate.micrographs import MicrographParams, simulate_micrograph
from cryolens.simulate.structures import phantom_structure

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

RIBOSOME = SHARED_DATA / "maps" / "clean70SRibosome_vol_65p.mrc"
SEEDS = (300, 301)  # not used for tuning


# ------------------------------------------------------------------------------------------ data

def _structure(name: str, apix: float) -> tuple[torch.Tensor, float, str]:
    """(volume, diameter Å, units) of the phantom (150 Å), the shipped apoferritin 24-mer (a hollow shell,
    radius ~50-90 Å), a uniform spherical shell of protein density (radii 50-90 Å: apoferritin's, without
    the minute of building the 24-mer) or ASPIRE's 70S ribosome (~220 Å)."""
    if name == "phantom":
        box = int(round(150 / apix * 1.4 / 2)) * 2
        return phantom_structure(box, apix, diameter=150.0).volume, 150.0, "scattering"
    if name == "shell":
        from cryolens.simulate.specimen import PROTEIN_DENSITY

        n = int(round(225 / apix / 2)) * 2
        c = (torch.arange(n) - n // 2) * apix
        r = torch.sqrt(c[:, None, None] ** 2 + c[None, :, None] ** 2 + c[None, None, :] ** 2)
        return ((r >= 50) & (r <= 90)).float() * PROTEIN_DENSITY, 180.0, "scattering"
    if name == "apoferritin":
        from cryolens.jobs.structures import load_structures

        s = load_structures(["apoferritin"], pixel_size=apix, box=int(round(225 / apix / 2)) * 2)[0]
        return s.volume, 180.0, s.units
    if not RIBOSOME.is_file():
        pytest.skip(f"shared data not found: {RIBOSOME}")
    from cryolens.jobs.structures import load_structures

    s = load_structures([f"{RIBOSOME}:apix=3.94"], pixel_size=apix, box=None)[0]
    # The map's background is negative (54% of voxels); the simulator would count that as density below
    # ice and render the ribosome lighter than ice, so the map is clamped at 0.
    return s.volume.clamp_min(0), 220.0, "arbitrary"


_CACHE: dict = {}


def simulated(name: str, apix: float, seed: int):
    """(image, truth xy (N, 2) px, clean (N,) bool, ctf, diameter Å, volume, truth) of one micrograph."""
    key = (name, apix, seed)
    if key not in _CACHE:
        vol, d, units = _structure(name, apix)
        size = 1024 if apix >= 1.75 else 1536  # at least ~1800 Å across: enough particles per micrograph
        p = MicrographParams(n_micrographs=1, width=size, height=size, particles_per_micrograph=80, carbon=True,
                             contaminants=2, aggregates=0, defocus_min=8000, defocus_max=25000, seed=seed,
                             structure_units=units)
        img, truth = simulate_micrograph([vol], None, pixel_size=apix, params=p, index=0)
        xy = truth.particles[["rlnCoordinateX", "rlnCoordinateY"]].to_numpy()
        e = truth.extras["carbon"]
        clean = (e.radius - np.hypot(xy[:, 0] - e.x, xy[:, 1] - e.y)) >= d / 2 / apix
        c = truth.ctf
        ctf = CTFParams(defocus_u=c["defocus_u"], defocus_v=c["defocus_v"], defocus_angle=c["defocus_angle"],
                        voltage=c["voltage"], cs=c["cs"], amplitude_contrast=c["amplitude_contrast"])
        _CACHE[key] = (img, xy, clean, ctf, d, vol, truth)
    return _CACHE[key]


def scored(picks_xy, xy, clean, radius):
    """match_picks on the clean particles; picks matched to don't-care particles are dropped."""
    m = match_picks(picks_xy, xy, radius)
    dont_care = np.zeros(len(picks_xy), dtype=bool)
    dont_care[m.pairs[:, 0][~clean[m.pairs[:, 1]]]] = True
    return match_picks(np.asarray(picks_xy)[~dont_care], xy[clean], radius)


def pooled_f1(name, apix, method, **kw) -> tuple[float, list]:
    tp = fp = fn = 0
    rows = []
    for seed in SEEDS:
        img, xy, clean, ctf, d, vol, _ = simulated(name, apix, seed)
        picks = pick_micrograph(img, pixel_size=apix, params=PickParams(diameter=d, method=method, **kw), ctf=ctf,
                                volume=vol, volume_pixel_size=apix)
        m = scored(picks.xy().numpy(), xy, clean, 0.2 * d / apix)
        tp, fp, fn = tp + m.tp, fp + m.fp, fn + m.fn
        rows.append((seed, m.precision, m.recall, m.f1))
    return 2 * tp / max(1, 2 * tp + fp + fn), rows


CASES = [("phantom", 1.75), pytest.param("phantom", 1.2, marks=pytest.mark.slow),  # 11 s: the finest sampling
         ("ribosome", 2.5), ("ribosome", 1.6)]


# ------------------------------------------------------------------------------------- accuracy

@pytest.mark.parametrize("name,apix", CASES)
def test_default_picker_f1(name, apix):
    """The default (matched filter, CTF-aware, whitened) reaches F1 >= 0.9 without tuning."""
    torch.set_num_threads(1)
    f1, rows = pooled_f1(name, apix, "matched")
    assert f1 >= 0.9, rows


@pytest.mark.parametrize("name,apix,target,blob", [("shell", 1.75, 0.9, (0.5, 0.0)),
                                                   pytest.param("apoferritin", 1.75, 0.9, (0.45, 0.3), marks=pytest.mark.slow),
                                                   pytest.param("apoferritin", 1.2, 0.9, (0.45, 0.3), marks=pytest.mark.slow)])
def test_default_picker_finds_hollow_particles(name, apix, target, blob):
    """Hollow particles: a blob of 0.33 × the diameter lands on the shell (F1 0.65 on the uniform shell, 0.08-0.26
    on apoferritin here); the default also tries a blob as large as the particle and a hollow one (radius 0.45,
    cavity 0.3 × the diameter) and keeps the one with the higher peaks: the large blob on the uniform shell (F1
    0.96), the hollow one on apoferritin (F1 0.91-0.97 on seeds 300-302 and 310-313 at 1.2 and 1.75 Å/px; 0.82-0.88
    with the large filled blob: hard micrographs, with carbon, contaminants, defocus down to 0.8 µm and 80
    weak-contrast shells each). Apoferritin is slow only because its 24-mer map takes ~30 s to build."""
    torch.set_num_threads(1)
    f1, rows = pooled_f1(name, apix, "matched")
    assert f1 >= target, rows
    img, xy, clean, ctf, d, vol, _ = simulated(name, apix, SEEDS[0])
    picks = pick_micrograph(img, pixel_size=apix, params=PickParams(diameter=d), ctf=ctf)
    assert (picks.blob_radius, picks.blob_cavity) == blob
    img, xy, clean, ctf, d, vol, _ = simulated("phantom", 1.75, SEEDS[0])  # a filled particle keeps the small blob
    picks = pick_micrograph(img, pixel_size=1.75, params=PickParams(diameter=d), ctf=ctf)
    assert (picks.blob_radius, picks.blob_cavity) == (0.33, 0.0)


@pytest.mark.slow
def test_default_picker_coarser_lowpass_on_apoferritin():
    """A blob models a particle only at low resolution: the default also tries the chosen blob through a low-pass
    of a third of the diameter (picker.BLOB_LOWPASS) and keeps it where its peaks are higher. On apoferritin
    (seeds 300-301, not used for tuning) F1 1.0 against 0.964 without (recall 0.93 -> 1.0); 20 s (the 24-mer)."""
    torch.set_num_threads(1)
    f1, rows = pooled_f1("apoferritin", 1.75, "matched")
    without, rows_without = pooled_f1("apoferritin", 1.75, "matched", blob_lowpass=False)
    assert f1 >= 0.98 and f1 > without, (rows, rows_without)
    img, xy, clean, ctf, d, vol, _ = simulated("apoferritin", 1.75, SEEDS[0])
    picks = pick_micrograph(img, pixel_size=1.75, params=PickParams(diameter=d), ctf=ctf)
    assert (picks.blob_radius, picks.blob_cavity, picks.blob_lowpass) == (0.45, 0.3, 0.33)


@pytest.mark.parametrize("name,apix,target", [("phantom", 1.75, 0.95), ("ribosome", 2.5, 0.98),
                                              pytest.param("apoferritin", 1.75, 0.95, marks=pytest.mark.slow),
                                              pytest.param("apoferritin", 1.2, 0.95, marks=pytest.mark.slow)])
def test_template_picker_f1(name, apix, target):
    """Templates from projections of the map (HEALPix order 1, 15° in-plane; 10° gave the same F1 on seeds 300-302
    at 1.5 times the time) reach the issue's F1 >= 0.95; apoferritin's views change faster with the direction
    and its directions go to order 2 (cryolens.picking.templates.map_templates).

    The elongated phantom's false positives were CTF side lobes ~0.87 diameters from strong
    particles (F1 0.90); subtracting the side lobes that accepted particles predict
    (cryolens.picking.templates.side_lobes) brought it to 0.96 here, the ribosome to 0.99."""
    torch.set_num_threads(1)
    f1, rows = pooled_f1(name, apix, "template")
    assert f1 >= target, rows


@pytest.mark.parametrize("name,apix", [pytest.param("phantom", 1.2, marks=pytest.mark.slow),  # 22 s
                                       ("phantom", 1.75), ("ribosome", 1.6)])
def test_log_picker_f1(name, apix):
    """Laplacian of Gaussian over a diameter range (d to 1.1 d) finds the particles too."""
    d = 150.0 if name == "phantom" else 220.0
    f1, rows = pooled_f1(name, apix, "log", diameter_max=1.1 * d)
    assert f1 >= 0.85, rows


def test_template_from_class_averages():
    """2D templates (white-on-black images at their own pixel size) work like map projections."""
    img, xy, clean, ctf, d, vol, _ = simulated("ribosome", 2.5, SEEDS[0])
    classes = map_projections(vol, pixel_size=2.5, out_pixel_size=5.0, healpix_order=0)  # 12 "class averages"
    picks = pick_micrograph(img, pixel_size=2.5, params=PickParams(diameter=d, method="template"), ctf=ctf,
                            templates=classes, template_pixel_size=5.0)
    assert scored(picks.xy().numpy(), xy, clean, 0.2 * d / 2.5).f1 >= 0.9


def test_particles_are_dark_and_the_picker_relies_on_it():
    """Sign check: simulated particles (phantom on the scattering scale, ribosome map on an arbitrary one) are
    darker than the ice around them at low resolution, as protein is at usual underfocus (measured on
    `simulate micrographs` without carbon: -3.7 SD of the 14 Å-blurred micrograph at the true centres
    for the phantom, -2.2 for the ribosome; -3.1 in a `simulate movies` frame sum), and the picker's score depends on that sign: the negated micrograph
    picks nothing right, so the F1 tests above cannot pass by a sign coincidence."""
    from scipy.ndimage import gaussian_filter

    for name, apix in [("phantom", 1.75), ("ribosome", 2.5)]:
        img, xy, clean, ctf, d, vol, _ = simulated(name, apix, SEEDS[0])
        a = np.pad(gaussian_filter(img.double().numpy(), 20 / apix), 200, mode="reflect")
        c = xy[clean].round().astype(int) + 200
        ring = 0.8 * d / apix * np.exp(2j * np.pi * np.arange(8) / 8)  # the ice around each particle
        around = a[c[:, 1:2] + ring.imag.round().astype(int), c[:, 0:1] + ring.real.round().astype(int)].mean(1)
        assert (a[c[:, 1], c[:, 0]] < around).mean() > 0.8, name
        flipped = pick_micrograph(-img, pixel_size=apix, params=PickParams(diameter=d), ctf=ctf)
        assert scored(flipped.xy().numpy(), xy, clean, 0.2 * d / apix).f1 < 0.2, name


# ------------------------------------------------------------------------- geometry of the picks

def test_no_duplicates_edge_margin_and_rescore():
    img, xy, clean, ctf, d, vol, _ = simulated("phantom", 1.75, SEEDS[0])
    params = PickParams(diameter=d, min_distance=120.0, edge=200.0)
    picks = pick_micrograph(img, pixel_size=1.75, params=params, ctf=ctf)
    p = picks.xy().numpy()
    assert len(p) > 5
    dist = np.hypot(*(p[:, None, :] - p[None, :, :]).transpose(2, 0, 1)) + np.eye(len(p)) * 1e9
    assert dist.min() >= 120.0 / 1.75 - 1.0  # sub-pixel refinement may move a peak by < 1 score-map pixel
    margin = 200.0 / 1.75
    assert (p >= margin - 1).all() and (p <= 1023 - margin + 1).all()
    # re-selection equals picking again with the new options
    again = pick_micrograph(img, pixel_size=1.75, params=PickParams(diameter=d, min_distance=120.0, edge=200.0,
                                                                     threshold=5.0, max_per_micrograph=7), ctf=ctf)
    sel = select_picks(picks, threshold=5.0, max_per_micrograph=7)
    assert len(sel) == len(again) <= 7
    assert torch.allclose(sel.xy(), again.xy()) and (sel.score > 5.0).all()
    with pytest.raises(ValueError, match="--threshold"):
        select_picks(picks, threshold=picks.floor - 1)


def test_picks_avoid_carbon_and_contaminants():
    """No pick on the carbon film or on/at the rim of a contaminant (within 1/4 diameter of it)."""
    for name, apix in [("phantom", 1.75), ("ribosome", 2.5)]:
        for seed in SEEDS:
            img, xy, clean, ctf, d, vol, truth = simulated(name, apix, seed)
            picks = pick_micrograph(img, pixel_size=apix, params=PickParams(diameter=d), ctf=ctf)
            x, y = picks.x.numpy(), picks.y.numpy()
            edge = truth.extras["carbon"]
            assert not edge.on_carbon(x, y).any()
            rim = d / 4 / apix
            for b in truth.extras["contaminants"]:
                assert ((x - b.x) ** 2 + (y - b.y) ** 2 >= (max(b.a, b.b) + rim) ** 2).all(), (name, seed)
            # and the same without avoidance does pick there (the test is not vacuous)
    off = pick_micrograph(img, pixel_size=apix, params=PickParams(diameter=d, avoid_blobs=False), ctf=ctf)
    on_bad = edge.on_carbon(off.x.numpy(), off.y.numpy()).sum() + sum(
        (((off.x.numpy() - b.x) ** 2 + (off.y.numpy() - b.y) ** 2) < (max(b.a, b.b) + rim) ** 2).sum()
        for b in truth.extras["contaminants"])
    assert on_bad > 0


def test_synthetic_dark_disc_is_avoided(device):
    """A dark disc pasted onto a micrograph gets no picks on it or at its rim; picks elsewhere stay."""
    img, xy, clean, ctf, d, vol, _ = simulated("phantom", 1.75, SEEDS[1])
    img = img.clone()
    yy, xx = torch.meshgrid(torch.arange(1024.0), torch.arange(1024.0), indexing="ij")
    cx, cy, r = 700.0, 300.0, 90.0
    disc = ((xx - cx) ** 2 + (yy - cy) ** 2) < r * r
    img[disc] *= 0.6
    picks = pick_micrograph(img.to(device), pixel_size=1.75, params=PickParams(diameter=d), ctf=ctf, device=device)
    x, y = picks.x.cpu().numpy(), picks.y.cpu().numpy()
    assert (np.hypot(x - cx, y - cy) > r + d / 4 / 1.75).all()
    assert len(picks) >= 5


# ------------------------------------------------------------------------------------- unit checks

def test_match_picks_counts():
    truth = np.array([[10.0, 10.0], [50.0, 50.0], [90.0, 10.0]])
    picks = np.array([[11.0, 10.0], [10.5, 10.5], [52.0, 50.0], [200.0, 200.0]])  # a duplicate, a miss, a stray
    m = match_picks(picks, truth, 5.0)
    assert (m.tp, m.fp, m.fn) == (2, 2, 1)
    assert math.isclose(m.precision, 0.5) and math.isclose(m.recall, 2 / 3)
    assert math.isclose(m.f1, 2 * 0.5 * (2 / 3) / (0.5 + 2 / 3))
    assert match_picks(np.zeros((0, 2)), truth, 5.0).f1 == 0.0


def test_consensus_counts_agreeing_sets():
    a = torch.tensor([[10.0, 10.0], [100.0, 100.0], [300.0, 300.0]])
    b = torch.tensor([[12.0, 9.0], [101.0, 99.0]])
    c = torch.tensor([[11.0, 11.0], [500.0, 500.0], [10.5, 10.5]])  # two picks of one set on one particle
    xy, score = consensus([a, b, c], radius=5.0)
    found = {(round(float(p[0])), round(float(p[1]))): int(s) for p, s in zip(xy, score)}
    assert found[(11, 10)] == 3 and found[(100, 100)] == 2 and found[(300, 300)] == 1 and found[(500, 500)] == 1
    assert len(found) == 4 and list(score) == sorted(score.tolist(), reverse=True)


def test_non_maximum_suppression_is_greedy():
    """A chain a > b > c with |ab|, |bc| < r < |ac|: greedy keeps a and c (b is suppressed by a)."""
    xy = torch.tensor([[0.0, 0.0], [8.0, 0.0], [16.0, 0.0]])
    keep = suppress_non_maxima(xy, torch.tensor([3.0, 2.0, 1.0]), 10.0)
    assert keep.tolist() == [0, 2]


def test_halo_drops_weak_side_lobes_only():
    """With a halo, a weak peak just beyond the minimum distance goes; a comparable neighbour stays."""
    xy = torch.tensor([[0.0, 0.0], [12.0, 0.0], [0.0, 12.0]])
    score = torch.tensor([10.0, 5.0, 9.0])
    assert sorted(suppress_non_maxima(xy, score, 10.0).tolist()) == [0, 1, 2]
    assert sorted(suppress_non_maxima(xy, score, 10.0, halo=(15.0, 0.7)).tolist()) == [0, 2]


def test_dense_and_grid_suppression_agree():
    """The K×K path (up to ``dense`` peaks) and the grid-cell path give the same greedy result, halo included."""
    g = torch.Generator().manual_seed(3)
    xy = torch.rand(600, 2, generator=g) * 200
    score = torch.rand(600, generator=g) * 5
    for halo in (None, (15.0, 0.7)):
        dense = suppress_non_maxima(xy, score, 10.0, halo=halo)
        grid = suppress_non_maxima(xy, score, 10.0, halo=halo, dense=0)
        assert dense.tolist() == grid.tolist()


def test_local_mean_sd_on_a_coarser_grid():
    """``step`` samples the same smooth maps at every step-th pixel (equal away from the mirrored borders)."""
    g = torch.Generator().manual_seed(4)
    x = torch.randn(238, 240, generator=g).cumsum(0).cumsum(1) * 0.01 + torch.randn(238, 240, generator=g)
    mean, sd = local_mean_sd(x, sigma_px=5.0)
    mean2, sd2 = local_mean_sd(x, sigma_px=5.0, step=2)
    assert mean2.shape == (119, 120)
    assert torch.allclose(mean2[8:-8, 8:-8], mean[::2, ::2][8:-8, 8:-8], atol=1e-4)
    assert torch.allclose(sd2[8:-8, 8:-8], sd[::2, ::2][8:-8, 8:-8], atol=1e-4)


def test_fourier_crop_keeps_values():
    img = torch.full((64, 96), 5.0)
    assert torch.allclose(fourier_crop_2d(img, (32, 48)), torch.full((32, 48), 5.0), atol=1e-5)
    x = torch.arange(96.0)
    wave = torch.cos(2 * math.pi * 3 * x / 96)[None].expand(64, 96)
    out = fourier_crop_2d(wave, (32, 48))
    assert torch.allclose(out, torch.cos(2 * math.pi * 3 * torch.arange(48.0) / 48)[None].expand(32, 48), atol=1e-5)


def test_params_validation_names_flags():
    PickParams().validate()  # a re-selection needs no diameter; picking does:
    with pytest.raises(ValueError, match="--diameter is needed"):
        pick_micrograph(torch.zeros(64, 64), pixel_size=1.0, params=PickParams())
    with pytest.raises(ValueError, match="--diameter-max"):
        PickParams(diameter=200.0, diameter_max=100.0).validate()
    with pytest.raises(ValueError, match="--method"):
        PickParams(diameter=200.0, method="magic").validate()
    with pytest.raises(ValueError, match="--diameter"):
        pick_micrograph(torch.zeros(64, 64), pixel_size=1.0, params=PickParams(diameter=100.0))
    with pytest.raises(ValueError, match="templates"):
        pick_micrograph(torch.randn(256, 256), pixel_size=2.0, params=PickParams(diameter=100.0, method="template"))


def test_template_bank_matches_direct_correlation():
    """The low-rank bank (kept whole) gives the direct NCC of every template; ``where`` scores a subset only."""
    from cryolens.picking.bank import correlate_bank, template_bank
    from cryolens.picking.templates import correlate_templates, prepare_templates

    g = torch.Generator().manual_seed(0)
    shape = (96, 80)
    raw = torch.randn(3, 21, 21, generator=g)
    prepared = prepare_templates(raw, pixel_size=2.0, out_pixel_size=2.0, diameter=30.0, psi_step=45.0)  # 24
    image_ft = torch.fft.rfft2(torch.randn(shape, generator=g))
    ky = torch.fft.fftfreq(shape[0])[:, None]
    kx = torch.fft.rfftfreq(shape[1])[None, :]
    transfer = torch.cos(40 * (kx * kx + ky * ky)) * torch.exp(-8 * (kx * kx + ky * ky))  # a CTF-like real filter
    best, index, denom = correlate_templates(image_ft, shape, prepared, transfer=transfer, mask_radius_px=7.5)
    bank = template_bank(prepared, tolerance=1e-9)
    b2, i2, d2 = correlate_bank(image_ft, shape, bank, transfer=transfer, mask_radius_px=7.5, chunk=1000)
    assert torch.allclose(b2, best, atol=1e-4) and torch.allclose(d2, denom)
    assert (i2 == index).float().mean() > 0.99
    where = torch.zeros(shape, dtype=torch.bool)
    where[10:50, 20:60] = True
    b3, i3, _ = correlate_bank(image_ft, shape, bank, transfer=transfer, mask_radius_px=7.5, where=where)
    assert torch.allclose(b3[where], best[where], atol=1e-4)
    assert torch.allclose(b3[~where], b3[where].median().expand(int((~where).sum())))
    small = template_bank(prepared, tolerance=0.05)
    assert small.coeffs.shape[1] < bank.coeffs.shape[1] and small.energy >= 0.95
    # kept whole, the band-weighted factorisation (the picker's: basis Uᵀ·T, not orthonormal) is exact too
    whole = template_bank(prepared, tolerance=1e-9, band_px=(2.5, 30.0))
    b4, _, _ = correlate_bank(image_ft, shape, whole, transfer=transfer, mask_radius_px=7.5, chunk=1000)
    assert torch.allclose(b4, best, atol=1e-4)


def test_coarse_fine_scores_equal_full_scores_at_peaks():
    """Scored every other pixel first and in full only near high coarse scores, the NCC map equals the full
    map at the particles' peaks and their 3×3 neighbours (so picks and sub-pixel offsets agree) and at the
    coarse samples (background statistics)."""
    from cryolens.picking.bank import bank_scores, coarse_fine_best, template_bank
    from cryolens.picking.templates import prepare_templates

    g = torch.Generator().manual_seed(1)
    shape = (128, 112)
    yy, xx = torch.meshgrid(torch.arange(21) - 10.0, torch.arange(21) - 10.0, indexing="ij")
    raw = torch.stack([torch.exp(-((yy - a) ** 2 + (xx - b) ** 2) / 18) for a, b in ((0, 0), (3, -2), (-2, 4))])
    prepared = prepare_templates(raw, pixel_size=2.0, out_pixel_size=2.0, diameter=30.0, psi_step=45.0)
    image = torch.randn(shape, generator=g)
    planted = ((40, 31), (81, 70), (50, 91))
    for k, (r, c) in enumerate(planted):
        image[r - 10:r + 11, c - 10:c + 11] += 2 * prepared[k * 8] / prepared[k * 8].std()
    image_ft = torch.fft.rfft2(image)
    ky = torch.fft.fftfreq(shape[0])[:, None]
    kx = torch.fft.rfftfreq(shape[1])[None, :]
    transfer = torch.exp(-3 * (kx * kx + ky * ky))
    bank = template_bank(prepared, tolerance=1e-9)
    scores = bank_scores(image_ft, shape, bank, transfer=transfer, mask_radius_px=7.5)
    where = torch.zeros(shape, dtype=torch.bool)
    where[8:-8, 8:-8] = True
    full = torch.zeros(shape)
    full[where] = scores.best(torch.nonzero(where.reshape(-1))[:, 0])
    # the maps formed on the coarse grid only (a folded spectrum), the other pixels scored directly
    strided = bank_scores(image_ft, shape, bank, transfer=transfer, mask_radius_px=7.5, stride=2, origin=(1, 1))
    assert strided.maps.shape[1] == (shape[0] // 2) * (shape[1] // 2)
    pix = torch.nonzero(where.reshape(-1))[:, 0]
    assert torch.allclose(strided.best(pix), full[where], atol=1e-5)
    for stride, origin in ((3, (2, 1)), (4, (0, 3))):  # other grids: the full maps, sampled
        other = bank_scores(image_ft, shape, bank, transfer=transfer, mask_radius_px=7.5, stride=stride, origin=origin)
        assert torch.allclose(other.best(pix), full[where], atol=1e-5)
    cf = coarse_fine_best(strided, where, floor=1.5, window=1)
    assert torch.allclose(cf[1::2, 1::2][where[1::2, 1::2]], full[1::2, 1::2][where[1::2, 1::2]], atol=1e-5)
    for r, c in planted:
        win = full[r - 3:r + 4, c - 3:c + 4]
        i = int(win.argmax())
        pr, pc = r - 3 + i // 7, c - 3 + i % 7  # the particle's peak
        assert torch.allclose(cf[pr - 1:pr + 2, pc - 1:pc + 2], full[pr - 1:pr + 2, pc - 1:pc + 2], atol=1e-6)
    assert int((cf != full).sum()) > where.sum() // 2  # most pixels were not scored in full
    # in bfloat16 (the picker's products where the hardware multiplies in it): within its precision, same peaks
    half = bank_scores(image_ft, shape, bank, transfer=transfer, mask_radius_px=7.5, stride=2, origin=(1, 1),
                       dtype=torch.bfloat16)
    assert half.weights.dtype == torch.bfloat16 and half.best(pix).dtype == torch.float32
    assert (half.best(pix) - full[where]).abs().max() < 0.01 * full.abs().max()
    cf16 = coarse_fine_best(half, where, floor=1.5, window=1)
    for r, c in planted:
        win, win16 = full[r - 3:r + 4, c - 3:c + 4], cf16[r - 3:r + 4, c - 3:c + 4]
        assert int(win.argmax()) == int(win16.argmax())
        assert abs(float(win16.max() - win.max())) < 0.01 * float(win.max())


def test_fast_matmul_dtype_is_bfloat16_only_where_it_is_faster(monkeypatch):
    """The picker's products go to bfloat16 only where a timed product says it is at least 1.5x faster."""
    import cryolens.core.device as device

    monkeypatch.setattr(device, "FAST_DTYPE", {})
    timings = {torch.float32: 2.0, torch.bfloat16: 1.0}
    monkeypatch.setattr(device, "product_seconds", lambda dtype, dev: timings[dtype])
    assert device.fast_matmul_dtype("cpu") == torch.bfloat16
    timings[torch.bfloat16] = 20.0  # a CPU converting bfloat16 in software; the first answer is kept per process
    assert device.fast_matmul_dtype("cpu") == torch.bfloat16
    monkeypatch.setattr(device, "FAST_DTYPE", {})
    assert device.fast_matmul_dtype("cpu") == torch.float32
    monkeypatch.undo()
    assert device.fast_matmul_dtype("cpu") in (torch.float32, torch.bfloat16)  # measured here


def test_template_bank_is_reused_across_micrographs(monkeypatch):
    """The prepared, factorised templates are built once for the same map and options."""
    import cryolens.picking.picker as picker_module

    built = []
    factorise = picker_module.template_bank
    monkeypatch.setattr(picker_module, "template_bank", lambda *a, **k: built.append(1) or factorise(*a, **k))
    img, xy, clean, ctf, d, vol, _ = simulated("ribosome", 2.5, SEEDS[0])
    params = PickParams(diameter=d, method="template", healpix_order=0, psi_step=30.0)
    for _ in range(2):
        pick_micrograph(img, pixel_size=2.5, params=params, ctf=ctf, volume=vol, volume_pixel_size=2.5)
    assert len(built) == 1
    pick_micrograph(img, pixel_size=2.5, params=dataclasses.replace(params, psi_step=45.0), ctf=ctf, volume=vol,
                    volume_pixel_size=2.5)
    assert len(built) == 2


def test_side_lobes_match_direct_correlation():
    """Side lobes computed on a small grid (each template against the other convolved with the kernel of the
    transfer squared, cut to the offsets that enter) equal those of the filtered templates correlated on the
    micrograph's whole grid (to float rounding: nothing is truncated)."""
    from cryolens.picking.templates import prepare_templates, side_lobes, wrap_centred

    g = torch.Generator().manual_seed(1)
    shape = (160, 144)
    f = torch.fft.fftfreq(21)
    smooth = torch.fft.ifft2(torch.fft.fft2(torch.randn(3, 21, 21, generator=g))
                             * torch.exp(-100 * (f[:, None] ** 2 + f[None, :] ** 2))).real  # blobs, not noise
    prepared = prepare_templates(smooth, pixel_size=2.0, out_pixel_size=2.0, diameter=30.0, psi_step=45.0)
    ky = torch.fft.fftfreq(shape[0])[:, None]
    kx = torch.fft.rfftfreq(shape[1])[None, :]
    transfer = torch.cos(40 * (kx * kx + ky * ky)) * torch.exp(-8 * (kx * kx + ky * ky))
    rc = torch.tensor([[60, 60], [60, 68], [66, 63], [55, 58], [70, 70], [62, 53]])
    index = torch.randint(0, prepared.shape[0], (6,), generator=g)
    ncc = torch.linspace(0.6, 0.2, 6)
    denom = 1 + torch.rand(6, generator=g)
    parent = torch.tensor([True, True, True, False, True, False])
    lobes = side_lobes(prepared, shape, transfer=transfer, rc=rc, index=index, ncc=ncc, denom=denom, parent=parent,
                       radius_px=30.0)
    tf = torch.fft.rfft2(wrap_centred(prepared, shape)) * transfer
    tf[:, 0, 0] = 0
    full = torch.fft.irfft2(tf, s=shape)
    full = full / full.square().sum(dim=(-2, -1), keepdim=True).sqrt()
    expect = torch.zeros(6)
    for j in range(6):
        for i in range(j):
            if parent[i] and float(torch.dist(rc[i].float(), rc[j].float())) <= 30.0:
                d = (rc[i] - rc[j]).tolist()
                rho = (torch.roll(full[index[i]], shifts=d, dims=(0, 1)) * full[index[j]]).sum()
                expect[j] += (ncc[i] * denom[i] / denom[j] * rho).clamp_min(0)
    assert expect.abs().max() > 0.05
    assert torch.allclose(lobes, expect, atol=1e-6)


def test_filtered_gram_equals_gram_of_filtered_images():
    """The Gram matrix of the filtered basis, from small transforms (kept per bank) weighted by the kernel's, equals
    the Gram matrix of the basis images filtered on the whole grid."""
    from cryolens.picking.bank import filtered_gram, gram_grid
    from cryolens.picking.templates import wrap_centred

    g = torch.Generator().manual_seed(2)
    shape, m = (120, 100), 15
    basis = torch.randn(5, m, m, generator=g, dtype=torch.float64)
    ky = torch.fft.fftfreq(shape[0], dtype=torch.float64)[:, None]
    kx = torch.fft.rfftfreq(shape[1], dtype=torch.float64)[None, :]
    transfer = torch.cos(40 * (kx * kx + ky * ky)) * torch.exp(-8 * (kx * kx + ky * ky))
    tf = torch.fft.rfft2(wrap_centred(basis, shape).double()) * transfer
    tf[:, 0, 0] = 0
    x = torch.fft.irfft2(tf, s=shape).reshape(5, -1)
    s = gram_grid(m)
    small = torch.fft.rfft2(wrap_centred(basis, (s, s)).double())
    for got in (filtered_gram(basis, transfer, shape), filtered_gram(basis, transfer, shape, basis_ft=small)):
        assert torch.allclose(got.double(), x @ x.T, rtol=1e-4, atol=1e-4 * float((x @ x.T).abs().max()))

"""CTF estimation (cryolens.ctf): analytic spectra, simulated micrographs, real spectra and micrographs.

Ground truth: synthetic CTF² spectra built with core.ctf (exact), the micrograph simulator's
truth (defocus, astigmatism, angle, tilt plane), and real data in shared/data. Default tests
use small micrographs; the multi-micrograph accuracy runs are ``slow``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import cryolens.simulate.micrographs as simmic
from cryolens.core.ctf import CTFParams, ctf_phase_and_envelope
from cryolens.ctf import (CTFFitParams, evaluate_ctf, fit_ctf, fit_ctf_patches, looks_like_power_spectrum,
                          power_spectrum)
from cryolens.ctf.diagnostics import aliasing_frequency
from cryolens.ctf.optics import Optics, ctf_phase_linear
from cryolens.ctf.patches import fit_defocus_plane
from cryolens.ctf.spectrum import spectrum_grid
from cryolens.simulate.structures import phantom_structure

APIX = 1.2
BETAGAL_PS = "metadata/relion5_betagal_project/MotionCorr/job002/Movies/20170629_00021_frameImage_PS.mrc"
BETAGAL = dict(pixel_size=1.3996, voltage=200.0, cs_mm=1.4, amplitude_contrast=0.1)
CTFFIND_ANSWER = dict(defocus_u_A=37034.9, defocus_v_A=35846.5, angle_deg=-14.85)  # CtfFind/job005


def angle_error(a: float, b: float) -> float:
    """|a − b| modulo 180° (an astigmatism azimuth is an axis)."""
    return abs((a - b + 90.0) % 180.0 - 90.0)


def synthetic_spectrum(u, v, angle, phase=0.0, *, box=512, apix=APIX, noise=0.3, seed=0) -> torch.Tensor:
    """Power spectrum ``(b(s) + e(s)·CTF²)²`` with a steep background and multiplicative noise."""
    g = spectrum_grid(box, apix, mask_cross=False, half=False)
    p = CTFParams(defocus_u=torch.tensor([float(u)]), defocus_v=torch.tensor([float(v)]), defocus_angle=angle,
                  voltage=300.0, cs=2.7, amplitude_contrast=0.07, phase_shift=phase)
    chi, _ = ctf_phase_and_envelope(p, g.s2[None], g.cos2, g.sin2)
    amp = 0.01 / (g.s + 0.01) ** 1.5 + torch.exp(-60 * g.s2) * torch.sin(chi[0]) ** 2
    gen = torch.Generator().manual_seed(seed)
    amp = amp * (1 + noise * torch.randn(amp.shape, generator=gen))
    ps = torch.zeros(box * box)
    ps[g.index] = amp.clamp_min(0) ** 2
    ps = ps.reshape(box, box)
    ps[box // 2, box // 2] = 100 * ps.max()  # a DC spike like RELION's
    return ps


def fit(ps, **kw):
    params = CTFFitParams(**kw)
    return fit_ctf(ps, pixel_size=APIX, voltage=300.0, cs_mm=2.7, amplitude_contrast=0.07, params=params)


# ------------------------------------------------------------------------------- kernels


def test_linear_phase_equals_core_ctf():
    """χ linear in (mean, a1, a2, phase) is core.ctf's χ for U, V, angle (RELION ctf.h)."""
    g = spectrum_grid(128, 1.1, s_min=0.01)
    u, v, ang, ph = 21000.0, 19500.0, 37.0, 25.0
    half = (u - v) / 2
    coef = torch.tensor([[(u + v) / 2, half * math.cos(math.radians(2 * ang)), half * math.sin(math.radians(2 * ang)),
                          math.radians(ph)]], dtype=torch.float64)
    optics = Optics(1.1, 300.0, 2.7, 0.07)
    ours = ctf_phase_linear(coef, g, optics)[0]
    ref, _ = ctf_phase_and_envelope(CTFParams(defocus_u=torch.tensor([u]), defocus_v=torch.tensor([v]),
                                              defocus_angle=ang, voltage=300.0, cs=2.7, amplitude_contrast=0.07,
                                              phase_shift=ph), g.s2[None], g.cos2, g.sin2)
    assert torch.allclose(torch.sin(ours).float(), torch.sin(ref[0]), atol=2e-4)


def test_power_spectrum_is_the_tile_average_periodogram():
    x = torch.randn(300, 280, generator=torch.Generator().manual_seed(0))
    p = power_spectrum(x, box=128, overlap=0.5)
    tiles = [x[a:a + 128, b:b + 128] for a in (0, 64, 128, 172) for b in (0, 64, 128, 152)]
    ref = sum(torch.fft.fft2(t - t.mean()).abs() ** 2 for t in tiles) / len(tiles) / 128 ** 2
    assert p.shape == (128, 128)
    assert torch.allclose(p, torch.fft.fftshift(ref), atol=1e-5)
    subsums = torch.stack([x, 2 * x])  # (S, H, W): the average over sub-sums
    assert torch.allclose(power_spectrum(subsums, box=128, overlap=0.5), 2.5 * p, rtol=1e-5)
    with pytest.raises(ValueError):
        power_spectrum(x, box=512, overlap=0.5)


def test_fit_runs_on_one_thread_and_restores_the_callers_count():
    """fit_ctf uses one intra-op thread (latency-bound) and gives the caller's count back, also on errors."""
    from cryolens.ctf.scoring import one_cpu_thread

    n = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with one_cpu_thread("cpu"):
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
        with pytest.raises(ValueError):
            fit(torch.full((128, 128), float("nan")))
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(n)


def test_params_validate():
    CTFFitParams().validate()
    for bad in (dict(box=100 + 1), dict(res_low_A=4.0), dict(search="slow"), dict(defocus_min_A=0.0),
                dict(astigmatism_restraint_A=0.0), dict(patches=(0, 3))):
        with pytest.raises(ValueError):
            CTFFitParams(**bad).validate()


# --------------------------------------------------------------------------- analytic


@pytest.mark.parametrize("u,v,angle,search", [(15000.0, 14200.0, 30.0, "fast"), (8000.0, 7000.0, -60.0, "exhaustive")])
def test_synthetic_spectrum_recovered(u, v, angle, search):
    f = fit(synthetic_spectrum(u, v, angle), search=search)
    assert abs(f.defocus_u_A - u) < 0.002 * u and abs(f.defocus_v_A - v) < 0.002 * v
    assert angle_error(f.angle_deg, angle) < 1.0
    assert f.defocus_u_A >= f.defocus_v_A and -90 < f.angle_deg <= 90
    assert f.cc > 0.6 and f.max_resolution_A < 3.0 and not f.warnings
    assert f.spectrum.shape == f.model.shape == (512, 512)
    band = (f.freq_1d > 1 / 30) & (f.freq_1d < 1 / 5)
    assert np.corrcoef(f.spectrum_1d[band], f.fit_1d[band])[0, 1] > 0.95


def test_synthetic_phase_shift_recovered():
    f = fit(synthetic_spectrum(9000.0, 8600.0, 10.0, phase=70.0, box=256), phase_shift=True, defocus_min_A=2000.0,
            search="fast")
    assert abs(f.phase_shift_deg - 70.0) < 3.0
    assert abs(f.defocus_mean_A - 8800.0) < 0.005 * 8800.0


def test_astigmatism_restraint_pulls_astigmatism_in():
    ps = synthetic_spectrum(15000.0, 14200.0, 30.0, noise=1.0, box=256)
    free = fit(ps, search="fast")
    held = fit(ps, search="fast", astigmatism_restraint_A=50.0)
    assert free.astigmatism_A > 600 and held.astigmatism_A < free.astigmatism_A - 100


def test_aliasing_warning():
    optics = Optics(1.0, 300.0, 2.7, 0.07)
    assert aliasing_frequency(10000.0, optics, 512) is None  # rings ≥ 2 px apart up to Nyquist
    s = aliasing_frequency(40000.0, optics, 128)
    # ring period π / |dχ/ds| · box · apix equals 2 px there
    lam = optics.wavelength
    assert math.pi / (2 * math.pi * lam * 40000.0 * s - 4 * optics.cs_term * s ** 3) * 128 == pytest.approx(2.0, rel=0.01)
    ps = synthetic_spectrum(40000.0, 40000.0, 0.0, box=128, apix=1.0, noise=0.0)
    e = evaluate_ctf(ps, defocus_u_A=40000.0, defocus_v_A=40000.0, angle_deg=0.0, pixel_size=1.0, voltage=300.0,
                     cs_mm=2.7, amplitude_contrast=0.07, params=CTFFitParams(box=128))
    assert e.aliasing_resolution_A == pytest.approx(1 / s, rel=1e-3)
    assert any("aliases" in w for w in e.warnings)


# ------------------------------------------------------------------- simulated micrographs


@pytest.fixture(scope="module")
def phantom():
    return phantom_structure(64, APIX)


def simulate(phantom, *, size=2048, seed=21, index=0, **kw):
    base = dict(n_micrographs=1, width=size, height=size, particles_per_micrograph=int(60 * (size / 1024) ** 2),
                defocus_min=5000.0, defocus_max=30000.0, astigmatism=1000.0, seed=seed)
    base.update(kw)
    return simmic.simulate_micrograph([phantom], None, pixel_size=APIX, params=simmic.MicrographParams(**base),
                                      index=index)


def check_fit(counts, truth, **kw):
    f = fit(power_spectrum(counts, box=512, overlap=0.5), **kw)
    t = truth.ctf
    mean = (t["defocus_u"] + t["defocus_v"]) / 2
    astig = t["defocus_u"] - t["defocus_v"]
    return f, abs(f.defocus_mean_A / mean - 1), astig, angle_error(f.angle_deg, t["defocus_angle"])


def test_simulated_micrograph_defocus_and_angle(phantom):
    """One 2048² micrograph with ice and 520 Å astigmatism: mean defocus within 0.5 %, angle within 5°."""
    counts, truth = simulate(phantom, index=2)  # 22 348 Å, astigmatism 641 Å at 23°
    f, err, astig, dang = check_fit(counts, truth, search="fast")
    assert astig > 300
    assert err < 0.005, f"defocus error {100 * err:.2f}%"
    assert dang < 5.0
    assert f.cc > 0.1 and f.max_resolution_A < 8.0


@pytest.fixture(scope="module")
def accuracy_set(phantom):
    """Six 3072² micrographs (≈ a K3 frame at 1.2 Å) spanning 0.5-3 µm, astigmatism ≤ 1000 Å, 300 Å ice."""
    out = []
    for i in range(6):
        lo, hi = 5000.0 + i * 25000.0 / 6, 5000.0 + (i + 1) * 25000.0 / 6
        counts, truth = simulate(phantom, size=3072, index=i, defocus_min=lo, defocus_max=hi)
        out.append((power_spectrum(counts, box=512, overlap=0.5), truth))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("search", ["exhaustive", "fast"])
def test_simulated_accuracy_over_range(accuracy_set, search):
    """Median |defocus error| < 0.5 % (max < 1 %); angle error < 5° where astigmatism > 300 Å."""
    errs, angs = [], []
    for ps, truth in accuracy_set:
        f = fit(ps, search=search)
        t = truth.ctf
        errs.append(abs(f.defocus_mean_A / ((t["defocus_u"] + t["defocus_v"]) / 2) - 1))
        if t["defocus_u"] - t["defocus_v"] > 300:
            angs.append(angle_error(f.angle_deg, t["defocus_angle"]))
    assert np.median(errs) < 0.005 and max(errs) < 0.01, np.round(np.array(errs) * 100, 3)
    assert len(angs) >= 3 and max(angs) < 5.0, angs


def with_phase_plate(monkeypatch, phase_deg: float):
    """Make the simulator image through a phase plate (its CTF gets ``phase_shift``)."""
    from cryolens.simulate import canvas
    draw, params = simmic.draw_ctf, canvas.ctf_params

    def draw_ctf(*a, **k):
        return {**draw(*a, **k), "phase_shift": phase_deg}

    def ctf_params(ctf, du=0.0, *, device=None):
        p = params(ctf, du, device=device)
        p.phase_shift = ctf.get("phase_shift", 0.0)
        return p

    monkeypatch.setattr(simmic, "draw_ctf", draw_ctf)
    monkeypatch.setattr(canvas, "ctf_params", ctf_params)


@pytest.mark.slow
@pytest.mark.parametrize("phase", [40.0, 90.0, 135.0])
def test_simulated_phase_plate(phantom, monkeypatch, phase):
    """3072² micrographs through a phase plate (0.5-0.8 µm): the phase shift within 5°."""
    with_phase_plate(monkeypatch, phase)
    counts, truth = simulate(phantom, size=3072, index=1, defocus_min=5000.0, defocus_max=8000.0)
    f, err, _, _ = check_fit(counts, truth, search="fast", phase_shift=True, defocus_min_A=2000.0)
    assert abs((f.phase_shift_deg - phase + 90) % 180 - 90) < 5.0
    assert err < 0.02  # phase and defocus trade off (1.1-1.5 % seen here at 0.5-0.8 µm)


# --------------------------------------------------------------------------------- patches


def test_defocus_plane_fit_is_exact_and_robust():
    xy = np.array([(x, y) for y in (100.0, 500.0, 900.0) for x in (150.0, 550.0, 950.0)])
    d = 12000 + 0.4 * (xy[:, 0] - 550) - 0.25 * (xy[:, 1] - 500)
    d[4] += 3000  # one patch on contamination
    c0, gx, gy = fit_defocus_plane(xy, d, np.ones(9), width=1100, height=1000)
    assert (c0, gx, gy) == pytest.approx((12000, 0.4, -0.25), abs=1e-6)


@pytest.mark.slow
def test_patch_plane_recovers_tilt(phantom):
    """38° tilt (0.87, 0.35 Å/px): the plane's gradient within 0.1 Å/px and its centre within 0.5 %."""
    counts, truth = simulate(phantom, seed=1, defocus_min=10000.0, defocus_max=20000.0, astigmatism=500.0,
                             tilt_max=40.0)
    params = CTFFitParams(search="fast", patches=(3, 3))
    kw = dict(pixel_size=APIX, voltage=300.0, cs_mm=2.7, amplitude_contrast=0.07, params=params)
    g = fit_ctf(power_spectrum(counts, box=512, overlap=0.5), **kw)
    pc = fit_ctf_patches(counts, g, **kw)
    t = truth.ctf
    c0, gx, gy = pc.plane
    assert abs(gx - t["gradient_x"]) < 0.1 and abs(gy - t["gradient_y"]) < 0.1, pc.plane
    assert abs(c0 / ((t["defocus_u"] + t["defocus_v"]) / 2) - 1) < 0.005
    assert len(pc.fits) == 9 and pc.centres_px.shape == (9, 2)
    assert pc.defocus_at(1024, 1024) == pytest.approx(c0 + gx * 0 + gy * 0)


def test_patch_plane_on_small_tilted_micrograph(phantom):
    """A 1024² micrograph at high dose, 2 × 2 patches: sign and size of a 38° tilt's gradient."""
    counts, truth = simulate(phantom, size=1024, seed=1, defocus_min=10000.0, defocus_max=20000.0,
                             astigmatism=500.0, tilt_max=40.0, dose=400.0)
    params = CTFFitParams(search="fast", patches=(2, 2), box=256)
    kw = dict(pixel_size=APIX, voltage=300.0, cs_mm=2.7, amplitude_contrast=0.07, params=params)
    pc = fit_ctf_patches(counts, fit_ctf(power_spectrum(counts, box=256, overlap=0.5), **kw), **kw)
    t = truth.ctf
    _, gx, gy = pc.plane
    assert np.sign(gx) == np.sign(t["gradient_x"]) and np.sign(gy) == np.sign(t["gradient_y"])
    assert abs(gx - t["gradient_x"]) < 0.2 and abs(gy - t["gradient_y"]) < 0.2, pc.plane
    assert not looks_like_power_spectrum(counts[:512, :512])


# ------------------------------------------------------------------------------- real data


def read(path):
    from cryolens.io import read_mrc

    data, _ = read_mrc(path)
    return torch.from_numpy(np.array(data, dtype=np.float32))


def test_real_betagal_spectrum_given_as_input(shared_data, device):
    """RELION's power spectrum (given as the spectrum, as --use_given_ps): Thon rings at ~10.7 µm.

    CTFFIND 4.1.14's 37.0/35.8 µm (CC 0.017) does not fit these rings (its diagnostic image
    shows no rings: it was given the spectrum as if it were a micrograph, so it fitted the
    spectrum of the spectrum). Evidence pinned here: CC of both answers on equal terms.
    """
    ps = read(shared_data / BETAGAL_PS).to(device)
    f = fit_ctf(ps, params=CTFFitParams(search="fast"), **BETAGAL)
    assert f.spectrum.device == ps.device
    assert 10400 < f.defocus_v_A <= f.defocus_u_A < 11100
    assert f.astigmatism_A < 500 and f.max_resolution_A < 6.0 and f.cc > 0.25
    assert looks_like_power_spectrum(ps)  # the job can tell a given spectrum from a micrograph
    theirs = evaluate_ctf(ps, params=CTFFitParams(), **CTFFIND_ANSWER, **BETAGAL)
    assert theirs.cc < 0.05 and f.cc > theirs.cc + 0.2
    band = (f.freq_1d > 1 / 30) & (f.freq_1d < 1 / 5)
    ours_1d = np.corrcoef(f.spectrum_1d[band], f.fit_1d[band])[0, 1]
    theirs_1d = np.corrcoef(theirs.spectrum_1d[band], theirs.fit_1d[band])[0, 1]
    assert ours_1d > 0.85 and abs(theirs_1d) < 0.2


@pytest.mark.slow
@pytest.mark.parametrize("name,apix,lo,hi", [("epu2.9_example.mrc", 0.6666, 26500, 28000),
                                             ("fei-extended.mrc", 0.8538, 10200, 10900)])
def test_real_micrographs(shared_data, name, apix, lo, hi):
    """The two real 300 kV micrographs: rings fit to better than 5 Å with a clear CC.

    EPU's header says 1.8 µm nominal, the rings say 2.72 µm (1.8 µm scores CC ≈ 0);
    the Diamond micrograph's nominal 0.9 µm fits at ~1.05 µm.
    """
    img = read(shared_data / "micrographs" / name)
    box = 1024 if apix < 0.7 else 512  # 512 aliases from 6 Å at 2.7 µm and 0.67 Å/px
    params = CTFFitParams(search="fast", box=box, res_high_A=4.0)
    f = fit_ctf(power_spectrum(img, box=box, overlap=0.5), pixel_size=apix, voltage=300.0, cs_mm=2.7,
                amplitude_contrast=0.07, params=params)
    assert lo < f.defocus_v_A <= f.defocus_u_A < hi
    assert f.cc > 0.1 and f.max_resolution_A < 5.0 and not f.warnings

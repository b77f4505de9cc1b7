"""Analytic tests of the Fourier helpers (core/fourier.py) and the CTF (core/ctf.py).

Every expectation is an analytic fact (Parseval, band-limited sampling, phase
ramps, the zeros of sin χ, RELION's wavelength formula), not a stored output.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cryolens.core.ctf import CTFParams, ctf_1d, ctf_2d, electron_wavelength
from cryolens.core.fourier import (
    bandpass, fourier_resize, freq_grid_2d, ft2, ft3, ift2, ift3, radial_filter, radius_2d, radius_3d,
    resample, rfft_weights, shell_average, shell_index, shift_phase,
)
from helpers import assert_allclose, centred_coords


def _rng(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _cosines(coords, terms):
    """Sum of ``a·cos(2π (k · r) / L + φ)`` at coordinates ``coords`` (one tensor per axis, x first).

    ``terms`` are ``(a, k, φ)`` with ``k`` integer cycles per box length ``L`` per axis (x first).
    ``coords`` are in the same length unit as ``L`` (see the callers).
    """
    out = 0.0
    for a, k, phi, L in terms:
        arg = sum(ki * ci for ki, ci in zip(k, coords))
        out = out + a * torch.cos(2 * math.pi * arg / L + phi)
    return out


# ----------------------------------------------------------------------------------------
# FFT layout, Parseval and round trips
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [32, 33])
def test_ft2_parseval_with_rfft_weights(device, n):
    x = torch.randn(3, n, n, generator=_rng(1), dtype=torch.float64).to(device)
    f = ft2(x)
    assert f.shape == (3, n, n // 2 + 1)
    w = rfft_weights(n, ndim=2, device=device)
    lhs = (x * x).sum(dim=(-2, -1))
    rhs = (w * f.abs() ** 2).sum(dim=(-2, -1)) / n**2
    assert_allclose(rhs, lhs, rtol=1e-10, what="Parseval 2-D")


@pytest.mark.parametrize("n", [16, 17])
def test_ft3_parseval_with_rfft_weights(device, n):
    x = torch.randn(2, n, n, n, generator=_rng(2), dtype=torch.float64).to(device)
    f = ft3(x)
    assert f.shape == (2, n, n, n // 2 + 1)
    w = rfft_weights(n, ndim=3, device=device)
    lhs = (x * x).sum(dim=(-3, -2, -1))
    rhs = (w * f.abs() ** 2).sum(dim=(-3, -2, -1)) / n**3
    assert_allclose(rhs, lhs, rtol=1e-10, what="Parseval 3-D")


@pytest.mark.parametrize("n", [32, 33])
def test_ft2_ift2_and_ft3_ift3_round_trip(device, n):
    x2 = torch.randn(4, n, n, generator=_rng(3)).to(device)
    assert_allclose(ift2(ft2(x2), n), x2, atol=1e-5, what="ift2(ft2(x))")
    x3 = torch.randn(n, n, n, generator=_rng(4)).to(device)
    assert_allclose(ift3(ft3(x3), n), x3, atol=1e-5, what="ift3(ft3(x))")


@pytest.mark.parametrize("n", [32, 33])
def test_transform_centre_is_index_n_over_2(device, n):
    """A delta at the box centre ``n // 2`` has a flat, real spectrum (phase 0 everywhere)."""
    img = torch.zeros(n, n, device=device)
    img[n // 2, n // 2] = 1.0
    assert_allclose(ft2(img), torch.ones(n, n // 2 + 1, dtype=torch.complex64), atol=1e-6, what="ft2(delta)")
    vol = torch.zeros(n, n, n, device=device)
    vol[n // 2, n // 2, n // 2] = 1.0
    assert_allclose(ft3(vol), torch.ones(n, n, n // 2 + 1, dtype=torch.complex64), atol=1e-6, what="ft3(delta)")


def test_rfft_weights_values():
    w = rfft_weights(8, ndim=2)
    assert w.shape == (8, 5)
    assert w[0].tolist() == [1.0, 2.0, 2.0, 2.0, 1.0]
    w = rfft_weights(7, ndim=3)
    assert w.shape == (7, 7, 4)
    assert w[3, 2].tolist() == [1.0, 2.0, 2.0, 2.0]


# ----------------------------------------------------------------------------------------
# Fourier cropping / padding and resampling
# ----------------------------------------------------------------------------------------

# (n, new_n): crop and pad, even and odd boxes, integer and non-integer ratios.
RESIZE_CASES = [(64, 32), (64, 40), (60, 45), (48, 33), (33, 48), (32, 64), (45, 60)]


def _bandlimited_terms(n: int, new_n: int, ndim: int, seed: int):
    """A few random cosines strictly below both Nyquist frequencies."""
    kmax = min(n, new_n) // 2 - 1
    g = np.random.default_rng(seed)
    terms = []
    for _ in range(5):
        k = tuple(int(v) for v in g.integers(-kmax, kmax + 1, size=ndim))
        terms.append((float(g.uniform(0.5, 1.5)), k, float(g.uniform(0, 2 * math.pi)), n))
    terms.append((1.0, (0,) * ndim, 0.0, n))  # a DC offset
    return terms


@pytest.mark.parametrize("n,new_n", RESIZE_CASES)
def test_fourier_resize_2d_is_exact_on_bandlimited_images(device, n, new_n):
    """Cropping/padding samples the same band-limited function on the new grid (same box length)."""
    terms = _bandlimited_terms(n, new_n, 2, seed=n * 100 + new_n)
    y, x = centred_coords(n, ndim=2, device=device, dtype=torch.float64)
    img = _cosines((x, y), terms)
    out = fourier_resize(img, new_n, ndim=2)
    assert out.shape == (new_n, new_n)
    # new pixel j sits at (j - new_n//2) * n / new_n old pixels from the centre
    y2, x2 = (c * (n / new_n) for c in centred_coords(new_n, ndim=2, device=device, dtype=torch.float64))
    assert_allclose(out, _cosines((x2, y2), terms), atol=1e-9, what=f"resize {n}->{new_n}")


@pytest.mark.parametrize("n,new_n", [(32, 20), (20, 27)])
def test_fourier_resize_3d_is_exact_on_bandlimited_volumes(device, n, new_n):
    terms = _bandlimited_terms(n, new_n, 3, seed=7)
    z, y, x = centred_coords(n, ndim=3, device=device, dtype=torch.float64)
    vol = _cosines((x, y, z), terms)
    out = fourier_resize(vol, new_n, ndim=3)
    z2, y2, x2 = (c * (n / new_n) for c in centred_coords(new_n, ndim=3, device=device, dtype=torch.float64))
    assert_allclose(out, _cosines((x2, y2, z2), terms), atol=1e-9, what=f"resize 3-D {n}->{new_n}")


def test_fourier_resize_keeps_shared_samples_when_halving(device):
    """64 -> 32 of a band-limited image: new pixel j equals old pixel 2j (both grids centred at n//2)."""
    terms = _bandlimited_terms(64, 32, 2, seed=3)
    y, x = centred_coords(64, ndim=2, device=device, dtype=torch.float64)
    img = _cosines((x, y), terms)
    out = fourier_resize(img, 32, ndim=2)
    assert_allclose(out, img[::2, ::2], atol=1e-9, what="shared samples")


@pytest.mark.parametrize("n,up", [(33, 48), (33, 47), (45, 64)])
def test_fourier_resize_up_then_down_is_identity_odd_box(device, n, up):
    x = torch.randn(2, n, n, generator=_rng(5), dtype=torch.float64).to(device)
    back = fourier_resize(fourier_resize(x, up, ndim=2), n, ndim=2)
    assert_allclose(back, x, atol=1e-9, what=f"{n}->{up}->{n}")


@pytest.mark.parametrize("n,up", [(32, 48), (32, 64), (32, 49)])
def test_fourier_resize_up_then_down_is_identity_bandlimited_even_box(device, n, up):
    """Even box without Nyquist content: padding then cropping returns the image."""
    x = torch.randn(2, n, n, generator=_rng(6), dtype=torch.float64).to(device)
    f = torch.fft.fft2(x)
    f[..., n // 2, :] = 0
    f[..., :, n // 2] = 0
    x = torch.fft.ifft2(f).real
    back = fourier_resize(fourier_resize(x, up, ndim=2), n, ndim=2)
    assert_allclose(back, x, atol=1e-9, what=f"{n}->{up}->{n}")


@pytest.mark.parametrize("ndim", [1, 2, 3])
def test_fourier_resize_up_then_down_is_identity_even_box(ndim):
    n = 16 if ndim == 3 else 32
    x = torch.randn(*([n] * ndim), generator=_rng(7), dtype=torch.float64)
    back = fourier_resize(fourier_resize(x, n + 16, ndim=ndim), n, ndim=ndim)
    assert_allclose(back, x, atol=1e-9, what=f"{ndim}-D {n}->{n + 16}->{n}")


def test_fourier_resize_crop_keeps_content_at_new_nyquist():
    """cos(2π (16 y + 3 x)/64 + φ) sampled every other pixel is (-1)^j cos(2π 3 x/64 + φ): representable."""
    n = 64
    y, x = centred_coords(n, ndim=2, dtype=torch.float64)
    terms = [(1.0, (3, 16), 0.7, n)]
    out = fourier_resize(_cosines((x, y), terms), 32, ndim=2)
    assert_allclose(out, _cosines((x[::2, ::2], y[::2, ::2]), terms), atol=1e-9, what="new-Nyquist content")


@pytest.mark.parametrize("new_apix,new_n", [(2.0, 32), (0.8, 80), (1.6, 40)])
def test_resample_changes_pixel_size(device, new_apix, new_n):
    n, apix = 64, 1.0
    L = n * apix  # box length in Å, unchanged by resampling
    terms = [(a, k, phi, L) for a, k, phi, _ in _bandlimited_terms(n, new_n, 2, seed=11)]
    y, x = (c * apix for c in centred_coords(n, ndim=2, device=device, dtype=torch.float64))
    out = resample(_cosines((x, y), terms), apix, new_apix, ndim=2)
    assert out.shape == (new_n, new_n)
    exact_apix = n * apix / new_n
    y2, x2 = (c * exact_apix for c in centred_coords(new_n, ndim=2, device=device, dtype=torch.float64))
    assert_allclose(out, _cosines((x2, y2), terms), atol=1e-9, what=f"resample {apix}->{new_apix} Å")


# ----------------------------------------------------------------------------------------
# Phase shifts
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [32, 33])
def test_shift_phase_integer_equals_roll(device, n):
    """Positive dx moves content towards +x (higher column index), like torch.roll."""
    imgs = torch.randn(4, n, n, generator=_rng(8)).to(device)
    shifts = torch.tensor([[3.0, 0.0], [0.0, -5.0], [-2.0, 7.0], [n + 1.0, 2.0]], device=device)
    out = ift2(shift_phase(ft2(imgs), shifts, n), n)
    for b in range(4):
        dx, dy = (int(v) for v in shifts[b].tolist())
        assert_allclose(out[b], torch.roll(imgs[b], shifts=(dy, dx), dims=(-2, -1)), atol=1e-5,
                        what=f"shift {(dx, dy)}")


def test_shift_phase_moves_a_delta_to_plus_x(device):
    n = 32
    img = torch.zeros(1, n, n, device=device)
    img[0, n // 2, n // 2] = 1.0
    out = ift2(shift_phase(ft2(img), torch.tensor([[4.0, -3.0]], device=device), n), n)
    iy, ix = divmod(int(torch.argmax(out[0])), n)
    assert (ix - n // 2, iy - n // 2) == (4, -3)


def test_shift_phase_subpixel_shifts_bandlimited_content(device):
    """A sub-pixel phase shift samples the shifted band-limited function; the inverse shift undoes it."""
    n = 48
    terms = [(a, k, phi, n) for a, k, phi, _ in _bandlimited_terms(n, n, 2, seed=13)]
    y, x = centred_coords(n, ndim=2, device=device, dtype=torch.float64)
    img = _cosines((x, y), terms)[None]
    s = torch.tensor([[0.37, -1.62]], dtype=torch.float64, device=device)
    moved = ift2(shift_phase(ft2(img), s, n), n)
    assert_allclose(moved[0], _cosines((x - 0.37, y + 1.62), terms), atol=1e-9, what="sub-pixel shift")
    back = ift2(shift_phase(ft2(moved), -s, n), n)
    assert_allclose(back, img, atol=1e-9, what="shift then inverse shift")


# ----------------------------------------------------------------------------------------
# Filters and shell averages
# ----------------------------------------------------------------------------------------


def _two_cosines(n: int, apix: float, device):
    """A 30 Å cosine along x and a 5 Å cosine along y in an n-pixel box (n·apix divisible by 30 and 5)."""
    y, x = (c * apix for c in centred_coords(n, ndim=2, device=device))
    low = torch.cos(2 * math.pi * x / 30.0)
    high = 0.5 * torch.cos(2 * math.pi * y / 5.0 + 0.3)
    return low, high


def test_bandpass_lowpass_and_highpass_2d(device):
    n, apix = 60, 1.0
    low, high = _two_cosines(n, apix, device)
    lp = bandpass(low + high, pixel_size=apix, high_res=10.0)
    assert_allclose(lp, low, atol=1e-5, what="low-pass at 10 Å")
    hp = bandpass(low + high, pixel_size=apix, low_res=15.0)
    assert_allclose(hp, high, atol=1e-5, what="high-pass at 15 Å")
    bp = bandpass(low + high + 2.0, pixel_size=apix, low_res=50.0, high_res=10.0, edge_width=1.0)
    assert_allclose(bp, low, atol=1e-5, what="band-pass 50-10 Å (removes the DC offset too)")


def test_bandpass_lowpass_3d(device):
    n, apix = 30, 1.0
    z, y, x = (c * apix for c in centred_coords(n, ndim=3, device=device))
    low = torch.cos(2 * math.pi * z / 30.0)
    high = torch.cos(2 * math.pi * (x / 5.0))
    out = bandpass(low + high, pixel_size=apix, high_res=10.0, ndim=3)
    assert_allclose(out, low, atol=1e-5, what="3-D low-pass at 10 Å")


def test_radial_filter_edge(device):
    n, apix = 64, 1.5
    r = radius_2d(n, device=device)
    w = radial_filter(r, n=n, pixel_size=apix, high_res=8.0, edge_width=4.0)
    r0 = n * apix / 8.0  # 12 Fourier pixels
    assert torch.all(w[r <= r0 - 2] == 1)
    assert torch.all(w[r >= r0 + 2] == 0)
    assert torch.all((w >= 0) & (w <= 1))
    # exactly half-way at the cutoff radius
    assert float(radial_filter(torch.tensor([r0]), n=n, pixel_size=apix, high_res=8.0, edge_width=4.0)) == \
        pytest.approx(0.5, abs=1e-6)


def test_shell_average_of_constant_is_constant(device):
    n = 24
    r = radius_3d(n, device=device)
    shells = shell_index(r)
    vals = torch.full((2, n, n, n // 2 + 1), 3.25, device=device)
    avg = shell_average(vals, shells, n // 2 + 1)
    assert_allclose(avg, torch.full((2, n // 2 + 1), 3.25), atol=1e-6, what="shell average of a constant")
    avg_w = shell_average(vals[0], shells, n // 2 + 1, weights=rfft_weights(n, ndim=3, device=device))
    assert_allclose(avg_w, torch.full((n // 2 + 1,), 3.25), atol=1e-6, what="weighted shell average")
    # values equal to their shell index average to that index
    idx = shell_average(shells.float(), shells, n // 2 + 1)
    assert_allclose(idx, torch.arange(n // 2 + 1, dtype=torch.float32), atol=1e-5, what="shell index")


# ----------------------------------------------------------------------------------------
# CTF
# ----------------------------------------------------------------------------------------


def test_electron_wavelength():
    assert electron_wavelength(300.0) == pytest.approx(0.019687, abs=1e-5)
    assert electron_wavelength(200.0) == pytest.approx(0.025079, abs=1e-5)
    assert electron_wavelength(100.0) == pytest.approx(0.037014, abs=1e-5)
    t = electron_wavelength(torch.tensor([300.0, 200.0]))
    assert_allclose(t, torch.tensor([0.019687, 0.025079]), atol=1e-5, what="tensor wavelength")


def _params(**kw) -> CTFParams:
    base = dict(defocus_u=15000.0, defocus_v=15000.0, defocus_angle=0.0, voltage=300.0, cs=2.7,
                amplitude_contrast=0.1, phase_shift=0.0, bfactor=0.0)
    base.update(kw)
    return CTFParams(**{k: torch.as_tensor(v, dtype=torch.float32) if not isinstance(v, float) else v
                        for k, v in base.items()})


@pytest.mark.parametrize("voltage,defocus", [(300.0, 15000.0), (200.0, 8000.0)])
def test_ctf_1d_zeros_without_cs_and_amplitude_contrast(device, voltage, defocus):
    """With Cs = 0 and Q0 = 0, CTF = sin(π λ Δf s²): zeros at s = sqrt(k / (λ Δf))."""
    p = _params(defocus_u=defocus, defocus_v=defocus, voltage=voltage, cs=0.0, amplitude_contrast=0.0)
    lam = electron_wavelength(voltage)
    k = torch.arange(1, 4, dtype=torch.float32)
    s_zero = torch.sqrt(k / (lam * defocus)).to(device)
    assert torch.all(ctf_1d(p, s_zero).abs() < 1e-3)
    # and the value between zeros matches sin(π λ Δf s²) (positive underfocus convention)
    s = torch.linspace(0.0, 0.2, 101, device=device)
    expected = torch.sin(math.pi * lam * defocus * s.double() ** 2)
    assert_allclose(ctf_1d(p, s)[0].double(), expected, atol=2e-4, what="ctf_1d")


def test_ctf_at_zero_frequency_is_amplitude_contrast(device):
    """χ(0) = -atan(Q0/√(1-Q0²)) so CTF(0) = Q0 > 0 (white-on-black, RELION sign)."""
    p = _params(amplitude_contrast=0.1)
    c = ctf_2d(p, box=64, pixel_size=1.0, device=device)
    assert float(c[0, 0, 0]) == pytest.approx(0.1, abs=1e-6)
    assert float(ctf_1d(p, torch.zeros(1, device=device))[0, 0]) == pytest.approx(0.1, abs=1e-6)


def _zero_radii_along(ctf: torch.Tensor, ky: torch.Tensor, kx: torch.Tensor, angle_deg: float,
                      count: int, tol_deg: float = 1.5) -> list[float]:
    """Radii (Fourier px) of the first ``count`` sign changes of ``ctf`` along direction ``angle_deg``.

    Uses grid points within ``tol_deg`` of the direction (either sense; the CTF is even), sorted by
    radius, with linear interpolation between neighbours of opposite sign. Near an astigmatism
    axis the defocus is stationary in angle, so neighbouring directions share the zeros.
    """
    phi = torch.rad2deg(torch.atan2(ky, kx))
    d = torch.remainder(phi - angle_deg + 90.0, 180.0) - 90.0
    sel = (d.abs() < tol_deg) & ((kx * kx + ky * ky) > 4)
    r = torch.sqrt(kx * kx + ky * ky)[sel].double()
    v = ctf[sel].double()
    order = torch.argsort(r)
    r, v = r[order], v[order]
    change = torch.nonzero(torch.sign(v[1:]) * torch.sign(v[:-1]) < 0).squeeze(1)
    zeros = [float(r[i] + (r[i + 1] - r[i]) * v[i] / (v[i] - v[i + 1])) for i in change.tolist()]
    return zeros[:count]


def test_ctf_2d_astigmatic_zeros_along_u_and_v_axes(device):
    """Defocus U acts along the azimuth φ_ast (30°, from +x towards +y) and V along φ_ast + 90°."""
    n, apix, lam = 512, 1.0, electron_wavelength(300.0)
    du, dv, angle = 20000.0, 14000.0, 30.0
    p = _params(defocus_u=du, defocus_v=dv, defocus_angle=angle, cs=0.0, amplitude_contrast=0.0)
    c = ctf_2d(p, box=n, pixel_size=apix, rfft=False, device=device)[0].cpu()
    ky, kx = freq_grid_2d(n, rfft=False)
    k = np.arange(1, 4)
    want_u = np.sqrt(k / (lam * du)) * n * apix
    want_v = np.sqrt(k / (lam * dv)) * n * apix
    got_u = _zero_radii_along(c, ky, kx, angle, 3)
    got_v = _zero_radii_along(c, ky, kx, angle + 90.0, 3)
    np.testing.assert_allclose(got_u, want_u, atol=0.3, err_msg="zeros along the U axis (30°)")
    np.testing.assert_allclose(got_v, want_v, atol=0.3, err_msg="zeros along the V axis (120°)")
    # the two sets are well apart, so a swapped or mirrored azimuth would fail above
    assert np.all(np.abs(want_u - want_v) > 4)
    # mirrored azimuth (-30°) sees neither pure U nor pure V
    got_m = _zero_radii_along(c, ky, kx, -angle, 1)
    assert abs(got_m[0] - want_u[0]) > 1 and abs(got_m[0] - want_v[0]) > 1


def test_ctf_2d_matches_reference_formula(device):
    """Full grid against an independent float64 evaluation of RELION's ctf.h with atan2 azimuths."""
    n, apix = 96, 1.3
    du, dv, ang, V, cs, q0, ps, bf = 18000.0, 16500.0, -62.0, 200.0, 2.0, 0.07, 20.0, 35.0
    p = _params(defocus_u=du, defocus_v=dv, defocus_angle=ang, voltage=V, cs=cs, amplitude_contrast=q0,
                phase_shift=ps, bfactor=bf)
    got = ctf_2d(p, box=n, pixel_size=apix, device=device)[0].double().cpu()
    ky, kx = freq_grid_2d(n, dtype=torch.float64)
    sx, sy = kx / (n * apix), ky / (n * apix)
    s2 = sx * sx + sy * sy
    phi = torch.atan2(sy, sx)
    lam = 12.2643247 / math.sqrt(V * 1e3 * (1 + 0.978466e-6 * V * 1e3))
    dfz = -((du + dv) + (du - dv) * torch.cos(2 * (phi - math.radians(ang)))) / 2
    chi = (math.pi * lam * dfz * s2 + math.pi / 2 * cs * 1e7 * lam**3 * s2 * s2 - math.radians(ps)
           - math.atan(q0 / math.sqrt(1 - q0 * q0)))
    want = -torch.sin(chi) * torch.exp(-bf * s2 / 4)
    assert_allclose(got, want, atol=2e-4, what="ctf_2d vs reference")


def test_ctf_phase_shift_90_turns_sine_into_cosine(device):
    """With Q0 = 0: CTF = sin γ without phase plate and cos γ with a 90° phase shift,
    γ = π λ Δf s² - (π/2) Cs λ³ s⁴ (Δf > 0 underfocus)."""
    s = torch.linspace(0.0, 0.25, 200, device=device)
    lam = electron_wavelength(300.0)
    p0 = _params(defocus_u=12000.0, defocus_v=12000.0, amplitude_contrast=0.0, phase_shift=0.0)
    p90 = _params(defocus_u=12000.0, defocus_v=12000.0, amplitude_contrast=0.0, phase_shift=90.0)
    sd = s.double()
    gamma = math.pi * lam * 12000.0 * sd**2 - math.pi / 2 * 2.7e7 * lam**3 * sd**4
    assert_allclose(ctf_1d(p0, s)[0].double(), torch.sin(gamma), atol=2e-4, what="no phase plate")
    assert_allclose(ctf_1d(p90, s)[0].double(), torch.cos(gamma), atol=2e-4, what="90° phase plate")
    assert float(ctf_1d(p90, s)[0, 0]) == pytest.approx(1.0, abs=1e-6)


def test_ctf_bfactor_envelope(device):
    n, apix, bf = 64, 1.2, 80.0
    p0 = _params(defocus_u=15000.0, defocus_v=14000.0, defocus_angle=10.0)
    pb = _params(defocus_u=15000.0, defocus_v=14000.0, defocus_angle=10.0, bfactor=bf)
    c0 = ctf_2d(p0, box=n, pixel_size=apix, device=device)[0]
    cb = ctf_2d(pb, box=n, pixel_size=apix, device=device)[0]
    s2 = (radius_2d(n, device=device) / (n * apix)) ** 2
    keep = c0.abs() > 0.05
    assert_allclose((cb / c0)[keep], torch.exp(-bf * s2 / 4)[keep], rtol=1e-4, what="B-factor envelope")
    # 1-D too
    s = torch.linspace(0, 0.3, 50, device=device)
    keep = ctf_1d(p0, s)[0].abs() > 0.05
    assert_allclose((ctf_1d(pb, s)[0] / ctf_1d(p0, s)[0])[keep], torch.exp(-bf * s * s / 4)[keep], rtol=1e-4,
                    what="B-factor envelope 1-D")


def test_ctf_scale_factor(device):
    c1 = ctf_2d(_params(), box=32, pixel_size=1.0, device=device)
    c2 = ctf_2d(_params(scale=0.5), box=32, pixel_size=1.0, device=device)
    assert_allclose(c2, 0.5 * c1, atol=1e-7, what="rlnCtfScalefactor")


def test_ctf_2d_batched_per_particle_pixel_sizes(device):
    g = torch.Generator().manual_seed(21)
    B, n = 5, 48
    du = 8000 + 17000 * torch.rand(B, generator=g)
    dv = du - 1000 * torch.rand(B, generator=g)
    ang = 360 * torch.rand(B, generator=g) - 180
    ps = 30 * torch.rand(B, generator=g)
    apix = 0.8 + torch.rand(B, generator=g)
    batch = ctf_2d(CTFParams(du, dv, ang, phase_shift=ps), box=n, pixel_size=apix.to(device), device=device)
    assert batch.shape == (B, n, n // 2 + 1)
    for b in range(B):
        one = ctf_2d(CTFParams(du[b], dv[b], ang[b], phase_shift=ps[b]), box=n, pixel_size=float(apix[b]),
                     device=device)
        assert_allclose(batch[b], one[0], atol=1e-6, what=f"particle {b}")
    full = ctf_2d(CTFParams(du, dv, ang), box=n, pixel_size=1.0, rfft=False, device=device)
    assert full.shape == (B, n, n)
    # the rfft layout is the kx >= 0 half of the full grid (Nyquist column aside: its sign of kx differs)
    assert_allclose(full[..., : n // 2], ctf_2d(CTFParams(du, dv, ang), box=n, pixel_size=1.0, device=device)[..., : n // 2],
                    atol=1e-6, what="rfft half")

"""Motion correction algorithms: global and local alignment, dose weighting, rejection.

Ground truth comes from the movie simulator (small movies keep the file fast) and from
analytic shifts of random images. Sign convention pinned: ``MotionResult.shifts_px`` is
RELION's rlnMicrographShiftX/Y, the simulator's ``MovieTruth.shifts`` (minus the specimen
displacement), relative to frame 1.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cryolens.motion import MotionParams, align_movie
from cryolens.motion.dose_weight import DoseWeights, motion_statistics
from cryolens.motion.global_align import apply_shifts, correlation_peaks
from cryolens.core.dose import damage_weights
from cryolens.simulate.movies import MovieParams, field_shape, make_detector, movie_margin, simulate_movie

APIX = 1.5


# ------------------------------------------------------------------------------------ helpers


def contrast_field(shape: tuple[int, int], *, seed: int, std: float = 0.08) -> torch.Tensor:
    """Band-limited random contrast (Gaussian spectrum, sigma 0.2 cycles/px) with dark discs."""
    g = torch.Generator().manual_seed(seed)
    h, w = shape
    k2 = torch.fft.fftfreq(h)[:, None] ** 2 + torch.fft.rfftfreq(w)[None, :] ** 2
    c = torch.fft.irfft2(torch.fft.rfft2(torch.randn(h, w, generator=g)) * torch.exp(-k2 / (2 * 0.2 ** 2)), s=shape)
    c = c / c.std() * std
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                            indexing="ij")
    for cx, cy in torch.rand(40, 2, generator=g).tolist():
        c -= 0.15 * torch.sigmoid((12.0 - torch.sqrt((xx - cx * w) ** 2 + (yy - cy * h) ** 2)) / 1.5)
    return c


def simulate(params: MovieParams, size: int):
    """Noisy frames corrected by the caller's way (gain, defects = frame mean), the noise-free
    first frame, and the truth."""
    det = make_detector(size, size, params)
    hf, wf = field_shape(size, size, movie_margin(params, APIX))
    movie = simulate_movie(contrast_field((hf, wf), seed=params.seed), pixel_size=APIX, params=params, detector=det)
    raw = torch.from_numpy(np.stack([f for _, f in movie.frames(np.uint16)]).astype(np.float32))
    frames = raw * det.gain_reference if det.gain_reference is not None else raw
    bad = np.concatenate([det.hot_pixels, det.dead_pixels])
    if len(bad):
        fill = frames.mean(dim=(1, 2))[:, None]
        frames[:, bad[:, 1], bad[:, 0]] = fill
    clean = torch.from_numpy(next(iter(movie.frames(noise=False)))[1])
    return frames, clean, movie.truth


def frc_band(a: torch.Tensor, b: torch.Tensor, lo: float, hi: float, *, crop: int = 48) -> float:
    """Fourier ring correlation of two images over spatial frequencies [lo, hi) 1/Å (windowed centre)."""
    a, b = a[crop:-crop, crop:-crop].double(), b[crop:-crop, crop:-crop].double()
    n = a.shape[0]
    win = torch.hann_window(n, periodic=False, dtype=torch.float64)
    win = win[:, None] * win[None, :]
    fa, fb = (torch.fft.rfft2((x - x.mean()) * win) for x in (a, b))
    k = torch.sqrt(torch.fft.fftfreq(n)[:, None] ** 2 + torch.fft.rfftfreq(n)[None, :] ** 2) / APIX
    s = (k >= lo) & (k < hi)
    num = (fa[s] * fb[s].conj()).real.sum()
    return float(num / torch.sqrt((fa[s].abs() ** 2).sum() * (fb[s].abs() ** 2).sum()))


def rmse(a: torch.Tensor, b) -> float:
    d = a.double() - torch.as_tensor(b, dtype=torch.float64)
    return float(d.square().sum(-1).mean().sqrt())


@pytest.fixture(scope="module")
def drift_movie():
    p = MovieParams(n_frames=16, dose_per_frame=3.0, drift=14.0, local_motion=False, damage=True, frame_blur=True,
                    gain=True, hot_pixels=20, dead_pixels=10, seed=11)
    return simulate(p, 512)


@pytest.fixture(scope="module")
def drift_result(drift_movie):
    frames, _, truth = drift_movie
    return align_movie(frames, pixel_size=APIX, params=MotionParams(), dose_per_frame=truth.dose_per_frame)


@pytest.fixture(scope="module")
def local_movie():
    p = MovieParams(n_frames=16, dose_per_frame=2.0, drift=10.0, local_motion=True, local_motion_rms=5.0,
                    damage=True, frame_blur=False, seed=5)
    return simulate(p, 512)


# ------------------------------------------------------------------------------------ params


@pytest.mark.parametrize("kw, fragment", [  # messages name the flags a user types
    (dict(min_shift_A=-1.0), "--min-shift"), (dict(max_shift_A=0.0), "--max-shift"),
    (dict(min_shift_A=50.0), "smaller than --max-shift"), (dict(bfactor_A2=-5.0), "--bfactor"),
    (dict(termination_px=0.0), "--termination"), (dict(max_iterations=0), "--iterations"),
    (dict(align_bin=0.5), "--align-bin"), (dict(patches=(2, 2)), "--min-patches"), (dict(patches=(0, 5)), "--patches"),
    (dict(patch_overlap=1.0), "--patch-overlap"), (dict(local_group_frames=2), "odd"),
    (dict(max_frame_shift_A=0.0), "--max-frame-shift"), (dict(max_total_travel_A=-1.0), "--max-travel"),
    (dict(bfactor_A2=math.inf), "finite"),
])
def test_params_validation(kw, fragment):
    with pytest.raises(ValueError, match=fragment):
        MotionParams(**kw).validate()
    MotionParams().validate()
    MotionParams(patches=(5, 5), max_frame_shift_A=5.0, max_total_travel_A=50.0).validate()


def test_bad_frames_are_refused():
    p = MotionParams()
    with pytest.raises(ValueError, match=r"\(F, H, W\)"):
        align_movie(torch.zeros(64, 64), pixel_size=1.0, params=p)
    with pytest.raises(ValueError, match="pixel_size"):
        align_movie(torch.zeros(2, 64, 64), pixel_size=0.0, params=p)
    bad = torch.randn(3, 64, 64)
    bad[1, 5, 5] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        align_movie(bad, pixel_size=1.0, params=p)


# ------------------------------------------------------------------------------------ analytic


def test_fourier_shift_and_peak_conventions():
    """Content moves by +shift; the correlation peak of a map shifted by t is found at t (sub-pixel)."""
    img = torch.zeros(1, 64, 64)
    img[0, 10, 20] = 1.0
    moved = torch.fft.irfft2(apply_shifts(torch.fft.rfft2(img), torch.tensor([[3.0, -2.0]]), 64), s=(64, 64))
    assert int(moved[0].argmax()) == 8 * 64 + 23
    y, x = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    d = lambda a, n=64: (a + n / 2) % n - n / 2  # noqa: E731  (wrapped distance to 0)
    cc = torch.exp(-((d(x - 2.3)) ** 2 + (d(y + 1.6)) ** 2) / (2 * 3.0 ** 2))
    pos, _ = correlation_peaks(cc[None], 10.0)
    assert torch.allclose(pos[0], torch.tensor([2.3, -1.6], dtype=torch.float64), atol=0.05)
    pos, _ = correlation_peaks(cc[None], 10.0, min_radius=4.0)  # Unblur's first-round inner radius
    assert float(pos[0].norm()) >= 3.5


def test_known_subpixel_shifts_of_a_random_image_are_recovered(device):
    """The whole alignment (global_align kernels) on each device: sub-pixel shifts to 0.05 px."""
    g = torch.Generator().manual_seed(3)
    n, f = 256, 10
    base = torch.fft.irfft2(torch.fft.rfft2(torch.randn(n, n, generator=g)) * torch.exp(
        -(torch.fft.fftfreq(n)[:, None] ** 2 + torch.fft.rfftfreq(n)[None, :] ** 2) / (2 * 0.15 ** 2)), s=(n, n))
    disp = torch.cat([torch.zeros(1, 2), (torch.rand(f - 1, 2, generator=g) - 0.5) * 16], 0).double()
    disp[1] = torch.tensor([3.0, -5.0], dtype=torch.float64)  # an integer shift too
    frames = torch.fft.irfft2(apply_shifts(torch.fft.rfft2(base).expand(f, -1, -1), disp, n), s=(n, n))
    frames = (frames / frames.std() + 0.5 * torch.randn(f, n, n, generator=g)).to(device)
    r = align_movie(frames, pixel_size=1.0, params=MotionParams(align_bin=1, bfactor_A2=100.0, min_shift_A=0.0))
    assert r.aligned_sum.device.type == device.type
    err = (r.shifts_px.cpu() + disp).abs().max()  # correction = -displacement
    assert float(err) < 0.05, (r.shifts_px.cpu() + disp)
    assert r.converged and r.iterations <= 10
    # the corrected sum lines the frames up with frame 0
    assert torch.corrcoef(torch.stack([r.aligned_sum.flatten(), frames[0].flatten()]))[0, 1] > 0.85


# ------------------------------------------------------------------------------------ simulated movies


def test_global_drift_recovered_with_relion_sign(drift_movie, drift_result):
    frames, clean, truth = drift_movie
    r = drift_result
    assert np.abs(truth.shifts).max() > 6.0  # a real drift of several pixels
    assert torch.all(r.shifts_px[0] == 0)
    assert rmse(r.shifts_px, truth.shifts) < 0.3, np.c_[r.shifts_px.numpy(), truth.shifts]
    assert rmse(-r.shifts_px, truth.shifts) > 5.0  # the opposite sign would be far off
    assert r.shifts_px.dtype == torch.float64 and r.aligned_sum.shape == frames.shape[1:]
    assert r.rejected is None and r.local_model is None
    # RELION's accumulated motion, in Å, from the found shifts
    steps = np.linalg.norm(np.diff(truth.shifts, axis=0), axis=1) * APIX
    assert r.accum_motion_total_A == pytest.approx(steps.sum(), rel=0.15)
    n_early = int((4.0 - truth.pre_exposure) / truth.dose_per_frame)  # frames 2..n_early (1-based)
    assert r.accum_motion_early_A == pytest.approx(steps[:n_early - 1].sum(), rel=0.15)
    assert r.accum_motion_early_A + r.accum_motion_late_A == pytest.approx(r.accum_motion_total_A)
    assert r.accum_motion_total_px == pytest.approx(r.accum_motion_total_A / APIX)  # RELION 3.1 writes pixels
    # aligned sum is far closer to the truth than the unaligned one
    plain = frames.sum(0)
    assert frc_band(r.aligned_sum, clean, 1 / 20, 1 / 8) > frc_band(plain, clean, 1 / 20, 1 / 8) + 0.2


def test_dose_weighting_improves_high_resolution_frc(drift_movie, drift_result):
    frames, clean, truth = drift_movie
    r = drift_result
    lo, hi = 1 / 10, 1 / 5
    plain, dw = frc_band(r.aligned_sum, clean, lo, hi), frc_band(r.dose_weighted_sum, clean, lo, hi)
    assert dw > plain + 0.015, (plain, dw)
    # low resolution hardly changes
    assert abs(frc_band(r.aligned_sum, clean, 1 / 40, 1 / 15) - frc_band(r.dose_weighted_sum, clean, 1 / 40, 1 / 15)) \
        < 0.02


def test_local_motion_model_beats_global_beyond_10_angstrom(local_movie):
    frames, clean, truth = local_movie
    kw = dict(align_resolution_A=4.0)
    glob = align_movie(frames, pixel_size=APIX, params=MotionParams(**kw), dose_per_frame=truth.dose_per_frame)
    loc = align_movie(frames, pixel_size=APIX, params=MotionParams(patches=(4, 4), **kw),
                      dose_per_frame=truth.dose_per_frame)
    assert loc.local_fallback is None and loc.local_model is not None
    assert loc.patch_shifts.shape == (16, 16, 2) and loc.patch_centres.shape == (16, 2)
    # the fitted model is close to the true local correction at the patch centres, last frame
    z = truth.n_frames - 1
    true_l = torch.tensor([truth.local_model.shift_at_pixels(z, float(x), float(y), width=512, height=512)
                           for x, y in loc.patch_centres.tolist()], dtype=torch.float64)
    fit_l = torch.tensor([loc.local_model.shift_at_pixels(z, float(x), float(y), width=512, height=512)
                          for x, y in loc.patch_centres.tolist()], dtype=torch.float64)
    assert rmse(fit_l, true_l) < 0.4 * float(true_l.square().sum(-1).mean().sqrt()), (fit_l, true_l)
    for lo, hi in [(1 / 10, 1 / 6), (1 / 6, 1 / 4)]:
        g, l_ = frc_band(glob.dose_weighted_sum, clean, lo, hi), frc_band(loc.dose_weighted_sum, clean, lo, hi)
        assert l_ > g + 0.01, (lo, hi, g, l_)
    assert rmse(loc.shifts_px, truth.shifts) < 0.75  # the global part also carries the mean local motion


def test_patches_without_signal_fall_back_to_global():
    g = torch.Generator().manual_seed(1)
    frames = torch.poisson(torch.full((6, 256, 256), 2.0), generator=g)
    r = align_movie(frames, pixel_size=1.0, params=MotionParams(patches=(3, 3), min_patch_snr=8.0, max_iterations=3,
                                                                local_max_iterations=2), dose_per_frame=1.0)
    assert r.local_model is None and "patches" in r.local_fallback
    assert r.patch_snr.shape == (9,)


# ------------------------------------------------------------------------------------ dose, rejection


def test_dose_weights_follow_grant_grigorieff_and_normalise():
    dw = DoseWeights(64, 64, pixel_size=1.5, n_frames=5, dose_per_frame=2.0, pre_exposure=1.0)
    w = dw(torch.arange(5))
    assert torch.allclose(w.square().sum(0), torch.ones(64, 33), atol=1e-5)  # eq. 9: Σ w² = 1
    k = torch.sqrt(torch.fft.fftfreq(64, d=1.5)[:, None] ** 2 + torch.fft.rfftfreq(64, d=1.5)[None, :] ** 2)
    ref = damage_weights(5, 2.0, k.double(), 300.0, pre_exposure=1.0, normalize=True)
    assert torch.allclose(w.double(), ref, atol=1e-5)
    plain = DoseWeights(64, 64, pixel_size=1.5, n_frames=5, dose_per_frame=2.0, restore_power=False)(torch.arange(5))
    assert torch.allclose(plain.sum(0), torch.full((64, 33), 5.0), atol=1e-4)  # the plain sum's scale
    assert float(plain[0, 0, 0]) == pytest.approx(1.0)


def test_motion_statistics_and_rejection():
    shifts = torch.tensor([[0.0, 0.0], [3.0, 4.0], [3.0, 4.0], [3.0, 6.0], [9.0, 14.0]], dtype=torch.float64)
    st = motion_statistics(shifts, 2.0, dose_per_frame=1.5, pre_exposure=0.0, early_exposure=4.0)
    # steps (px) 5, 0, 2, 10 -> Å x2; frames 2..2 (1-based) are early: (4 - 0) / 1.5 = 2.67
    assert st["total"] == pytest.approx(34.0) and st["early"] == pytest.approx(10.0)
    assert st["late"] == pytest.approx(24.0) and st["max_step"] == pytest.approx(20.0)
    g = torch.Generator().manual_seed(0)
    k2 = torch.fft.fftfreq(128)[:, None] ** 2 + torch.fft.rfftfreq(128)[None, :] ** 2
    spec = torch.fft.rfft2(torch.randn(128, 128, generator=g)) * torch.exp(-k2 / (2 * 0.15 ** 2))
    disp = torch.tensor([[0.0, 0.0], [6.0, 8.0], [6.0, 9.0], [7.0, 11.0], [9.0, 14.0]], dtype=torch.float64)
    frames = torch.fft.irfft2(apply_shifts(spec.expand(5, -1, -1), disp, 128), s=(128, 128))
    p = dict(align_bin=1, bfactor_A2=50.0, min_shift_A=0.0)
    ok = align_movie(frames, pixel_size=2.0, params=MotionParams(**p), dose_per_frame=1.5)
    assert torch.allclose(ok.shifts_px, -disp, atol=0.05), ok.shifts_px
    assert ok.rejected is None
    steps = torch.linalg.vector_norm(disp.diff(dim=0), dim=-1) * 2.0  # Å: 20, 2, 4.47, 7.21
    assert ok.max_frame_shift_A == pytest.approx(20.0, abs=0.2)
    assert ok.accum_motion_total_A == pytest.approx(float(steps.sum()), abs=0.3)
    r = align_movie(frames, pixel_size=2.0, params=MotionParams(max_frame_shift_A=15.0, **p), dose_per_frame=1.5)
    assert r.rejected is not None and "consecutive frames" in r.rejected
    r = align_movie(frames, pixel_size=2.0, params=MotionParams(max_total_travel_A=30.0, **p), dose_per_frame=1.5)
    assert r.rejected is not None and "total travel" in r.rejected and "33.6" in r.rejected


def test_no_dose_no_dose_weighted_sum():
    frames = torch.randn(3, 64, 64)
    r = align_movie(frames, pixel_size=1.0, params=MotionParams())
    assert r.dose_weighted_sum is None and r.accum_motion_early_A == 0.0
    one = align_movie(frames[:1], pixel_size=1.0, params=MotionParams(), dose_per_frame=1.0)
    assert torch.allclose(one.aligned_sum, frames[0], atol=1e-4) and one.shifts_px.shape == (1, 2)


def test_correlation_window_matches_the_inverse_fft(device):
    from cryolens.motion.global_align import correlation_window
    g = torch.Generator().manual_seed(2)
    spec = torch.fft.rfft2(torch.randn(3, 40, 50, generator=g).to(device))
    full = torch.fft.irfft2(spec, s=(40, 50))
    win = correlation_window(spec, 50, 3)
    assert win.device.type == device.type
    off = torch.arange(-4, 5, device=device)
    ref = full.index_select(-2, off % 40).index_select(-1, off % 50)
    assert torch.allclose(win, ref, atol=1e-4)


def test_group_sums():
    from cryolens.motion.global_align import _group_sums
    x = torch.arange(5.0)[:, None, None].expand(5, 2, 3).to(torch.complex64)
    out = _group_sums(x, 3)[:, 0, 0].real
    assert out.tolist() == [1.0, 3.0, 6.0, 9.0, 7.0]


def test_still_movie_comes_back_from_the_first_round_minimum_shift():
    """Unblur's first round searches >= min_shift_A only; a movie without drift still ends at 0."""
    g = torch.Generator().manual_seed(3)
    n = 256
    k2 = torch.fft.fftfreq(n)[:, None] ** 2 + torch.fft.rfftfreq(n)[None, :] ** 2
    base = torch.fft.irfft2(torch.fft.rfft2(torch.randn(n, n, generator=g)) * torch.exp(-k2 / (2 * 0.15 ** 2)),
                            s=(n, n))
    frames = base.expand(8, n, n) / base.std() + 0.5 * torch.randn(8, n, n, generator=g)
    r = align_movie(frames, pixel_size=1.0, params=MotionParams(min_shift_A=2.0))
    assert r.converged and float(r.shifts_px.abs().max()) < 0.05

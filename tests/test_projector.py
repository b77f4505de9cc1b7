"""Projection, back-projection, FSC and masks (core/projector.py, fsc.py, masks.py).

Ground truth: analytic projections of Gaussians, exact adjointness of the Fourier-domain
linear maps, noise-free project -> reconstruct round trips, symmetry expansion,
analytic FSC facts and mask geometry.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cryolens.core.fourier import ft2, ft3, ift2, rfft_weights
from cryolens.core.fsc import FSCResult, fsc, fsc_to_ssnr, resolution_at
from cryolens.core.masks import mask_from_map, soft_sphere
from cryolens.core.projector import (BackProjector, FourierVolume, gridding_correction, prepare_volume, project,
                                     scatter_add_complex)
from cryolens.core.rotations import euler_to_matrix, random_euler, random_rotations
from cryolens.core.symmetry import symmetry_matrices
from helpers import (
    assert_allclose, assert_correlated, centred_coords, gaussian_2d, gaussian_blobs,
    gaussian_line_integral, ls_scale,
)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _poses(count: int, seed: int, device) -> torch.Tensor:
    """RELION matrices of uniformly random RELION Euler angles."""
    rot, tilt, psi = random_euler(count, _gen(seed))
    return euler_to_matrix(rot, tilt, psi).to(device)


def _smooth_phantom(n: int, seed: int, *, count: int = 8, spread: float = 12.0, device=None):
    g = _gen(seed)
    centres = (torch.rand(count, 3, generator=g) - 0.5) * spread
    sigmas = 1.5 + 1.5 * torch.rand(count, generator=g)
    weights = 0.5 + torch.rand(count, generator=g)
    return gaussian_blobs(n, centres, sigmas, weights, device=device), (centres, sigmas, weights)


def _reconstruct(images_f, rotations, n, device, *, origins=None, ctf=None, symmetry=None,
                 chunk=500) -> torch.Tensor:
    """Insert in chunks (bounded memory) and reconstruct."""
    bp = BackProjector(n, device=device)
    part = lambda x, i: None if x is None else x[i:i + chunk]  # noqa: E731
    for i in range(0, images_f.shape[0], chunk):
        bp.insert(images_f[i:i + chunk], rotations[i:i + chunk], part(origins, i), part(ctf, i), symmetry=symmetry)
    return bp.reconstruct()


# ----------------------------------------------------------------------------------------
# Projection against analytic line integrals
# ----------------------------------------------------------------------------------------

BLOB_N, BLOB_SIGMA, BLOB_CENTRE = 64, 3.0, (5.0, -3.0, 4.0)


def _blob_case(device, count=50, seed=1):
    vol = gaussian_blobs(BLOB_N, [BLOB_CENTRE], BLOB_SIGMA, device=device)
    R = _poses(count, seed, device)
    origins = (torch.rand(count, 2, generator=_gen(seed + 1)) * 6 - 3).to(device)  # ±3 px
    # image(r) = ∫ V(Aᵀ r) dz peaks where Aᵀ(x, y, z) = c, i.e. at (A c)_xy; the origin moves it by -origin
    centre_xy = (R @ torch.tensor(BLOB_CENTRE, device=device))[:, :2] - origins
    peak = gaussian_line_integral(BLOB_SIGMA)
    expected = gaussian_2d(BLOB_N, centre_xy, BLOB_SIGMA, peak, device=device)
    return vol, R, origins, expected, peak


def test_project_gaussian_blob_matches_analytic_projection(device):
    """Off-centre unit-peak Gaussian (σ = 3 px) at random RELION poses and origins.

    Measured on CPU: max |error| ≤ 0.57 % of the peak, least-squares amplitude 1.0000-1.0055.
    """
    vol, R, origins, expected, peak = _blob_case(device)
    images = ift2(project(prepare_volume(vol), R, origins), BLOB_N)
    err = (images - expected).abs().amax(dim=(-2, -1)) / peak
    worst = int(err.argmax())
    assert float(err.max()) < 0.01, f"max |error| {float(err.max()):.4f} of the peak (pose {worst})"
    scales = torch.tensor([ls_scale(images[b], expected[b]) for b in range(len(R))])
    assert torch.all((scales - 1).abs() < 0.008), f"amplitudes {scales.min():.4f}..{scales.max():.4f}"


def test_project_without_gridding_correction_loses_amplitude(device):
    """Control for the test above: skipping the sinc² pre-correction (same padding, same
    interpolation) loses ~1.3 % of the amplitude for this blob (median 0.987), so that test would catch it."""
    vol, R, origins, expected, _ = _blob_case(device)
    n, pad = BLOB_N, 2
    P = n * pad
    padded = torch.zeros((P, P, P), device=device)
    o = P // 2 - n // 2
    padded[o:o + n, o:o + n, o:o + n] = vol
    images = ift2(project(FourierVolume(ft3(padded), n, pad), R, origins), n)
    scales = torch.tensor([ls_scale(images[b], expected[b]) for b in range(len(R))])
    assert float(scales.median()) < 0.993, f"uncorrected median amplitude {float(scales.median()):.4f}"


def test_project_identity_pose_is_sum_along_z(device):
    """At rot = tilt = psi = 0 the slice hits padded-grid points exactly (no interpolation), so the
    projection is the z-sum of the gridding-pre-corrected volume ``v / sinc²``; the pre-correction
    is only right on average for off-grid samples (and RELION does the same)."""
    n, pad = 32, 2
    vol, _ = _smooth_phantom(n, seed=3, spread=8.0, device=device)
    img = ift2(project(prepare_volume(vol, pad=pad), euler_to_matrix(0.0, 0.0, 0.0)[None].to(device)), n)[0]
    expected = (vol / gridding_correction(n, pad, device=device)).sum(0)
    assert float((img - expected).abs().max() / expected.abs().max()) < 1e-4
    # rot = 90°: in-plane rotation by -90° of the same image (x -> y), still on grid points
    img90 = ift2(project(prepare_volume(vol, pad=pad), euler_to_matrix(90.0, 0.0, 0.0)[None].to(device)), n)[0]
    # image(x, y) = ∫ V(Aᵀ r) dz with Aᵀ (x, y) = (-y, x): row y, column x reads expected[x, -y]
    c = n // 2
    idx = (torch.arange(n, device=device) - c)
    rows, cols = torch.meshgrid(idx, idx, indexing="ij")  # rows = y, cols = x
    want = expected[(cols + c) % n, (-rows + c) % n]  # expected[y' = x, x' = -y]
    assert float((img90 - want).abs().max() / expected.abs().max()) < 1e-4


# ----------------------------------------------------------------------------------------
# Adjointness of project and BackProjector.insert
# ----------------------------------------------------------------------------------------


def _adjoint_sides(device, seed, *, n=16, pad=2, B=12, with_ctf=False, with_origins=False, sym=None,
                   zero_nyquist_plane=True):
    """Re⟨L H, Y⟩_w2 and Re⟨H, L* Y⟩_w3 for L = project and L* = insert + _half_volumes.

    ⟨,⟩_w2 / ⟨,⟩_w3 weight each rfft coefficient by its multiplicity in the full 2-D / 3-D
    spectrum (``rfft_weights``), i.e. they are the real-space inner products up to n² / P³.
    H is the padded transform of a real volume (Hermitian-consistent half-volume). Derivation:
    insert scatters ``cw·conj^c(Y)`` with the trilinear weights (cw = ½ on the kx = 0 column,
    i.e. w2/2) and ``_half_volumes`` adds the Friedel mate on the kx = 0 plane, which for a
    Hermitian H turns the factor ½ into the plane's weight 1 against the other planes' 2:
    the constant is exactly 1.
    """
    P = n * pad
    g = _gen(seed)
    H = ft3(torch.randn(P, P, P, generator=g, dtype=torch.float64)).to(torch.complex64)
    if zero_nyquist_plane:
        H[..., -1] = 0  # kx = P/2 plane (see test_insert_is_adjoint_including_nyquist_plane)
    H = H.to(device)
    R = random_rotations(B, generator=g).to(device)
    Y = ft2(torch.randn(B, n, n, generator=g)).to(device)
    ctf = (torch.rand(B, n, n // 2 + 1, generator=g) * 2 - 1).to(device) if with_ctf else None
    origins = ((torch.rand(B, 2, generator=g) - 0.5) * 8).to(device) if with_origins else None
    G = symmetry_matrices(sym, device=device) if sym else torch.eye(3, device=device)[None]

    fvol = FourierVolume(H, n, pad)
    LH = sum(project(fvol, R @ G[i], origins) for i in range(G.shape[0]))
    if ctf is not None:
        LH = LH * ctf
    w2 = rfft_weights(n, ndim=2, device=device).double()
    lhs = float((w2 * (LH.to(torch.complex128) * Y.to(torch.complex128).conj()).real).sum())

    bp = BackProjector(n, pad=pad, device=device)
    bp.insert(Y, R, origins, ctf, symmetry=G if sym else None)
    data, _ = bp._half_volumes()
    w3 = rfft_weights(P, ndim=3, device=device).double()
    rhs = float((w3 * (H.to(torch.complex128) * data.to(torch.complex128).conj()).real).sum())
    return lhs, rhs


@pytest.mark.parametrize("variant", [
    dict(),
    dict(with_ctf=True, with_origins=True),
    dict(sym="C4", with_origins=True),
    dict(sym="D3", with_ctf=True),
])
def test_insert_is_adjoint_of_project(device, variant):
    for seed in range(3):
        lhs, rhs = _adjoint_sides(device, seed, **variant)
        assert lhs == pytest.approx(rhs, rel=1e-4), f"seed {seed}: <LH,Y>={lhs:.6g} vs <H,L*Y>={rhs:.6g}"


def test_insert_is_adjoint_including_nyquist_plane(device):
    for seed in range(2):
        lhs, rhs = _adjoint_sides(device, seed, zero_nyquist_plane=False)
        assert lhs == pytest.approx(rhs, rel=1e-4), f"seed {seed}: {lhs:.6g} vs {rhs:.6g}"


# ----------------------------------------------------------------------------------------
# Reconstruction
# ----------------------------------------------------------------------------------------


def test_project_reconstruct_round_trip(device):
    """2000 noise-free projections at random poses give the phantom back (measured 0.9998, scale 1.005)."""
    n = 32
    vol, _ = _smooth_phantom(n, seed=0, device=device)
    R = _poses(2000, seed=2, device=device)
    images_f = project(prepare_volume(vol), R)
    rec = _reconstruct(images_f, R, n, device)
    assert rec.shape == (n, n, n)
    assert_correlated(rec, vol, 0.999, what="reconstruction vs phantom")
    assert ls_scale(rec, vol) == pytest.approx(1.0, abs=0.01)


def test_reconstruct_with_ctf_and_origins(device):
    """CTF-modulated, shifted projections inserted with their CTFs and origins recover the phantom
    (noise-free: the data term is Σ c·(c·S) and the weight Σ c², so the CTF divides out)."""
    from cryolens.core.ctf import CTFParams, ctf_2d

    n, apix, B = 32, 1.0, 2000
    vol, _ = _smooth_phantom(n, seed=5, device=device)
    R = _poses(B, seed=6, device=device)
    g = _gen(7)
    origins = ((torch.rand(B, 2, generator=g) - 0.5) * 6).to(device)
    du = 10000 + 15000 * torch.rand(B, generator=g)
    ctf = ctf_2d(CTFParams(du, du - 500, 360 * torch.rand(B, generator=g)), box=n, pixel_size=apix,
                 device=device)
    images = ift2(project(prepare_volume(vol), R, origins) * ctf, n)
    rec = _reconstruct(ft2(images), R, n, device, origins=origins, ctf=ctf)
    assert_correlated(rec, vol, 0.998, what="CTF reconstruction vs phantom")  # measured 0.99916
    assert ls_scale(rec, vol) == pytest.approx(1.0, abs=0.02)  # measured 1.0042


def test_backprojector_add_equals_single_accumulator(device):
    n = 16
    vol, _ = _smooth_phantom(n, seed=8, spread=6.0, device=device)
    R = _poses(200, seed=9, device=device)
    f = project(prepare_volume(vol), R)
    whole = BackProjector(n, device=device)
    whole.insert(f, R)
    a, b = BackProjector(n, device=device), BackProjector(n, device=device)
    a.insert(f[:120], R[:120])
    b.insert(f[120:], R[120:])
    a.add(b)
    assert a.count == whole.count == 200
    assert_allclose(a.acc, whole.acc, atol=1e-3, rtol=1e-4, what="accumulators")


def test_scatter_add_complex_native_and_interleaved_agree(device):
    """The CPU's complex scatter and the interleaved float scatter (GPU path) give the same sums."""
    g = _gen(12)
    index = torch.randint(0, 50, (8, 3, 40), generator=g).to(device)
    values = torch.randn(8, 3, 40, dtype=torch.complex64, generator=g).to(device)
    a, b = (torch.zeros(50, dtype=torch.complex64, device=device) for _ in range(2))
    scatter_add_complex(a, index, values, native=True)
    scatter_add_complex(b, index, values, native=False)
    ref = torch.zeros(50, dtype=torch.complex128).index_add_(0, index.reshape(-1).cpu(),
                                                             values.reshape(-1).cpu().to(torch.complex128))
    assert_allclose(a.cpu(), ref.to(torch.complex64), atol=1e-5, what="native complex scatter")
    assert_allclose(b.cpu(), ref.to(torch.complex64), atol=1e-5, what="interleaved scatter")


def test_backprojector_acc_round_trips(device):
    """``acc`` (3 float rows) is a copy of the sums, and assigning it restores them (checkpoints)."""
    n = 16
    vol, _ = _smooth_phantom(n, seed=8, spread=6.0, device=device)
    R = _poses(20, seed=9, device=device)
    bp = BackProjector(n, device=device)
    bp.insert(project(prepare_volume(vol), R), R)
    acc = bp.acc
    assert acc.shape[0] == 3 and acc.dtype == torch.float32
    other = BackProjector(n, device=device)
    other.acc = acc * 2
    assert_allclose(other.acc, 2 * acc, atol=0, what="restored sums")
    assert_allclose(torch.view_as_real(other.data)[:, 0], 2 * acc[0], atol=0, what="real part")


def _c4_phantom(n, device):
    G = symmetry_matrices("C4")
    g = _gen(10)
    base = (torch.rand(4, 3, generator=g) - 0.5) * 12
    centres = torch.cat([base @ G[i].T for i in range(4)])  # closed under the group
    sigmas = (1.5 + 1.5 * torch.rand(4, generator=g)).repeat(4)
    weights = (0.5 + torch.rand(4, generator=g)).repeat(4)
    return gaussian_blobs(n, centres, sigmas, weights, device=device), G.to(device)


def test_insert_symmetry_equals_explicit_expansion(device):
    """insert(..., symmetry=G) is insert of each image at every pose A·g."""
    n = 32
    vol, G = _c4_phantom(n, device)
    R = _poses(300, seed=11, device=device)
    f = project(prepare_volume(vol), R)
    sym = BackProjector(n, device=device)
    sym.insert(f, R, symmetry=G)
    expl = BackProjector(n, device=device)
    expl.insert(f.repeat_interleave(4, 0), (R[:, None] @ G[None]).reshape(-1, 3, 3))
    scale = float(expl.acc.abs().max())
    assert_allclose(sym.acc, expl.acc, atol=1e-5 * scale, what="symmetry-expanded accumulator")


def test_symmetry_expansion_reconstruction_matches_expanded_poses(device):
    """300 images + C4 in insert == 1200 independent projections at the expanded poses (C4 phantom)."""
    n = 32
    vol, G = _c4_phantom(n, device)
    R = _poses(300, seed=12, device=device)
    fvol = prepare_volume(vol)
    rec_sym = _reconstruct(project(fvol, R), R, n, device, symmetry=G)
    R4 = (R[:, None] @ G[None]).reshape(-1, 3, 3)
    rec_exp = _reconstruct(project(fvol, R4), R4, n, device)
    assert_correlated(rec_sym, rec_exp, 0.99999, what="symmetry in insert vs expanded poses")
    assert float((rec_sym - rec_exp).abs().max() / rec_exp.abs().max()) < 1e-3
    assert_correlated(rec_sym, vol, 0.999, what="C4 reconstruction vs phantom")


# ----------------------------------------------------------------------------------------
# FSC
# ----------------------------------------------------------------------------------------


def test_fsc_of_map_with_itself_and_scaled_copies(device):
    n, apix = 32, 1.5
    vol = torch.randn(n, n, n, generator=_gen(20)).to(device)
    res = fsc(vol, vol, pixel_size=apix)
    assert isinstance(res, FSCResult)
    assert res.fsc.shape == (n // 2 + 1,)
    np.testing.assert_allclose(res.fsc, 1.0, atol=1e-6)
    np.testing.assert_allclose(fsc(vol, 3.0 * vol, pixel_size=apix).fsc, 1.0, atol=1e-6)
    np.testing.assert_allclose(fsc(vol, -vol, pixel_size=apix).fsc, -1.0, atol=1e-6)
    np.testing.assert_allclose(res.frequency[1:], np.arange(1, n // 2 + 1) / (n * apix))
    np.testing.assert_allclose(res.resolution[1:], n * apix / np.arange(1, n // 2 + 1))
    assert np.isinf(res.resolution[0])
    assert res.resolution_at(0.143) == pytest.approx(2 * apix)  # never drops: Nyquist


def test_fsc_of_independent_noise_is_near_zero(device):
    n = 48
    a = torch.randn(n, n, n, generator=_gen(21)).to(device)
    b = torch.randn(n, n, n, generator=_gen(22)).to(device)
    curve = fsc(a, b, pixel_size=1.0).fsc
    high = curve[8:]
    assert abs(float(high.mean())) < 0.05
    assert np.all(np.abs(high) < 0.2)


def test_fsc_of_signal_plus_independent_noise_matches_snr(device):
    """Two maps = S + N_i with equal white spectra (SNR 1): FSC = SNR / (1 + SNR) = 0.5 per shell."""
    n = 48
    s = torch.randn(n, n, n, generator=_gen(23)).to(device)
    a = s + torch.randn(n, n, n, generator=_gen(24)).to(device)
    b = s + torch.randn(n, n, n, generator=_gen(25)).to(device)
    curve = fsc(a, b, pixel_size=1.0).fsc
    assert abs(float(curve[8:].mean()) - 0.5) < 0.03


def test_fsc_with_mask_and_shape_check(device):
    n = 24
    vol = torch.randn(n, n, n, generator=_gen(26)).to(device)
    mask = soft_sphere(n, radius=8, edge_width=3, device=device)
    np.testing.assert_allclose(fsc(vol, vol, pixel_size=1.0, mask=mask).fsc[:10], 1.0, atol=1e-6)
    with pytest.raises(ValueError):
        fsc(vol, vol[:-1], pixel_size=1.0)


def test_resolution_at_known_crossing():
    n, apix = 64, 1.5
    s = np.arange(n // 2 + 1)
    curve = 1.0 - s / 20.0  # linear: crosses 0.143 at s = 17.14
    crossing = 20.0 * (1 - 0.143)
    assert resolution_at(curve, n, apix, 0.143) == pytest.approx(n * apix / crossing, rel=1e-9)
    assert resolution_at(curve, n, apix, 0.5) == pytest.approx(n * apix / 10.0, rel=1e-9)
    # first crossing wins even if the curve rises again
    bumpy = curve.copy()
    bumpy[25:] = 0.9
    assert resolution_at(bumpy, n, apix, 0.143) == pytest.approx(n * apix / crossing, rel=1e-9)
    assert resolution_at(np.ones(n // 2 + 1), n, apix) == pytest.approx(2 * apix)
    early = np.array([1.0, 0.1, 0.05, 0.0])
    assert resolution_at(early, 6, apix) == pytest.approx(6 * apix)


def test_fsc_to_ssnr():
    curve = np.array([1.0, 0.5, 0.25, -0.1])
    half = fsc_to_ssnr(curve, full_map=False).numpy()
    np.testing.assert_allclose(half[1:], [1.0, 1.0 / 3.0, 0.0], rtol=1e-6)
    full = fsc_to_ssnr(curve).numpy()
    np.testing.assert_allclose(full[1:], [2.0, 2.0 / 3.0, 0.0], rtol=1e-6)
    assert np.isfinite(full[0]) and full[0] > 100


# ----------------------------------------------------------------------------------------
# Masks
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("ndim", [2, 3])
def test_soft_sphere_profile(device, ndim):
    n, radius, width = 40, 10.0, 5.0
    m = soft_sphere(n, radius=radius, edge_width=width, ndim=ndim, device=device)
    assert m.shape == (n,) * ndim and m.dtype == torch.float32
    r = torch.sqrt(sum(c * c for c in centred_coords(n, ndim=ndim, device=device)))
    assert torch.all(m[r <= radius] == 1)
    assert torch.all(m[r >= radius + width] == 0)
    edge = (r > radius) & (r < radius + width)
    assert torch.all((m[edge] > 0) & (m[edge] < 1))
    # monotone non-increasing in r
    order = torch.argsort(r.reshape(-1))
    vals = m.reshape(-1)[order]
    assert torch.all(vals[1:] <= vals[:-1] + 1e-7)
    # half-way at the middle of the edge
    assert float(m[(n // 2,) * (ndim - 1) + (n // 2 + 12,)]) == pytest.approx(0.5 * (1 + math.cos(math.pi * 2 / 5)),
                                                                           abs=1e-6)


def test_mask_from_map_of_a_blob(device):
    """Gaussian blob thresholded at half its peak: a ball of radius σ√(2 ln 2); the mask is 1 within
    ``dilate`` of it, 0 beyond ``dilate + soft_edge``, and non-increasing outwards."""
    n, apix, sigma = 48, 2.0, 3.0
    vol = gaussian_blobs(n, [(0.0, 0.0, 0.0)], sigma, device=device)
    dilate, edge = 6.0, 8.0  # Å
    m = mask_from_map(vol, pixel_size=apix, threshold_fraction=0.5, dilate_angstrom=dilate,
                      soft_edge_angstrom=edge)
    assert m.shape == vol.shape and float(m.min()) >= 0 and float(m.max()) <= 1
    z, y, x = centred_coords(n, ndim=3, device=device)
    r_px = torch.sqrt(x * x + y * y + z * z)
    r_thr = sigma * math.sqrt(2 * math.log(2))  # px
    # one voxel of slack for the discretised ball
    assert torch.all(m[r_px <= r_thr + dilate / apix - 1] == 1)
    assert torch.all(m[r_px >= r_thr + (dilate + edge) / apix + 1] == 0)
    # non-increasing outwards along the axes and a diagonal from the centre
    c = n // 2
    for line in (m[c, c, c:], m[c, c:, c], m[c:, c, c], torch.diagonal(torch.diagonal(m[c:, c:, c:]))):
        assert torch.all(line[1:] <= line[:-1] + 1e-7)
    # explicit absolute threshold gives the same mask
    m2 = mask_from_map(vol, pixel_size=apix, threshold=0.5, dilate_angstrom=dilate, soft_edge_angstrom=edge)
    assert_allclose(m2, m, atol=0, what="absolute threshold")
    # cryoSPARC-style loose mask is larger
    loose = mask_from_map(vol, pixel_size=apix, dilate_angstrom=25.0, soft_edge_angstrom=15.0)
    assert float(loose.sum()) > float(m.sum())


def test_mask_from_map_offset_blob_follows_the_density(device):
    n, apix = 40, 1.0
    centre = (8.0, -5.0, 3.0)
    vol = gaussian_blobs(n, [centre], 2.0, device=device)
    m = mask_from_map(vol, pixel_size=apix, dilate_angstrom=3.0, soft_edge_angstrom=3.0)
    z, y, x = centred_coords(n, ndim=3, device=device)
    w = m / m.sum()
    com = [float((w * c).sum()) for c in (x, y, z)]
    np.testing.assert_allclose(com, centre, atol=0.05)

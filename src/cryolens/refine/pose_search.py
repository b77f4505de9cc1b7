"""Pose search engine: batched scores of images against reference projections over rotations × shifts.

Reusable by refinement, 2D/3D classification and ab initio. Everything works on a
*frequency band*: the rfft coefficients of the full box with radius below ``r_max``
(cycles per box), so the cost follows the current resolution rather than the box.

Image model (RELION's): ``X = CTF · shift(P(A), -origin) + N`` with ``N`` Gaussian,
independent between coefficients, of variance ``sigma²(shell)`` per coefficient.
Moving the image back by the origin (:func:`cryolens.core.fourier.shift_phase` with
``+origin``) gives ``CTF · P`` again, so for a pose ``(A, t)`` the log-likelihood up to a
per-image constant is the *ML score*

    ``S = Σ_k w_k [2·Re(X_k e_k(t) · conj(CTF_k P_k(A))) − CTF_k² |P_k(A)|²] / sigma²_k``

with ``e_k(t) = exp(−2πi k·t / n)`` and ``w_k = 1/2`` on the ``kx = 0`` column (each of its
Friedel pairs appears twice in the half plane), 1 elsewhere. It needs the reference on the
data's scale (true of our reconstructions); for an arbitrary first reference use the
*CC score* ``Σ w Re(X e conj(CTF P))/sigma² / sqrt(Σ w CTF² |P|²/sigma²)`` (a whitened,
scale-free correlation, as RELION's ``--firstiter_cc``).

The cross term of every (image, shift) × rotation pair is one real GEMM
``[Re Y, Im Y] · [Re P, Im P]ᵀ`` with ``Y = X e(t) CTF w / sigma²``; memory is bounded by
chunking rotations (global search) or images (local search) to ``max_block`` elements.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from cryolens.core.fourier import freq_grid_2d
from cryolens.core.projector import FourierVolume, sample_trilinear
from cryolens.core.rotations import rotvec_to_matrix
from cryolens.core.so3_grid import local_offsets

__all__ = ["FrequencyBand", "SearchData", "Candidates", "BandProjector", "project_band", "shift_grid",
           "phase_ramps", "global_search", "local_search", "local_search_many", "stacked_table",
           "best_projections"]


@dataclass
class FrequencyBand:
    """The rfft coefficients of an ``n`` box with radius < ``r_max`` (cycles per box).

    Attributes:
        n: full box; r_max: band limit; flat: ``(M,)`` indices into a flattened ``(n, n//2+1)``
        transform; k: ``(M, 2)`` float ``(kx, ky)``; shell: ``(M,)`` ``round(|k|)``;
        weight: ``(M,)`` 0.5 on the ``kx = 0`` column, 1 elsewhere.
    """

    n: int
    r_max: float
    flat: torch.Tensor
    k: torch.Tensor
    shell: torch.Tensor
    weight: torch.Tensor

    @classmethod
    def build(cls, n: int, r_max: float, device=None) -> "FrequencyBand":
        ky, kx = freq_grid_2d(n, device=device)
        r = torch.sqrt(kx * kx + ky * ky)
        r_max = float(min(r_max, n / 2))
        keep = (r < r_max).reshape(-1)
        flat = torch.nonzero(keep).squeeze(1)
        k = torch.stack([kx.reshape(-1)[flat], ky.reshape(-1)[flat]], 1)
        shell = torch.round(r.reshape(-1)[flat]).long()
        weight = torch.where(k[:, 0] == 0, 0.5, 1.0).to(torch.float32)
        return cls(n, r_max, flat, k, shell, weight)

    def __len__(self) -> int:
        return int(self.flat.numel())

    def gather(self, f: torch.Tensor) -> torch.Tensor:
        """``(B, n, n//2+1)`` transforms (or real grids) -> ``(B, M)`` band coefficients."""
        return f.reshape(f.shape[0], -1)[:, self.flat]


@dataclass
class SearchData:
    """One batch of images prepared for scoring on a band.

    Attributes:
        x: ``(B, M)`` complex image coefficients (not shifted).
        ctf: ``(B, M)`` CTF values (ones without CTF).
        inv_sigma2: ``(M,)`` or ``(B, M)`` inverse noise variance per coefficient.
    """

    x: torch.Tensor
    ctf: torch.Tensor
    inv_sigma2: torch.Tensor

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def select(self, rows: torch.Tensor) -> "SearchData":
        s = self.inv_sigma2 if self.inv_sigma2.ndim == 1 else self.inv_sigma2[rows]
        return SearchData(self.x[rows], self.ctf[rows], s)


@dataclass
class Candidates:
    """Poses per image, best first: ``score (B, K)``, ``rotations (B, K, 3, 3)``, ``shifts (B, K, 2)`` px.

    ``log_evidence (B,)`` (local search only): ``logsumexp`` of all scores searched, so that
    ``exp(score[:, 0] - log_evidence)`` is the best pose's posterior probability on the grid.
    """

    score: torch.Tensor
    rotations: torch.Tensor
    shifts: torch.Tensor
    log_evidence: torch.Tensor | None = None


class BandProjector:
    """Central slices restricted to a frequency band, from a compact full (both kx signs) table.

    Built from a :class:`~cryolens.core.projector.FourierVolume` (same padding, gridding
    pre-correction and trilinear interpolation as :func:`cryolens.core.projector.project`), but the
    table is cropped to the band's radius and holds both Friedel halves, so a slice is one small
    matmul for the coordinates and one ``grid_sample`` with no folding: a table of
    ``(2H+1)³`` complex values with ``H = ceil(pad·r_max) + 1`` (2.4 MB at ``r_max = 16``, pad 2).
    """

    def __init__(self, fvol: FourierVolume, band: FrequencyBand):
        P, pad = fvol.size, fvol.pad
        H = min(P // 2, int(math.ceil(pad * band.r_max)) + 1)
        half = fvol.table[0]  # (2, P+1, P+1, P//2+1), centred z/y (k = index - P/2), x = 0..P/2
        c = P // 2
        half = half[:, c - H:c + H + 1, c - H:c + H + 1, :H + 1]
        sign = half.new_tensor([1.0, -1.0])[:, None, None, None]  # F(-k) = conj F(k)
        mirror = torch.flip(half[:, :, :, 1:], dims=(1, 2, 3)) * sign
        self.table = torch.cat([mirror, half], dim=3).contiguous()[None]  # (1, 2, 2H+1, 2H+1, 2H+1)
        self.band, self.H, self.pad = band, H, pad
        self.device = fvol.data.device

    def project_ri(self, rotations: torch.Tensor) -> torch.Tensor:
        """``(R, 2M)`` real: the slices' real parts then imaginary parts (GEMM-ready)."""
        rot = rotations.to(device=self.device, dtype=torch.float32)
        # (A^T k)_j = sum_i A[i, j] k_i for k = (kx, ky, 0); grid_sample wants (x, y, z) in [-1, 1]
        g = torch.matmul(self.band.k.to(self.device), rot[:, :2, :] * (self.pad / self.H))  # (R, M, 3)
        v = sample_trilinear(self.table, g)  # (2, R, M)
        return v.permute(1, 0, 2).reshape(rot.shape[0], -1)

    def project(self, rotations: torch.Tensor) -> torch.Tensor:
        """``(R, M)`` complex64 slice values on the band."""
        ri = self.project_ri(rotations)
        M = len(self.band)
        return torch.complex(ri[:, :M], ri[:, M:])


def project_band(fvol: FourierVolume, rotations: torch.Tensor, band: FrequencyBand) -> torch.Tensor:
    """Central-slice values on the band for a batch of poses: ``(R, M)`` complex64 (see :class:`BandProjector`)."""
    return BandProjector(fvol, band).project(rotations)


def shift_grid(step: float, radius: float, *, device=None) -> torch.Tensor:
    """``(S, 2)`` shifts ``(dx, dy)`` in px on the lattice ``step·Z²`` within ``radius`` (0 first)."""
    m = int(math.floor(radius / step + 1e-9))
    a = torch.arange(-m, m + 1, dtype=torch.float32, device=device) * step
    s = torch.cartesian_prod(a, a).reshape(-1, 2)
    s = s[s.norm(dim=1) <= radius + 1e-6]
    return s[torch.sort(s.norm(dim=1), stable=True).indices]


def phase_ramps(band: FrequencyBand, shifts: torch.Tensor) -> torch.Tensor:
    """``exp(-2πi k·t/n)`` for shifts ``(..., 2)`` px -> ``(..., M)``: multiplying moves content by ``+t``."""
    ph = (-2.0 * math.pi / band.n) * (shifts[..., :1] * band.k[:, 0] + shifts[..., 1:] * band.k[:, 1])
    return torch.polar(torch.ones_like(ph), ph)


def _weighted(data: SearchData, band: FrequencyBand) -> tuple[torch.Tensor, torch.Tensor]:
    """``X·CTF·w/sigma²`` (B, M) complex and ``CTF²·w/sigma²`` (B, M) real."""
    wc = data.ctf * band.weight * data.inv_sigma2
    return data.x * wc, data.ctf * wc


def _combine(cross: torch.Tensor, quad: torch.Tensor, mode: str) -> torch.Tensor:
    """Scores from the cross term and the quadratic term (broadcast)."""
    if mode == "ml":
        return 2.0 * cross - quad
    if mode == "cc":
        return cross / quad.clamp_min(1e-30).sqrt()
    raise ValueError(f"unknown score mode {mode!r} (use 'ml' or 'cc')")


def global_search(proj: BandProjector, data: SearchData, rotations: torch.Tensor,
                  shifts: torch.Tensor, *, top_k: int = 1, mode: str = "ml", centre: torch.Tensor | None = None,
                  max_block: int = 2**24) -> Candidates:
    """Exhaustive search of every image over ``rotations`` × ``shifts``; keeps the ``top_k`` best.

    Args:
        proj: the reference's band projector (its band is the coefficients scored); data: the images.
        rotations: ``(R, 3, 3)`` shared grid (e.g. :func:`cryolens.core.so3_grid.so3_grid`).
        shifts: ``(S, 2)`` origin offsets in px, added to ``centre`` (``(B, 2)``, default 0).
        top_k: candidates kept per image, best first (one candidate per (rotation, shift)).
        mode: ``"ml"`` or ``"cc"`` (module docstring).
        max_block: bound on the elements of the score block ``B·S·R_chunk`` and of the shifted
            images ``B·S·2M`` (images are split into chunks when needed).

    Returns:
        :class:`Candidates` with ``(B, top_k)`` entries.
    """
    band = proj.band
    B, S, R = len(data), shifts.shape[0], rotations.shape[0]
    dev = data.x.device
    centre = torch.zeros(B, 2, device=dev) if centre is None else centre
    per_image = S * 2 * len(band)  # the shifted, weighted images (B·S, 2M) must fit in max_block too
    if B > 1 and B * per_image > max_block:
        step = max(1, max_block // per_image)
        parts = [global_search(proj, data.select(torch.arange(b0, min(B, b0 + step), device=dev)), rotations,
                               shifts, top_k=top_k, mode=mode, centre=centre[b0:b0 + step], max_block=max_block)
                 for b0 in range(0, B, step)]
        return Candidates(*(torch.cat([getattr(c, f) for c in parts]) for f in ("score", "rotations", "shifts")))
    t = centre[:, None, :] + shifts.to(dev)[None]  # (B, S, 2)
    xw, c2w = _weighted(data, band)
    y = (xw[:, None, :] * phase_ramps(band, t)).reshape(B * S, -1)
    y2 = torch.cat([y.real, y.imag], 1)  # (B·S, 2M)
    c2w2 = torch.cat([c2w, c2w], 1)
    chunk = max(1, min(R, max_block // max(1, B * S)))
    best_s = torch.full((B, 0), -math.inf, device=dev)
    best_i = torch.zeros((B, 0), dtype=torch.long, device=dev)
    for r0 in range(0, R, chunk):
        p = proj.project_ri(rotations[r0:r0 + chunk]).to(dev)  # (Rc, 2M)
        cross = (y2 @ p.T).reshape(B, S, -1)
        quad = c2w2 @ (p * p).T  # (B, Rc)
        sc = _combine(cross, quad[:, None, :], mode).reshape(B, -1)
        rc = sc.shape[1] // S
        s_idx, r_idx = torch.meshgrid(torch.arange(S, device=dev), torch.arange(r0, r0 + rc, device=dev),
                                      indexing="ij")
        flat = (r_idx * S + s_idx).reshape(-1)  # global index = rotation·S + shift
        k = min(top_k, sc.shape[1])
        v, i = torch.topk(sc, k, dim=1)
        best_s, o = torch.topk(torch.cat([best_s, v], 1), min(top_k, best_s.shape[1] + k), dim=1)
        best_i = torch.gather(torch.cat([best_i, flat[i]], 1), 1, o)
    rot = rotations.to(dev)[best_i // S]
    sh = t[torch.arange(B, device=dev)[:, None], best_i % S]
    return Candidates(best_s, rot, sh)


def local_search(proj: BandProjector, data: SearchData, centres: Candidates, *,
                 angular_step: float, angular_range: float, offset_step: float, offset_range: float,
                 mode: str = "ml", max_block: int = 2**24) -> Candidates:
    """Search around each image's candidate poses; returns the single best pose per image.

    Every candidate ``(A, t)`` is expanded to ``A·exp(ω)`` for rotation vectors ``ω`` on the
    lattice ``angular_step·Z³`` with ``|ω| <= angular_range`` (degrees;
    :func:`cryolens.core.so3_grid.local_offsets`) times shifts ``t + d`` with ``d`` on
    ``offset_step·Z²``, ``|d| <= offset_range`` (px). Projections are per image, so images
    are processed in chunks of at most ``max_block`` projected coefficients.

    Returns:
        :class:`Candidates` with ``K = 1`` and ``log_evidence`` over everything searched.
    """
    return local_search_many([proj], data, centres, angular_step=angular_step, angular_range=angular_range,
                             offset_step=offset_step, offset_range=offset_range, mode=mode, max_block=max_block)[0]


def stacked_table(projs: list[BandProjector]) -> torch.Tensor:
    """The projectors' band tables side by side, ``(1, 2·len(projs), D, D, D)`` (real, imaginary per map):
    one trilinear pass samples every map at the same points (the projectors share band and padding)."""
    first = projs[0]
    for p in projs[1:]:
        if p.H != first.H or p.pad != first.pad or len(p.band) != len(first.band):
            raise ValueError("stacked projectors need the same band and padding")
    return first.table if len(projs) == 1 else torch.cat([p.table for p in projs], 1)


def local_search_many(projs: list[BandProjector], data: SearchData, centres: Candidates, *,
                      angular_step: float, angular_range: float, offset_step: float, offset_range: float,
                      mode: str = "ml", max_block: int = 2**24) -> list[Candidates]:
    """:func:`local_search` of the same images around the same candidate poses against several maps.

    What does not depend on the map is computed once: the rotations ``A·exp(ω)``, their slice
    coordinates, the trilinear weights (one ``grid_sample`` over the maps' stacked tables,
    :func:`stacked_table`) and the shifted, weighted images. Shifts enter as
    ``e(t + d) = e(t)·e(d)`` (one complex product per image and shift; the ``(S, M)`` ramps of the
    lattice ``d`` once per call), and the cross term is two batched GEMMs on the real and imaginary
    planes as the sampler returns them (no copies). ``projs`` share band and padding.

    Returns:
        one :class:`Candidates` per map, as :func:`local_search` gives.
    """
    first = projs[0]
    dev, band = data.x.device, first.band
    K = len(projs)
    tab = stacked_table(projs)
    B, K0 = centres.rotations.shape[:2]
    om = rotvec_to_matrix(local_offsets(step_deg=angular_step, range_deg=angular_range, device=dev))  # (L,3,3)
    d = shift_grid(offset_step, offset_range, device=dev)  # (S, 2)
    L, S, M = om.shape[0], d.shape[0], len(band)
    k = band.k.to(dev)
    xw, c2w = _weighted(data, band)
    ramp_d = phase_ramps(band, d.to(dev))  # (S, M)
    er, ei = ramp_d.real.contiguous(), ramp_d.imag.contiguous()
    chunk = max(1, min(B, max_block // max(1, K0 * (L * K + S) * M)))
    scale = first.pad / first.H
    out = [([], [], [], []) for _ in range(K)]
    for b0 in range(0, B, chunk):
        b1 = min(B, b0 + chunk)
        b = b1 - b0
        rots = (centres.rotations[b0:b1, :, None] @ om).reshape(b * K0 * L, 3, 3)
        # slice coordinates (A^T k)_j = sum_i A[i, j] k_i, one GEMM: (R·3, 2) @ (2, M) -> (R, M, 3) points
        w = (rots[:, :2, :] * scale).transpose(1, 2).reshape(-1, 2)
        g = (w @ k.T).reshape(-1, 3, M).transpose(1, 2)
        v = sample_trilinear(tab, g).reshape(K, 2, b * K0, L, M)  # real and imaginary parts per map
        t = centres.shifts[b0:b1, :, None, :] + d  # (b, K0, S, 2)
        z = xw[b0:b1, None, :] * phase_ramps(band, centres.shifts[b0:b1])  # (b, K0, M): X·e(t)·CTF·w/sigma²
        zr, zi = z.real.reshape(b * K0, 1, M), z.imag.reshape(b * K0, 1, M)
        yr, yi = zr * er - zi * ei, zr * ei + zi * er  # (b·K0, S, M): the images at every shift
        c2 = c2w[b0:b1].repeat_interleave(K0, 0)[:, :, None]  # (b·K0, M, 1)
        ar = torch.arange(b, device=dev)
        for j in range(K):
            pr, pi = v[j, 0], v[j, 1]  # (b·K0, L, M)
            cross = torch.baddbmm(torch.bmm(yr, pr.transpose(1, 2)), yi, pi.transpose(1, 2)).reshape(b, K0, S, L)
            quad = torch.bmm(pr * pr + pi * pi, c2).reshape(b, K0, L)
            sc = _combine(cross, quad[:, :, None, :], mode).reshape(b, -1)  # index (k, s, l)
            val, i = sc.max(dim=1)
            kk, s, l_ = i // (S * L), (i // L) % S, i % L
            o = out[j]
            o[0].append(val)
            o[1].append(rots.reshape(b, K0, L, 3, 3)[ar, kk, l_])
            o[2].append(t[ar, kk, s])
            o[3].append(torch.logsumexp(sc, dim=1))
    return [Candidates(torch.cat(o[0])[:, None], torch.cat(o[1])[:, None], torch.cat(o[2])[:, None], torch.cat(o[3]))
            for o in out]


def best_projections(proj: BandProjector, rotations: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """Model coefficients without CTF, in the *image* frame: ``P(A) · exp(+2πi k·t/n)``, ``(B, M)``.

    ``rotations (B, 3, 3)``, ``shifts (B, 2)`` px (the origins). Used for residuals (noise model).
    """
    p = proj.project(rotations)
    return p * phase_ramps(proj.band, -shifts.to(p.device))

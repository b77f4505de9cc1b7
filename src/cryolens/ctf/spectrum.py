"""Power spectra for CTF estimation: tiled periodograms, their frequency geometry, and the
smooth background and envelope under the Thon rings.

Layout: spectra are ``(box, box)`` with the DC term at ``(box//2, box//2)`` (fftshifted),
rows = ky, columns = kx, frequency ``s = |k| / (box · pixel_size)`` in 1/Å and azimuth
``φ = atan2(ky, kx)`` as in :mod:`cryolens.core.ctf`.

Background and envelope (CTFFIND4 subtracts a smooth background and rescales; we make that
robust to steep low-frequency backgrounds): the amplitude spectrum ``A(s)`` is modelled as
``b(s) + e(s) · CTF²(s)`` with ``b`` and ``e`` piecewise-linear in ``s`` on a few knots. For a
given CTF this is a linear least-squares problem, solved for many candidate CTFs at once;
the normalised spectrum ``(A − b) / e`` is then ≈ CTF² whatever the background did.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import torch

from cryolens.core.fourier import welch_power_spectrum

__all__ = ["power_spectrum", "looks_like_power_spectrum", "SpectrumGrid", "spectrum_grid", "radial_bins", "hat_basis", "background_fit"]


def power_spectrum(image: torch.Tensor, *, box: int, overlap: float) -> torch.Tensor:
    """Average periodogram ``|FT|²`` of overlapping ``box``² tiles (Welch, as CTFFIND's), centred.

    Args:
        image: ``(H, W)`` micrograph or ``(S, H, W)`` frame sub-sums (e.g. ~4-5 e⁻/Å² each,
            where Thon rings show best); all tiles of all sub-sums are averaged.
        box: tile size [px], even; overlap: fraction shared by neighbouring tiles, [0, 1).

    Returns:
        ``(box, box)`` float32 on the image's device, DC at ``(box//2, box//2)``; each tile's
        mean is removed and the power is divided by ``box²``
        (:func:`cryolens.core.fourier.welch_power_spectrum`, completed by Friedel symmetry).
    """
    img = torch.as_tensor(image)
    if img.ndim not in (2, 3):
        raise ValueError("image must be (H, W) or (S, H, W)")
    if box % 2 or box < 16:
        raise ValueError("box must be even and at least 16 pixels")
    half = welch_power_spectrum(img, box=box, overlap=overlap)
    rows = (-torch.arange(box, device=half.device)) % box  # Friedel mates fill the kx < 0 half
    full = torch.cat([half, half[rows][:, 1:box // 2].flip(1)], dim=1)
    return torch.fft.fftshift(full, dim=(-2, -1)).float()


@dataclass
class SpectrumGrid:
    """Frequencies of the pixels of a centred ``(box, box)`` spectrum (all 1-D over the kept pixels).

    Attributes:
        index: flat indices of the kept pixels (one half plane, kx > 0 or kx = 0 < ky).
        s: |s| [1/Å]; s2: |s|²; cos2, sin2: cos 2φ, sin 2φ; radius: |k| [px].
        box, pixel_size: the spectrum's size [px] and pixel [Å].
    """

    index: torch.Tensor
    s: torch.Tensor
    s2: torch.Tensor
    cos2: torch.Tensor
    sin2: torch.Tensor
    radius: torch.Tensor
    box: int
    pixel_size: float
    _basis: dict = field(default_factory=dict, repr=False)

    def basis(self, dtype=torch.float32) -> torch.Tensor:
        """``(4, P)``: s², s² cos 2φ, s² sin 2φ, s⁴ (cached per dtype): χ is linear in them."""
        if dtype not in self._basis:
            s2 = self.s2.double()
            b = torch.stack([s2, s2 * self.cos2.double(), s2 * self.sin2.double(), s2 * s2])
            self._basis[dtype] = b.to(dtype).contiguous()
        return self._basis[dtype]

    def select(self, keep: torch.Tensor) -> "SpectrumGrid":
        return SpectrumGrid(self.index[keep], self.s[keep], self.s2[keep], self.cos2[keep], self.sin2[keep],
                            self.radius[keep], self.box, self.pixel_size)


def spectrum_grid(box: int, pixel_size: float, *, s_min: float = 0.0, s_max: float | None = None,
                  mask_cross: bool = True, half: bool = True, device=None) -> SpectrumGrid:
    """Pixels of a centred ``(box, box)`` spectrum with ``s_min <= s <= s_max`` (1/Å).

    ``half`` keeps one half plane (the other is its Friedel mate); ``mask_cross`` drops
    the pixels on the kx = 0 and ky = 0 axes. The last few grids are memoised (patches and
    micrographs of one session share them); treat them as read-only.
    """
    dev = torch.device(device) if device is not None else torch.device("cpu")
    return _grid(int(box), float(pixel_size), float(s_min), None if s_max is None else float(s_max),
                 bool(mask_cross), bool(half), dev)


@lru_cache(maxsize=8)
def _grid(box: int, pixel_size: float, s_min: float, s_max: float | None, mask_cross: bool, half: bool,
          device: torch.device) -> SpectrumGrid:
    k = torch.arange(box, device=device, dtype=torch.float32) - box // 2
    ky, kx = torch.meshgrid(k, k, indexing="ij")
    r2 = kx * kx + ky * ky
    r = torch.sqrt(r2)
    s = r / (box * pixel_size)
    keep = s >= s_min
    if s_max is not None:
        keep &= s <= s_max
    if half:
        keep &= (kx > 0) | ((kx == 0) & (ky > 0))
    if mask_cross:
        keep &= (kx != 0) & (ky != 0)
    keep &= r2 > 0
    idx = torch.nonzero(keep.reshape(-1)).reshape(-1)
    kx, ky, r2, r, s = (t.reshape(-1)[idx] for t in (kx, ky, r2, r, s))
    return SpectrumGrid(idx, s, s * s, (kx * kx - ky * ky) / r2, 2 * kx * ky / r2, r, box, float(pixel_size))


def radial_bins(values: torch.Tensor, coord: torch.Tensor, *, n_bins: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean of ``values`` in unit-width bins of ``coord`` (``round(coord)``, 0..n_bins-1) and the counts."""
    b = torch.round(coord).long()
    ok = (b >= 0) & (b < n_bins)
    num = torch.zeros(n_bins, dtype=torch.float64, device=values.device).index_add_(0, b[ok], values[ok].double())
    cnt = torch.zeros(n_bins, dtype=torch.float64, device=values.device).index_add_(
        0, b[ok], torch.ones_like(values[ok], dtype=torch.float64))
    return (num / cnt.clamp_min(1)).float(), cnt.float()


def hat_basis(s: torch.Tensor, s_lo: float, s_hi: float, n_knots: int) -> torch.Tensor:
    """Piecewise-linear (hat) basis on ``n_knots`` knots evenly spaced over [s_lo, s_hi]: ``(len(s), n_knots)``.

    Outside the range the end hats extend linearly, so the basis extrapolates.
    """
    t = (s - s_lo) / max(s_hi - s_lo, 1e-12) * (n_knots - 1)  # knot coordinate
    j = torch.arange(n_knots, device=s.device, dtype=s.dtype)
    hat = (1 - (t[:, None] - j[None]).abs()).clamp_min(0)
    lo, hi = t < 0, t > n_knots - 1
    hat[lo, 0], hat[lo, 1] = 1 - t[lo], t[lo]
    hat[hi, -1], hat[hi, -2] = t[hi] - (n_knots - 2), (n_knots - 1) - t[hi]
    return hat


def background_fit(y: torch.Tensor, models: torch.Tensor, basis_b: torch.Tensor, basis_e: torch.Tensor,
                   weights: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Least-squares ``y ≈ basis_b · β + (basis_e · γ) ⊙ model`` for each candidate model at once.

    Args:
        y: ``(n,)`` amplitude profile; models: ``(B, n)`` candidate CTF² curves;
        basis_b ``(n, Kb)``, basis_e ``(n, Ke)``; weights ``(n,)`` (None: uniform).

    Returns:
        ``(score (B,), background (B, n), envelope (B, n))`` where ``score`` is the signed
        fraction of the background-only residual the CTF term explains (negative when the
        fitted envelope is negative, i.e. the rings are anti-phased).
    """
    w = torch.ones_like(y) if weights is None else weights
    sw = torch.sqrt(w).double()
    yb = (y.double() * sw)
    xb = basis_b.double() * sw[:, None]
    xe = basis_e.double()[None] * models.double()[..., None] * sw[None, :, None]  # (B, n, Ke)
    x = torch.cat([xb.expand(len(models), -1, -1), xe], dim=-1)
    kb = basis_b.shape[1]
    reg = 1e-9 * torch.eye(x.shape[-1], dtype=x.dtype, device=x.device)
    xtx = x.transpose(1, 2) @ x + reg * (x * x).sum((1, 2))[:, None, None] / x.shape[-1]
    coef = torch.linalg.solve(xtx, x.transpose(1, 2) @ yb[None, :, None])[..., 0]  # (B, K)
    resid = ((yb[None] - (x @ coef[..., None])[..., 0]) ** 2).sum(-1)
    c0 = torch.linalg.lstsq(xb, yb[:, None]).solution
    rss0 = ((yb - (xb @ c0)[:, 0]) ** 2).sum()
    bg = coef[:, :kb] @ basis_b.double().T
    env = coef[:, kb:] @ basis_e.double().T
    score = (1 - resid / rss0.clamp_min(1e-300)) * torch.sign(env.mean(-1))
    return score.float(), bg.float(), env.float()


def looks_like_power_spectrum(image: torch.Tensor, *, threshold: float = 0.9) -> bool:
    """Whether a 2-D image is a centred power spectrum rather than a micrograph.

    A power spectrum is non-negative and point-symmetric about ``(n//2, n//2)``
    (Friedel), so its correlation with its own point reflection is ~1; a micrograph's is
    ~0. A spectrum passed where a micrograph is expected is what made CTFFIND fit noise on
    the RELION tutorial's ``*_PS.mrc`` (it took the spectrum of the spectrum).
    """
    x = torch.as_tensor(image).float()
    if x.ndim != 2 or x.shape[0] != x.shape[1] or x.shape[0] % 2 or bool((x < 0).any()):
        return False
    n = x.shape[0]
    c = n // 2
    x = x.clone()
    x[c, c] = x.median()  # the DC spike would dominate the correlation
    mate = torch.roll(torch.flip(x, dims=(0, 1)), shifts=(1, 1), dims=(0, 1))
    a, b = x - x.mean(), mate - mate.mean()
    cc = float((a * b).sum() / torch.sqrt((a * a).sum() * (b * b).sum()).clamp_min(1e-30))
    return cc > threshold

"""In-plane rotation of band-limited 2D transforms by interpolation on a 2x padded Fourier grid.

A class average (or an accumulator of rotated images) lives on a *frequency band*
(:class:`cryolens.refine.pose_search.FrequencyBand`: the rfft coefficients of an ``n`` box
with radius below ``r_max`` cycles per box). :class:`BandRotator` evaluates such a
transform at rotated band frequencies, ``F(R q)``, as RELION does for 2D references:
the band is placed on the smallest box ``n_c`` that holds it (Fourier cropping), taken to
real space, divided by the apodisation of bilinear interpolation (gridding pre-correction,
separable ``sinc²(x / (2 n_c))``), zero-padded to ``2 n_c`` and transformed again; the
rotated frequencies are then read with bilinear interpolation from that 2x finer grid.

The rotation matrices are RELION's in-plane matrices (top-left 2x2 of
:func:`cryolens.core.rotations.euler_to_matrix` ``(0, 0, psi)``) acting on ``(kx, ky)``;
an image of a class at in-plane angle ``psi`` is ``X(q) = A(Rᵀ q)``, as a 3D projection
at ``(rot, tilt, psi)`` is the one at ``(rot, tilt, 0)`` rotated in plane.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from cryolens.core.fourier import good_fft_size
from cryolens.core.rotations import euler_to_matrix
from cryolens.refine.pose_search import FrequencyBand

__all__ = ["BandRotator", "inplane_matrices", "crop_box"]


def inplane_matrices(psi_deg: torch.Tensor) -> torch.Tensor:
    """``(..., 2, 2)`` RELION in-plane rotation matrices for angles ``psi_deg`` (degrees), acting on (x, y)."""
    psi = torch.as_tensor(psi_deg, dtype=torch.float32)
    zero = torch.zeros_like(psi)
    return euler_to_matrix(zero, zero, psi)[..., :2, :2]


def crop_box(n: int, r_max: float) -> int:
    """The smallest even FFT-friendly box (at most ``n``) whose rfft grid holds every frequency below ``r_max``."""
    need = 2 * (int(math.ceil(r_max)) + 1)
    return min(n, good_fft_size(need)) if need < n else n


class BandRotator:
    """Rotate band-limited 2D transforms: ``F(R q)`` for ``q`` on a band.

    Args:
        band: band of the full ``n`` box (its ``k`` are integer ``(kx, ky)``, cycles per box).
        device: where the grids live.

    The band is re-indexed on the cropped box ``n_c = crop_box(n, r_max)`` (same integer
    frequencies, so values need no rescaling).
    """

    def __init__(self, band: FrequencyBand, device=None):
        self.band = band
        self.n = band.n
        self.nc = crop_box(band.n, band.r_max)
        self.crop = FrequencyBand.build(self.nc, band.r_max, device=device)
        if len(self.crop) != len(band):  # pragma: no cover - the two grids hold the same frequencies
            raise RuntimeError("band and cropped band differ")
        x = (torch.arange(self.nc, device=device, dtype=torch.float32) - self.nc // 2) / (2 * self.nc)
        s = torch.sinc(x) ** 2
        self.correction = s[:, None] * s[None, :]
        self.device = device

    def to_image(self, values: torch.Tensor) -> torch.Tensor:
        """Band values ``(N, M)`` (Hermitian-consistent) -> real centred images ``(N, n_c, n_c)`` on the cropped box."""
        nc = self.nc
        grid = torch.zeros(values.shape[0], nc * (nc // 2 + 1), dtype=torch.complex64, device=values.device)
        grid[:, self.crop.flat] = values.to(torch.complex64)
        grid = grid.reshape(-1, nc, nc // 2 + 1)
        return torch.fft.fftshift(torch.fft.irfft2(grid, s=(nc, nc)), dim=(-2, -1))

    def padded_spectrum(self, values: torch.Tensor) -> torch.Tensor:
        """``(N, 2, P, P)`` real/imaginary channels of the 2x padded, centred (fftshifted) full spectrum."""
        img = self.to_image(values) / self.correction
        nc, p = self.nc, 2 * self.nc
        padded = F.pad(img, (nc // 2, p - nc - nc // 2, nc // 2, p - nc - nc // 2))
        spec = torch.fft.fftshift(torch.fft.fft2(torch.fft.ifftshift(padded, dim=(-2, -1))), dim=(-2, -1))
        return torch.stack([spec.real, spec.imag], dim=1)

    def sample(self, spectrum: torch.Tensor, matrices: torch.Tensor) -> torch.Tensor:
        """``F(R q)`` on the band for each spectrum and each of its rotations.

        Args:
            spectrum: ``(N, 2, P, P)`` from :meth:`padded_spectrum`.
            matrices: ``(N, J, 2, 2)`` rotations acting on ``(kx, ky)``.

        Returns:
            ``(N, J, M)`` complex64.
        """
        p = spectrum.shape[-1]
        k = self.band.k.to(spectrum.device)  # (M, 2) (kx, ky)
        rk = torch.einsum("njab,mb->njma", matrices.to(spectrum.device, torch.float32), k) * 2.0
        # grid_sample with align_corners=True: index i <-> -1 + 2 i / (p - 1); the centre p/2 holds DC.
        grid = (rk + p // 2) * (2.0 / (p - 1)) - 1.0
        out = F.grid_sample(spectrum, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
        return torch.complex(out[:, 0], out[:, 1])

    def rotate(self, values: torch.Tensor, matrices: torch.Tensor) -> torch.Tensor:
        """``(N, M)`` band values and ``(N, J, 2, 2)`` rotations -> ``(N, J, M)`` values ``F(R q)``."""
        return self.sample(self.padded_spectrum(values), matrices)

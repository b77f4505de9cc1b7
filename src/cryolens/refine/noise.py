"""Per-shell noise model: ``sigma²(shell)`` = mean power per rfft coefficient of the residuals.

The spectrum is the average over particles of ``|X − CTF·P(A,t)|²`` at the assigned poses
(RELION's ``sigma2_noise`` without its factor ½, because our scores sum over independent
half-plane coefficients with a complex Gaussian of variance ``sigma²``). Beyond the band of
the residuals it falls back to the images' own power spectrum (noise-dominated there).
"""

from __future__ import annotations

import torch

from cryolens.refine.pose_search import FrequencyBand

__all__ = ["ShellAccumulator", "NoiseModel"]


class ShellAccumulator:
    """Running weighted mean of ``|values|²`` per shell ``0..n//2``."""

    def __init__(self, n: int, device=None):
        self.nsh = n // 2 + 1
        self.sum = torch.zeros(self.nsh, dtype=torch.float64, device=device)
        self.count = torch.zeros(self.nsh, dtype=torch.float64, device=device)

    def add(self, values: torch.Tensor, band: FrequencyBand) -> None:
        """Accumulate ``(B, M)`` band coefficients (weights: the band's kx = 0 halving)."""
        keep = band.shell < self.nsh
        sh, w = band.shell[keep], band.weight[keep]
        p = (values[:, keep].abs() ** 2 * w).sum(0).double()
        self.sum.index_add_(0, sh.to(self.sum.device), p.to(self.sum.device))
        self.count.index_add_(0, sh.to(self.sum.device), (w.double() * values.shape[0]).to(self.sum.device))

    def mean(self) -> torch.Tensor:
        """``(n//2+1,)`` mean power per coefficient; NaN where nothing was accumulated."""
        return torch.where(self.count > 0, self.sum / self.count.clamp_min(1e-30), torch.nan).float()


class NoiseModel:
    """``sigma²`` per shell for one half set (shells ``0..n//2``).

    Starts from the images' power spectrum; :meth:`update` replaces the shells covered by
    residuals. Shell 0 (the DC term, arbitrary offsets) is not used for alignment.
    """

    def __init__(self, image_power: torch.Tensor):
        self.sigma2 = self._fill(image_power.clone())

    @staticmethod
    def _fill(s: torch.Tensor) -> torch.Tensor:
        ok = torch.isfinite(s) & (s > 0)
        floor = s[ok].min() if ok.any() else torch.tensor(1.0)
        return torch.where(ok, s, floor)

    def update(self, residual_power: torch.Tensor) -> None:
        """Take the residuals' per-shell power where it exists (finite, positive)."""
        ok = torch.isfinite(residual_power) & (residual_power > 0)
        self.sigma2 = self._fill(torch.where(ok, residual_power, self.sigma2))

    def inverse_on(self, band: FrequencyBand) -> torch.Tensor:
        """``(M,)`` ``1/sigma²`` on the band's coefficients (0 at DC)."""
        inv = 1.0 / self.sigma2.to(band.shell.device)[band.shell.clamp_max(self.sigma2.numel() - 1)]
        return torch.where(band.shell == 0, torch.zeros_like(inv), inv)

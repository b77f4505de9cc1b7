"""E-step of 2D classification: posteriors over classes × in-plane angles × shifts, and the sums they weight.

Image model (RELION's, as :mod:`cryolens.refine.pose_search`): on the band's rfft
coefficients ``q``, an image is ``X(q) = CTF(q) · A_k(Rᵀ q) · e(-t) + N(q)`` where ``A_k`` is
class ``k``, ``R`` the in-plane rotation by ``psi``, ``t`` the origin (px; ``X·e(t)`` moves the
image by ``+t``) and ``N`` complex Gaussian noise of variance ``sigma²(|q|)``. For one pose
``(k, psi, t)`` the log-likelihood up to a per-image constant is

    ``S = Σ_q w_q [2·Re(X e(t) CTF conj(P)) − CTF² |P|²] / sigma²``,   ``P = A_k(Rᵀ q)``

(``w`` = ½ on the ``kx = 0`` column). The cross terms of all (image, shift) × (class, psi)
pairs of a batch are one real GEMM; the posterior adds ``log π_k`` and normalises over the
grid. Poses whose posterior is below ``significance`` × the particle's best are dropped
(and the rest renormalised), so the M-step sums skip the classes a particle does not visit.

Sums for the M-step (image frame, per class and psi, on the band), in :class:`Accumulator`:
``G_kj = Σ_i Σ_t γ CTF_i X_i e(t)`` (complex) and ``D_kj = Σ_i Σ_t γ CTF_i²`` (real), plus
``Σ_i |X_i|²`` for the noise spectrum.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["BatchPosterior", "score_batch", "posterior", "Accumulator", "circular_deviation"]


def _ri(z: torch.Tensor) -> torch.Tensor:
    """Complex ``(..., M)`` -> real ``(..., 2M)`` (interleaved real, imaginary) for GEMMs."""
    return torch.view_as_real(z.contiguous()).reshape(*z.shape[:-1], 2 * z.shape[-1])


def score_batch(x: torch.Tensor, ctf: torch.Tensor, refs: torch.Tensor, ramps: torch.Tensor,
                inv_sigma2_w: torch.Tensor) -> torch.Tensor:
    """ML scores of every image at every (shift, class·psi).

    Args:
        x: ``(B, M)`` complex image coefficients on the band.
        ctf: ``(B, M)`` CTF values (ones without CTF).
        refs: ``(R, M)`` complex references in the image frame (``R`` = classes × psi).
        ramps: ``(T, M)`` phase ramps of the shifts (:func:`cryolens.refine.pose_search.phase_ramps`).
        inv_sigma2_w: ``(M,)`` ``w / sigma²`` (0 at DC).

    Returns:
        ``(B, T, R)`` float32 scores (log-likelihood up to a per-image constant).
    """
    b, t = x.shape[0], ramps.shape[0]
    wc = ctf * inv_sigma2_w
    y = (x * wc)[:, None, :] * ramps[None]
    cross = (_ri(y).reshape(b * t, -1) @ _ri(refs).T).reshape(b, t, -1)
    quad = (ctf * wc) @ (refs.real ** 2 + refs.imag ** 2).T
    return 2.0 * cross - quad[:, None, :]


@dataclass
class BatchPosterior:
    """Posterior of one batch on the grid (shifts ``T`` × classes ``K`` × psi ``J``).

    Attributes:
        gamma: ``(B, T, K·J)`` probabilities (significance cut applied, rows sum to 1).
        log_evidence: ``(B,)`` ``logsumexp`` of score + log prior over the whole grid.
        best: ``(B,)`` flat index of the best pose in ``T × K·J``; max_prob: ``(B,)`` its posterior.
        n_significant: ``(B,)`` poses kept by the cut.
    """

    gamma: torch.Tensor
    log_evidence: torch.Tensor
    best: torch.Tensor
    max_prob: torch.Tensor
    n_significant: torch.Tensor


def posterior(scores: torch.Tensor, log_prior: torch.Tensor, *, significance: float) -> BatchPosterior:
    """Normalise ``scores (B, T, R) + log_prior (R,)`` over each image's grid and apply the significance cut."""
    s = scores + log_prior
    b = s.shape[0]
    flat = s.reshape(b, -1)
    logz = torch.logsumexp(flat, dim=1)
    gamma = torch.exp(flat - logz[:, None])
    best_p, best = gamma.max(dim=1)
    if significance > 0:
        gamma = torch.where(gamma >= significance * best_p[:, None], gamma, torch.zeros_like(gamma))
        gamma = gamma / gamma.sum(dim=1, keepdim=True)
    nsig = (gamma > 0).sum(dim=1)
    return BatchPosterior(gamma.reshape(s.shape), logz, best, gamma.reshape(b, -1).gather(1, best[:, None])[:, 0],
                          nsig)


class Accumulator:
    """M-step sums over the images of one iteration (image frame, per class and psi, on the band).

    Args:
        n_classes, n_psi: grid sizes ``K``, ``J``; n_coeff: band size ``M``.
    """

    def __init__(self, n_classes: int, n_psi: int, n_coeff: int, device=None):
        self.k, self.j = n_classes, n_psi
        self.g = torch.zeros(n_classes, n_psi, n_coeff, dtype=torch.complex64, device=device)
        self.d = torch.zeros(n_classes, n_psi, n_coeff, dtype=torch.float32, device=device)
        self.x_power = torch.zeros(n_coeff, dtype=torch.float64, device=device)
        self.class_mass = torch.zeros(n_classes, dtype=torch.float64, device=device)
        self.n_images = 0

    def add(self, x: torch.Tensor, ctf: torch.Tensor, ramps: torch.Tensor, gamma: torch.Tensor) -> None:
        """Add a batch: ``x``, ``ctf`` ``(B, M)``, ``ramps`` ``(T, M)``, ``gamma`` ``(B, T, K·J)``.

        Only the images with weight on a class enter that class's GEMM.
        """
        b, t = gamma.shape[:2]
        g4 = gamma.reshape(b, t, self.k, self.j)
        mass = g4.sum(dim=(1, 3))  # (B, K)
        v = x * ctf
        c2 = ctf * ctf
        for k in torch.nonzero(mass.sum(0) > 0).flatten().tolist():
            rows = torch.nonzero(mass[:, k] > 0).flatten()
            gk = g4[rows, :, k, :]  # (Bk, T, J)
            y = v[rows, None, :] * ramps[None]  # (Bk, T, M)
            acc = gk.reshape(-1, self.j).T @ _ri(y).reshape(rows.numel() * t, -1)  # (J, 2M)
            self.g[k] += torch.view_as_complex(acc.reshape(self.j, -1, 2).contiguous())
            self.d[k] += gk.sum(dim=1).T @ c2[rows]
        self.x_power += (x.real ** 2 + x.imag ** 2).sum(dim=0).double()
        self.class_mass += mass.sum(dim=0).double()
        self.n_images += b

    def residual_power(self, refs: torch.Tensor) -> torch.Tensor:
        """``(M,)`` expected ``Σ_i |X_i e(t) − CTF_i P|²`` per coefficient under the posteriors, given the
        image-frame references ``refs`` ``(K, J, M)`` the posteriors were computed with."""
        cross = (self.g * refs.conj()).real.sum(dim=(0, 1)).double()
        quad = (self.d * (refs.real ** 2 + refs.imag ** 2)).sum(dim=(0, 1)).double()
        return (self.x_power - 2.0 * cross + quad).clamp_min(0.0)


def circular_deviation(a_deg: torch.Tensor, b_deg: torch.Tensor) -> torch.Tensor:
    """Smallest absolute angle between ``a`` and ``b`` (degrees, 0..180)."""
    d = torch.remainder(a_deg - b_deg + 180.0, 360.0) - 180.0
    return d.abs()

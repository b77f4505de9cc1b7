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
(and the rest renormalised).

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
        """Add a batch: ``x``, ``ctf`` ``(B, M)``, ``ramps`` ``(T, M)``, ``gamma`` ``(B, T, K·J)``."""
        b, t = gamma.shape[:2]
        yr = _ri((x * ctf)[:, None, :] * ramps[None]).reshape(b * t, -1)  # (B·T, 2M)
        acc = gamma.reshape(b * t, -1).T @ yr  # (K·J, 2M): one GEMM, as the scores
        self.g += torch.view_as_complex(acc.reshape(self.k, self.j, -1, 2).contiguous())
        marg = gamma.sum(dim=1)  # (B, K·J)
        self.d += (marg.T @ (ctf * ctf)).reshape(self.k, self.j, -1)
        mass = marg.reshape(b, self.k, self.j).sum(-1)
        self.x_power += (x.real ** 2 + x.imag ** 2).sum(dim=0).double()
        self.class_mass += mass.sum(dim=0).double()
        self.n_images += b

    def to_tensors(self) -> dict[str, torch.Tensor]:
        """The sums as CPU tensors (what a chunk of a distributed E-step returns): ``g``, ``d`` ``(K, J, M)``,
        ``x_power (M,)``, ``class_mass (K,)`` and ``n_images``."""
        return {"g": self.g.cpu(), "d": self.d.cpu(), "x_power": self.x_power.cpu(),
                "class_mass": self.class_mass.cpu(), "n_images": torch.tensor(self.n_images)}

    def add_tensors(self, t: dict[str, torch.Tensor]) -> None:
        """Add another accumulator's :meth:`to_tensors` (same grid)."""
        self.g += t["g"].to(self.g.device)
        self.d += t["d"].to(self.d.device)
        self.x_power += t["x_power"].to(self.x_power.device)
        self.class_mass += t["class_mass"].to(self.class_mass.device)
        self.n_images += int(t["n_images"])

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

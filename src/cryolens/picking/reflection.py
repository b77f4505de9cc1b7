"""Templates paired by point reflection: the in-plane rotations ψ and ψ + 180° of one view score together.

A template rotated by 180° is its point reflection ``P`` (``x -> -x`` about the centre). The picker's transfer (CTF,
whitening, band-pass) is centrosymmetric, so it keeps reflection-even images even and odd ones odd, and the two
stay orthogonal after it. With a basis of even and odd images (:func:`paired_factors`), template ``T = E + O`` and
its reflection ``P·T = E - O`` share their coefficients up to the odd ones' sign: their scores at a pixel are
``s_e + s_o`` and ``s_e - s_o`` and the better is ``s_e + |s_o|``, so one product per pair (of the full rank) gives
both (:class:`cryolens.picking.bank.BankScores`): half the score products of a set closed under the reflection (map
projections at every in-plane step of a grid with an even count). The factorisation is the same as the joint one
(the band-passed templates' left singular vectors split into even and odd combinations of each pair), so the scores
are the same to rounding; a set that is not closed (:func:`reflection_pairs` returns None) is factorised jointly.
"""

from __future__ import annotations

import math

import torch

from cryolens.picking.templates import band_pass_images, reflect

__all__ = ["reflection_pairs", "paired_factors", "REFLECTION_TOLERANCE"]

#: :func:`reflection_pairs` pairs template ``j`` with ``k`` when ``‖T_j - P·T_k‖ <= tolerance·‖T_k‖``
#: (:func:`cryolens.picking.templates.prepare_templates` makes the rotations by ψ + 180° exact reflections of those by
#: ψ; interpolating both left them ~4e-4 apart).
REFLECTION_TOLERANCE = 1e-4


def reflection_pairs(templates: torch.Tensor, *, tolerance: float = REFLECTION_TOLERANCE,
                     block: int = 1024) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(rep, partner)``: one index per pair of templates that are each other's reflection
    (:func:`cryolens.picking.templates.reflect`; the lower one, ascending) and the other (equal to it for a template
    that is its own reflection); None unless every template pairs, or when a box of even size has anything in its
    first row or column (whose reflection would leave the box)."""
    k, m = templates.shape[0], templates.shape[-1]
    if m % 2 == 0 and bool(templates[:, 0].any() or templates[:, :, 0].any()):
        return None
    x = templates.reshape(k, -1).double()
    px = reflect(templates).reshape(k, -1).double()
    norm = x.norm(dim=1).clamp_min(1e-300)
    unit = x / norm[:, None]
    partner = torch.cat([((px[s:s + block] / norm[s:s + block, None]) @ unit.T).argmax(dim=1)
                         for s in range(0, k, block)])
    ar = torch.arange(k, device=templates.device)
    if bool(((x[partner] - px).norm(dim=1) > tolerance * norm).any()) or bool((partner[partner] != ar).any()):
        return None
    rep = torch.nonzero(partner >= ar)[:, 0]
    return rep, partner[rep]


def paired_factors(templates: torch.Tensor, pairs: tuple[torch.Tensor, torch.Tensor], *, tolerance: float,
                   band_px: tuple[float, float]) -> tuple[torch.Tensor, torch.Tensor, float, int]:
    """``(coeffs (K, r), basis (r, m, m), energy, split)``: :func:`cryolens.picking.bank.template_bank`'s band-passed
    factorisation of ``templates`` from their reflection ``pairs`` (:func:`reflection_pairs`), its basis the ``split``
    even images, then the odd ones.

    The pair ``(T, P·T)`` spans ``(T ± P·T)/√2 = √2·E, √2·O`` (``E``, ``O`` the even and odd parts; a self-reflected
    template, ``E``): the singular vectors of those rows, band-passed, are the joint ones, the energy kept the same
    way (``tolerance``), the basis ``Uᵀ`` times the unfiltered rows and each template's coefficients ``U/√2`` (the odd
    ones negated for the reflection).
    """
    rep, partner = pairs
    x = templates[rep].double()
    px = reflect(x)
    paired = partner != rep
    weight = torch.where(paired, math.sqrt(2.0), 1.0).to(x.dtype)[:, None, None]
    parts = ((x + px) / 2 * weight, ((x - px) / 2 * weight)[paired])  # even rows (all), odd rows (pairs)
    svds = []
    for part in parts:
        u, s, _ = torch.linalg.svd(band_pass_images(part, band_px).reshape(part.shape[0], -1), full_matrices=False)
        svds.append((u, s))
    (ue, se), (uo, so) = svds
    e = torch.cat([se, so]).square()
    order = torch.argsort(e, descending=True, stable=True)
    left = 1.0 - torch.cumsum(e[order], 0) / e.sum().clamp_min(1e-300)
    r = min(int((left > tolerance).sum()) + 1, e.numel())
    split = int((order[:r] < se.numel()).sum())
    ue, uo = ue[:, :split], uo[:, :r - split]
    m = templates.shape[-1]
    basis = torch.cat([ue.T @ parts[0].reshape(len(rep), -1), uo.T @ parts[1].reshape(int(paired.sum()), -1)])
    ce = ue / weight[:, :, 0]  # U/√2 for pairs, U for self-reflected templates
    co = torch.zeros((len(rep), r - split), dtype=x.dtype, device=x.device)
    co[paired] = uo / math.sqrt(2.0)
    coeffs = torch.zeros((templates.shape[0], r), dtype=x.dtype, device=x.device)
    coeffs[partner] = torch.cat([ce, -co], dim=1)
    coeffs[rep] = torch.cat([ce, co], dim=1)  # after: a self-reflected template keeps its (zero) odd part
    return coeffs.float(), basis.reshape(r, m, m).float(), float(1.0 - left[r - 1]), split

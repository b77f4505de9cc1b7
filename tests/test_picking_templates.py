"""Template banks for the template picker: projection directions refined where views change fast
(:func:`cryolens.picking.templates.map_templates`) and near-duplicate templates dropped
(:func:`cryolens.picking.bank.distinct_templates`)."""

from __future__ import annotations

import math

import torch

from cryolens.picking.bank import distinct_templates
from cryolens.picking.templates import (
    COVERAGE, MAX_ORDER, PSI_COVERAGE, PSI_STEPS, map_projections, map_templates, prepare_templates,
    rotated_templates, template_coverage,
)


def _volumes(n: int = 32, apix: float = 2.0) -> tuple[torch.Tensor, torch.Tensor]:
    """A uniform ball (every view the same) and twelve small Gaussian blobs scattered over ~90 Å (views that
    change quickly with the direction)."""
    c = (torch.arange(n) - n // 2) * apix
    z, y, x = torch.meshgrid(c, c, c, indexing="ij")
    ball = ((x * x + y * y + z * z) <= 24.0 ** 2).float()
    g = torch.Generator().manual_seed(1)
    centres = (torch.rand(12, 3, generator=g) - 0.5) * 44
    blobs = sum(torch.exp(-((x - a) ** 2 + (y - b) ** 2 + (z - w) ** 2) / (2 * 2.5 ** 2)) for a, b, w in centres.tolist())
    return ball, blobs


def test_map_templates_refine_directions_only_where_views_change():
    """A ball's views are all alike: the order asked for is kept (12 directions × 12 in-plane angles at order 0).
    Scattered blobs look different from each 60° direction: the directions are refined up to MAX_ORDER
    (192 × 12), and the next order's views were covered below COVERAGE at each order passed."""
    ball, blobs = _volumes()
    kw = dict(pixel_size=2.0, out_pixel_size=2.0, diameter=60.0, psi_step=30.0, band_px=(1.5, 30.0))
    t, order = map_templates(ball, healpix_order=0, **kw)
    assert order == 0 and t.shape[0] == 12 * 12
    t, order = map_templates(blobs, healpix_order=0, **kw)
    assert order == MAX_ORDER == 2 and t.shape[0] == 192 * 12
    # the coverage that made it refine: order 1's templates against order 2's views
    def prepared(o: int, step: float) -> torch.Tensor:
        return prepare_templates(map_projections(blobs, pixel_size=2.0, out_pixel_size=2.0, healpix_order=o),
                                 pixel_size=2.0, out_pixel_size=2.0, diameter=60.0, psi_step=step)

    assert template_coverage(prepared(1, 30.0), prepared(2, 360.0), (1.5, 30.0)) < COVERAGE


def test_template_coverage_of_known_views():
    """Views among the templates (scaled) are covered at 1; views unlike any template (independent noise) barely."""
    g = torch.Generator().manual_seed(0)
    t = torch.randn(20, 24, 24, generator=g)
    assert math.isclose(template_coverage(t, 3.0 * t[:5], (1.5, 20.0)), 1.0, abs_tol=1e-9)
    assert template_coverage(t, torch.randn(10, 24, 24, generator=g), (1.5, 20.0)) < 0.5


def test_distinct_templates_greedy_and_in_band():
    """Exact copies, scaled copies and copies with a little noise go; a template unlike the kept ones stays.
    Greedy in order: t1 is within 0.995 of t0 and goes, t2 (0.995 from t1, 0.980 from t0) stays. After the
    band-pass, templates that differ only by a Nyquist checkerboard are duplicates; without it they are not."""
    g = torch.Generator().manual_seed(0)
    e0, e1, a, b, noise = (x / x.norm() for x in torch.randn(5, 16, 16, generator=g))
    e1 = e1 - (e1 * e0).sum() * e0
    e1 = e1 / e1.norm()
    th = math.acos(0.995)
    t = torch.stack([e0, math.cos(th) * e0 + math.sin(th) * e1, math.cos(2 * th) * e0 + math.sin(2 * th) * e1,
                     a, 2.5 * a, a + 0.03 * noise, a + 0.6 * b, b])
    assert distinct_templates(t).tolist() == [0, 2, 3, 6, 7]
    yy, xx = torch.meshgrid(torch.arange(16), torch.arange(16), indexing="ij")
    checker = ((-1.0) ** (yy + xx)).float()
    smooth = torch.exp(-((yy - 8.0) ** 2 + (xx - 8.0) ** 2) / 18.0)
    pair = torch.stack([smooth, smooth + 0.3 * checker])
    assert distinct_templates(pair).tolist() == [0, 1]
    assert distinct_templates(pair, (6.0, 30.0)).tolist() == [0]


def test_reflection_pairs_score_together_as_the_joint_bank():
    """Rotations by ψ + 180° are exact reflections, the set pairs, and the paired bank (half the score products)
    gives the joint bank's and the direct correlation's best NCC and template (cryolens.picking.reflection)."""
    from cryolens.picking.bank import bank_scores, correlate_bank, template_bank
    from cryolens.picking.reflection import reflection_pairs
    from cryolens.picking.templates import correlate_templates, reflect

    g = torch.Generator().manual_seed(2)
    raw = torch.randn(3, 21, 21, generator=g)
    prepared = prepare_templates(raw, pixel_size=2.0, out_pixel_size=2.0, diameter=30.0, psi_step=45.0)  # 3 × 8
    views = prepared.reshape(3, 8, *prepared.shape[-2:])
    assert torch.equal(views[:, 4:], reflect(views[:, :4]))
    rep, partner = reflection_pairs(prepared)
    assert rep.numel() == 12 and torch.equal(partner, rep + 4)
    assert reflection_pairs(prepared[:-1]) is None  # one template's reflection missing
    wide = prepare_templates(raw[:, :20, :20], pixel_size=2.0, out_pixel_size=2.0, diameter=40.0, psi_step=90.0)
    assert wide.shape[-1] == 21 and reflection_pairs(wide) is not None  # the mask reached an even box's edge
    shape = (96, 80)
    image_ft = torch.fft.rfft2(torch.randn(shape, generator=g))
    ky, kx = torch.fft.fftfreq(shape[0])[:, None], torch.fft.rfftfreq(shape[1])[None, :]
    s2 = kx * kx + (ky - 0.3 * kx) ** 2  # astigmatic: centrosymmetric, not mirror-symmetric
    transfer = torch.cos(40 * s2) * torch.exp(-8 * (kx * kx + ky * ky))
    best, index, _ = correlate_templates(image_ft, shape, prepared, transfer=transfer, mask_radius_px=7.5)
    band = (2.5, 30.0)
    paired = template_bank(prepared, tolerance=1e-9, band_px=band)
    joint = template_bank(prepared, tolerance=1e-9, band_px=band, paired=False)
    assert paired.split is not None and joint.split is None
    pix = torch.arange(shape[0] * shape[1])
    for stride in (1, 2):  # every pixel's maps, or the coarse grid's and windows of the filtered image
        scores = bank_scores(image_ft, shape, paired, transfer=transfer, mask_radius_px=7.5, stride=stride, origin=(1, 1))
        assert scores.weights.shape[1] == 12 and torch.allclose(scores.best(pix), best.reshape(-1), atol=1e-4)
    b1, i1, _ = correlate_bank(image_ft, shape, paired, transfer=transfer, mask_radius_px=7.5, chunk=1000)
    assert torch.allclose(b1, best, atol=1e-4) and (i1 == index).float().mean() > 0.99
    # truncated, the same subspace as the joint factorisation: the same scores
    p3, j3 = (template_bank(prepared, tolerance=0.02, band_px=band, paired=p) for p in (True, False))
    assert p3.coeffs.shape[1] == j3.coeffs.shape[1] and math.isclose(p3.energy, j3.energy, rel_tol=1e-6)
    b3, i3, _ = correlate_bank(image_ft, shape, p3, transfer=transfer, mask_radius_px=7.5, chunk=1000)
    b4, i4, _ = correlate_bank(image_ft, shape, j3, transfer=transfer, mask_radius_px=7.5, chunk=1000)
    assert torch.allclose(b3, b4, atol=1e-5) and (i3 == i4).float().mean() > 0.99
    assert template_bank(prepared[:-1], tolerance=0.02, band_px=band).split is None  # not closed: joint


def test_rotated_templates_coarsen_the_in_plane_step_only_where_rotations_are_covered():
    """A ball looks the same at every rotation: the coarsest step of PSI_STEPS is taken (12 rotations), the same
    templates as prepare_templates at that step. Scattered blobs change fast with the rotation: the step asked for
    is kept; the rotations half-way between 30° steps are covered below PSI_COVERAGE there."""
    ball, blobs = _volumes()
    kw = dict(pixel_size=2.0, out_pixel_size=2.0, diameter=60.0)
    for name, vol in (("ball", ball), ("blobs", blobs)):
        views = map_projections(vol, pixel_size=2.0, out_pixel_size=2.0, healpix_order=0)
        t, step = rotated_templates(views, psi_step=15.0, band_px=(1.5, 30.0), **kw)
        want = PSI_STEPS[0] if name == "ball" else 15.0
        assert step == want, name
        assert torch.equal(t, prepare_templates(views, psi_step=want, **kw))
    half = prepare_templates(views, psi_step=15.0, **kw).reshape(12, 24, *t.shape[-2:])
    cover = template_coverage(half[:, 0::2].reshape(-1, *t.shape[-2:]), half[:, 1::2].reshape(-1, *t.shape[-2:]),
                              (1.5, 30.0))
    assert cover < PSI_COVERAGE

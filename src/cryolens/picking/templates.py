"""Templates for template matching: projections of a 3D map, in-plane rotations, and the batched
normalised cross-correlation of a whitened micrograph with CTF-modulated templates.

Templates are white-on-black (protein bright) like class averages and particle stacks; the
correlation applies the micrograph's contrast (protein dark: ``-CTF``) itself.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from cryolens.core.fourier import fourier_resize, good_fft_size, ift2, irfftn, resample
from cryolens.core.masks import soft_sphere
from cryolens.core.projector import prepare_volume, project
from cryolens.core.rotations import euler_to_matrix
from cryolens.core.so3_grid import healpix_directions

__all__ = ["map_projections", "map_templates", "template_coverage", "band_pass_images", "rotate_images",
           "prepare_templates", "correlate_templates", "side_lobes", "rfft_energy", "wrap_centred",
           "local_sd_denominator", "disc_transform", "reflect",
           "COVERAGE", "MAX_ORDER", "PSI_STEPS", "PSI_COVERAGE", "COVERAGE_IMAGES", "rotated_templates"]

#: :func:`map_templates` refines the projection directions (one HEALPix order finer) while the median over the
#: next order's views of their best normalised correlation with the templates (all in-plane rotations, in the
#: scoring band: :func:`template_coverage`) is below this. Measured (seed 500 maps of benchmarks/picking.py, order 1,
#: psi 15°): phantom 0.977, ribosome 0.947, apoferritin 0.83 (1.75 and 1.2 Å/px; its views change faster with the
#: direction): apoferritin goes to order 2, where the template picker's F1 rose 0.930 -> 0.979 (1.75 Å/px) and
#: 0.892 -> 0.972 (1.2 Å/px); the others stay at order 1 (order 2 cost them 2.4-2.6x the CPU time).
COVERAGE = 0.9

#: The finest HEALPix order :func:`map_templates` goes to by itself (order 2: 192 directions, ~15° apart).
MAX_ORDER = 2

#: In-plane steps (degrees) :func:`rotated_templates` tries before the one asked for, coarsest first (even rotation
#: counts, 12 / 16 / 18: the rotations by ψ + 180° stay reflections, :mod:`cryolens.picking.reflection`).
PSI_STEPS = (30.0, 22.5, 20.0)

#: :func:`rotated_templates` takes the coarsest step of :data:`PSI_STEPS` at which the images rotated half-way
#: between two steps match the templates to a median correlation of at least this (:func:`template_coverage`).
#: Measured (seed 500 maps of benchmarks/picking.py at their directions' order; 30 / 22.5 / 20 / 15°): phantom 0.951 /
#: 0.966 / 0.968 / 0.981, ribosome 0.884 / 0.921 / 0.931 / 0.958, apoferritin (order 2) 0.899 / 0.848 / 0.924 / 0.921;
#: the template picker's F1 (seed 500) phantom 0.949 at 30° (0.943 at 25.7°), 0.990 at 22.5°, 0.993 at 20°, 0.986 at
#: 15°; ribosome 0.981 / 0.983 / 0.990 / 0.990; apoferritin 0.982 / 0.964 / 0.997 / 0.995. Only the phantom goes
#: coarser (22.5°: F1 0.986 / 0.984 / 0.980 on seeds 900 / 1300 / 1700 against 0.978 / 0.978 / 0.996 at 15°).
PSI_COVERAGE = 0.96

#: :func:`rotated_templates` measures the rotations' coverage on at most this many of the images (every k-th).
COVERAGE_IMAGES = 48


def map_projections(volume: torch.Tensor, *, pixel_size: float, out_pixel_size: float | None = None,
                    healpix_order: int = 1) -> torch.Tensor:
    """Projections of a cubic map along the HEALPix directions of ``healpix_order``, in-plane angle 0.

    Args:
        volume: ``(n, n, n)`` map (protein positive, centre n//2) at ``pixel_size`` Å.
        out_pixel_size: Fourier-resample the map to this pixel size (Å) first (default: as is).
        healpix_order: 0 gives 12 directions (~60° apart), 1 gives 48 (~30°), 2 gives 192.

    Returns:
        ``(D, m, m)`` float32 projections (white on black) on the map's device.
    """
    v = volume.float()
    if out_pixel_size is not None and abs(out_pixel_size - pixel_size) > 1e-6 * pixel_size:
        v = resample(v, pixel_size, out_pixel_size, ndim=3)
    if v.shape[-1] % 2:  # an even box keeps the centre convention simple for the projector; padded in front,
        v = F.pad(v, (1, 0, 1, 0, 1, 0))  # the centre (n-1)/2 stays at the new box's n'//2 (at the end: 1 px off)
    _, ang = healpix_directions(healpix_order, device=v.device)
    rot = euler_to_matrix(ang[:, 0], ang[:, 1], torch.zeros_like(ang[:, 0]))
    return ift2(project(prepare_volume(v), rot), v.shape[-1])


def band_pass_images(images: torch.Tensor, band_px: tuple[float, float]) -> torch.Tensor:
    """``(K, m, m)`` images through the picker's band-pass (``band_px = (low, high)`` pixels): Gaussian low-pass
    ``exp(-s²low²/2)`` times high-pass ``1 - exp(-s²high²/2)``, ``s`` in cycles/pixel; float64, circular."""
    low, high = band_px
    f = torch.fft.fftfreq(images.shape[-1], device=images.device, dtype=torch.float64)
    s2 = f[:, None] ** 2 + f[None, :] ** 2
    g = (1 - torch.exp(-s2 * high * high / 2)) * torch.exp(-s2 * low * low / 2)
    return torch.fft.ifft2(torch.fft.fft2(images.double()) * g).real


def template_coverage(templates: torch.Tensor, views: torch.Tensor, band_px: tuple[float, float]) -> float:
    """How well ``templates`` ``(K, m, m)`` cover ``views`` ``(V, m, m)`` (both from :func:`prepare_templates`, the
    same box): the median over the views of their best normalised correlation (centred, no shift) with any
    template, both band-passed to ``band_px`` (:func:`band_pass_images`). 1: every view is among the templates."""
    def unit(x: torch.Tensor) -> torch.Tensor:
        y = band_pass_images(x, band_px).reshape(x.shape[0], -1)
        return y / y.norm(dim=1, keepdim=True).clamp_min(1e-300)

    return float((unit(views) @ unit(templates).T).amax(dim=1).median())


def map_templates(volume: torch.Tensor, *, pixel_size: float, out_pixel_size: float, diameter: float,
                  psi_step: float, healpix_order: int, band_px: tuple[float, float],
                  oversample: int = 1) -> tuple[torch.Tensor, int]:
    """Templates from a map's projections, the directions refined while they cover view space too sparsely.

    Projects at ``healpix_order`` and prepares the templates (:func:`prepare_templates`); while the median best
    correlation of the next order's views with them (:func:`template_coverage`) is below :data:`COVERAGE` and the
    order is below :data:`MAX_ORDER`, goes one order finer (the next order's views at every in-plane rotation).

    Args:
        volume, pixel_size: the map and its Å per voxel; out_pixel_size: the picking pixel size (Å).
        diameter, psi_step, oversample: as :func:`prepare_templates` (the projections are taken at
            ``out_pixel_size / oversample`` Å, never finer than the map's).
        band_px: ``(low, high)`` pixels of the picker's band-pass at ``out_pixel_size``.

    Returns:
        ``(templates (K, m, m), order used)``.
    """
    tp = max(out_pixel_size / oversample, pixel_size)

    def views_at(order: int) -> torch.Tensor:
        return map_projections(volume, pixel_size=pixel_size, out_pixel_size=tp, healpix_order=order)

    def prepared(views: torch.Tensor, step: float) -> torch.Tensor:
        return prepare_templates(views, pixel_size=tp, out_pixel_size=out_pixel_size, diameter=diameter,
                                 psi_step=step, oversample=oversample)

    order = healpix_order
    views = views_at(order)
    templates = prepared(views, psi_step)
    while order < MAX_ORDER:  # each order's views projected once
        finer = views_at(order + 1)
        if not template_coverage(templates, prepared(finer, 360.0), band_px) < COVERAGE:
            break
        order, views = order + 1, finer
        templates = prepared(views, psi_step)
    templates, _ = rotated_templates(views, pixel_size=tp, out_pixel_size=out_pixel_size, diameter=diameter,
                                     psi_step=psi_step, band_px=band_px, oversample=oversample, finest=templates)
    return templates, order


def rotated_templates(images: torch.Tensor, *, pixel_size: float, out_pixel_size: float, diameter: float,
                      psi_step: float, band_px: tuple[float, float], oversample: int = 1,
                      finest: torch.Tensor | None = None) -> tuple[torch.Tensor, float]:
    """:func:`prepare_templates` at the coarsest in-plane step of :data:`PSI_STEPS` (those coarser than
    ``psi_step``) whose rotations cover the images rotated half-way between two steps to a median correlation of
    :data:`PSI_COVERAGE` (:func:`template_coverage`; against the same images' rotations, on at most
    :data:`COVERAGE_IMAGES` of them), else at ``psi_step``.

    Args:
        images, pixel_size, out_pixel_size, diameter, psi_step, oversample: as :func:`prepare_templates`.
        band_px: ``(low, high)`` pixels of the picker's band-pass at ``out_pixel_size``.
        finest: the templates at ``psi_step`` if already prepared.

    Returns:
        ``(templates (K, m, m), in-plane step used)``.
    """
    kw = dict(pixel_size=pixel_size, out_pixel_size=out_pixel_size, diameter=diameter, oversample=oversample)
    sample = images[::-(-images.shape[0] // COVERAGE_IMAGES)]  # the median from a spread of the images
    for step in (s for s in PSI_STEPS if s > psi_step):
        n = int(round(360.0 / step))
        half = prepare_templates(sample, psi_step=360.0 / (2 * n), **kw)  # the even ones are the step's rotations
        half = half.reshape(-1, 2 * n, *half.shape[-2:])
        if template_coverage(half[:, 0::2].reshape(-1, *half.shape[-2:]), half[:, 1::2].reshape(-1, *half.shape[-2:]),
                             band_px) >= PSI_COVERAGE:
            return prepare_templates(images, psi_step=360.0 / n, **kw), 360.0 / n
    return (finest if finest is not None else prepare_templates(images, psi_step=psi_step, **kw)), psi_step


def rotate_images(images: torch.Tensor, angles_deg: torch.Tensor) -> torch.Tensor:
    """Every image rotated by every angle about its centre ``(b//2, b//2)`` (bilinear).

    Args:
        images: ``(T, b, b)``; angles_deg: ``(P,)`` counter-clockwise in the (x right, y down) array.

    Returns:
        ``(T·P, b, b)``, index ``t·P + p``.
    """
    t, b = images.shape[0], images.shape[-1]
    dev = images.device
    a = torch.deg2rad(angles_deg.to(device=dev, dtype=torch.float32))
    c = torch.arange(b, device=dev, dtype=torch.float32) - b // 2
    yy, xx = torch.meshgrid(c, c, indexing="ij")
    cos, sin = torch.cos(a)[:, None, None], torch.sin(a)[:, None, None]
    xs = cos * xx + sin * yy + b // 2  # source of each output pixel: the inverse rotation
    ys = -sin * xx + cos * yy + b // 2
    grid = torch.stack([(2 * xs + 1) / b - 1, (2 * ys + 1) / b - 1], dim=-1)  # (P, b, b, 2), align_corners=False
    p = grid.shape[0]
    src = images.float()[:, None].expand(t, p, b, b).reshape(t * p, 1, b, b)
    g = grid[None].expand(t, p, b, b, 2).reshape(t * p, b, b, 2)
    return F.grid_sample(src, g, mode="bilinear", padding_mode="zeros", align_corners=False)[:, 0]


def prepare_templates(templates: torch.Tensor, *, pixel_size: float, out_pixel_size: float, diameter: float,
                      psi_step: float, oversample: int = 1) -> torch.Tensor:
    """Class averages or projections ready to correlate: resampled, masked, zero-mean, rotated.

    Args:
        templates: ``(T, b, b)`` white-on-black images at ``pixel_size`` Å.
        out_pixel_size: the picking pixel size (Å); diameter: largest particle diameter (Å),
            the radius of the soft circular mask (plus a 2-pixel cosine edge).
        psi_step: in-plane rotation step (degrees); 360/psi_step rotations (rounded).
        oversample: rotate at ``out_pixel_size / oversample`` (Fourier-resampled there first) and
            Fourier-crop to ``out_pixel_size`` after (1: rotate at ``out_pixel_size``).

    Returns:
        ``(T·P, m, m)`` float32 templates, zero mean inside the mask and zero outside (a box one pixel larger, odd,
        when the mask reaches an even box's first row); with an even ``P`` the rotations by ψ + 180° are exact
        reflections (:func:`reflect`) of those by ψ.
    """
    t = templates.float()
    if t.shape[-1] != t.shape[-2]:
        raise ValueError(f"templates must be square, got {tuple(t.shape[-2:])}")
    radius = 0.5 * diameter / out_pixel_size
    need = int(2 * math.ceil(radius + 3))  # a box that holds the mask
    n_psi = max(1, int(round(360.0 / psi_step)))
    angles = torch.arange(n_psi, device=t.device) * (360.0 / n_psi)
    if oversample > 1:  # rotate on a finer grid (bilinear interpolation there blurs below the picking Nyquist)
        fine = out_pixel_size / oversample
        if abs(fine - pixel_size) > 1e-6 * pixel_size:
            t = resample(t, pixel_size, fine, ndim=2)
        m = t.shape[-1]
        keep = min(m, (need + 4) * oversample)  # the mask's box and a margin,
        keep -= keep % (2 * oversample)  # an even box after cropping to out_pixel_size
        if keep < m:
            o = m // 2 - keep // 2
            t = t[:, o:o + keep, o:o + keep]
        t = rotate_images(t, angles)
        n_out = max(1, int(round(t.shape[-1] / oversample)))
        t = fourier_resize(t, n_out, ndim=2)
        angles = torch.zeros(1, device=t.device)
    elif abs(out_pixel_size - pixel_size) > 1e-6 * pixel_size:
        t = resample(t, pixel_size, out_pixel_size, ndim=2)
    m = t.shape[-1]
    if need < m:
        o = m // 2 - need // 2
        t, m = t[:, o:o + need, o:o + need], need
    mask = soft_sphere(m, radius=radius, edge_width=2.0, ndim=2, device=t.device)
    rot = (rotate_images(t, angles) if angles.numel() > 1 or float(angles[0]) != 0.0 else t) * mask
    mean = rot.sum(dim=(-2, -1), keepdim=True) / mask.sum()
    out = (rot - mean) * mask
    if m % 2 == 0 and bool(out[:, 0].any() or out[:, :, 0].any()):  # the mask reaches the box's first row:
        out = F.pad(out, (0, 1, 0, 1))  # an odd box about the same centre holds the reflection (180°) of the images
        m += 1
    if n_psi % 2 == 0:
        # the rotations by psi + 180° as exact reflections of those by psi (interpolation left them ~4e-4 apart):
        # a set closed under the reflection halves the bank's score products (cryolens.picking.reflection)
        out = out.reshape(-1, n_psi, m, m)
        out[:, n_psi // 2:] = reflect(out[:, :n_psi // 2])
        out = out.reshape(-1, m, m)
    return out


def reflect(images: torch.Tensor) -> torch.Tensor:
    """``(..., m, m)`` images reflected through their centre ``m//2`` (rotated by 180°; for even ``m`` the first row
    and column, at offset ``-m/2``, map onto themselves: exact for images that are zero there, as masked templates
    usually are)."""
    flipped = images.flip(-2, -1)
    return flipped if images.shape[-1] % 2 else torch.roll(flipped, shifts=(1, 1), dims=(-2, -1))


def correlate_templates(image_ft: torch.Tensor, shape: tuple[int, int], templates: torch.Tensor, *,
                        transfer: torch.Tensor, mask_radius_px: float, batch_size: int = 32,
                        progress: Callable[[int, int], None] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Best normalised cross-correlation over templates at every pixel, one FFT per template.

    The direct form of :func:`cryolens.picking.bank.correlate_bank` (a low-rank factorisation of the
    templates, far fewer FFTs; the picker scores through the same :func:`cryolens.picking.bank.bank_scores`),
    kept as its reference.

    ``NCC(x) = Σ_m I(x+m)·T'(m) / (‖T'‖ · sd_M(I)(x) · √|M|)`` where ``I`` is the (whitened)
    image, ``T'`` a template passed through ``transfer`` (the CTF with the micrograph's sign,
    times the whitening and band-pass, so that template and image live in one space) and made
    zero-mean, and ``sd_M`` the image's standard deviation in the disc ``M`` of radius
    ``mask_radius_px`` around ``x`` (zero-mean template: the local mean drops out).

    Args:
        image_ft: rfft2 of the (whitened) image ``(H, W//2+1)``; shape: ``(H, W)``.
        templates: ``(T, m, m)`` centred at ``m//2``, from :func:`prepare_templates`.
        transfer: ``(H, W//2+1)`` real filter applied to the templates.
        batch_size: templates per batch (bounds memory: ``batch_size·H·W`` complex values).
        progress: called as ``progress(done, total)`` after each batch.

    Returns:
        ``(best, index, denom)``: ``(H, W)`` best NCC, the index of the template that gave it, and
        the NCC's image term ``sd_M(I)·√|M|`` (used by :func:`side_lobes`).
    """
    h, w = shape
    dev = image_ft.device
    denom = local_sd_denominator(image_ft, shape, mask_radius_px)
    best = torch.full((h, w), -float("inf"), device=dev)
    index = torch.zeros((h, w), dtype=torch.long, device=dev)
    total = templates.shape[0]
    for start in range(0, total, batch_size):  # batches of templates, each one batched FFT
        tb = templates[start:start + batch_size].to(dev)
        tf = torch.fft.rfft2(wrap_centred(tb, (h, w))) * transfer
        tf[:, 0, 0] = 0  # zero mean after the transfer too
        norm = rfft_energy(tf, w).sqrt().clamp_min(1e-30)
        cc = torch.fft.irfft2(image_ft * tf.conj(), s=(h, w)) / norm[:, None, None]
        val, arg = cc.max(dim=0)
        better = val > best
        best = torch.where(better, val, best)
        index = torch.where(better, arg + start, index)
        if progress is not None:
            progress(min(start + batch_size, total), total)
    return best / denom, index, denom


def local_sd_denominator(image_ft: torch.Tensor, shape: tuple[int, int], radius_px: float) -> torch.Tensor:
    """``sd_D(I)(x)·√|D|``: the image's standard deviation over the disc ``D`` of ``radius_px`` pixels around
    every pixel, times the square root of the disc's pixel count (the NCC's image term), ``(H, W)``."""
    h, w = shape
    n_m, dft = disc_transform(tuple(shape), float(radius_px), image_ft.device)
    img = torch.fft.irfft2(image_ft, s=(h, w))
    s1 = torch.fft.irfft2(image_ft * dft, s=(h, w))
    s2 = torch.fft.irfft2(torch.fft.rfft2(img * img) * dft, s=(h, w))
    local_sd = ((s2 - s1 * s1 / n_m) / n_m).clamp_min(0).sqrt()
    return local_sd.clamp_min(1e-6 * float(local_sd.max()) + 1e-30) * n_m.sqrt()


@functools.lru_cache(maxsize=4)
def disc_transform(shape: tuple[int, int], radius_px: float, device) -> tuple[torch.Tensor, torch.Tensor]:
    """``(pixel count, conj(rfft2))`` of the disc of ``radius_px`` pixels centred at pixel (0, 0) of an ``(H, W)``
    grid (kept for the few shapes of a dataset's micrographs; not to be modified in place)."""
    h, w = shape
    yy = torch.fft.fftfreq(h, d=1.0 / h, device=device)[:, None]
    xx = torch.fft.fftfreq(w, d=1.0 / w, device=device)[None, :]
    disc = ((yy * yy + xx * xx) <= radius_px ** 2).float()
    return disc.sum(), torch.fft.rfft2(disc).conj()


def wrap_centred(images: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """``(B, m, m)`` images centred at ``m//2`` placed on an ``(H, W)`` canvas of zeros with their centre
    at pixel (0, 0), wrapping around (four slice copies; ``m <= H, W``)."""
    h, w = shape
    b, m = images.shape[0], images.shape[-1]
    c = m // 2
    if m > h or m > w:
        raise ValueError(f"templates of {m} px do not fit a {h}x{w} image")
    canvas = torch.zeros((b, h, w), device=images.device)
    t = images.float()
    canvas[:, :m - c, :m - c] = t[:, c:, c:]
    canvas[:, :m - c, w - c:] = t[:, c:, :c]
    canvas[:, h - c:, :m - c] = t[:, :c, c:]
    canvas[:, h - c:, w - c:] = t[:, :c, :c]
    return canvas


def rfft_energy(f: torch.Tensor, width: int) -> torch.Tensor:
    """``Σ x²`` of the real images ``x = irfft2(f, s=(H, width))`` from their half spectra ``f`` (Parseval).

    Columns other than DC (and Nyquist for an even ``width``) stand for two conjugate ones. Exact
    when ``f`` is Hermitian along those columns, as the transform of a real image through a real
    point-symmetric filter (CTF, whitening, band-pass) is; saves an inverse FFT per template.
    """
    h = f.shape[-2]
    p = f.real.square() + f.imag.square()
    wgt = torch.full((f.shape[-1],), 2.0, device=f.device)
    wgt[0] = 1.0
    if width % 2 == 0:
        wgt[-1] = 1.0
    return (p * wgt).sum(dim=(-2, -1)) / (h * width)


def side_lobes(templates: torch.Tensor, shape: tuple[int, int], *, transfer: torch.Tensor, rc: torch.Tensor,
               index: torch.Tensor, ncc: torch.Tensor, denom: torch.Tensor, parent: torch.Tensor,
               radius_px: float) -> torch.Tensor:
    """The NCC that the accepted particles predict at each peak: their CTF side lobes (CLEAN's model).

    A particle at ``x_i`` that matches template ``T_i`` with NCC ``c_i`` is modelled as
    ``a_i·T'_i(· - x_i)`` with the least-squares amplitude ``a_i = c_i·D(x_i)/‖T'_i‖`` (``T'`` the
    template through ``transfer``, ``D`` the NCC's image term). Its contribution to the NCC of
    peak ``j`` with template ``T_j`` is ``c_i · D(x_i)/D(x_j) · ρ_ij``, ``ρ_ij`` the normalised
    correlation of ``T'_i`` shifted by ``x_i - x_j`` with ``T'_j``. The sum over parents
    ``i`` that score higher than ``j`` and lie within ``radius_px`` is returned, each term
    counted only where positive (a side lobe adds to a peak; what it takes away is not given back).

    Args:
        templates: ``(T, m, m)`` from :func:`prepare_templates`; shape, transfer: as for
            :func:`correlate_templates` (the padded grid ``(H, W)``).
        rc: ``(K, 2)`` long peak pixels (row, col) on that grid, by descending NCC.
        index, ncc, denom: ``(K,)`` best template, its NCC and the image term at each peak.
        parent: ``(K,)`` bool, the peaks accepted as particles (they predict side lobes).
        radius_px: farthest parent considered (picking pixels).

    Returns:
        ``(K,)`` predicted side-lobe NCC (≥ 0) at each peak.
    """
    k = rc.shape[0]
    dev = rc.device
    out = torch.zeros(k, device=dev)
    if k < 2 or not bool(parent.any()):
        return out
    d = torch.cdist(rc.float(), rc.float())
    ar = torch.arange(k, device=dev)
    pairs = ((d <= radius_px) & (ar[None, :] < ar[:, None]) & parent[None, :]).nonzero()  # (j, i): i parent of j
    if pairs.shape[0] == 0:
        return out
    j, i = pairs[:, 0], pairs[:, 1]
    used, inv = torch.unique(torch.cat([index[i], index[j]]), return_inverse=True)
    h, w = shape
    m = templates.shape[-1]
    c = m // 2  # a template reaches offsets -c..m-1-c <= c from its centre
    # ρ_ij·‖T'_i‖·‖T'_j‖ = Σ_v T_j(v)·(T_i ⊛ κ)(v - δ) with κ the kernel of transfer² (the filter applied twice; it
    # is even): an m × m sum per pair, over T_i ⊛ κ at offsets up to R = |δ| + c only, which takes κ at offsets up
    # to E = R + c; on a grid of 2E + 1 the rest of that linear convolution (reaching ±(E + c)) does not wrap
    # into those offsets, so the result is exact (the norms are the sums at δ = 0)
    big = int(math.ceil(radius_px)) + c + 1
    e = big + c
    kf = transfer.square()
    kf[0, 0] = 0  # zero mean after the transfer
    if 2 * e + 1 <= min(h, w):
        kern = irfftn(kf, s=(h, w))
        off = torch.arange(-e, e + 1, device=dev)
        grid_shape = (good_fft_size(2 * e + 1),) * 2
        kf = torch.fft.rfft2(wrap_centred(kern[(off % h)[:, None], (off % w)[None, :]][None], grid_shape))[0]
    else:  # a small micrograph: convolve on its own grid
        grid_shape = (h, w)
    wins = []
    tu = templates[used].to(dev).float()
    for start in range(0, used.numel(), 64):  # T ⊛ κ, kept in a window of ±R around the origin (wrapped: two slices)
        full = irfftn(torch.fft.rfft2(wrap_centred(tu[start:start + 64], grid_shape)) * kf, s=grid_shape)
        if 2 * big + 1 > min(grid_shape):  # a small micrograph's own grid: the window wraps more than once
            win = torch.arange(-big, big + 1, device=dev)
            wins.append(full[:, (win % grid_shape[0])[:, None], (win % grid_shape[1])[None, :]])
            continue
        full = torch.cat([full[:, grid_shape[0] - big:], full[:, :big + 1]], dim=1)
        wins.append(torch.cat([full[:, :, grid_shape[1] - big:], full[:, :, :big + 1]], dim=2))
    tw = torch.cat(wins)  # (U, 2R + 1, 2R + 1), offset y at index y + R
    n = tw.shape[-1]
    # every m × m window of those as a view: (template, top, left, m, m); a shifted window is one read
    view = tw.as_strided((tw.shape[0], n - m + 1, n - m + 1, m, m), (n * n, n, 1, n, 1))
    norms = (view[:, big - c, big - c] * tu).sum(dim=(-2, -1)).clamp_min(1e-30).sqrt()
    ti, tj = inv[:i.numel()], inv[i.numel():]
    delta = rc[i] - rc[j]  # T'_i(u - delta) against T'_j(u)
    rho = (view[ti, big - c - delta[:, 0], big - c - delta[:, 1]] * tu[tj]).sum(dim=(-2, -1)) / (norms[ti] * norms[tj])
    lobe = (ncc[i] * denom[i] / denom[j].clamp_min(1e-30) * rho).clamp_min(0)
    return out.index_add_(0, j, lobe)

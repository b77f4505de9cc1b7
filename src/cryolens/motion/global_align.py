"""Frame alignment against the sum of the other frames (Unblur / cisTEM Align Movies), batched.

Spectra are plain ``rfft2`` of ``(..., h, w)`` real images (DC at index 0, no centring:
only relative shifts matter here), on rectangular grids. A *shift* ``(sx, sy)`` in
pixels moves the content towards +x/+y: ``g(x) = f(x - s)``, i.e. ``G = F·exp(-2πi k·s)``
with ``k`` in cycles per pixel. The shifts found are the ones that move each frame's
content onto the reference, i.e. *correction* shifts (RELION's sign).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from cryolens.core.fourier import irfftn
from cryolens.core.native import cross_spectra

__all__ = ["freq_axes", "crop_spectrum", "phase_factors", "phase_ramp", "apply_shifts", "bfactor_filter", "cross_mask",
           "correlation_peaks", "window_peaks", "correlation_window", "peak_snr", "smoothing_matrix",
           "AlignmentTrace", "align_frames", "WINDOW_MAX"]


def freq_axes(h: int, w: int, *, device=None, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Frequencies ``ky (h,)`` and ``kx (w//2+1,)`` of an ``(h, w)`` rfft grid [cycles/px]."""
    return torch.fft.fftfreq(h, device=device, dtype=dtype), torch.fft.rfftfreq(w, device=device, dtype=dtype)


def crop_spectrum(spec: torch.Tensor, shape: tuple[int, int], new_shape: tuple[int, int]) -> torch.Tensor:
    """Fourier-crop rfft spectra ``(..., H, W//2+1)`` of ``shape`` to ``new_shape`` (even sizes, <=).

    Keeps the low frequencies (rows ``0..h/2-1`` and ``-h/2..-1``, columns ``0..w/2``) and
    rescales by ``h·w / (H·W)`` so that real-space values (not sums) are kept (binning).
    """
    (hh, ww), (h, w) = shape, new_shape
    if (h, w) == (hh, ww):
        return spec
    top = spec[..., : h // 2, : w // 2 + 1]
    bottom = spec[..., hh - h // 2:, : w // 2 + 1]
    return torch.cat([top, bottom], dim=-2) * (h * w / (hh * ww))


def phase_factors(shifts: torch.Tensor, ky: torch.Tensor, kx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``exp(-2πi ky·sy)`` ``(..., len(ky))`` and ``exp(-2πi kx·sx)`` ``(..., len(kx))`` (complex64) for shifts
    ``(..., 2)`` [px]: the separable factors of :func:`phase_ramp`."""
    s = shifts.to(torch.float32)
    ex = torch.polar(torch.ones((), device=kx.device), -2 * math.pi * s[..., 0, None] * kx)
    ey = torch.polar(torch.ones((), device=ky.device), -2 * math.pi * s[..., 1, None] * ky)
    return ey, ex


def phase_ramp(shifts: torch.Tensor, ky: torch.Tensor, kx: torch.Tensor) -> torch.Tensor:
    """``exp(-2πi (kx·sx + ky·sy))`` for shifts ``(..., 2)`` [px] -> ``(..., len(ky), len(kx))`` complex64."""
    ey, ex = phase_factors(shifts, ky, kx)
    return ey[..., :, None] * ex[..., None, :]


def apply_shifts(spec: torch.Tensor, shifts: torch.Tensor, w: int) -> torch.Tensor:
    """Shift rfft spectra ``(..., h, w//2+1)`` of width-``w`` images by ``shifts (..., 2)`` [px]."""
    ky, kx = freq_axes(spec.shape[-2], w, device=spec.device)
    return spec * phase_ramp(shifts, ky, kx)


def bfactor_filter(h: int, w: int, pixel_size: float, bfactor: float, *, device=None) -> torch.Tensor:
    """``exp(-B s² / 4)`` on an ``(h, w)`` rfft grid, ``s`` in 1/Å (``pixel_size`` in Å, B in Å²)."""
    ky, kx = freq_axes(h, w, device=device)
    s2 = (ky[:, None] ** 2 + kx[None, :] ** 2) / pixel_size ** 2
    return torch.exp(-bfactor * s2 / 4.0)


def cross_mask(h: int, w: int, width_x: int, width_y: int, *, device=None) -> torch.Tensor:
    """0 on the Fourier lines ``|kx| < width_x`` and ``|ky| < width_y`` (integer frequencies), else 1.

    The DC term is kept (it is constant over shifts and harmless).
    """
    ky = torch.fft.fftfreq(h, d=1.0 / h, device=device).abs()
    kx = torch.fft.rfftfreq(w, d=1.0 / w, device=device)
    m = ~((kx[None, :] < width_x) | (ky[:, None] < width_y))
    m[0, 0] = True
    return m.to(torch.float32)


def _parabola(m: torch.Tensor, c: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """Vertex offset of the parabola through ``(-1, m), (0, c), (1, p)``, clamped to ±0.5."""
    den = m - 2 * c + p
    off = torch.where(den < 0, 0.5 * (m - p) / den.clamp(max=-1e-30), torch.zeros_like(c))
    return off.clamp(-0.5, 0.5)


def correlation_peaks(cc: torch.Tensor, max_radius: float, min_radius: float = 0.0
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Sub-pixel maxima of cross-correlation maps near zero shift.

    Args:
        cc: ``(..., h, w)`` real correlation maps, zero shift at index ``(0, 0)`` (wrapped).
        max_radius, min_radius: the peak is searched at shifts ``min_radius <= |t| <= max_radius`` [px].

    Returns:
        ``(..., 2)`` float64 peak positions ``(x, y)`` [px] (parabola fit through the
        3 samples around the maximum along each axis) and ``(...)`` the peak heights.
    """
    h, w = cc.shape[-2:]
    r = _search_radius(max_radius, h, w)
    off = torch.arange(-r - 1, r + 2, device=cc.device)
    win = cc.index_select(-2, off % h).index_select(-1, off % w)  # (..., 2r+3, 2r+3), centre = zero shift
    return window_peaks(win, max_radius, min_radius)


def _search_radius(max_radius: float, h: int, w: int) -> int:
    """Whole pixels searched around zero shift on an ``(h, w)`` grid (at least 1, inside the map with a ring to spare)."""
    return max(1, int(min(math.floor(max_radius), h // 2 - 2, w // 2 - 2)))


def window_peaks(win: torch.Tensor, max_radius: float, min_radius: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`correlation_peaks` on windows ``(..., 2r+3, 2r+3)`` of the maps centred on zero shift;
    peaks are searched within ``r`` of the centre (the outer ring serves the parabola fit)."""
    n = win.shape[-1]
    r = (n - 3) // 2
    off = torch.arange(-r - 1, r + 2, device=win.device)
    oy, ox = torch.meshgrid(off, off, indexing="ij")
    rad = torch.sqrt((ox * ox + oy * oy).to(torch.float32))
    allowed = (rad <= max_radius) & (rad >= min_radius) & (ox.abs() <= r) & (oy.abs() <= r)
    if not bool(allowed.any()):
        allowed = (ox == 0) & (oy == 0)
    masked = win.masked_fill(~allowed, float("-inf"))
    flat = masked.flatten(-2).argmax(-1)
    iy, ix = flat // n, flat % n
    lead = win.shape[:-2]
    wf = win.reshape(-1, n, n)
    iy_, ix_ = iy.reshape(-1), ix.reshape(-1)
    b = torch.arange(wf.shape[0], device=win.device)
    c = wf[b, iy_, ix_]
    fx = _parabola(wf[b, iy_, ix_ - 1], c, wf[b, iy_, ix_ + 1])
    fy = _parabola(wf[b, iy_ - 1, ix_], c, wf[b, iy_ + 1, ix_])
    pos = torch.stack([(ix_ - r - 1).double() + fx.double(), (iy_ - r - 1).double() + fy.double()], -1)
    return pos.reshape(*lead, 2), c.reshape(lead)


#: :func:`align_frames` takes a wide search's correlation maps from :func:`correlation_window` up to this window
#: width (shifts of at most 10 px), from a whole inverse FFT beyond. Measured, one thread, 24 frames: 300² grid (6.7 px
#: searched) 15.0 ms whole maps against 4.0 ms windowed; 25 patches of 64²: 9.7 against 7.2 (r 6) and 9.3 (r 10) ms;
#: the peaks agree to 3e-7 px.
WINDOW_MAX = 23


def correlation_window(spectrum: torch.Tensor, w: int, r: int) -> torch.Tensor:
    """Correlation maps at shifts ``-r-1 .. r+1`` only, ``(..., 2r+3, 2r+3)``, straight from their rfft
    ``(..., h, w//2+1)`` by two small DFT matrix products (cheaper than a full inverse FFT)."""
    h, wr = spectrum.shape[-2:]
    dev = spectrum.device
    off = torch.arange(-r - 1, r + 2, device=dev, dtype=torch.float32)
    kx = torch.arange(wr, device=dev, dtype=torch.float32)
    ky = torch.fft.fftfreq(h, d=1.0 / h, device=dev)
    mult = torch.full((wr,), 2.0, device=dev)
    mult[0] = 1.0
    if w % 2 == 0:
        mult[-1] = 1.0
    ex = torch.polar(mult[:, None] / (h * w), 2 * math.pi * kx[:, None] * off[None, :] / w)  # (wr, n)
    ey = torch.polar(torch.ones(()), 2 * math.pi * off[:, None] * ky[None, :] / h).to(dev)  # (n, h)
    part = spectrum @ ex  # (..., h, n)
    return (ey @ part).real  # (..., n, n): rows = y offsets, columns = x offsets


def peak_snr(peak: torch.Tensor, spectrum: torch.Tensor, w: int) -> torch.Tensor:
    """``(peak - mean) / std`` of correlation maps given by their rfft ``(..., h, w//2+1)`` (Parseval,
    the DC term left out of the standard deviation). The power is summed by norms (no temporaries): every
    column twice, less the first one (and the last one for an even ``w``), which the rfft holds once, and the DC."""
    h = spectrum.shape[-2]
    npx = h * w
    r = torch.view_as_real(spectrum)  # (..., h, w//2+1, 2)
    power = 2 * torch.linalg.vector_norm(r.flatten(-3), dim=-1).square()
    power -= torch.linalg.vector_norm(r[..., 0, :], dim=(-2, -1)).square()
    if w % 2 == 0:
        power -= torch.linalg.vector_norm(r[..., -1, :], dim=(-2, -1)).square()
    power -= r[..., 0, 0, :].square().sum(-1)
    mean = spectrum[..., 0, 0].real / npx
    std = (power.clamp_min(0) / npx ** 2).sqrt().clamp_min(1e-30)
    return (peak - mean) / std


def smoothing_matrix(n: int, window: int, *, dtype=torch.float64, device=None) -> torch.Tensor:
    """``(n, n)`` Savitzky-Golay (order 1) smoother: point ``i`` becomes the value at ``i`` of the
    straight line fitted to ``window`` consecutive points around it (shifted inwards at the ends).
    Identity when ``window < 3`` or ``window > n``."""
    if window < 3 or window > n:
        return torch.eye(n, dtype=dtype, device=device)
    i = torch.arange(n, dtype=dtype, device=device)
    start = (i - window // 2).clamp(0, n - window).long()
    j = start[:, None] + torch.arange(window, device=device)  # (n, window)
    x = j.to(dtype)
    xm = x.mean(-1, keepdim=True)
    wts = 1.0 / window + (i[:, None] - xm) * (x - xm) / (x - xm).square().sum(-1, keepdim=True)
    return torch.zeros(n, n, dtype=dtype, device=device).scatter_(1, j, wts)


@dataclass
class AlignmentTrace:
    """Outcome of :func:`align_frames`: shifts ``(..., F, 2)`` float64 [px of the grid], rounds run,
    whether the last update was below the threshold, and the last round's peak SNR ``(..., F)``."""

    shifts: torch.Tensor
    iterations: int
    converged: bool
    snr: torch.Tensor


def _group_sums(spec: torch.Tensor, group: int) -> torch.Tensor:
    """Running sums over ``group`` (odd) neighbouring frames along dim -3, truncated at the ends."""
    if group == 1:
        return spec
    out = spec.clone()
    f = spec.shape[-3]
    for d in range(1, min(group // 2, f - 1) + 1):
        out[..., d:, :, :] += spec[..., :f - d, :, :]
        out[..., :f - d, :, :] += spec[..., d:, :, :]
    return out


def align_frames(spec: torch.Tensor, w: int, *, filt: torch.Tensor, max_shift: float, min_shift_first: float = 0.0,
                 termination: float = 0.1, max_iterations: int = 20, group: int = 1,
                 px_scale: tuple[float, float] = (1.0, 1.0), init: torch.Tensor | None = None,
                 stop_on: str = "max", smoothing: int = 0) -> AlignmentTrace:
    """Iteratively align frames, each against the (filtered) sum of the others.

    Args:
        spec: ``(..., F, h, w//2+1)`` complex rfft spectra of the frames (leading dims are
            independent batches, e.g. patches).
        w: width of the real frames.
        filt: ``(h, w//2+1)`` real weights applied to the reference (B-factor, cross mask).
        max_shift: largest update per round [px of this grid].
        min_shift_first: in the first round, updates smaller than this are not searched [px].
        termination: stop when the largest (``stop_on="max"``) or RMS (``"rms"``) update, in
            units given by ``px_scale``, is below this (never after the first round).
        max_iterations: most rounds.
        group: frames summed around each frame (odd); the reference is everything else.
        px_scale: ``(x, y)`` size of a grid pixel in the units of ``termination`` (input pixels).
        smoothing: Savitzky-Golay window (frames, order 1) applied to the trajectories after
            every round, as Unblur does; 0 = none.
        init: starting shifts ``(..., F, 2)`` [px of this grid]; zeros by default.

    Returns:
        :class:`AlignmentTrace` with the correction shifts (content moves by them onto the
        reference), not re-centred.
    """
    lead = spec.shape[:-2]
    h = spec.shape[-2]
    ky, kx = freq_axes(h, w, device=spec.device)
    shifts = torch.zeros(*lead, 2, dtype=torch.float64, device=spec.device) if init is None else init.clone()
    scale = torch.tensor(px_scale, dtype=torch.float64, device=spec.device)
    snr = torch.zeros(lead, device=spec.device)
    filt = filt.clone()
    filt[0, 0] = 0.0  # the mean does not move the peak
    converged = False
    it = 0
    smooth = smoothing_matrix(lead[-1], smoothing, device=spec.device) if smoothing else None
    own = None  # |frame|²·filt (shift-invariant), for the PyTorch path of group 1
    peak = ccs = None
    wide, fine = False, 4  # rounds after the first search +-4 px unless a peak reached that far
    for it in range(1, max_iterations + 1):
        ey, ex = phase_factors(shifts, ky, kx)
        ccs = cross_spectra(spec, ey, ex, filt) if group == 1 else None  # C: one pass, no temporaries
        if ccs is None and group == 1:  # ccs = (total - cur)·filt·conj(cur), without the reference tensor
            if own is None:
                own = torch.view_as_real(spec).square().sum(-1) * filt
            cur = spec * (ey[..., :, None] * ex[..., None, :])
            total = cur.sum(dim=-3, keepdim=True) * filt
            ccs = cur.conj_physical_().mul_(total)
            torch.view_as_real(ccs)[..., 0].sub_(own)  # real |frame|²: no complex copy of it
            del cur, total
        elif ccs is None:
            cur = spec * (ey[..., :, None] * ex[..., None, :])
            grp = _group_sums(cur, group)
            ref = cur.sum(dim=-3, keepdim=True) * filt - grp * filt
            ccs = grp.conj_physical_().mul_(ref)
            del grp, ref, cur
        if it == 1 or wide:
            low = min_shift_first if it == 1 else 0.0
            r = _search_radius(max_shift, h, w)
            if 2 * r + 3 <= WINDOW_MAX:  # the same window of the maps, from two small DFT products
                delta, peak = window_peaks(correlation_window(ccs, w, r), max_shift, low)
            else:
                delta, peak = correlation_peaks(irfftn(ccs, s=(h, w)), max_shift, low)
        else:  # later rounds move little: look near zero only
            delta, peak = window_peaks(correlation_window(ccs, w, fine), min(max_shift, fine))
        wide = bool((delta.abs() >= fine - 0.5).any())  # a peak at the edge of the window: look wide again
        delta = delta - delta.mean(dim=-2, keepdim=True)  # the common translation is free: keep it still
        new = shifts + delta
        if smooth is not None:
            new = smooth @ new
        delta, shifts = new - shifts, new
        moved = torch.linalg.vector_norm(delta * scale, dim=-1)
        step = float(moved.amax() if stop_on == "max" else moved.square().mean().sqrt()) if delta.numel() else 0.0
        if it > 1 and step < termination:
            converged = True
            break
    snr = peak_snr(peak, ccs, w) if ccs is not None else snr
    return AlignmentTrace(shifts=shifts, iterations=it, converged=converged, snr=snr)

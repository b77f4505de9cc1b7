"""Per-frame kernels of the movie simulator, with an optional ``torch.compile`` fast path.

A 4k movie frame costs an inverse FFT, a few passes over its spectrum and one Poisson
draw per pixel. Eager PyTorch spends most of the time in those elementwise passes and
in ``torch.poisson`` (~35 ns per sample on one core); fused by ``torch.compile`` the
spectrum filter runs ~10× faster and an inverse-CDF Poisson sampler ~5× faster. The
compiled path is used on CPUs for large frames when it works (it needs a C++ compiler)
and is switched off with ``CRYOLENS_COMPILE=0``; any failure falls back to eager code.

The two samplers are both exact Poisson samplers (the inverse CDF is truncated at a
count whose tail probability is below 1e-12) but they consume random numbers
differently, so the same seed gives a different noise realisation with and without
compilation (as it does on a GPU).
"""

from __future__ import annotations

import logging
import math
import os
import threading

import torch

__all__ = ["fourier_frame", "fourier_frame_fused", "poisson_icdf", "poisson_counts", "Accelerated", "compile_enabled"]

log = logging.getLogger("cryolens.simulate")


def _phase(k: torch.Tensor, shift: float) -> torch.Tensor:
    """``exp(-2πi k s)`` for 1-D frequencies ``k`` (cycles/px) and a shift ``s`` (px)."""
    ang = (-2.0 * math.pi * shift) * k
    return torch.polar(torch.ones_like(ang), ang)


def fourier_frame(spec: torch.Tensor, a: torch.Tensor | None, ky: torch.Tensor, kx: torch.Tensor,
                  exposure: float, travel: tuple[float, float] | None, shift: tuple[float, float]) -> torch.Tensor:
    """Eager ``spec · D · B · R`` on an rfft grid (complex in, complex out).

    Args:
        spec: ``(H, W//2+1)`` complex spectrum.
        a: ``1 / (2 N_e(|k|))`` on the grid (``None``: no damage); ``D = exp(-exposure · a)``.
        ky, kx: frequencies (cycles/px) of the rows and columns.
        exposure: e⁻/Å² at the frame's middle.
        travel: ``(tx, ty)`` px travelled during the frame, ``B = sinc(k · t)`` (``None``: no blur).
        shift: ``(dx, dy)`` px displacement, ``R = exp(-2πi k · d)``.
    """
    w = None if a is None else torch.exp(a * (-exposure))
    if travel is not None and (abs(travel[0]) > 1e-4 or abs(travel[1]) > 1e-4):
        b = torch.sinc(ky[:, None] * travel[1] + kx[None, :] * travel[0])
        w = b if w is None else w.mul_(b)
    out = spec.clone() if w is None else torch.view_as_complex(torch.view_as_real(spec) * w.unsqueeze(-1))
    return out.mul_(_phase(ky, shift[1]).unsqueeze(-1)).mul_(_phase(kx, shift[0]).unsqueeze(-2))


def fourier_frame_fused(spec_ri: torch.Tensor, a: torch.Tensor, ky: torch.Tensor, kx: torch.Tensor,
                        q: torch.Tensor) -> torch.Tensor:
    """The same as :func:`fourier_frame` in one fusable expression (for ``torch.compile``).

    ``spec_ri`` is ``view_as_real(spec)`` ``(H, Wc, 2)``; ``a`` is zeros for no damage;
    ``q = (exposure, tx, ty, dx, dy)``. Returns ``(H, Wc, 2)`` real pairs.
    """
    w = torch.exp(a * (-q[0])) * torch.sinc(ky[:, None] * q[2] + kx[None, :] * q[1])
    ang = (-2.0 * math.pi) * (ky[:, None] * q[4] + kx[None, :] * q[3])
    c, s = torch.cos(ang) * w, torch.sin(ang) * w
    re, im = spec_ri[..., 0], spec_ri[..., 1]
    return torch.stack([re * c - im * s, re * s + im * c], dim=-1)


def poisson_icdf(rate: torch.Tensor, u: torch.Tensor, n_terms: int) -> torch.Tensor:
    """Poisson counts by inverting the CDF at uniforms ``u``: ``#{k < n_terms : u > F(k; rate)}``.

    Exact for counts below ``n_terms`` (choose it so that ``P(N >= n_terms) < 1e-12`` at the
    largest rate); returns int32. Written for ``torch.compile`` (one fused loop).
    """
    p = torch.exp(-rate)
    cdf = p
    count = (u > cdf).to(torch.int32)
    for k in range(1, n_terms):
        p = p * rate * (1.0 / k)
        cdf = cdf + p
        count = count + (u > cdf).to(torch.int32)
    return count


def compile_enabled() -> bool:
    """False when ``CRYOLENS_COMPILE`` is ``0``/``off``/``false``."""
    return os.environ.get("CRYOLENS_COMPILE", "auto").lower() not in ("0", "off", "false", "no")


class Accelerated:
    """``fn`` compiled with ``torch.compile`` on first use, or ``None`` results when that fails.

    ``__call__`` returns the compiled result, or raises :class:`RuntimeError` if compiling or
    running failed (once failed, it stays off for the process and callers use eager code).
    Compilation happens under a lock; afterwards calls may come from any thread.
    """

    def __init__(self, fn, name: str) -> None:
        self.fn, self.name = fn, name
        self._compiled = None
        self.failed = not compile_enabled()
        self._lock = threading.Lock()
        self._warm: set = set()

    def __call__(self, *args, key=None):
        if self.failed:
            raise RuntimeError(f"{self.name}: compiled kernel unavailable")
        try:
            if key not in self._warm:
                with self._lock:
                    if self._compiled is None:
                        self._compiled = torch.compile(self.fn, dynamic=False)
                    out = self._compiled(*args)
                    self._warm.add(key)
                    return out
            return self._compiled(*args)
        except Exception as e:  # noqa: BLE001 - any compiler problem means: use eager code
            self.failed = True
            log.warning("torch.compile of %s failed (%s: %s); using eager PyTorch", self.name, type(e).__name__,
                        str(e).splitlines()[0] if str(e) else "")
            raise RuntimeError(f"{self.name}: compiled kernel unavailable") from None


def poisson_counts(img: torch.Tensor, sens: torch.Tensor, u: torch.Tensor, e: torch.Tensor, n_terms: int,
                   cap: float, out_dtype: torch.dtype) -> torch.Tensor:
    """Counts of a frame: :func:`poisson_icdf` at the rate ``e · sens · max(0, 1 + img)``, clamped
    to ``cap`` and cast to ``out_dtype``."""
    count = poisson_icdf((img + 1.0).clamp(min=0.0) * sens * e, u, n_terms)
    return count.clamp(max=int(cap)).to(out_dtype)

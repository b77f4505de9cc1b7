"""Frames of the movie simulator: the noise-free frame (Fourier filters, global shift, local
warp) and the shot-noise sampler. :func:`cryolens.simulate.movies.simulate_movie` wires them;
the image model is described there.

Lengths in movie pixels, exposures in e⁻/Å², frequencies in cycles/px. Frames are
``(H, W)`` crops (or warps) of an ``(Hf, Wf)`` field; noise is drawn in bands of rows, each
band from its own seeded generator, so the counts do not depend on the thread count.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from cryolens.core.dose import critical_exposure
from cryolens.simulate.frame_kernels import Accelerated, fourier_frame, fourier_frame_fused, poisson_counts
from cryolens.simulate.motion import MovieMotion

__all__ = ["FOURIER_KERNEL", "COUNTS_KERNEL", "seeded_generator", "poisson_quantile", "FrameRenderer",
           "FrameSampler"]

#: The ``torch.compile`` kernels (shared by all movies; ``.failed`` once they fell back to eager code).
FOURIER_KERNEL = Accelerated(fourier_frame_fused, "fourier_frame")
COUNTS_KERNEL = Accelerated(poisson_counts, "poisson_counts")


def _seed(*parts: int) -> int:
    """A 63-bit seed derived from integers (stable across runs and platforms)."""
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(1, np.uint64)[0] >> 1)


def seeded_generator(device: torch.device, *parts: int) -> torch.Generator:
    """A torch generator on ``device`` seeded from the integers ``parts`` (e.g. seed, movie, frame, row)."""
    return torch.Generator(device=device).manual_seed(_seed(*parts))


def poisson_quantile(rate: float, tail: float = 1e-12) -> int:
    """Smallest count whose upper tail at ``rate`` is below ``tail``, plus one."""
    from scipy.stats import poisson
    return int(poisson.isf(tail, max(rate, 1e-9))) + 1


class FrameRenderer:
    """Noise-free fractional contrast of each frame: ``ift[D_i · B_i · R_i · spec]`` cropped to the
    movie, or resampled at ``x - L(x)`` when there is local motion.

    Args:
        spec: ``(Hf, Wf // 2 + 1)`` rfft of the field (MTF applied), on the compute device.
        movie_shape: ``(H, W)`` of the movie, centred in the field.
        exposures: ``(F,)`` exposure of each frame's middle [e⁻/Å²]; motion: the frames' motion [px].
        damage_voltage: kV of the radiation-damage filter, None for no damage.
        pixel_size: [Å]; fast: use the fused ``torch.compile`` spectrum kernel.
    """

    def __init__(self, spec: torch.Tensor, *, field_shape: tuple[int, int], movie_shape: tuple[int, int],
                 exposures: np.ndarray, motion: MovieMotion, damage_voltage: float | None, pixel_size: float,
                 fast: bool) -> None:
        dev = self.device = spec.device
        self.spec, self.exposures, self.motion, self.fast = spec, exposures, motion, fast
        (hf, wf), (h, w) = self.field_shape, self.movie_shape = tuple(field_shape), tuple(movie_shape)
        self.oy, self.ox = (hf - h) // 2, (wf - w) // 2
        self.ky, self.kx = torch.fft.fftfreq(hf, device=dev), torch.fft.rfftfreq(wf, device=dev)
        self.a = None
        if damage_voltage is not None:  # 1 / (2 N_e(|k|)) on the rfft grid, 0 at DC
            k = torch.sqrt(self.ky[:, None] ** 2 + self.kx[None, :] ** 2) / pixel_size
            self.a = 0.5 / critical_exposure(k, damage_voltage)
        self.spec_ri = torch.view_as_real(spec) if fast else None
        self.a0 = (self.a if self.a is not None else torch.zeros(spec.shape, device=dev)) if fast else None
        # grid_sample coordinates (align_corners=True) of the movie pixels inside the field
        self.gx0 = (torch.arange(w, dtype=torch.float64) + self.ox) * (2.0 / (wf - 1)) - 1.0
        self.gy0 = (torch.arange(h, dtype=torch.float64) + self.oy) * (2.0 / (hf - 1)) - 1.0
        self.xn = torch.arange(w, dtype=torch.float64) / w - 0.5
        self.yn = torch.arange(h, dtype=torch.float64) / h - 0.5
        self.yn32 = self.yn.to(dev, torch.float32)

    @property
    def warped(self) -> bool:
        """Whether frames are resampled for local motion (else they are crops of the field)."""
        return self.motion.local is not None

    def field(self, i: int, out: torch.Tensor) -> torch.Tensor:
        """The padded field of frame ``i`` (into ``out``): damaged, blurred, moved by the global displacement."""
        m = self.motion
        if self.fast and not FOURIER_KERNEL.failed:
            q = torch.tensor([self.exposures[i], m.travel[i, 0], m.travel[i, 1], m.displacements[i, 0],
                              m.displacements[i, 1]], dtype=torch.float32, device=self.device)
            try:
                f = torch.view_as_complex(FOURIER_KERNEL(self.spec_ri, self.a0, self.ky, self.kx, q,
                                                         key=tuple(self.spec.shape)))
                return torch.fft.irfft2(f, s=self.field_shape, out=out)
            except RuntimeError:
                pass
        f = fourier_frame(self.spec, self.a, self.ky, self.kx, float(self.exposures[i]), tuple(m.travel[i]),
                          tuple(m.displacements[i]))
        return torch.fft.irfft2(f, s=self.field_shape, out=out)

    def warp_terms(self, i: int) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Per axis ``(R (H,), P (W,), Q (W,))`` with grid = ``R[y] + P[x] + y·Q[x]`` at frame ``i``.

        The sampling position is ``x - L(x)``, ``L = T0 + T1 x + T2 x² + T3 y + T4 y² + T5 xy``.
        """
        hf, wf = self.field_shape
        xn, yn = self.xn, self.yn
        out = []
        for axis, (t, size) in enumerate(zip(self.motion.local.temporal(float(i)), (wf, hf))):
            sc = 2.0 / (size - 1)
            r = -sc * t[4] * yn * yn + (self.gy0 if axis == 1 else 0.0)
            pp = -sc * (t[0] + t[1] * xn + t[2] * xn * xn) + (self.gx0 if axis == 0 else 0.0)
            out.append(tuple(v.to(self.device, torch.float32) for v in (r, pp, -sc * (t[3] + t[5] * xn))))
        return out

    def warp_rows(self, field: torch.Tensor, terms, r0: int, r1: int) -> torch.Tensor:
        """Rows ``r0:r1`` of the frame resampled at ``x - L(x)`` (bicubic)."""
        w = self.movie_shape[1]
        grid = torch.empty(1, r1 - r0, w, 2, device=self.device)
        for axis, (r, pp, q) in enumerate(terms):
            grid[0, :, :, axis] = torch.addcmul(r[r0:r1, None] + pp[None, :], self.yn32[r0:r1, None], q[None, :])
        return torch.nn.functional.grid_sample(field[None, None], grid, mode="bicubic", padding_mode="border",
                                               align_corners=True)[0, 0]

    def image(self, i: int, field_buf: torch.Tensor, img_buf: torch.Tensor | None,
              run: Callable[[Callable], list]) -> torch.Tensor:
        """The ``(H, W)`` contrast of frame ``i``: a view of ``field_buf`` or, warped band by band
        through ``run``, ``img_buf``."""
        field = self.field(i, field_buf)
        if not self.warped:
            h, w = self.movie_shape
            return field[self.oy:self.oy + h, self.ox:self.ox + w]
        terms = self.warp_terms(i)

        def warp(span) -> None:
            img_buf[span[0]:span[1]] = self.warp_rows(field, terms, *span)
        run(warp)
        return img_buf


class FrameSampler:
    """Counts ``~ Poisson(e · s(x) · max(0, 1 + c_i(x)))`` of each frame, hot pixels at a fixed rate.

    Calling it with ``(dtype, noise)`` yields ``(index, counts)`` frame by frame and records the
    saturated pixels and whether the compiled kernels were used on ``movie``
    (a :class:`cryolens.simulate.movies.SimulatedMovie`).

    Args:
        renderer: the noise-free frames; sensitivity: ``(H, W)`` on the compute device.
        hot_pixels: ``(n, 2)`` ``(x, y)``; hot_rate: their counts per frame.
        electrons: electrons per pixel per frame; n_terms: terms of the inverse-CDF sampler.
        seed, index: the simulator's seed and the movie number (seed the noise).
    """

    def __init__(self, renderer: FrameRenderer, *, sensitivity: torch.Tensor, hot_pixels: np.ndarray,
                 hot_rate: float, electrons: float, n_terms: int, seed: int, index: int, movie) -> None:
        self.r, self.sens, self.hot_rate, self.e, self.n_terms = renderer, sensitivity, hot_rate, electrons, n_terms
        self.seed, self.index, self.movie = seed, index, movie
        dev, w = renderer.device, renderer.movie_shape[1]
        self.hot_flat = torch.as_tensor(hot_pixels[:, 1] * w + hot_pixels[:, 0], dtype=torch.long).to(dev)
        self.e_t = torch.tensor(electrons, dtype=torch.float32, device=dev)

    def _generator(self, *parts: int) -> torch.Generator:
        return seeded_generator(self.r.device, self.seed, self.index, *parts)

    def rate(self, img: torch.Tensor, r0: int, r1: int) -> torch.Tensor:
        """Expected counts of rows ``r0:r1`` (computed in place in ``img``)."""
        w = self.r.movie_shape[1]
        rate = img.add(1.0).clamp_(min=0.0).mul_(self.sens[r0:r1]).mul_(self.e)
        sel = (self.hot_flat >= r0 * w) & (self.hot_flat < r1 * w)
        rate.view(-1)[self.hot_flat[sel] - r0 * w] = self.hot_rate
        return rate

    def fast_counts(self, i: int, img: torch.Tensor, u_buf: torch.Tensor, cap: float, small: bool,
                    run: Callable[[Callable], list]) -> torch.Tensor | None:
        """Compiled inverse-CDF sampler (None when unavailable); hot pixels drawn apart."""
        h, w = self.r.movie_shape

        def draw(span) -> None:
            r0, r1 = span
            torch.rand(r1 - r0, w, out=u_buf[r0:r1], generator=self._generator(i, r0))
        run(draw)
        try:
            counts = COUNTS_KERNEL(img, self.sens, u_buf, self.e_t, self.n_terms, cap,
                                   torch.uint8 if small else torch.int32,
                                   key=(h, w, self.n_terms, cap, small, not self.r.warped))
        except RuntimeError:
            return None
        if len(self.hot_flat):
            hot = torch.poisson(torch.full((len(self.hot_flat),), self.hot_rate, device=self.r.device),
                                generator=self._generator(i, 0x407))
            counts.view(-1)[self.hot_flat] = hot.clamp_(max=cap).to(counts.dtype)
        return counts

    def eager_counts(self, i: int, img: torch.Tensor, run: Callable[[Callable], list]) -> torch.Tensor:
        """``torch.poisson`` band by band."""
        counts = torch.empty(*self.r.movie_shape, device=self.r.device)

        def sample(span) -> None:
            r0, r1 = span
            counts[r0:r1] = torch.poisson(self.rate(img[r0:r1], r0, r1), generator=self._generator(i, r0))
        run(sample)
        return counts

    def __call__(self, dtype: np.dtype, noise: bool) -> Iterator[tuple[int, np.ndarray]]:
        r, dev = self.r, self.r.device
        h, w = r.movie_shape
        fast = r.fast
        cap = float(np.iinfo(dtype).max) if dtype.kind in "iu" else math.inf
        small = dtype.kind in "iu" and dtype.itemsize == 1
        block = h if dev.type != "cpu" else 128
        spans = [(r0, min(r0 + block, h)) for r0 in range(0, h, block)]
        pool = ThreadPoolExecutor(max_workers=max(1, torch.get_num_threads())) if dev.type == "cpu" else None
        # buffers reused by every frame (fewer page faults than fresh 100-MB tensors)
        field_buf = torch.empty(*r.field_shape, device=dev)
        img_buf = torch.empty(h, w, device=dev) if r.warped else None
        u_buf = torch.empty(h, w, device=dev) if noise and fast else None

        def run(fn) -> list:
            return list(pool.map(fn, spans)) if pool is not None else [fn(s) for s in spans]

        try:
            for i in range(len(r.exposures)):
                img = r.image(i, field_buf, img_buf, run)
                counts = None
                if not noise:
                    counts = self.rate(img.clone(), 0, h)
                elif fast and not COUNTS_KERNEL.failed:
                    counts = self.fast_counts(i, img, u_buf, cap, small, run)
                if counts is None:
                    counts = self.eager_counts(i, img, run)
                over = 0
                if noise and float(counts.max()) >= cap:  # the compiled sampler clamps: count the pixels at the cap
                    over = int((counts >= cap).sum())
                    counts.clamp_(max=cap)
                self.movie.saturated.append(over)
                self.movie.compiled = fast and not (FOURIER_KERNEL.failed or (noise and COUNTS_KERNEL.failed))
                yield i, _to_numpy(counts, dtype, small)
        finally:
            if pool is not None:
                pool.shutdown()


def _to_numpy(counts: torch.Tensor, dtype: np.dtype, small: bool) -> np.ndarray:
    """Counts as a NumPy array of ``dtype`` (float32 for float dtypes)."""
    if dtype.kind == "f":
        return counts.to(torch.float32).cpu().numpy()
    if counts.dtype == torch.uint8:
        return counts.cpu().numpy().view(dtype)
    return counts.to(torch.uint8 if small else torch.int32).cpu().numpy().astype(dtype, copy=False)

"""Movie simulator: dose-fractionated frames of a noise-free contrast image.

Image model of frame ``i`` (counts per movie pixel):

    λ_i(x) = e · s(x) · max(0, 1 + c_i(x)),   counts_i(x) ~ Poisson(λ_i(x))
    c_i = ift[ MTF · D_i · B_i · R_i · FT(c) ]      (then warped by the local motion)

- ``c``: the noise-free fractional intensity change of the specimen (CTF included,
  negative on protein), from the micrograph simulator, on a field larger than the
  movie by a margin so that drifting content enters from outside instead of wrapping.
- ``e = dose_per_frame · pixel_size²``: electrons per pixel per frame.
- ``MTF``: the detector's modulation transfer function (optional).
- ``D_i = exp(-N_i / (2 N_e(k)))``: Grant & Grigorieff (2015) damage at the exposure
  ``N_i`` of the frame's middle (:mod:`cryolens.core.dose`).
- ``B_i = sinc(k · t_i)``: blur by the straight-line travel ``t_i`` during the frame.
- ``R_i = exp(-2πi k · d_i)``: the global displacement ``d_i`` of the frame's middle
  (:mod:`cryolens.core.motion`): frame ``i`` shows the specimen moved by ``d_i``.
- Local motion: a smooth displacement field ``L(x)`` (RELION's polynomial model, zero at
  the first frame) on top of ``d_i``, applied after the inverse FFT by resampling the
  frame at ``x - L(x)`` (bicubic ``grid_sample``; RELION's inverse, ``x + L(x)``, differs
  by ``L·∇L`` ≲ 0.03 px). The global part stays an exact Fourier shift; the resampling
  only moves the signal by the small local part, but bicubic (Keys, a = -0.75)
  interpolation attenuates high frequencies where the local displacement has a
  sub-pixel fraction: nothing below 0.25 cycles/px, on average 6 % at 0.3, 23 % at 0.4
  and 37 % at 0.5 cycles/px (up to 48 % at 0.4 for a half-pixel fraction). Turn local
  motion off when simulating for near-Nyquist resolution.
- ``s(x)``: detector sensitivity: a smooth field and per-pixel variation around 1 when a
  gain reference is simulated, 0 at dead pixels; hot pixels count at a fixed high rate
  (``hot_pixel_factor · e``) whatever the signal.

Gain convention (RELION, MotionCor2): the gain reference ``g`` is what raw frames are
multiplied by to correct them, ``corrected = raw × g``, so ``g = 1 / s`` (0 at dead pixels,
which RELION treats as defects). Frames are integer counts; the shot noise is white (the
MTF shapes the signal, not the noise). Super-resolution sampling is the same model at
half the pixel size on a field twice as large (the caller provides that contrast).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from cryolens.core.fourier import good_fft_size
from cryolens.simulate.motion import draw_movie_motion
from cryolens.simulate.movie_frames import FrameRenderer, FrameSampler, poisson_quantile, seeded_generator
from cryolens.simulate.movie_params import MovieParams
from cryolens.simulate.movie_truth import MovieTruth

# MovieParams (declared in cryolens.simulate.movie_params) is this simulator's Params.
__all__ = ["MovieParams", "Detector", "SimulatedMovie",
           "make_detector", "movie_margin", "field_shape", "storage_dtype", "simulate_movie"]


# ---------------------------------------------------------------- geometry


def movie_margin(params: MovieParams, pixel_size: float) -> int:
    """Pixels of contrast needed around the movie: the largest drift and local displacement
    (1.25 × ``drift`` + 4 × ``local_motion_rms``) plus 16 px for the filters' kernels."""
    disp = 1.25 * params.drift + (4.0 * params.local_motion_rms if params.local_motion else 0.0)
    return int(math.ceil(disp / pixel_size)) + 16


def field_shape(height: int, width: int, margin: int) -> tuple[int, int]:
    """FFT-friendly ``(rows, columns)`` of a contrast field holding the movie plus ``margin`` px each side."""
    return good_fft_size(height + 2 * margin), good_fft_size(width + 2 * margin)


def storage_dtype(max_count: int, fmt: str) -> np.dtype:
    """Smallest integer type that holds ``max_count`` and the format reads unambiguously.

    MRC: int8 (mode 0) up to 127, which every reader reads the same whether it takes mode 0
    as signed or unsigned, else uint16 (mode 6). TIFF: uint8 up to 255, else uint16.
    """
    if fmt not in ("mrc", "tiff"):
        raise ValueError(f"unknown movie format {fmt!r}; use mrc or tiff")
    if max_count > 65535:
        raise ValueError(f"counts up to {max_count} do not fit 16 bits; lower the dose per frame")
    small = (np.int8, 127) if fmt == "mrc" else (np.uint8, 255)
    return np.dtype(small[0]) if max_count <= small[1] else np.dtype(np.uint16)


# ---------------------------------------------------------------- detector


@dataclass
class Detector:
    """A detector shared by the movies of a data set.

    Attributes:
        sensitivity: ``(H, W)`` float32 relative sensitivity (mean ~1, 0 at dead pixels).
        gain_reference: ``(H, W)`` float32 ``1 / sensitivity`` (0 at dead pixels), what raw
            frames are multiplied by; ``None`` when no gain is simulated.
        hot_pixels, dead_pixels: ``(n, 2)`` int64 ``(x, y)`` 0-based pixel coordinates.
        hot_pixel_factor: a hot pixel's rate in units of the mean electrons per pixel.
    """

    sensitivity: torch.Tensor
    gain_reference: torch.Tensor | None
    hot_pixels: np.ndarray
    dead_pixels: np.ndarray
    hot_pixel_factor: float

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.sensitivity.shape)  # type: ignore[return-value]


def make_detector(height: int, width: int, params: MovieParams, *, device=None) -> Detector:
    """Sensitivity, gain reference and defects of a ``height × width`` detector (seeded by ``params.seed``)."""
    device = torch.device(device or "cpu")
    g = seeded_generator(torch.device("cpu"), params.seed, 0xDE7EC7)
    sens = torch.ones(height, width)
    if params.gain:
        coarse = torch.randn(1, 1, 6, 6, generator=g)
        smooth = torch.nn.functional.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=True)[0, 0]
        smooth = (smooth - smooth.mean()) / smooth.std().clamp_min(1e-12) * params.gain_variation
        pixel = torch.randn(height, width, generator=g) * params.gain_pixel_variation
        sens = (1.0 + smooth + pixel).clamp(0.5, 1.5)
    n_bad = params.hot_pixels + params.dead_pixels
    if n_bad > height * width // 100:
        raise ValueError("more than 1% of the pixels would be defective; lower hot_pixels / dead_pixels")
    flat = torch.randperm(height * width, generator=g)[:n_bad].numpy()
    xy = np.stack([flat % width, flat // width], axis=1).astype(np.int64)
    hot, dead = xy[:params.hot_pixels], xy[params.hot_pixels:]
    sens[dead[:, 1], dead[:, 0]] = 0.0
    gain_ref = None
    if params.gain:
        gain_ref = torch.where(sens > 0, 1.0 / sens.clamp_min(1e-6), torch.zeros(()))
    return Detector(sensitivity=sens.to(device), gain_reference=None if gain_ref is None else gain_ref.to(device),
                    hot_pixels=hot[np.lexsort((hot[:, 0], hot[:, 1]))],
                    dead_pixels=dead[np.lexsort((dead[:, 0], dead[:, 1]))],
                    hot_pixel_factor=float(params.hot_pixel_factor))


@dataclass
class SimulatedMovie:
    """A movie's ground truth and a lazy frame source.

    ``frames(dtype)`` yields ``(index, counts)`` with counts ``(H, W)`` of ``dtype``
    (values above its range saturate and are counted in ``saturated``);
    ``frames(noise=False)`` yields the expected counts ``λ_i`` as float32 instead.
    ``compiled`` tells, once frames were drawn, whether the ``torch.compile`` kernels made them.
    """

    truth: MovieTruth
    _make: Callable[..., Iterator[tuple[int, np.ndarray]]]
    saturated: list[int] = field(default_factory=list)
    compiled: bool = False

    def frames(self, dtype=np.uint16, *, noise: bool = True) -> Iterator[tuple[int, np.ndarray]]:
        return self._make(np.dtype(np.float32 if not noise else dtype), noise)


# ---------------------------------------------------------------- the simulator


def simulate_movie(contrast: torch.Tensor, *, pixel_size: float, params: MovieParams, detector: Detector,
                   mtf: torch.Tensor | None = None, index: int = 0, device=None,
                   accelerate: bool | None = None) -> SimulatedMovie:
    """Simulate one movie of the centre of a contrast field.

    Args:
        contrast: ``(Hf, Wf)`` noise-free fractional intensity change at the movie's pixel
            size; the movie is its centred ``detector.shape`` crop, and the margin each side
            must be at least :func:`movie_margin` (use :func:`field_shape` to size it).
        pixel_size: movie pixel size [Å] (half the physical pixel with super-resolution).
        params: simulator options (``params.validate()`` is called).
        detector: sensitivity, gain and defects (:func:`make_detector`), ``(H, W)``.
        mtf: optional detector MTF on the field's rfft grid ``(Hf, Wf // 2 + 1)``.
        index: movie number; with ``params.seed`` it seeds the motion and the shot noise.
        device: where to compute (default: the contrast's device).
        accelerate: use the ``torch.compile`` kernels (:mod:`cryolens.simulate.frame_kernels`);
            default: on a CPU for frames of 2048² pixels or more.

    Returns:
        :class:`SimulatedMovie`; frames are computed lazily, one inverse FFT each.
    """
    params.validate()
    dev = torch.device(device) if device is not None else contrast.device
    hf, wf = contrast.shape[-2:]
    h, w = detector.shape
    n = params.n_frames
    fast = accelerate if accelerate is not None else (dev.type == "cpu" and h * w >= 1 << 22)

    local_rms = params.local_motion_rms if params.local_motion else None
    g = seeded_generator(torch.device("cpu"), params.seed, index, 0x301)
    motion = draw_movie_motion(n, drift=params.drift, local_rms=local_rms, frame_blur=params.frame_blur,
                               pixel_size=pixel_size, generator=g)
    need = motion.margin_needed()
    if min((hf - h) // 2, (wf - w) // 2) < need:
        raise ValueError(f"the contrast field {hf}x{wf} leaves a margin of {min((hf - h) // 2, (wf - w) // 2)} px "
                         f"around the {h}x{w} movie, but the motion needs {need} px; size it with field_shape()")

    spec = torch.fft.rfft2(contrast.to(dev, torch.float32))
    if mtf is not None:
        if tuple(mtf.shape) != tuple(spec.shape):
            raise ValueError(f"mtf has shape {tuple(mtf.shape)}, expected the field's rfft grid {tuple(spec.shape)}")
        spec = spec * mtf.to(dev, torch.float32)
    sens = detector.sensitivity.to(dev, torch.float32)
    e = params.dose_per_frame * pixel_size ** 2  # electrons per pixel per frame
    peak = float(torch.fft.irfft2(spec, s=(hf, wf)).abs().max())
    top_normal = float(sens.max()) * (1.0 + 2.0 * peak) * e
    hot_rate = detector.hot_pixel_factor * e
    top = max(top_normal, hot_rate) if len(detector.hot_pixels) else top_normal
    exposures = params.pre_exposure + (np.arange(n) + 0.5) * params.dose_per_frame
    renderer = FrameRenderer(spec, field_shape=(hf, wf), movie_shape=(h, w), exposures=exposures, motion=motion,
                             damage_voltage=params.voltage if params.damage else None, pixel_size=pixel_size,
                             fast=fast)

    disp, local = motion.displacements, motion.local
    truth = MovieTruth(pixel_size=float(pixel_size), n_frames=n, height=h, width=w, drift=motion.drift,
                       displacements=disp, shifts=-disp + 0.0, local_model=None if local is None else local.negated(),
                       exposures=exposures, dose_per_frame=params.dose_per_frame, pre_exposure=params.pre_exposure,
                       voltage=params.voltage, max_count=poisson_quantile(top))
    movie = SimulatedMovie(truth=truth, _make=lambda dtype, noise: iter(()))
    movie._make = FrameSampler(renderer, sensitivity=sens, hot_pixels=detector.hot_pixels, hot_rate=hot_rate,
                               electrons=e, n_terms=-(-poisson_quantile(top_normal) // 8) * 8, seed=params.seed,
                               index=index, movie=movie)
    return movie

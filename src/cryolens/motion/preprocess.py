"""Movie preprocessing before alignment: gain, defects, hot pixels, Fourier binning.

Pure torch on in-memory frames ``(n_frames, rows, columns)``, any device; no file I/O.
Order (as RELION's own motion correction): gain correction, defect and hot-pixel
filling, then binning.

Conventions (pinned by tests against ``relion_run_motioncorr``):

- Gain (RELION, MotionCor2): ``corrected = raw × gain``; a gain of 0 marks a dead pixel.
  ``gain_rot`` = k rotates the reference k × 90° clockwise as ``relion_display`` shows it
  (row 0 at the top), i.e. ``torch.rot90(gain, -k)``; ``gain_flip`` then flips it:
  1 = upside down (rows reversed), 2 = left to right (columns reversed).
- Defects (a mask, True = bad) and detected hot pixels are replaced in every frame by
  the mean of the good pixels around them (3 × 3, widening up to 11 × 11 for larger
  defects; the frame mean beyond that).
- Hot pixels: pixels whose sum over the frames exceeds the median of the sums by more
  than ``hot_pixel_sigma`` robust standard deviations (1.4826 × median absolute
  deviation), i.e. pixels that count far more often than shot noise and specimen allow.
- Binning: Fourier cropping to ``round(size / bin_factor)`` pixels per axis (an odd result
  loses one more pixel; RELION refuses odd sizes instead),
  which keeps real-space values (a mean, not a sum) and the low-frequency content
  exactly; the pixel size becomes ``pixel_size × bin_factor`` (RELION's rule).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from cryolens.core.fourier import irfftn
from cryolens.params import Params, option

__all__ = ["PreprocessParams", "parse_gain_rot", "parse_gain_flip", "gain_rot_option", "gain_flip_option",
           "PreprocessResult", "orient_gain", "hot_pixel_mask", "fill_defects", "binned_shape", "fourier_bin",
           "preprocess_movie"]


_OLD_ROTATION = {90: 1, 180: 2, 270: 3}  # degrees, the spelling before RELION's
_OLD_FLIP = {"none": 0, "y": 1, "x": 2}
_ROT_RULE = "quarter turns 0-3 as relion_run_motioncorr --gain_rot"
_FLIP_RULE = "0 (none), 1 (upside down) or 2 (left to right), as relion_run_motioncorr --gain_flip"


def parse_gain_rot(text: str) -> int:
    """``--gain-rot`` as typed (RELION's quarter turns 0-3); degrees (90/180/270) get the RELION value."""
    t = text.strip()
    if t.lstrip("-").isdigit() and int(t) in _OLD_ROTATION:
        raise ValueError(f"give {_ROT_RULE}, i.e. --gain-rot {_OLD_ROTATION[int(t)]}")
    if not t.isdigit():
        raise ValueError(f"give {_ROT_RULE}")
    return int(t)


def parse_gain_flip(text: str) -> int:
    """``--gain-flip`` as typed (RELION's 0/1/2); the old letters (none/y/x) get the RELION value."""
    t = text.strip().lower()
    if t in _OLD_FLIP:
        raise ValueError(f"give {_FLIP_RULE}, i.e. --gain-flip {_OLD_FLIP[t]}")
    if not t.isdigit():
        raise ValueError(f"give {_FLIP_RULE}")
    return int(t)


def gain_rot_option() -> Any:
    """The one declaration of ``--gain-rot`` (used by motion and by import movies)."""
    return option(0, flag="--gain-rot", parse=parse_gain_rot, text=str, metavar="0-3",
                  rule=(lambda r: r in (0, 1, 2, 3), _ROT_RULE),
                  help="Rotate the gain this many times 90° clockwise, as relion_run_motioncorr --gain_rot "
                       "(MotionCor2 -RotGain)")


def gain_flip_option() -> Any:
    """The one declaration of ``--gain-flip`` (used by motion and by import movies)."""
    return option(0, flag="--gain-flip", parse=parse_gain_flip, text=str, metavar="0-2",
                  rule=(lambda f: f in (0, 1, 2), _FLIP_RULE),
                  help="Then flip the gain: 0 no, 1 upside down, 2 left to right (relion_run_motioncorr --gain_flip)")


@dataclass
class PreprocessParams(Params):
    """Preprocessing options, each declared once (gain orientation as RELION's ``--gain_rot``/``--gain_flip``)."""

    gain_rot: int = gain_rot_option()
    gain_flip: int = gain_flip_option()
    hot_pixels: bool = option(True, help="Find hot pixels in the summed frames and fill them")
    hot_pixel_sigma: float = option(6.0, gt=0, help="Hot-pixel threshold in robust standard deviations above the "
                                                    "median sum")
    bin_factor: float = option(1.0, flag="--bin", ge=1, help="Fourier binning factor (2: super-resolution to the "
                                                             "physical pixel)")
    chunk_frames: int = option(8, flag="--bin-chunk-frames", ge=1,
                               help="Frames transformed at once while binning (bounds memory)")


@dataclass
class PreprocessResult:
    """Frames ready for alignment and what was done to them.

    Attributes:
        frames: ``(n, rows', columns')`` float32, gain-corrected, defects filled, binned.
        pixel_size: Å per pixel of ``frames``.
        hot_pixels: ``(k, 2)`` int64 ``(x, y)`` 0-based coordinates of the detected hot
            pixels in the unbinned movie.
        n_defects: pixels filled (defect mask, dead gain pixels and hot pixels).
        finite: every value of the gain-corrected frames outside the known defects is finite (NaN and inf
            reach the frame sum).
    """

    frames: torch.Tensor
    pixel_size: float
    hot_pixels: np.ndarray
    n_defects: int
    finite: bool = True

    def take_frames(self) -> torch.Tensor:
        """The frames, handed over: this result no longer holds them, so the taker (e.g. :func:`align_movie`
        once it has their spectra) can free them early."""
        frames, self.frames = self.frames, None  # type: ignore[assignment]
        return frames


def orient_gain(gain: torch.Tensor, *, rot: int = 0, flip: int = 0) -> torch.Tensor:
    """Rotate a gain reference ``rot`` × 90° clockwise (as displayed, row 0 at the top), then flip it.

    ``flip`` 1 reverses the rows (upside down), 2 the columns (left to right); the same
    result as ``relion_run_motioncorr --gain_rot rot --gain_flip flip``.
    """
    g = torch.rot90(gain, -int(rot), dims=(-2, -1)) if rot % 4 else gain
    if flip == 1:
        g = torch.flip(g, dims=(-2,))
    elif flip == 2:
        g = torch.flip(g, dims=(-1,))
    elif flip != 0:
        raise ValueError(f"gain flip must be 0, 1 or 2, not {flip}")
    return g.contiguous()


ROBUST_SAMPLES = 1 << 16  # pixels sampled for the hot-pixel statistics (SE of the robust SD ~0.6 %; 2^18: 4 ms more a movie)


def _robust_stats(values: torch.Tensor, max_samples: int = ROBUST_SAMPLES) -> tuple[float, float]:
    """Median and robust SD (1.4826 × MAD; the plain SD when the MAD is 0, as for sparse counts)
    of a 1-D tensor, from a regular subsample of at most ``max_samples``."""
    step = max(1, -(-values.numel() // max_samples))
    v = values[::step].double()
    med = v.median()
    sd = 1.4826 * float((v - med).abs().median())
    if sd == 0:
        sd = float(v.std()) if v.numel() > 1 else 0.0
    return float(med), sd


def hot_pixel_mask(frame_sum: torch.Tensor, *, sigma: float = 6.0,
                   known_bad: torch.Tensor | None = None) -> torch.Tensor:
    """Pixels of a summed movie ``(rows, columns)`` brighter than median + ``sigma`` × robust SD.

    ``known_bad`` (bool, True = already a defect) is left out of the statistics and of the
    result. Sums that do not vary at all (SD 0) have no hot pixels.
    """
    step = max(1, -(-frame_sum.numel() // ROBUST_SAMPLES))  # a regular sample first: no full-size compaction
    sample = frame_sum.reshape(-1)[::step]
    if known_bad is not None:
        sample = sample[~known_bad.reshape(-1)[::step]]
    med, sd = _robust_stats(sample)
    if not sd > 0:
        return torch.zeros_like(frame_sum, dtype=torch.bool)
    hot = frame_sum > med + sigma * sd
    return hot & ~known_bad if known_bad is not None else hot


_OFFSETS = {r: torch.stack(torch.meshgrid(torch.arange(-r, r + 1), torch.arange(-r, r + 1), indexing="ij"), -1)
            .reshape(-1, 2) for r in (1, 2, 3, 5)}


def fill_defects(frames: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Replace the masked pixels of every frame by the mean of the good pixels around them (in place).

    Args:
        frames: ``(n, rows, columns)`` float tensor.
        mask: ``(rows, columns)`` bool, True = bad.

    Returns:
        ``frames`` (modified in place). Each bad pixel takes the mean over its 3 × 3
        neighbourhood's good pixels; pixels with none look 5 × 5, 7 × 7 and 11 × 11 wide,
        and any still left (defects larger than 10 px) take their frame's mean.
    """
    h, w = mask.shape
    bad = torch.nonzero(mask.to(frames.device))  # (k, 2) as (row, column)
    if len(bad) == 0:
        return frames
    valid = ~mask.to(frames.device)
    flat = frames.reshape(frames.shape[0], -1)
    todo = bad
    for r, off in _OFFSETS.items():
        nb = todo[:, None, :] + off.to(frames.device)[None]  # (k, m, 2)
        inside = (nb[..., 0] >= 0) & (nb[..., 0] < h) & (nb[..., 1] >= 0) & (nb[..., 1] < w)
        nb = torch.stack([nb[..., 0].clamp(0, h - 1), nb[..., 1].clamp(0, w - 1)], -1)
        ok = inside & valid[nb[..., 0], nb[..., 1]]
        count = ok.sum(1)
        has = count > 0
        idx = nb[..., 0] * w + nb[..., 1]  # (k, m)
        vals = flat[:, idx.reshape(-1)].reshape(frames.shape[0], *idx.shape)  # (n, k, m)
        mean = (vals * ok.to(vals.dtype)).sum(-1) / count.clamp_min(1).to(vals.dtype)
        target = todo[has, 0] * w + todo[has, 1]
        flat[:, target] = mean[:, has]
        todo = todo[~has]
        if len(todo) == 0:
            return frames
    frame_mean = (flat * valid.reshape(1, -1)).sum(1) / valid.sum().clamp_min(1)
    flat[:, todo[:, 0] * w + todo[:, 1]] = frame_mean[:, None]
    return frames


def binned_shape(rows: int, columns: int, bin_factor: float) -> tuple[int, int]:
    """Frame size after Fourier binning: ``round(size / bin_factor)`` made even (RELION's rule)."""
    if bin_factor == 1:
        return rows, columns

    def one(n: int) -> int:
        m = int(round(n / bin_factor))
        return max(2, m - (m % 2))

    return one(rows), one(columns)


def fourier_bin(frames: torch.Tensor, bin_factor: float, *, chunk: int = 8) -> torch.Tensor:
    """Fourier-crop frames ``(n, rows, columns)`` to :func:`binned_shape`, keeping real-space values.

    Frequencies inside the new box are kept exactly (the new Nyquist row takes the
    negative-frequency coefficient); everything beyond is dropped. Processed in chunks of
    ``chunk`` frames.
    """
    n, h, w = frames.shape
    h2, w2 = binned_shape(h, w, bin_factor)
    if (h2, w2) == (h, w):
        return frames
    if h2 > h or w2 > w:
        raise ValueError("fourier_bin only shrinks frames")
    out = torch.empty((n, h2, w2), dtype=torch.float32, device=frames.device)
    top = h2 // 2  # rows 0..top-1 hold ky >= 0, the last h2 - top rows the negative ky
    scale = (h2 * w2) / (h * w)
    for s in range(0, n, chunk):
        f = torch.fft.rfft2(frames[s:s + chunk].float())
        g = torch.cat([f[:, :top, :w2 // 2 + 1], f[:, h - (h2 - top):, :w2 // 2 + 1]], dim=1)
        out[s:s + chunk] = irfftn(g, s=(h2, w2)) * scale
    return out


def preprocess_movie(frames: torch.Tensor, *, pixel_size: float, params: PreprocessParams,
                     gain: torch.Tensor | None = None, defects: torch.Tensor | None = None,
                     device: torch.device | str | None = None, copy: bool = True) -> PreprocessResult:
    """Gain-correct, fill defects and hot pixels, and bin a movie.

    Args:
        frames: ``(n, rows, columns)`` raw frames, any real dtype (integer counts), as read.
        pixel_size: Å per pixel of the movie.
        params: options (``validate()`` is called).
        gain: gain reference ``(rows', columns')`` *before* orientation; after
            :func:`orient_gain` it must match the frames. Zeros are dead pixels.
        defects: ``(rows, columns)`` bool mask of known bad pixels (True = bad).
        device: where to compute (default: the frames' device).
        copy: False lets a float32 ``frames`` already on ``device`` be modified in place (saves
            one movie's worth of memory when the caller no longer needs it).

    Returns:
        :class:`PreprocessResult` with float32 frames on ``device``.
    """
    params.validate()
    dev = torch.device(device) if device is not None else frames.device
    x = frames.to(dev)
    x = x.float() if x.dtype != torch.float32 else (x.clone() if copy and x.data_ptr() == frames.data_ptr() else x)
    n, h, w = x.shape
    bad = torch.zeros((h, w), dtype=torch.bool, device=dev) if defects is None else defects.to(dev, torch.bool)
    if bad.shape != (h, w):
        raise ValueError(f"the defect mask is {tuple(bad.shape)} but the frames are {(h, w)}")
    if gain is not None:
        g = orient_gain(gain.to(dev, torch.float32), rot=params.gain_rot, flip=params.gain_flip)
        if g.shape != (h, w):
            raise ValueError(f"the oriented gain reference is {tuple(g.shape)} but the frames are {(h, w)}")
        x *= g
        bad = bad | (g == 0)
    hot = np.zeros((0, 2), np.int64)
    finite = None
    if params.hot_pixels:
        total = x[0].clone()
        for frame in x[1:]:  # frame by frame: ~1.5x faster than x.sum(0) on the CPU here
            total += frame
        finite = bool((torch.isfinite(total) | bad).all())  # known defects are filled below
        hmask = hot_pixel_mask(total, sigma=params.hot_pixel_sigma, known_bad=bad)
        yx = torch.nonzero(hmask).cpu().numpy()
        hot = yx[:, ::-1].astype(np.int64).copy()
        bad = bad | hmask
    if finite is None:  # one pass; NaN propagates
        finite = bool(torch.isfinite(torch.stack(torch.aminmax(x))).all())
    n_bad = int(bad.sum())
    if n_bad:
        fill_defects(x, bad)
    if params.bin_factor != 1:
        x = fourier_bin(x, params.bin_factor, chunk=params.chunk_frames)
    return PreprocessResult(frames=x, pixel_size=pixel_size * params.bin_factor, hot_pixels=hot, n_defects=n_bad,
                            finite=finite)

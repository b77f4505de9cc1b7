"""The gain reference of ``cryolens import movies``: its orientation, its check against the movies, its plot.

One convention throughout cryolens, RELION's (``relion_run_motioncorr --gain_rot/--gain_flip``):
``--gain-rot`` 0-3 quarter turns clockwise as displayed with row 0 at the top, then
``--gain-flip`` 0 (none), 1 (upside down) or 2 (left to right); the same
:func:`cryolens.motion.preprocess.orient_gain` orients the gain on import and in ``motion``.
The import writes the oriented gain once as ``gain.mrc``, so later stages need no flags.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cryolens.errors import InputError
from cryolens.io.movies import MovieInfo, read_gain
from cryolens.jobs.report import new_figure, save_figure
from cryolens.jobs.import_options import GainOptions

__all__ = ["oriented_gain", "plot_gain"]

def oriented_gain(gain: GainOptions, first: MovieInfo) -> tuple[np.ndarray, np.ndarray]:
    """(gain as read, gain oriented) ``(rows, columns)`` float32; InputError when the oriented gain
    does not match the frames of ``first`` (EER frames are rendered at any size: not checked)."""
    import torch

    from cryolens.motion.preprocess import orient_gain

    raw = read_gain(gain.path)
    oriented = orient_gain(torch.from_numpy(raw), rot=gain.rotation, flip=gain.flip).numpy()
    if first.fmt != "eer" and oriented.shape != (first.height, first.width):
        hint = (" (a quarter turn would fit: try --gain-rot 1 or 3)"
                if oriented.shape[::-1] == (first.height, first.width) else "")
        raise InputError(f"{gain.path}: the oriented gain is {oriented.shape[1]}x{oriented.shape[0]} but the "
                         f"movies are {first.width}x{first.height}{hint}; give the matching gain or --gain-rot.")
    return raw, oriented


def plot_gain(raw: np.ndarray, oriented: np.ndarray, path: Path, gain: GainOptions) -> None:
    """``gain.png``: the gain as given next to the gain written (both down-sampled to ~512 px)."""
    fig, axes = new_figure(nrows=1, ncols=2, figsize=(8, 4))
    for ax, img, title in ((axes[0], raw, "gain as given"),
                           (axes[1], oriented, f"written (--gain-rot {gain.rotation}, --gain-flip {gain.flip})")):
        step = max(1, max(img.shape) // 512)
        small = img[::step, ::step]
        lo, hi = np.percentile(small, [1, 99])
        ax.imshow(small, cmap="gray", vmin=lo, vmax=hi, origin="upper")
        ax.set_title(title, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    save_figure(fig, path)

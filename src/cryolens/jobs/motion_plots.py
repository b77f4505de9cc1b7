"""Plots of ``cryolens motion``: one movie's drift (``Movies/<name>_shifts.png``) and all movies' (``drift.png``).

Figures are built on an Agg canvas without pyplot (no global figure registry) and drawn one
at a time (:data:`PLOT_LOCK`): movies finish in several threads at once, and matplotlib is
not thread-safe. PNGs are written atomically.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np

from cryolens.io.mrc import temporary_path

__all__ = ["PLOT_LOCK", "plot_movie_drift", "plot_drift_summary", "warm_matplotlib"]

PLOT_LOCK = threading.Lock()  # matplotlib is not thread-safe: one figure at a time


def _figure(width: float, height: float):
    """A matplotlib Figure on an Agg canvas, without pyplot (no global figure registry)."""
    import matplotlib
    matplotlib.use("Agg", force=False)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def _save_png(fig, path: Path, *, dpi: int) -> Path:
    """Write the figure atomically (temporary PNG, then rename); one draw (no tight bounding box)."""
    tmp = temporary_path(path).with_suffix(".png")
    try:
        fig.savefig(tmp, dpi=dpi)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def plot_movie_drift(shifts_px: np.ndarray, pixel_size: float, path: Path, *, title: str,
                     patches: tuple[np.ndarray, np.ndarray] | None = None) -> Path:
    """Trajectory of a movie: the specimen displacement (minus the correction shifts) in Å per frame."""
    with PLOT_LOCK:
        fig = _figure(4.2, 4.0)
        ax = fig.add_axes((0.2, 0.13, 0.58, 0.77))
        cax = fig.add_axes((0.82, 0.13, 0.04, 0.77))
        d = -np.asarray(shifts_px) * pixel_size
        ax.plot(d[:, 0], d[:, 1], "-", color="0.3", lw=1)
        sc = ax.scatter(d[:, 0], d[:, 1], c=np.arange(1, len(d) + 1), s=12, cmap="viridis", zorder=3)
        ax.plot(0, 0, "k+", ms=10)
        fig.colorbar(sc, cax=cax, label="frame")
        ax.set_aspect("equal", adjustable="datalim")
        ax.invert_yaxis()
        ax.set_xlabel("x (Å)")
        ax.set_ylabel("y (Å)")
        ax.set_title(title, fontsize=9)
        return _save_png(fig, path, dpi=80)


def plot_drift_summary(summaries: list[dict], path: Path) -> Path:
    """All trajectories (Å) and the accumulated motion per movie."""
    fig = _figure(11, 4.4)
    axes = fig.subplots(1, 2)
    for k, s in enumerate(summaries):
        d = -np.asarray(s["shifts_px"]) * s["pixel_size"]
        axes[0].plot(d[:, 0], d[:, 1], "-", lw=1, alpha=0.8, color="tab:red" if s["rejected"] else None,
                     label=s["name"] if k < 8 else None)
    axes[0].plot(0, 0, "k+", ms=10)
    axes[0].set_aspect("equal", adjustable="datalim")
    axes[0].invert_yaxis()
    axes[0].set_xlabel("x (Å)")
    axes[0].set_ylabel("y (Å)")
    axes[0].set_title("specimen drift (+ = first frame; red = rejected)")
    axes[0].legend(fontsize=7)
    idx = np.arange(1, len(summaries) + 1)
    early = np.array([s["accum_early_A"] for s in summaries])
    late = np.array([s["accum_late_A"] for s in summaries])
    axes[1].bar(idx, early, label="early")
    axes[1].bar(idx, late, bottom=early, label="late")
    axes[1].set_xlabel("movie")
    axes[1].set_ylabel("accumulated motion (Å)")
    axes[1].legend(fontsize=8)
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.12, top=0.92, wspace=0.25)
    return _save_png(fig, path, dpi=90)


def warm_matplotlib() -> None:
    """Import matplotlib's Agg parts (GIL-bound, ~1 s): run in a thread to overlap the first reads and FFTs."""
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.figure  # noqa: F401
    import matplotlib.backends.backend_agg  # noqa: F401


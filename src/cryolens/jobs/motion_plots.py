"""Plots of ``cryolens motion``: one movie's drift (``Movies/<name>_shifts.png``) and all movies' (``drift.png``).

The per-movie plot is drawn with Pillow (:mod:`cryolens.jobs.drift_png`). The summary comes from
:func:`cryolens.jobs.report.new_figure` and is drawn under :data:`PLOT_LOCK` (matplotlib is not
thread-safe). PNGs are written atomically, without a tight bounding box (one draw).
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from cryolens.io.atomic import atomic_output
from cryolens.jobs.drift_png import draw_drift_png
from cryolens.jobs.report import new_figure

__all__ = ["PLOT_LOCK", "plot_movie_drift", "plot_drift_summary", "warm_matplotlib"]

PLOT_LOCK = threading.Lock()  # matplotlib is not thread-safe: one figure at a time


def _save_png(fig, path: Path, *, dpi: int) -> Path:
    """Write the figure atomically (temporary PNG, then rename) and close it; one draw (no tight bounding box)."""
    import matplotlib.pyplot as plt

    try:
        with atomic_output(path) as tmp:
            fig.savefig(tmp, dpi=dpi)
    finally:
        plt.close(fig)
    return path


def plot_movie_drift(shifts_px: np.ndarray, pixel_size: float, path: Path, *, title: str,
                     patches: tuple[np.ndarray, np.ndarray] | None = None) -> Path:
    """Trajectory of a movie: the specimen displacement (minus the correction shifts) in Å per frame.

    Drawn with Pillow (:func:`cryolens.jobs.drift_png.draw_drift_png`, a few ms, no lock), not matplotlib.
    """
    return draw_drift_png(-np.asarray(shifts_px, dtype=np.float64) * pixel_size, path, title=title)


def plot_drift_summary(summaries: list[dict], path: Path) -> Path:
    """All trajectories (Å) and the accumulated motion per movie."""
    with PLOT_LOCK:
        fig, axes = new_figure(nrows=1, ncols=2, figsize=(11, 4.4))
        return _draw_summary(fig, axes, summaries, path)


def _draw_summary(fig, axes, summaries: list[dict], path: Path) -> Path:
    """Draw :func:`plot_drift_summary`'s two panels on ``axes`` and save ``path``."""
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
    """Import matplotlib and select its backend (GIL-bound, ~1 s): run in a thread to overlap the first
    reads and FFTs of a job."""
    with PLOT_LOCK:
        fig, _ = new_figure(figsize=(1, 1))
        import matplotlib.pyplot as plt
        plt.close(fig)

"""Plots of ``cryolens motion``: one movie's drift (``Movies/<name>_shifts.png``) and all movies' (``drift.png``).

Figures come from :func:`cryolens.jobs.report.new_figure` and are drawn one at a time
(:data:`PLOT_LOCK`): movies finish in several threads at once, and matplotlib is not
thread-safe. PNGs are written atomically, without a tight bounding box (one draw).
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from cryolens.io.atomic import atomic_output
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
    """Trajectory of a movie: the specimen displacement (minus the correction shifts) in Å per frame."""
    with PLOT_LOCK:
        fig, ax = new_figure(figsize=(4.2, 4.0))
        ax.set_position((0.2, 0.13, 0.58, 0.77))
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

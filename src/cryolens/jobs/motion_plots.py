"""Plots of ``cryolens motion``: one movie's drift (``Movies/<name>_shifts.png``) and all movies' (``drift.png``).

Both are drawn with Pillow (:mod:`cryolens.jobs.drift_png`: a few ms each, thread-safe, no
matplotlib import) and written atomically.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cryolens.jobs.drift_png import draw_drift_png, draw_drift_summary_png

__all__ = ["plot_movie_drift", "plot_drift_summary"]


def plot_movie_drift(shifts_px: np.ndarray, pixel_size: float, path: Path, *, title: str,
                     patches: tuple[np.ndarray, np.ndarray] | None = None) -> Path:
    """Trajectory of a movie: the specimen displacement (minus the correction shifts) in Å per frame."""
    return draw_drift_png(-np.asarray(shifts_px, dtype=np.float64) * pixel_size, path, title=title)


def plot_drift_summary(summaries: list[dict], path: Path) -> Path:
    """All trajectories (Å) and the accumulated motion per movie."""
    return draw_drift_summary_png([-np.asarray(s["shifts_px"], dtype=np.float64) * s["pixel_size"] for s in summaries],
                                  [s["name"] for s in summaries], [bool(s["rejected"]) for s in summaries],
                                  np.array([s["accum_early_A"] for s in summaries], dtype=np.float64),
                                  np.array([s["accum_late_A"] for s in summaries], dtype=np.float64), path)

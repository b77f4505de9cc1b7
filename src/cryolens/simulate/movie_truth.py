"""Ground truth of a simulated movie in RELION's conventions: global shifts, the local motion
model and the tables RELION's motion correction writes (``data_global_shift``,
``data_local_shift``). Conventions: :mod:`cryolens.core.motion`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from cryolens.core.motion import DriftTrajectory, PolynomialMotion, relion_patch_centres

__all__ = ["MovieTruth"]


@dataclass
class MovieTruth:
    """The ground truth of one movie, in RELION's conventions (see :mod:`cryolens.core.motion`).

    Attributes:
        pixel_size: movie pixel [Å] (half the physical pixel with super-resolution).
        n_frames, height, width: movie geometry [px].
        drift: the global trajectory [Å].
        displacements: ``(n_frames, 2)`` specimen displacement of each frame [px], row 0 = 0.
        shifts: ``(n_frames, 2)`` RELION global shifts [px] = ``-displacements``.
        local_model: RELION's polynomial model of the local *correction* [px], or None.
        exposures: accumulated exposure at each frame's middle [e⁻/Å²].
        dose_per_frame, pre_exposure, voltage: as simulated [e⁻/Å², e⁻/Å², kV].
        max_count: a bound on any count (Poisson 1e-12 upper quantile of the largest rate).
    """

    pixel_size: float
    n_frames: int
    height: int
    width: int
    drift: DriftTrajectory
    displacements: np.ndarray
    shifts: np.ndarray
    local_model: PolynomialMotion | None
    exposures: np.ndarray
    dose_per_frame: float
    pre_exposure: float
    voltage: float
    max_count: int

    def global_shift_table(self) -> pd.DataFrame:
        """RELION's ``data_global_shift``: frame number (1-based) and correction shifts [px]."""
        return pd.DataFrame({"rlnMicrographFrameNumber": np.arange(1, self.n_frames + 1),
                             "rlnMicrographShiftX": self.shifts[:, 0], "rlnMicrographShiftY": self.shifts[:, 1]})

    def local_shift_table(self, n_patches: tuple[int, int] = (5, 5)) -> pd.DataFrame:
        """RELION's ``data_local_shift``: the local correction (beyond the global one) at the
        centres of a ``(nx, ny)`` patch grid placed as RELION places it, every frame [px]."""
        xs = relion_patch_centres(self.width, n_patches[0])
        ys = relion_patch_centres(self.height, n_patches[1])
        rows = []
        model = self.local_model or PolynomialMotion()
        for y in ys:
            for x in xs:
                for z in range(self.n_frames):
                    sx, sy = model.shift_at_pixels(z, x, y, width=self.width, height=self.height)
                    rows.append((z + 1, float(x), float(y), float(sx), float(sy)))
        return pd.DataFrame(rows, columns=["rlnMicrographFrameNumber", "rlnCoordinateX", "rlnCoordinateY",
                                           "rlnMicrographShiftX", "rlnMicrographShiftY"])

    def shift_at(self, frame: int, x: float, y: float) -> tuple[float, float]:
        """Total RELION correction (global + local) at 0-based ``frame`` and pixel ``(x, y)`` [px]."""
        sx, sy = self.shifts[frame]
        if self.local_model is not None:
            lx, ly = self.local_model.shift_at_pixels(frame, x, y, width=self.width, height=self.height)
            sx, sy = sx + float(lx), sy + float(ly)
        return float(sx), float(sy)

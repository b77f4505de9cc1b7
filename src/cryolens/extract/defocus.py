"""Per-particle CTF from a micrograph's CTF and its specimen (defocus) plane.

``cryolens ctf`` writes per micrograph ``rlnDefocusU/V/Angle`` (Å, degrees) and, with
``--patches``, the defocus plane of :mod:`cryolens.ctf.patches`: the defocus at pixel
``(x, y)`` (0-based column, row of the micrograph) is

    ΔfU(x, y) = rlnDefocusU + gx · (x − W/2) + gy · (y − H/2)      (same for V)

with ``gx, gy = cryolensDefocusGradientX/Y`` [Å/px]; the simulator writes the same columns
with the same meaning. ``cryolensDefocusPlaneC0`` (the plane's mean defocus at the centre)
is not needed: the plane moves the micrograph's U and V by the same offset, so the
astigmatism and its angle stay those of the whole micrograph.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from cryolens.core.ctf import CTFParams

__all__ = ["MicrographCTF", "GRADIENT_COLUMNS"]

GRADIENT_COLUMNS = ("cryolensDefocusGradientX", "cryolensDefocusGradientY")


def _number(row: Mapping[str, Any], key: str, default: float | None = None) -> float:
    value = row.get(key, default)
    if value is None:
        raise KeyError(key)
    value = float(value)
    if value != value:  # NaN (a column present for other micrographs only)
        if default is None:
            raise KeyError(key)
        value = float(default)
    return value


@dataclass(frozen=True)
class MicrographCTF:
    """One micrograph's CTF (RELION's columns) and defocus plane.

    Attributes:
        defocus_u, defocus_v: Å at the micrograph centre, positive = underfocus (U ≥ V as
            RELION writes them, not required); defocus_angle: degrees.
        voltage: kV; cs: mm; amplitude_contrast: fraction; phase_shift: degrees;
            bfactor: Å² (``rlnCtfBfactor``, 0 when absent).
        gradient_x, gradient_y: Å of defocus per pixel along x (columns) and y (rows); 0 =
            a flat specimen.
    """

    defocus_u: float
    defocus_v: float
    defocus_angle: float = 0.0
    voltage: float = 300.0
    cs: float = 2.7
    amplitude_contrast: float = 0.1
    phase_shift: float = 0.0
    bfactor: float = 0.0
    gradient_x: float = 0.0
    gradient_y: float = 0.0

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> MicrographCTF:
        """From one micrograph's RELION columns (a ``dict`` or a pandas row with optics merged in).

        Reads rlnDefocusU/V (required), rlnDefocusAngle, rlnVoltage, rlnSphericalAberration,
        rlnAmplitudeContrast, rlnPhaseShift, rlnCtfBfactor and cryolensDefocusGradientX/Y
        (each optional, with the defaults of this class; NaN counts as absent).

        Raises:
            KeyError: rlnDefocusU or rlnDefocusV is missing (the message names the column).
        """
        d = cls.__dataclass_fields__
        return cls(defocus_u=_number(row, "rlnDefocusU"), defocus_v=_number(row, "rlnDefocusV"),
                   defocus_angle=_number(row, "rlnDefocusAngle", d["defocus_angle"].default),
                   voltage=_number(row, "rlnVoltage", d["voltage"].default),
                   cs=_number(row, "rlnSphericalAberration", d["cs"].default),
                   amplitude_contrast=_number(row, "rlnAmplitudeContrast", d["amplitude_contrast"].default),
                   phase_shift=_number(row, "rlnPhaseShift", 0.0), bfactor=_number(row, "rlnCtfBfactor", 0.0),
                   gradient_x=_number(row, GRADIENT_COLUMNS[0], 0.0),
                   gradient_y=_number(row, GRADIENT_COLUMNS[1], 0.0))

    def defocus_at(self, coords: torch.Tensor, *, shape: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-particle ``(rlnDefocusU, rlnDefocusV)`` [Å] at ``coords``.

        Args:
            coords: ``(N, 2)`` particle centres ``(x, y)`` in micrograph pixels (0-based
                column, row), any device; float64 results keep the Å digits of a STAR file.
            shape: ``(H, W)`` of the micrograph in pixels.

        Returns:
            Two ``(N,)`` float64 tensors on ``coords``' device.
        """
        c = torch.as_tensor(coords, dtype=torch.float64)
        h, w = shape
        offset = self.gradient_x * (c[:, 0] - w / 2) + self.gradient_y * (c[:, 1] - h / 2)
        return self.defocus_u + offset, self.defocus_v + offset

    def ctf_params(self, coords: torch.Tensor, *, shape: tuple[int, int]) -> CTFParams:
        """:class:`cryolens.core.ctf.CTFParams` of the ``N`` particles at ``coords`` (see :meth:`defocus_at`)."""
        u, v = self.defocus_at(coords, shape=shape)
        n = u.shape[0]
        full = lambda value: torch.full((n,), float(value), dtype=torch.float32, device=u.device)  # noqa: E731
        return CTFParams(defocus_u=u.float(), defocus_v=v.float(), defocus_angle=full(self.defocus_angle),
                         voltage=full(self.voltage), cs=full(self.cs), amplitude_contrast=full(self.amplitude_contrast),
                         phase_shift=full(self.phase_shift), bfactor=full(self.bfactor))

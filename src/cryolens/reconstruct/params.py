"""Options of the gold-standard reconstruction, each declared once (flag, help, unit, default, bounds)."""

from __future__ import annotations

from dataclasses import dataclass

from cryolens.core.symmetry import SYMMETRY_HELP, SYMMETRY_RULE
from cryolens.params import Params, option

__all__ = ["ReconstructParams"]


@dataclass
class ReconstructParams(Params):
    """Options of the reconstruction (each declared once: flag, help, unit, default, bounds).

    ``batch_size`` bounds memory at about ``batch · |G| · box² · 100 B``.
    """

    symmetry: str = option("C1", flag="--sym", help=SYMMETRY_HELP, rule=SYMMETRY_RULE)
    pad: int = option(2, ge=2, le=4, help="Fourier padding factor")
    ctf: bool = option(True, help="Model the CTF when the particles carry defocus values (--no-ctf ignores it)")
    wiener: bool = option(False, help="Wiener-filter the full map with the half maps' FSC (smoother, lower FSC vs "
                                      "truth)")
    batch_size: int = option(128, ge=1, help="Images per insertion batch (bounds memory)")

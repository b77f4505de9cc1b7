"""Options of particle extraction, each declared once (flag, help, unit, default, bounds).

The defaults follow RELION 3.1's extraction (``relion_preprocess --extract`` as its GUI
runs it): contrast inverted, background normalised after subtracting a fitted plane,
background circle of 75 % of the box, no phase flipping.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryolens.params import Params, option

__all__ = ["ExtractParams", "default_bg_radius"]

_EVEN = (lambda n: n % 2 == 0, "even")


def default_bg_radius(box: int, out_box: int | None = None) -> int:
    """RELION's default background radius [px of the final box] for a ``box`` px box binned to ``out_box``.

    RELION 3.1's extraction job takes 75 % of the box as the background circle's
    diameter, halves it, scales it by ``out_box / box`` and truncates it to an integer:
    ``int(0.75 · box / 2 · out_box / box)`` (96 px for a 256 px box, 24 px binned to 64).
    """
    out = box if out_box is None else out_box
    radius = 0.75 * box / 2.0
    if out != box:
        radius = radius * out / box
    return int(radius)


@dataclass
class ExtractParams(Params):
    """Options of :func:`cryolens.extract.extract_particles`; see each field's help (units there).

    Order of operations per particle (RELION's): window the box (``box`` px centred on the
    coordinate), optional phase flip at the micrograph pixel size (in a ``flip_box`` window,
    then cut to ``box``), Fourier crop to ``bin_to``, background normalisation (plane fitted
    to the background pixels subtracted when ``ramp``, then zero mean and unit SD outside
    ``bg_radius``), inversion. ``edge`` decides what happens to boxes leaving the micrograph.
    """

    box: int = option(256, unit="px", ge=2, rule=_EVEN,
                      help="Box size at the micrograph pixel size, centred on each coordinate")
    bin_to: int | None = option(None, unit="px", ge=2, rule=_EVEN,
                                help="Fourier-crop each box to this size (binning; pixel size × box / bin-to); "
                                     "default no binning")
    invert: bool = option(True, help="Invert the contrast so that particles are white on black (RELION's "
                                     "--invert_contrast)")
    normalise: bool = option(True, help="Normalise each particle to zero mean and unit SD in the background "
                                        "(outside --bg-radius)")
    bg_radius: float | None = option(None, unit="px", gt=0,
                                     help="Radius of the particle circle in pixels of the final box; pixels "
                                          "outside it are the background; default 75% of the box diameter "
                                          "(RELION's)")
    ramp: bool = option(True, help="Subtract a plane fitted to the background before normalising (RELION's "
                                   "default; --no-ramp subtracts only the mean)")
    phase_flip: bool = option(False, help="Flip the phases of each box where the particle's CTF is negative "
                                          "(needs the micrograph's CTF)")
    flip_box: int | None = option(None, unit="px", ge=2, rule=_EVEN,
                                  help="Box in which each particle is phase-flipped before it is cut to --box "
                                       "(RELION's --premultiply_extract_size; larger keeps more of the CTF's "
                                       "delocalised signal); default --box")
    edge: str = option("skip", choices=("skip", "replicate"),
                       help="Boxes that leave the micrograph: skip (and count) them, or fill the missing "
                            "pixels with the nearest edge pixels as RELION 3.1 does")
    batch_size: int = option(256, ge=1, help="Particles per batch (bounds memory)")

    @property
    def out_box(self) -> int:
        """The final box size in pixels (``bin_to`` or ``box``)."""
        return self.box if self.bin_to is None else self.bin_to

    @property
    def radius(self) -> float:
        """The background radius in pixels of the final box (``bg_radius`` or RELION's default)."""
        return float(default_bg_radius(self.box, self.bin_to)) if self.bg_radius is None else float(self.bg_radius)

    def check(self) -> None:
        """``bin_to`` no larger than ``box``, ``flip_box`` no smaller; the particle circle inside the final box."""
        if self.bin_to is not None and self.bin_to > self.box:
            raise ValueError(f"{self.flag('bin_to')} {self.bin_to}: must be at most {self.flag('box')} "
                             f"{self.box} (binning only shrinks a box)")
        if self.flip_box is not None and self.flip_box < self.box:
            raise ValueError(f"{self.flag('flip_box')} {self.flip_box}: must be at least {self.flag('box')} "
                             f"{self.box}")
        if self.normalise and 2 * self.radius > self.out_box:
            raise ValueError(f"{self.flag('bg_radius')} {self.radius:g}: the particle circle must fit in the "
                             f"final box of {self.out_box} px (radius at most {self.out_box // 2} px)")

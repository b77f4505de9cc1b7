"""Options of ``cryolens import``, each declared once; light to import (the CLI reads them at start-up).

The microscope settings (pixel size, voltage, Cs, amplitude contrast) are declared by one
factory each, because two commands use them with different defaults: ``import movies`` and
``import micrographs`` describe new data (300 kV, 2.7 mm, 0.1 unless told), while ``import
particles`` only fills what a RELION 3.0 file lacks (None: take the file's value).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from cryolens.motion.preprocess import gain_flip_option, gain_rot_option
from cryolens.params import Params, option

__all__ = ["Acquisition", "ParticleOptics", "GainOptions"]


def _pixel_size() -> Any:
    return option(None, flag="--pixel-size", unit="Å", gt=0, help="Pixel size of the files as stored "
                                                                  "(super-resolution movies: the super-resolution pixel)")


def _voltage(default: float | None, note: str = "") -> Any:
    return option(default, unit="kV", gt=0, le=3000, help="Acceleration voltage" + note)


def _cs(default: float | None, note: str = "") -> Any:
    return option(default, unit="mm", ge=0, lt=100, help="Spherical aberration" + note)


def _amplitude_contrast(default: float | None, note: str = "") -> Any:
    return option(default, ge=0, lt=1, help="Amplitude contrast (fraction)" + note)


_ONE_WORD = (lambda s: bool(re.fullmatch(r"[^\s\"']+", s or "")), "one word without spaces or quotes")


@dataclass
class Acquisition(Params):
    """Microscope settings of one optics group (movies and micrographs)."""

    pixel_size: float | None = _pixel_size()
    voltage: float | None = _voltage(300.0)
    cs: float | None = _cs(2.7)
    amplitude_contrast: float | None = _amplitude_contrast(0.1)
    exposure_per_frame: float | None = option(None, unit="e⁻/Å²", gt=0, help="Electron exposure per frame; written "
                                                                           "as rlnMicrographDoseRate")
    pre_exposure: float = option(0.0, unit="e⁻/Å²", ge=0, help="Exposure before the first frame "
                                                              "(rlnMicrographPreExposure)")
    optics_group: str = option("opticsGroup1", rule=_ONE_WORD, help="Optics group name (rlnOpticsGroupName)")
    mtf: str | None = option(None, help="Detector MTF STAR file (rlnMtfFileName)")


@dataclass
class ParticleOptics(Params):
    """What ``import particles`` may fill in a RELION 3.0 file (values given must agree with the file)."""

    pixel_size: float | None = _pixel_size()
    voltage: float | None = _voltage(None, ", for a RELION 3.0 file without it")
    cs: float | None = _cs(None, ", for a RELION 3.0 file without it")
    amplitude_contrast: float | None = _amplitude_contrast(None, ", for a RELION 3.0 file without it")
    optics_group: str | None = option(None, rule=_ONE_WORD, help="Rename the optics group(s)")


@dataclass
class GainOptions(Params):
    """Gain reference and its orientation relative to the movie frames (RELION's convention).

    ``path``: MRC gain reference (or TIFF, read flipped in y as RELION reads TIFF); None = no gain.
    ``rotation``: quarter turns clockwise as shown with row 0 at the top (relion_display) = RELION
    ``--gain_rot`` = MotionCor2 ``-RotGain``; ``flip``: then 0, 1 (rows reversed) or 2 (columns reversed).
    """

    path: str | None = option(None, flag="--gain", help="Gain reference (MRC; TIFF/.gain read as RELION does); "
                                                       "written once oriented as gain.mrc")
    rotation: int = gain_rot_option()
    flip: int = gain_flip_option()

"""Options of the movie simulator and of ``cryolens simulate movies``, each declared once.

Light to import (no numpy/pandas): the CLI reads these declarations at start-up. The
simulator itself is :mod:`cryolens.simulate.movies`.

* :class:`MovieParams`: the movie simulator's options (frames, exposure, motion, damage,
  detector).
* :class:`MovieDataSet`: what one ``simulate movies`` run makes: the movie options, the
  specimen (:class:`~cryolens.simulate.micrograph_params.MicrographParams`: size, pixel,
  structures, ice, CTF), how many movies and their file format; :data:`MOVIE_PRESETS`
  are its presets.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from typing import Any

from cryolens.params import Params, declared, option
from cryolens.simulate.micrograph_params import MICROGRAPH_PRESETS, MicrographParams

__all__ = ["MovieParams", "MovieDataSet", "MOVIE_PRESETS"]


@dataclass
class MovieParams(Params):
    """Options of the movie simulator (units in brackets).

    Attributes:
        n_frames: frames per movie.
        dose_per_frame: exposure per frame [e⁻/Å²].
        pre_exposure: exposure before the first frame [e⁻/Å²].
        voltage: [kV] (100, 200 or 300 when ``damage`` is on: the damage model's voltages).
        drift: global drift from the first to the last frame [Å]; direction random.
        local_motion: add a smooth patch-varying displacement field.
        local_motion_rms: RMS over the image of the local displacement at the last frame [Å].
        damage: apply the Grant & Grigorieff radiation-damage filter.
        frame_blur: blur each frame by its straight-line travel during the frame.
        gain: simulate a non-uniform detector sensitivity and write its gain reference.
        gain_variation: RMS of the smooth part of the sensitivity (fraction).
        gain_pixel_variation: RMS of the per-pixel part of the sensitivity (fraction).
        hot_pixels, dead_pixels: number of defective pixels of the detector.
        hot_pixel_factor: a hot pixel counts this many times the mean electrons per pixel per frame.
        super_resolution: record at half the physical pixel size (frames twice as large).
        seed: random seed (drift, local motion, detector, shot noise).
    """

    n_frames: int = option(32, flag="--frames", ge=1, help="Frames per movie")
    dose_per_frame: float = option(1.25, unit="e⁻/Å²", gt=0, help="Exposure per frame")
    pre_exposure: float = option(0.0, unit="e⁻/Å²", ge=0, help="Exposure before the first frame")
    voltage: float = option(300.0, unit="kV", gt=0, help="Acceleration voltage: 100, 200 or 300 with --damage")
    drift: float = option(15.0, unit="Å", ge=0, help="Global drift from the first to the last frame; fast at first, "
                                                    "then slow, random direction")
    local_motion: bool = option(True, help="Add smooth patch-varying beam-induced motion")
    local_motion_rms: float = option(1.5, unit="Å", ge=0, help="RMS local displacement at the last frame")
    damage: bool = option(True, help="Grant & Grigorieff radiation damage per frame")
    frame_blur: bool = option(True, help="Blur each frame by its straight-line travel during the frame")
    gain: bool = option(False, flag="--gain/--no-gain", help="Non-uniform detector sensitivity; writes gain.mrc")
    gain_variation: float = option(0.05, ge=0, lt=0.5, help="RMS of the smooth part of the detector sensitivity, "
                                                            "a fraction")
    gain_pixel_variation: float = option(0.03, ge=0, lt=0.5, help="RMS of the per-pixel part of the detector "
                                                                  "sensitivity, a fraction")
    hot_pixels: int = option(0, ge=0, help="Number of hot pixels of the detector")
    dead_pixels: int = option(0, ge=0, help="Number of dead pixels of the detector")
    hot_pixel_factor: float = option(20.0, gt=0, help="A hot pixel counts this many times the mean electrons per "
                                                      "pixel per frame")
    super_resolution: bool = option(False, flag="--super-resolution/--no-super-resolution",
                                    help="Record at half the pixel size: frames twice as large, binned 2 to the "
                                         "output pixel")
    seed: int = option(0, ge=0, help="Random seed of the specimen, motion, detector and noise")

    def check(self) -> None:
        """With radiation damage, a voltage the damage model knows."""
        from cryolens.core.dose import voltage_factor

        if self.damage:
            try:
                voltage_factor(self.voltage)
            except ValueError:
                raise ValueError(f"{self.flag('voltage')} {self.voltage:g}: the radiation-damage model knows 100, 200 "
                                 "and 300 kV; use one of them or --no-damage") from None


def _redeclared(cls: type[Params], name: str, default: Any = dataclasses.MISSING, **changes: Any) -> Any:
    """Field ``name`` of ``cls`` declared again for a subclass: the same declaration with ``changes``
    (help, flag, ``cli``, ...) and, when given, another default."""
    base = cls.__dataclass_fields__[name]
    d = dataclasses.replace(declared(cls)[name], **changes)
    return option(base.default if default is dataclasses.MISSING else default,
                  **{f.name: getattr(d, f.name) for f in fields(d)})


def _movie_preset(micrograph_preset: str, **values: Any) -> dict:
    """A movie preset: the micrograph preset's specimen (size, pixel, structures, CTF) with a CTF envelope
    for coherence only (``bfactor`` 20 Å²: the movie simulator applies drift and damage itself), then ``values``."""
    return {**MICROGRAPH_PRESETS[micrograph_preset], "bfactor": 20.0, **values}


#: ``cryolens simulate movies --preset NAME``: values of :class:`MovieDataSet` fields (the defaults
#: are the tutorial's); options given explicitly override them.
MOVIE_PRESETS: dict[str, dict] = {
    # A laptop-sized tutorial: 20 movies of 1024², 32 frames, 40 e⁻/Å² in total.
    "tutorial": _movie_preset("tutorial", n_movies=20, n_frames=32, dose_per_frame=1.25, voltage=300.0, drift=15.0,
                              local_motion=True, local_motion_rms=1.5, gain=True, hot_pixels=8, dead_pixels=4),
    # EMPIAR-10291-like: K2-sized frames (3710x3838) at 1.232 Å/px, 40 frames, 44 e⁻/Å² in total.
    "benchmark": _movie_preset("benchmark", n_movies=10, n_frames=40, dose_per_frame=1.1, voltage=300.0, drift=20.0,
                               local_motion=True, local_motion_rms=2.0, gain=True, hot_pixels=60, dead_pixels=20),
}


@dataclass
class MovieDataSet(MicrographParams, MovieParams):
    """What ``cryolens simulate movies`` makes: :class:`MovieParams`, the specimen's
    :class:`MicrographParams` and ``n_movies`` files of format ``fmt`` (``mrc``: .mrcs stacks,
    ``tiff``: LZW).

    The specimen's ``width``/``height`` are the movie size [physical px] and ``pixel_size`` the
    output (physical) pixel [Å] (with super-resolution the frames are twice as large at half
    that pixel); ``particles_per_micrograph`` counts per movie. ``voltage`` and ``seed`` serve
    both; the job sets the specimen's ``dose`` (``n_frames · dose_per_frame``) and turns its
    ``radiation_damage`` off (the frames are damaged one by one), so those have no option here.
    Defaults are the tutorial preset's.
    """

    PRESETS = MOVIE_PRESETS
    PRESETS_HELP = ("Starting values: tutorial (the defaults: 20 movies of 1024², 32 frames, 1.75 Å/px) or benchmark "
                    "(3710x3838x40, 1.232 Å/px); options given explicitly override them.")

    voltage: float = _redeclared(MovieParams, "voltage")
    seed: int = _redeclared(MovieParams, "seed")
    gain: bool = _redeclared(MovieParams, "gain", True)
    hot_pixels: int = _redeclared(MovieParams, "hot_pixels", 8)
    dead_pixels: int = _redeclared(MovieParams, "dead_pixels", 4)
    n_micrographs: int = _redeclared(MicrographParams, "n_micrographs", cli=False)
    width: int = _redeclared(MicrographParams, "width", help="Movie size W H in physical pixels")
    pixel_size: float | None = _redeclared(MicrographParams, "pixel_size", help="Output (physical) pixel size; "
                                                                                "structures are Fourier-resampled")
    particles_per_micrograph: int = _redeclared(MicrographParams, "particles_per_micrograph",
                                                flag="--particles-per-movie",
                                                help="Particles per movie; fewer if they do not fit")
    dose: float = _redeclared(MicrographParams, "dose", cli=False)
    bfactor: float = _redeclared(MicrographParams, "bfactor", 20.0)
    radiation_damage: bool = _redeclared(MicrographParams, "radiation_damage", cli=False)
    n_movies: int = option(20, ge=1, help="Number of movies")
    fmt: str = option("mrc", flag="--format", choices=("mrc", "tiff"),
                      help="Movie files: mrc (.mrcs stack) or tiff (LZW); no maintained library writes EER")

    def check(self) -> None:
        """The movie's and the specimen's cross-field rules."""
        MovieParams.check(self)
        MicrographParams.check(self)

    def movie_params(self) -> MovieParams:
        """The movie simulator's options."""
        return MovieParams(**{f.name: getattr(self, f.name) for f in fields(MovieParams)})

    def micrograph_params(self) -> MicrographParams:
        """The specimen's options (size and pixel of the movie, structures, ice, CTF)."""
        return MicrographParams(**{f.name: getattr(self, f.name) for f in fields(MicrographParams)})

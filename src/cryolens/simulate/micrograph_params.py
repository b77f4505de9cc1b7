"""Options of the micrograph simulator, each declared once (flag, help with unit, default, bounds).

Light to import (no numpy/pandas): the CLI reads these declarations at start-up. The
simulator itself is :mod:`cryolens.simulate.micrographs`.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryolens.params import Params, option

__all__ = ["MicrographParams", "MICROGRAPH_PRESETS"]

#: ``cryolens simulate micrographs --preset NAME``: values of :class:`MicrographParams` fields
#: (the defaults are the tutorial's); options given explicitly override them.
MICROGRAPH_PRESETS: dict[str, dict] = {
    "tutorial": dict(n_micrographs=20, width=1024, height=1024, particles_per_micrograph=75, pixel_size=1.75,
                     box=96, structures=("phantom",), defocus_min=8000.0, defocus_max=20000.0, dose=40.0,
                     voltage=300.0),
    "benchmark": dict(n_micrographs=50, width=3710, height=3838, particles_per_micrograph=90, pixel_size=1.232,
                      box=180, structures=("phantom",), defocus_min=8000.0, defocus_max=25000.0, dose=50.0,
                      voltage=300.0, contaminants=2, aggregates=2),
}


@dataclass
class MicrographParams(Params):
    """Options of the micrograph simulator (units in brackets; each field's help says more).

    Attributes:
        n_micrographs: number of micrographs; width, height: pixels (x, y).
        pixel_size [Å], box [px]: the grid the structures are Fourier-resampled and padded or
            cropped to, i.e. the micrographs' pixel (None: the first structure's own);
            structures: their specs (``phantom``, ``map.mrc[:population=P]``, ``model.pdb``);
            map_pixel_size [Å]: voxel size of maps whose header says 0. The job loads the
            structures; the simulator functions take the loaded maps and their pixel size.
        particles_per_micrograph: target count (fewer when they do not fit; the
            density is this over the usable area).
        min_distance: minimum centre distance [Å]; None = the largest particle diameter.
        margin: minimum distance of centres from the edges [Å]; None = half the box.
        defocus_min, defocus_max [Å], astigmatism (max |U−V|) [Å], tilt_max [degrees].
        voltage [kV], cs [mm], amplitude_contrast [fraction], bfactor: envelope [Å²].
        dose: total exposure [e⁻/Å²].
        ice_thickness [Å], ice_variation [fraction, std of thickness], ice_correlation [Å],
        ice_ring: height of the ice ring in S(s).
        carbon: draw a carbon film edge; carbon_thickness [Å].
        contaminants, aggregates: number of blobs and particle aggregates per micrograph.
        mtf_gaussian: Gaussian MTF factor at Nyquist; interpolation_blur: σ [px] of a
            post-counting blur (0 = none).
        energy_filter: zero-loss imaging: thicker ice is darker by ``exp(-Δt/Λ_in)``.
        hydrogen_factor: scale of scattering-scale maps for missing hydrogens (1: none added).
        radiation_damage: attenuate the particles' signal by the exposure-averaged
            Grant-Grigorieff damage over [0, dose] (off for movies, which apply it per frame).
        structure_units: scale of structures passed as bare tensors (Python only).
        defocus_band [Å]: background defocus step under specimen tilt.
        seed: micrograph i uses ``seed + i``; batch_size: projections per batch.
    """

    PRESETS = MICROGRAPH_PRESETS
    PRESETS_HELP = ("Starting values: tutorial (the defaults: 20 x 1024², 1.75 Å/px) or benchmark (3710x3838, "
                    "1.232 Å/px); options given explicitly override them.")

    n_micrographs: int = option(20, ge=1, help="Number of micrographs")
    width: int = option(1024, flag="--size", join=("height",), unit="px", ge=64, metavar="W H",
                        help="Micrograph size W H")
    height: int = option(1024, cli=False, unit="px", ge=64, help="Micrograph height")
    pixel_size: float | None = option(1.75, unit="Å", gt=0, help="Pixel size; structures are Fourier-resampled")
    box: int | None = option(96, unit="px", ge=16, help="Structure box at that pixel size")
    particles_per_micrograph: int = option(75, ge=0, help="Particles per micrograph; fewer if they do not fit")
    structures: tuple[str, ...] = option(("phantom",), flag="--structure",
                                         help="Structure spec (repeatable): phantom, map.mrc[:population=P,"
                                              "mass_kda=M] or model.pdb[:bfactor=B]")
    map_pixel_size: float | None = option(None, unit="Å", gt=0, help="Voxel size of maps whose header says 0")
    min_distance: float | None = option(None, unit="Å", ge=0, help="Minimum distance between particle centres; "
                                                                  "default the particle diameter")
    margin: float | None = option(None, unit="Å", ge=0, help="Minimum distance of centres from the edges; default "
                                                            "half the box")
    defocus_min: float = option(8000.0, flag="--defocus", join=("defocus_max",), unit="Å", gt=0, metavar="MIN MAX",
                                help="Defocus range MIN MAX, underfocus positive")
    defocus_max: float = option(20000.0, cli=False, unit="Å", gt=0, help="Largest mean defocus")
    astigmatism: float = option(400.0, unit="Å", ge=0, help="Maximum |defocusU - defocusV|")
    tilt_max: float = option(0.0, unit="°", ge=0, lt=70, help="Maximum specimen tilt: a defocus gradient across the "
                                                             "micrograph")
    dose: float = option(40.0, unit="e⁻/Å²", gt=0, help="Total exposure")
    ice_thickness: float = option(300.0, unit="Å", gt=0, help="Mean ice thickness")
    ice_variation: float = option(0.1, ge=0, help="Standard deviation of the ice thickness as a fraction of it")
    ice_correlation: float = option(2000.0, unit="Å", gt=0, help="Correlation length of the ice thickness")
    ice_ring: float = option(1.3, ge=0, help="Height of the ice ring (1/3.7 Å⁻¹) in the ice's structure factor")
    carbon: bool = option(False, flag="--carbon/--no-carbon", help="Draw a carbon film edge")
    carbon_thickness: float = option(100.0, unit="Å", ge=0, help="Thickness of the carbon film")
    contaminants: int = option(0, ge=0, help="Contaminant blobs per micrograph")
    aggregates: int = option(0, ge=0, help="Particle aggregates per micrograph, not in the truth")
    voltage: float = option(300.0, unit="kV", gt=0, help="Acceleration voltage")
    cs: float = option(2.7, unit="mm", ge=0, help="Spherical aberration")
    amplitude_contrast: float = option(0.07, ge=0, lt=1, help="Amplitude contrast fraction")
    bfactor: float = option(60.0, unit="Å²", help="CTF envelope B-factor")
    mtf_gaussian: float = option(0.8, gt=0, le=1, help="Gaussian factor of the detector MTF at Nyquist")
    interpolation_blur: float = option(0.0, unit="px", ge=0, help="Sigma of a Gaussian blur after counting, as "
                                                                 "on-the-fly frame alignment makes; 0: none")
    energy_filter: bool = option(False, help="Zero-loss imaging: thicker ice is darker")
    hydrogen_factor: float = option(1.0, gt=0, help="Scale of maps from atomic models for missing hydrogens; "
                                                    "1 adds none")
    radiation_damage: bool = option(True, help="Attenuate the particles by the exposure-averaged radiation damage")
    structure_units: str = option("scattering", cli=False, choices=("scattering", "arbitrary"),
                                  help="Scale of structures passed as bare tensors")
    defocus_band: float = option(200.0, unit="Å", gt=0, help="Background defocus step under specimen tilt")
    seed: int = option(0, ge=0, help="Random seed; micrograph i uses seed + i")
    batch_size: int = option(64, ge=1, help="Projections per batch (bounds memory)")

    def check(self) -> None:
        """The defocus range in the right order; a structure box that fits in the micrograph."""
        if not self.defocus_min <= self.defocus_max:
            raise ValueError(f"{self.flag('defocus_min')} {self.defocus_min:g} {self.defocus_max:g}: give MIN MAX "
                             "with MIN <= MAX (Å, underfocus positive)")
        if self.box is not None and self.box > min(self.width, self.height):
            raise ValueError(f"{self.flag('box')} {self.box}: larger than the micrograph ({self.width} x "
                             f"{self.height} px); give a smaller {self.flag('box')} or a larger {self.flag('width')}")

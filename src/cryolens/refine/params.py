"""Options of the gold-standard 3D auto-refinement (units in brackets)."""

from __future__ import annotations

from dataclasses import dataclass

from cryolens.core.symmetry import symmetry_matrices

__all__ = ["RefineParams"]


@dataclass
class RefineParams:
    """Options of :func:`cryolens.refine.auto_refine`.

    Attributes:
        symmetry: point group (C1, Cn, Dn, T, O, I) in RELION's orientation.
        ini_high: the initial reference is low-passed to this resolution [Å], which is also the
            first iteration's alignment band limit.
        particle_diameter: diameter of the circular image mask and the spherical reference mask
            [Å]; ``None`` uses 90 % of the box.
        global_order: HEALPix order of the global search grid (2 = 15°).
        global_top_k: candidates kept from the global grid for local refinement.
        global_iterations: iterations that search the global grid (later ones search locally).
        offset_range: translational search range of the global search [px, full box].
        offset_step: translational step of the global search [px].
        min_angular_step: finest angular step of the local searches [degrees].
        min_offset_step: finest translational step [px].
        max_iterations: hard cap on iterations (the global iteration included).
        min_iterations: iterations before convergence may be declared.
        band_margin: Fourier shells aligned beyond the current resolution's shell.
        auto_mask: from the iteration after the resolution passes ``auto_mask_resolution``,
            mask references with a soft mask from their own (half) map (cryoSPARC's dynamic
            mask: threshold, dilation and a soft edge), intersected with the sphere.
        auto_mask_resolution: see ``auto_mask`` [Å].
        pad: Fourier padding of projector and back-projector (>= 2).
        batch_size: images per search batch (bounds memory with ``max_block``).
        max_block: bound on the elements of one score/projection block (memory).
        ctf: model the CTF when the particles carry defocus values.
        seed: half-set assignment when ``rlnRandomSubset`` is absent.
    """

    symmetry: str = "C1"
    ini_high: float = 40.0
    particle_diameter: float | None = None
    global_order: int = 2
    global_top_k: int = 6
    global_iterations: int = 3
    offset_range: float = 5.0
    offset_step: float = 1.0
    min_angular_step: float = 0.5
    min_offset_step: float = 0.1
    max_iterations: int = 12
    min_iterations: int = 4
    band_margin: int = 3
    auto_mask: bool = True
    auto_mask_resolution: float = 20.0
    pad: int = 2
    batch_size: int = 256
    max_block: int = 2**22
    ctf: bool = True
    seed: int = 0

    def validate(self) -> None:
        """Raise ValueError with a one-line reason for impossible values."""
        try:
            symmetry_matrices(self.symmetry)
        except Exception as e:  # noqa: BLE001 - InputError for unknown names
            raise ValueError(f"unknown symmetry group {self.symmetry!r}: {e}") from None
        if not self.ini_high > 0:
            raise ValueError("ini_high must be a positive resolution in Å")
        if self.particle_diameter is not None and not self.particle_diameter > 0:
            raise ValueError("particle_diameter must be positive")
        if not 0 <= self.global_order <= 4:
            raise ValueError("global_order must lie in 0..4")
        if self.global_iterations < 1:
            raise ValueError("global_iterations must be at least 1")
        if self.global_top_k < 1:
            raise ValueError("global_top_k must be at least 1")
        if self.offset_range < 0 or not self.offset_step > 0:
            raise ValueError("offset_range must be >= 0 and offset_step > 0")
        if not self.min_angular_step > 0 or not self.min_offset_step > 0:
            raise ValueError("min_angular_step and min_offset_step must be positive")
        if self.max_iterations < 1 or self.min_iterations < 1:
            raise ValueError("max_iterations and min_iterations must be at least 1")
        if self.pad < 2:
            raise ValueError("pad must be at least 2")
        if self.batch_size < 1 or self.max_block < 2**12:
            raise ValueError("batch_size must be >= 1 and max_block >= 4096")
        if self.band_margin < 0:
            raise ValueError("band_margin must not be negative")

"""Options of CTF estimation (cisTEM's *Find CTF* / CTFFIND4's options, in Å and degrees)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["CTFFitParams"]


@dataclass
class CTFFitParams:
    """Options of :func:`cryolens.ctf.fit_ctf` and :func:`cryolens.ctf.fit_ctf_patches`.

    Attributes:
        box: tile size of the power spectrum [px] (even); overlap: fraction of a tile
            shared with its neighbour, in [0, 1).
        res_low_A, res_high_A: resolution band of the fit [Å] (low > high).
        defocus_min_A, defocus_max_A, defocus_step_A: range and step of the 1-D search of
            the mean defocus [Å, underfocus positive].
        search: ``"exhaustive"``: the full grid of mean defocus (±2 steps around the 1-D
            answer, half-step spacing) × astigmatism (0..astigmatism_max_A, ~200 Å steps) ×
            angle (10° steps) [× phase], ~1 600 candidates, every one scored on a quarter of the
            band pixels (every other pixel along kx and ky); the best 32 rescored on all band
            pixels and the best 3 refined (L-BFGS). ``"fast"``: the 1-D mean × 3 astigmatisms
            × 8 angles (25 candidates) on all band pixels, the best 2 refined. Both then
            re-normalise the spectrum and refine once more.
        phase_shift: search an additional phase shift (phase plates) over
            [phase_min_deg, phase_max_deg] in steps of phase_step_deg [degrees].
        astigmatism_restraint_A: expected (tolerated) astigmatism |U − V| [Å]; beyond it the
            score is penalised by ``0.02 · ((|U−V| − r) / r)²`` (cisTEM's "restrain
            astigmatism"). None: no restraint.
        astigmatism_max_A: largest |U − V| [Å] searched by the grid (the local refinement
            may go beyond it).
        patches: (nx, ny) patches for :func:`fit_ctf_patches` (None: 3 × 3).
        fit_threshold: per-shell CC below which the Thon rings no longer fit (fit resolution).
        mask_cross: leave the pixels on the kx = 0 and ky = 0 axes out of the fit (the
            cross that tile edges and detector artefacts paint there).
    """

    box: int = 512
    overlap: float = 0.5
    res_low_A: float = 30.0
    res_high_A: float = 5.0
    defocus_min_A: float = 5000.0
    defocus_max_A: float = 50000.0
    defocus_step_A: float = 500.0
    search: str = "exhaustive"
    phase_shift: bool = False
    phase_min_deg: float = 0.0
    phase_max_deg: float = 180.0
    phase_step_deg: float = 10.0
    astigmatism_restraint_A: float | None = None
    astigmatism_max_A: float = 2000.0
    patches: tuple[int, int] | None = None
    fit_threshold: float = 0.3
    mask_cross: bool = True

    def validate(self) -> None:
        """Raise ValueError with a one-line reason for impossible values."""
        checks = [
            (self.box >= 64 and self.box % 2 == 0, "box must be an even number of pixels, at least 64"),
            (0 <= self.overlap < 1, "overlap must be within [0, 1)"),
            (self.res_low_A > self.res_high_A > 0, "the resolution band needs res_low_A > res_high_A > 0 (Å)"),
            (0 < self.defocus_min_A <= self.defocus_max_A,
             "the defocus range needs 0 < defocus_min_A <= defocus_max_A (Å, underfocus positive)"),
            (self.defocus_step_A > 0, "defocus_step_A must be positive"),
            (self.search in ("exhaustive", "fast"), "search must be 'exhaustive' or 'fast'"),
            (self.phase_min_deg <= self.phase_max_deg and self.phase_step_deg > 0,
             "the phase-shift range needs phase_min_deg <= phase_max_deg and a positive step"),
            (self.astigmatism_restraint_A is None or self.astigmatism_restraint_A > 0,
             "astigmatism_restraint_A must be positive (or None for no restraint)"),
            (self.astigmatism_max_A >= 0, "astigmatism_max_A must not be negative"),
            (self.patches is None or (len(self.patches) == 2 and min(self.patches) >= 1),
             "patches must be two positive integers (nx, ny)"),
            (-1 < self.fit_threshold < 1, "fit_threshold must be within (-1, 1)"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(msg)

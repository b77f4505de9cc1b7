"""Options of CTF estimation (cisTEM's *Find CTF* / CTFFIND4's options, in Å and degrees)."""

from __future__ import annotations

from dataclasses import dataclass

from cryolens.params import Params, option

__all__ = ["CTFFitParams", "parse_grid", "grid_text"]


def parse_grid(text: str) -> tuple[int, int]:
    """``"5x5"`` -> ``(5, 5)`` (raises ValueError for anything else)."""
    try:
        nx, ny = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError("give the patch grid as NXxNY with positive integers, e.g. 5x5") from None
    if nx < 1 or ny < 1:
        raise ValueError("give the patch grid as NXxNY with positive integers, e.g. 5x5")
    return nx, ny


def grid_text(grid: tuple[int, int]) -> str:
    """``(5, 5)`` -> ``"5x5"``."""
    return f"{grid[0]}x{grid[1]}"


@dataclass
class CTFFitParams(Params):
    """Options of :func:`cryolens.ctf.fit_ctf` and :func:`cryolens.ctf.fit_ctf_patches`.

    ``search``: ``"exhaustive"``: the full grid of mean defocus (±2 steps around the 1-D
    answer, half-step spacing) × astigmatism (0..astigmatism_max_A, ~200 Å steps) × angle
    (10° steps) [× phase], ~1 600 candidates, every one scored on a quarter of the band
    pixels (every other pixel along kx and ky); the best 32 rescored on all band pixels
    and the best 3 refined (L-BFGS). ``"fast"``: the 1-D mean × 3 astigmatisms × 8 angles
    (25 candidates) on all band pixels, the best 2 refined. Both then re-normalise the
    spectrum and refine once more. The astigmatism restraint penalises the score by
    ``0.02 · ((|U−V| − r) / r)²`` beyond ``r`` (cisTEM's "restrain astigmatism").
    """

    box: int = option(512, unit="px", ge=64, rule=(lambda b: b % 2 == 0, "even"),
                      help="Spectrum box: tiles averaged over the micrograph")
    overlap: float = option(0.5, ge=0, lt=1, help="Tile overlap fraction")
    res_low_A: float = option(30.0, flag="--res", join=("res_high_A",), unit="Å", gt=0, metavar="LOW HIGH",
                              help="Fit range LOW HIGH resolution")
    res_high_A: float = option(5.0, cli=False, unit="Å", gt=0, help="High-resolution end of the fit range")
    defocus_min_A: float = option(5000.0, flag="--defocus", join=("defocus_max_A",), unit="Å", gt=0,
                                  metavar="MIN MAX", help="Defocus search range MIN MAX (underfocus positive)")
    defocus_max_A: float = option(50000.0, cli=False, unit="Å", gt=0, help="Largest defocus searched")
    defocus_step_A: float = option(500.0, flag="--defocus-step", unit="Å", gt=0, help="Defocus search step")
    search: str = option("exhaustive", choices=("exhaustive", "fast"),
                         help="exhaustive (grid over defocus and astigmatism) or fast")
    phase_shift: bool = option(False, help="Also fit a phase shift (phase plate)")
    phase_min_deg: float = option(0.0, flag="--phase-range", join=("phase_max_deg", "phase_step_deg"), unit="°",
                                  metavar="MIN MAX STEP", help="Phase shift MIN MAX STEP with --phase-shift")
    phase_max_deg: float = option(180.0, cli=False, unit="°", help="Largest phase shift searched")
    phase_step_deg: float = option(10.0, cli=False, unit="°", gt=0, help="Phase shift search step")
    astigmatism_restraint_A: float | None = option(
        None, flag="--astigmatism-restraint", unit="Å", gt=0,
        help="Restrain the astigmatism |U - V| to about this; default unrestrained")
    astigmatism_max_A: float = option(2000.0, flag="--astigmatism-max", unit="Å", ge=0,
                                      help="Largest |U - V| of the search grid (the refinement may go beyond)")
    patches: tuple[int, int] | None = option(
        None, parse=parse_grid, text=grid_text, metavar="NXxNY",
        rule=(lambda g: len(g) == 2 and min(g) >= 1, "two positive integers NXxNY"),
        help="Patch CTF on an NXxNY grid (e.g. 5x5): a defocus plane per micrograph (cryolensDefocusPlaneC0, "
             "cryolensDefocusGradientX/Y)")
    fit_threshold: float = option(0.3, gt=-1, lt=1,
                                  help="Per-shell CC below which the Thon rings no longer fit (fit resolution)")
    mask_cross: bool = option(True, help="Leave the pixels on the kx = 0 and ky = 0 axes out of the fit (tile "
                                         "edges and detector artefacts paint a cross there)")

    def check(self) -> None:
        """Ranges in the right order."""
        if not self.res_low_A > self.res_high_A:
            raise ValueError(f"--res {self.res_low_A:g} {self.res_high_A:g}: give LOW HIGH with LOW > HIGH (Å)")
        if not self.defocus_min_A <= self.defocus_max_A:
            raise ValueError(f"--defocus {self.defocus_min_A:g} {self.defocus_max_A:g}: give MIN MAX with MIN <= MAX "
                             "(Å, underfocus positive)")
        if not self.phase_min_deg <= self.phase_max_deg:
            raise ValueError(f"--phase-range {self.phase_min_deg:g} {self.phase_max_deg:g} {self.phase_step_deg:g}: "
                             "give MIN MAX STEP with MIN <= MAX")

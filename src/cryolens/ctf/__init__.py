"""CTF estimation (CTFFIND4/cisTEM-like): tiled power spectra, defocus/astigmatism/phase-shift
fits, fit resolution, aliasing warnings, and per-patch defocus planes (specimen tilt).

Pure stage: tensors in, dataclasses out; no file I/O. The CTF formula is
:mod:`cryolens.core.ctf`'s (RELION ``ctf.h``).
"""

from cryolens.ctf.fit import evaluate_ctf, fit_ctf
from cryolens.ctf.params import CTFFitParams
from cryolens.ctf.scoring import CTFFit
from cryolens.ctf.spectrum import looks_like_power_spectrum, power_spectrum

__all__ = ["CTFFitParams", "CTFFit", "PatchCTF", "power_spectrum", "fit_ctf", "fit_ctf_patches", "evaluate_ctf",
           "looks_like_power_spectrum"]

from cryolens.ctf.patches import PatchCTF, fit_ctf_patches  # noqa: E402

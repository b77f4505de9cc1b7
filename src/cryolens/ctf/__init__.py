"""CTF estimation (CTFFIND4/cisTEM-like): tiled power spectra, defocus/astigmatism/phase-shift
fits, fit resolution, aliasing warnings, and per-patch defocus planes (specimen tilt).

Pure stage: tensors in, dataclasses out; no file I/O. The CTF formula is
:mod:`cryolens.core.ctf`'s (RELION ``ctf.h``).
"""

from cryolens.lazy import lazy_exports

__all__ = ["CTFFitParams", "CTFFit", "PatchCTF", "power_spectrum", "fit_ctf", "fit_ctf_patches", "evaluate_ctf",
           "looks_like_power_spectrum"]

__getattr__, __dir__ = lazy_exports(__name__, {
    "cryolens.ctf.fit": ["evaluate_ctf", "fit_ctf"],
    "cryolens.ctf.params": ["CTFFitParams"],
    "cryolens.ctf.scoring": ["CTFFit"],
    "cryolens.ctf.spectrum": ["looks_like_power_spectrum", "power_spectrum"],
    "cryolens.ctf.patches": ["PatchCTF", "fit_ctf_patches"],
})

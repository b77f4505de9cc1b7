"""Ab-initio 3D: initial maps from particles without poses (stochastic EM with annealed resolution)."""

from cryolens.lazy import lazy_exports

__all__ = ["AbinitioParams", "AbinitioResult", "AbinitioState", "IterationRecord", "abinitio", "enforce_priors",
           "centre_of_mass"]

__getattr__, __dir__ = lazy_exports(__name__, {
    "cryolens.abinitio.engine": ["AbinitioResult", "IterationRecord", "abinitio"],
    "cryolens.abinitio.params": ["AbinitioParams"],
    "cryolens.abinitio.priors": ["enforce_priors", "centre_of_mass"],
    "cryolens.abinitio.state": ["AbinitioState"],
})

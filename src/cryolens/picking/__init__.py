"""Particle picking: matched filter (default), Laplacian of Gaussian, template matching, consensus.

Pure algorithms on tensors (no file I/O, no printing). Entry points:
:func:`pick_micrograph` (one micrograph -> :class:`Picks`), :func:`select_picks`
(re-threshold without picking again), :func:`consensus` (merge pick sets),
:func:`match_picks` (precision/recall/F1 against ground truth).
"""

from cryolens.lazy import lazy_exports

__all__ = ["PICK_METHODS", "PickParams", "Picks", "pick_micrograph", "select_picks", "consensus", "match_picks",
           "PickMatch"]

# Lazy (PEP 562): the CLI imports picking.params at start-up for every command, and evaluate pulls in
# scipy.optimize (~0.3 s of CPU) that only picking needs.
__getattr__, __dir__ = lazy_exports(__name__, {
    "cryolens.picking.agreement": ["consensus"],
    "cryolens.picking.evaluate": ["PickMatch", "match_picks"],
    "cryolens.picking.params": ["PICK_METHODS", "PickParams"],
    "cryolens.picking.picker": ["Picks", "pick_micrograph", "select_picks"],
})

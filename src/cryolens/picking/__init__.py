"""Particle picking: matched filter (default), Laplacian of Gaussian, template matching, consensus.

Pure algorithms on tensors (no file I/O, no printing). Entry points:
:func:`pick_micrograph` (one micrograph -> :class:`Picks`), :func:`select_picks`
(re-threshold without picking again), :func:`consensus` (merge pick sets),
:func:`match_picks` (precision/recall/F1 against ground truth).
"""

from cryolens.picking.consensus import consensus
from cryolens.picking.evaluate import PickMatch, match_picks
from cryolens.picking.params import PICK_METHODS, PickParams
from cryolens.picking.picker import Picks, pick_micrograph, select_picks

__all__ = ["PICK_METHODS", "PickParams", "Picks", "pick_micrograph", "select_picks", "consensus", "match_picks",
           "PickMatch"]

"""Rule-based selection of micrographs and particles (the non-interactive subset selection).

A row is kept when it passes every criterion:

* each ``where`` rule (``"rlnCtfMaxResolution < 5"``, see :mod:`cryolens.select.rules`);
* ``rlnClassNumber`` in ``classes`` when classes are given (2D/3D class selection);
* agreement with a second CTF estimate when one is given (:mod:`cryolens.select.consensus`);
* (particles) an image z-score of mean, SD, min and max against the stack at most
  ``max_zscore`` (:mod:`cryolens.select.screen`).

2D classes are kept by list or by an automatic score per class average
(:class:`ClassSelectParams`, :mod:`cryolens.select.class_scores`).

Example::

    params = SelectParams(where=("rlnCtfMaxResolution < 5", "rlnCtfFigureOfMerit >= 0.1"))
    sel = select_rows(micrographs, params)
    kept, rejected = micrographs[sel.keep], micrographs[~sel.keep]
    sel.summary   # {"rlnCtfMaxResolution < 5": {"passed": 18, "failed": 2}, ...}
"""

from cryolens.lazy import lazy_exports

__all__ = ["SelectParams", "Selection", "select_rows", "Rule", "parse_rule", "parse_classes", "MissingColumnError",
           "Consensus", "ctf_consensus", "angle_difference", "ClassSelectParams", "class_features", "score_classes",
           "hard_counts", "SCORE_WEIGHTS", "image_statistics", "robust_zscores"]

__getattr__, __dir__ = lazy_exports(__name__, {
    "cryolens.select.params": ["SelectParams"],
    "cryolens.select.selection": ["Selection", "select_rows"],
    "cryolens.select.rules": ["MissingColumnError", "Rule", "parse_classes", "parse_rule"],
    "cryolens.select.consensus": ["Consensus", "ctf_consensus", "angle_difference"],
    "cryolens.select.class_params": ["ClassSelectParams"],
    "cryolens.select.class_scores": ["class_features", "score_classes", "hard_counts", "SCORE_WEIGHTS"],
    "cryolens.select.screen": ["image_statistics", "robust_zscores"],
})

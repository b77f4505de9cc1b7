"""2D classification: maximum-likelihood class averages with in-plane rotations and shifts marginalised."""

from cryolens.lazy import lazy_exports

__all__ = ["Class2DParams", "Class2DResult", "Class2DState", "IterationStats", "classify_2d", "BandRotator",
           "class_truth_ncc"]

__getattr__, __dir__ = lazy_exports(__name__, {
    "cryolens.class2d.params": ["Class2DParams"],
    "cryolens.class2d.engine": ["classify_2d"],
    "cryolens.class2d.state": ["Class2DResult", "Class2DState", "IterationStats"],
    "cryolens.class2d.rotation": ["BandRotator"],
    "cryolens.class2d.evaluate": ["class_truth_ncc"],
})

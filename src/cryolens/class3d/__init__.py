"""3D classification: multi-reference maximum likelihood over classes × poses (RELION's ``--K``)."""

from cryolens.lazy import lazy_exports

__all__ = ["Class3DParams", "Class3DResult", "Class3DIteration", "classify_3d", "starting_references"]

__getattr__, __dir__ = lazy_exports(__name__, {
    "cryolens.class3d.params": ["Class3DParams"],
    "cryolens.class3d.result": ["Class3DIteration", "Class3DResult"],
    "cryolens.class3d.engine": ["classify_3d", "starting_references"],
})

"""Map alignment: rotation, translation and hand of one map onto another (``cryolens align-maps``)."""

from cryolens.lazy import lazy_exports

__all__ = ["AlignMapsParams", "MapAlignment", "align_maps", "flip_hand", "transform_volume", "shift_volume"]

__getattr__, __dir__ = lazy_exports(__name__, {
    "cryolens.mapalign.align": ["MapAlignment", "align_maps", "flip_hand", "transform_volume", "shift_volume"],
    "cryolens.mapalign.params": ["AlignMapsParams"],
})

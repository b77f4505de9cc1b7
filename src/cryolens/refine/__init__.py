"""3D refinement: the reusable pose-search engine and gold-standard auto-refinement."""

from cryolens.lazy import lazy_exports

__all__ = ["BandProjector", "RefineParams", "RefineResult", "RefineState", "Schedule", "IterationStats", "auto_refine",
           "fsc_weight", "Candidates", "FrequencyBand", "SearchData", "global_search", "local_search", "project_band", "shift_grid"]

__getattr__, __dir__ = lazy_exports(__name__, {
    "cryolens.refine.gold_standard": ["RefineResult", "auto_refine", "fsc_weight"],
    "cryolens.refine.state": ["IterationStats", "RefineState", "Schedule"],
    "cryolens.refine.params": ["RefineParams"],
    "cryolens.refine.pose_search": ["BandProjector", "Candidates", "FrequencyBand", "SearchData", "global_search",
                                    "local_search", "project_band", "shift_grid"],
})

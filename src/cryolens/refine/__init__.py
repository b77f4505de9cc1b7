"""3D refinement: the reusable pose-search engine and gold-standard auto-refinement."""

from cryolens.refine.auto_refine import IterationStats, RefineResult, auto_refine, fsc_weight
from cryolens.refine.params import RefineParams
from cryolens.refine.pose_search import (BandProjector, Candidates, FrequencyBand, SearchData, global_search, local_search,
                                         project_band, shift_grid)

__all__ = ["BandProjector", "RefineParams", "RefineResult", "IterationStats", "auto_refine", "fsc_weight", "Candidates",
           "FrequencyBand", "SearchData", "global_search", "local_search", "project_band", "shift_grid"]

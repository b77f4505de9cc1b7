"""Motion correction: global (Unblur-like) and local (patch, polynomial) alignment, dose weighting.

Pure torch on in-memory frames; reading movies, gain and defects is the job's business
(:mod:`cryolens.motion.preprocess`, :mod:`cryolens.jobs`).

    from cryolens.motion import MotionParams, align_movie
    result = align_movie(frames, pixel_size=1.0, params=MotionParams(patches=(5, 5)), dose_per_frame=1.0)
"""

from cryolens.lazy import lazy_exports

__all__ = ["MotionParams", "MotionResult", "align_movie", "alignment_shape"]

__getattr__, __dir__ = lazy_exports(__name__, {
    "cryolens.motion.align": ["align_movie", "alignment_shape"],
    "cryolens.motion.params": ["MotionParams", "MotionResult"],
})

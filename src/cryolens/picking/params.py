"""Options of particle picking, each declared once (flag, help, unit, default, bounds)."""

from __future__ import annotations

from dataclasses import dataclass

from cryolens.params import Params, option

__all__ = ["PickParams", "PICK_METHODS"]

#: Picking methods: matched filter (default), Laplacian of Gaussian, templates.
PICK_METHODS = ("matched", "log", "template")


@dataclass
class PickParams(Params):
    """Options of :func:`cryolens.picking.pick_micrograph`; see each field's help (units there).

    Derived defaults (``None``): ``diameter_max`` = ``diameter`` (one size); ``threshold`` = 3
    SD (matched), 1.5 (log), 3.25 (template);
    ``min_distance`` = 0.8 × the smallest diameter; ``edge`` = half the largest diameter;
    ``pick_pixel_size`` = the mean diameter / 20 (never finer than the micrograph's pixel);
    ``blob_radius`` = 0.33 or 0.5 of the diameter or a hollow 0.45 (cavity 0.3), chosen per micrograph
    (:data:`cryolens.picking.picker.BLOB_CHOICES`), then with or without a low-pass at d/3
    (``blob_lowpass``, :data:`cryolens.picking.picker.BLOB_LOWPASS`).
    The score is in standard deviations of the score map's background (1.4826 × the median
    absolute deviation of its dominant population, :func:`cryolens.picking.peaks.mode_stats`);
    LoG maps are in their plain SD instead, hence the lower default threshold there.
    Avoidance (``avoid_blobs``): the local mean and SD at σ = diameter/4 become z-scores about
    ordinary ice (:func:`cryolens.picking.peaks.avoidance_mask`; the mean's scale from differences one diameter
    apart, :func:`cryolens.picking.peaks.neighbour_scale`); areas beyond ``avoid_mean_z`` /
    ``avoid_sd_z`` get no picks, nor do the rims (a quarter diameter) of the abnormal-mean areas.
    """

    diameter: float | None = option(None, unit="Å", gt=0, metavar="D [MAX]",
                                    help="Particle diameter; two numbers give a range: --diameter MIN MAX is "
                                         "--diameter MIN --diameter-max MAX")
    diameter_max: float | None = option(None, unit="Å", gt=0, help="Largest particle diameter of a range "
                                                                "(default: --diameter)")
    method: str = option("matched", choices=PICK_METHODS,
                         help="matched: blob matched filter on the whitened, CTF-aware micrograph; "
                              "log: Laplacian of Gaussian over the diameter range; template: normalised "
                              "cross-correlation with templates (class averages or map projections)")
    threshold: float | None = option(None, help="Keep peaks whose score exceeds this many standard deviations of "
                                                "the score map's background (robust SD); "
                                                "default 3 (matched), 1.5 (log: plain SD of each scale's map) or "
                                                "3.25 (template)")
    min_distance: float | None = option(None, unit="Å", gt=0,
                                        help="Minimum distance between picks (default 0.8 × --diameter)")
    edge: float | None = option(None, unit="Å", ge=0,
                                help="No picks closer than this to the micrograph's border (default diameter/2)")
    halo: tuple[float, float] = option((1.2, 0.0), cli=False, help="Side-lobe suppression: within this many "
                                       "diameters of a pick, drop peaks scoring below this fraction of it (0: off)")
    max_per_micrograph: int | None = option(None, ge=1, help="Keep at most this many picks per micrograph "
                                                             "(the highest scores)")
    pick_pixel_size: float | None = option(None, unit="Å", gt=0,
                                           help="Pixel size at which to pick, by Fourier cropping "
                                                "(default diameter/20)")
    avoid_blobs: bool = option(True, help="Avoid carbon, contamination and ice crystals: no picks where the "
                                          "local mean or variance at the particle's scale is an outlier, nor at "
                                          "their rims")
    # 18 (was 15 with the ice population's spread as the scale): the spread between neighbouring areas
    # (peaks.neighbour_scale) is ~0.85-0.98 of it on 1024² ribosome micrographs, where 15 grew the avoided rims and
    # lost 1-3 particles per 6 micrographs (seeds 500 / 1300: F1 0.988 / 0.980 -> 0.986 / 0.976; 18: 0.981 at 1300);
    # 4096² apoferritin 1.75 Å/px (seed 500, 2 micrographs) 0.973 at 15 -> 0.997 at 18 (thicker ice no longer avoided)
    avoid_mean_z: float = option(18.0, gt=0, help="--avoid-blobs: reject where the local mean's robust z-score "
                                                 "(scaled by its spread between areas a diameter apart) exceeds this "
                                                 "in magnitude")
    # 20 (was 12): crowded hollow shells (apoferritin) raise the local SD of ordinary ice with particles and were
    # avoided; benchmarks/picking.py seed 500, F1 on particles clear of the carbon: apoferritin 0.864 -> 0.888
    # (1.75 Å/px) and 0.891 -> 0.903 (1.2), ribosome 0.983 -> 0.988, phantom 0.946 unchanged
    avoid_sd_z: float = option(20.0, gt=0, help="--avoid-blobs: reject where the local standard deviation's "
                                               "robust z-score exceeds this")
    blob_radius: float | None = option(None, gt=0, le=0.6, help="--method matched: radius of the blob (a projected "
                                       "sphere) as a fraction of the diameter (default: 0.33, 0.5 or a shell of 0.45 "
                                       "with a 0.3 cavity, whichever gives the highest peaks on each micrograph: "
                                       "filled, ring-like or hollow particles)")
    blob_lowpass: bool = option(True, cli=False, help="--method matched: also try the chosen blob through the coarser "
                                "low-passes of cryolens.picking.picker.BLOB_LOWPASS (d/3) and keep whichever gives the "
                                "highest peaks (False: the default band only)")
    psi_step: float = option(15.0, unit="°", gt=0, le=90, help="--method template: finest in-plane rotation step "
                                                               "(at 15° a particle's rim is at most half the default "
                                                               "low-pass from the nearest rotation); a coarser one of "
                                                               "30, 22.5 or 20° is taken where rotations half-way "
                                                               "between its steps match a template to a median "
                                                               "correlation of 0.96")
    healpix_order: int = option(1, ge=0, le=3, help="--method template with a map: HEALPix order of the "
                                                    "projection directions (0 = 60°, 1 = 30°, 2 = 15°); below 2 the "
                                                    "order goes finer by itself, up to 2, while the next order's "
                                                    "views match no template to a median correlation of 0.9")
    lowpass: float | None = option(None, unit="Å", gt=0, help="Ignore detail finer than this when scoring "
                                                              "(default: the picking pixel size × 2.5)")
    highpass: float | None = option(None, unit="Å", gt=0, help="Ignore features larger than this when scoring "
                                                               "(default: 2 × the largest diameter)")
    keep_floor: float = option(1.0, cli=False, help="Candidates down to this score are kept for re-selection "
                                                    "(select_picks) without picking again")
    rank_tolerance: float = option(0.01, cli=False, gt=0, lt=1, help="--method template: fraction of the templates' "
                                   "energy in the scoring band (--lowpass to --highpass) the low-rank factorisation "
                                   "may leave out (cryolens.picking.bank)")
    coarse_stride: int = option(2, cli=False, ge=1, le=4, help="--method template: score every this many pixels "
                                "in each direction first, then every pixel near a coarse score above --refine-floor "
                                "(cryolens.picking.bank.coarse_fine_best; 1: every pixel)")
    # 1.75 (was 1.5): 25-30 % fewer pixels scored in full (ribosome 4114 -> 3014 per micrograph); F1 with templates
    # (benchmarks/picking.py, seeds 500 / 900 / 1300 / 1700) within 0.01 of 1.5's on every case
    refine_floor: float = option(1.75, cli=False, help="--method template with coarse_stride > 1: pixels near coarse "
                                 "scores at or above this many SDs of the background are scored in full (peaks of "
                                 "3.25 SDs read >= ~1.9 on the coarse grid); candidates below stay approximate")
    reduced_precision: bool = option(True, cli=False, help="--method template: basis correlations off the coarse grid "
                                     "and score products in bfloat16 where the hardware multiplies in it at least 1.5x "
                                     "faster than in float32 (cryolens.core.device.fast_matmul_dtype); scores within "
                                     "~0.3 % of float32's")
    batch_size: int = option(32, ge=1, help="--method template: pixels scored per batch ÷ 128 (bounds memory at "
                                            "about this × 512 B per template)")

    def check(self) -> None:
        """Ranges in order. ``--diameter`` may be missing here (``cryolens pick --rethreshold`` needs none);
        :meth:`require_diameter` is what picking calls."""
        if self.diameter is not None and self.diameter_max is not None and self.diameter_max < self.diameter:
            raise ValueError(f"{self.flag('diameter_max')} {self.diameter_max:g}: must be ≥ "
                             f"{self.flag('diameter')} {self.diameter:g} Å")
        if self.lowpass is not None and self.highpass is not None and self.highpass <= self.lowpass:
            raise ValueError(f"{self.flag('highpass')} {self.highpass:g}: must be larger than "
                             f"{self.flag('lowpass')} {self.lowpass:g} Å")

    def require_diameter(self) -> None:
        """ValueError naming ``--diameter`` when it is missing (picking needs it)."""
        if self.diameter is None:
            raise ValueError(f"{self.flag('diameter')} is needed: the particle diameter in Å")

    # ---- derived values (Å)
    @property
    def diameters(self) -> tuple[float, float]:
        """``(smallest, largest)`` diameter in Å."""
        d = float(self.diameter or 0.0)
        return d, float(self.diameter_max if self.diameter_max is not None else d)

    def resolved_threshold(self) -> float:
        """Score threshold in SDs: the given one, else 3 for the matched filter, 1.5 for LoG (whose maps are scaled by
        their plain SD, particles included) and 3.25 for templates (a maximum over many templates, whose noise
        reaches higher). Templates were at 3.5 until their rotation moved to a finer grid
        (:data:`cryolens.picking.picker.OVERSAMPLE`); F1 with templates in benchmarks/picking.py at 3.5 / 3.25 / 3,
        seed 500 and 900 (not used for tuning): apoferritin 1.75 Å/px 0.914 / 0.933 / 0.934 and 0.892 / 0.914 /
        0.930, 1.2 Å/px 0.857 / 0.892 / 0.895 and 0.819 / 0.872 / 0.892, phantom 0.986 / 0.986 / 0.987 and 0.978 /
        0.978 / 0.971; at 3 the phantom test in tests/test_picking.py (39 particles) fell to 0.949 by one false pick."""
        if self.threshold is not None:
            return float(self.threshold)
        return {"template": 3.25, "log": 1.5}.get(self.method, 3.0)

    def resolved_min_distance(self) -> float:
        """Minimum distance between picks in Å."""
        return self.min_distance if self.min_distance is not None else 0.8 * self.diameters[0]

    def resolved_edge(self) -> float:
        """Edge margin in Å."""
        return self.edge if self.edge is not None else 0.5 * self.diameters[1]

    def resolved_pick_pixel_size(self, pixel_size: float) -> float:
        """Target picking pixel size in Å (never finer than ``pixel_size``)."""
        target = self.pick_pixel_size if self.pick_pixel_size is not None else sum(self.diameters) / 2 / 20
        return max(float(target), float(pixel_size))

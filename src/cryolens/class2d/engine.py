"""Maximum-likelihood 2D classification (Sigworth 1998; Scheres et al. 2005), as RELION and cisTEM do it.

Each iteration, on the rfft coefficients below the current resolution limit (the images are
Fourier-cropped to it, :class:`cryolens.refine.pose_search.FrequencyBand`):

1. E-step (:mod:`cryolens.class2d.expectation`): every image is scored against every class
   at every in-plane angle of a grid (step from 15° down to ``psi_step`` as the resolution
   rises, with a fresh random offset each iteration, as cisTEM) and every shift of a grid
   (step ``resolution / 6``, at least ``shift_step_min`` px) within ``offset_range`` of the box
   centre in the first two iterations, later within 1.5 steps of each particle's current
   origin (still inside ``offset_range``), with the particle's CTF in the model and a
   per-shell noise spectrum and a class prior (the class weights, as RELION; equal weights with
   ``uniform_prior``); posteriors (soft assignments) with a significance cut. The
   scores of a batch are one GEMM (images × shifts by classes × angles), and so are the
   M-step sums;
2. M-step (:mod:`cryolens.class2d.maximisation`): noise spectrum, class weights and
   regularised class averages (``tau2_fudge``), each masked by the soft disc of
   ``particle_diameter`` and recentred on its centre of mass;
3. classes whose weight or share of best assignments falls below a fifth of the average are
   reseeded (iterations in the first 90 %) from the worst-fitting particles of the largest
   class (least log-likelihood gained over an empty image: empty boxes and edge-cut particles
   first, which would otherwise hide in it), which are assigned to the emptied class (at their
   current alignment) in the next iteration;
4. with ``empty_class`` (the default) a class K+1 is held at zero, a model of an image without
   particle signal, where empty boxes and edge-cut particles gather (its prior capped at the mean
   class weight, :func:`cryolens.class2d.iteration.class_log_prior`); with ``match_power`` (the
   default, from half the run) the averages weaker than the median class are scored scaled up to its
   power (:func:`cryolens.class2d.iteration.scored_classes`), so that weak averages stop drawing in
   faint images.

The first classes are averages of random subsets of the particles, each particle at a
random in-plane angle (seeded). ``subset="auto"`` uses cisTEM's schedule of particles per
iteration (:func:`cryolens.class2d.data.particles_per_iteration`); the last iteration
always uses all of them.
Everything runs on ``device``; memory is bounded by ``batch_size`` and ``cache_mb``. With a
``distributor`` the E-steps (and the pass that builds the initial classes) run in chunks of
particles on any compute backend (:mod:`cryolens.class2d.estep`); the driver adds their sums and
does the M-step, and ends with what the in-process run gives, to float tolerance.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
import torch

from cryolens.class2d.data import Batches, ImageStore, ctf_on_band, image_mask, resolution_schedule
from cryolens.class2d.iteration import Setup, initial_classes, run_iteration
from cryolens.class2d.maximisation import flat_background
from cryolens.class2d.params import Class2DParams
from cryolens.class2d.state import Class2DResult, Class2DState, IterationStats
from cryolens.core.worker import ChunkMapper
from cryolens.particles import has_ctf
from cryolens.refine.pose_search import FrequencyBand

__all__ = ["Class2DState", "IterationStats", "Class2DResult", "classify_2d", "class_statistics", "mask_diameter",
           "written_classes", "unexplained_fraction", "UNEXPLAINED_WARNING"]

#: The share of the particles fitting no class average better than an empty image above which the job warns.
#: Measured 2026-12-05 (the share in the empty class, K 20 / 5): 0.06-0.08 on 1 000 simulated haemoglobin particles
#: with 20 % junk; 0.11-0.17 on 242 real beta-galactosidase particles with their CTF fitted (about 1.07 µm), but
#: 0.67-0.84 with the defocus of their STAR (3.7 µm, CTFFIND run at the wrong pixel size).
UNEXPLAINED_WARNING = 0.5


def classify_2d(batches: Batches, table: pd.DataFrame, *, pixel_size: float, box: int, params: Class2DParams,
                device: torch.device | str = "cpu", progress: Callable[[int, int, int, float], None] | None = None,
                on_iteration: Callable[[Class2DState], None] | None = None, resume: Class2DState | None = None,
                distributor: ChunkMapper | None = None) -> Class2DResult:
    """Classify particle images into ``params.classes`` 2D classes (and the empty class, last, with
    ``params.empty_class``).

    Args:
        batches: callable returning an iterable of ``(row indices, float32 images (b, box, box))`` over every
            particle once (read lazily; called once per iteration unless the images fit ``cache_mb``).
        table: per-particle table (optics merged, RELION columns; the CTF columns are used when present).
        pixel_size: Å; box: image size in px.
        params: :class:`Class2DParams`; device: where to compute.
        progress: ``progress(iteration, done, total, resolution_limit_A)`` after every batch.
        on_iteration: called with the state (history included) after every iteration but the last.
        resume: a state from ``on_iteration`` of an earlier run on the same particles and params: the run goes on
            from its iteration and ends with what the uninterrupted run gives.
        distributor: run each E-step in chunks of particles through a compute backend
            (:class:`cryolens.compute.estep.Distributor`; its ``reader``, when set, reads the images on the workers,
            else they are read here and sent); None computes here, batch by batch. The image cache is then unused.

    Returns:
        :class:`Class2DResult`.
    """
    device = torch.device(device)
    n_total, k = len(table), params.classes
    diameter = mask_diameter(params, box, pixel_size)
    mask = image_mask(box, diameter / pixel_size, device=device)
    rng = np.random.default_rng(params.seed)
    final_res = min(resolution_schedule(i, params, pixel_size=pixel_size) for i in range(1, params.iterations + 1))
    final_band = FrequencyBand.build(box, box * pixel_size / final_res, device=device)
    use_ctf = params.ctf and has_ctf(table)
    cache = params.cache_mb * 1e6 if distributor is None else 0.0  # the workers read the images
    store = ImageStore(batches, n_total, box, mask, final_band, params.batch_size, cache, device,
                       ctf=lambda rows: ctf_on_band(table, rows, final_band, pixel_size, use_ctf, device))
    setup = Setup(table=table, pixel_size=pixel_size, box=box, params=params, device=device, mask=mask,
                  images=store, diameter_a=diameter, use_ctf=use_ctf, distributor=distributor)
    if resume is None:
        state = Class2DState.empty(n_total, params.model_classes(), box, device=device)
        n_init = min(n_total, params.particles_per_class * k) if params.subset == "auto" else n_total
        assign = np.full(n_total, -1, dtype=np.int64)
        assign[rng.permutation(n_total)[:n_init]] = np.arange(n_init) % k
        initial_classes(state, setup, rng, assign)
    else:
        state = resume
        rng.bit_generator.state = state.rng_state
        store.fill()
    history: list[IterationStats] = state.history
    for it in range(state.iteration + 1, params.iterations + 1):
        history.append(run_iteration(state, it, setup, rng, progress))
        state.rng_state = rng.bit_generator.state
        if on_iteration is not None and it < params.iterations:
            on_iteration(state)
    acc_psi, acc_shift = class_statistics(state)
    return Class2DResult(classes=written_classes(state, params, box, pixel_size),
                         distribution=state.class_weights.cpu().numpy(), resolution=state.class_resolution.copy(),
                         accuracy_psi=acc_psi, accuracy_shift=acc_shift,
                         particle_class=state.particle_class.copy(), psi=state.particle_psi.copy(),
                         shifts=state.particle_shift.copy(), max_probability=state.particle_max_prob.copy(),
                         log_likelihood=state.particle_loglik.copy(),
                         n_significant=state.particle_n_significant.copy(), history=history, state=state)


def mask_diameter(params: Class2DParams, box: int, pixel_size: float) -> float:
    """The diameter (Å) of the circular mask: ``particle_diameter``, else 90 % of the box."""
    return params.particle_diameter if params.particle_diameter is not None else 0.9 * box * pixel_size


def written_classes(state: Class2DState, params: Class2DParams, box: int, pixel_size: float) -> np.ndarray:
    """The class averages of ``state`` as written (``classes.mrcs``, ``run_itNNN_classes.mrcs``): their background
    at 0 (:func:`cryolens.class2d.maximisation.flat_background`), float32 on the CPU."""
    radius = mask_diameter(params, box, pixel_size) / 2 / pixel_size
    mask = image_mask(box, 2 * radius, device=state.classes.device)
    return flat_background(state.classes, mask, radius).cpu().numpy().astype(np.float32)


def unexplained_fraction(state: Class2DState, params: Class2DParams) -> float:
    """The share of the particles that fit no class average better than an empty image: those in the empty class
    with ``empty_class``, else those whose log-likelihood gain over an empty image is not positive
    (:attr:`Class2DState.particle_gain`). Junk boxes are expected there; most of the particles there means the
    model does not explain the images, usually wrong CTF parameters (defocus, voltage, Cs or pixel size)."""
    if not state.particle_class.size:
        return 0.0
    if params.empty_class:
        return float((state.particle_class == params.classes).mean())
    return float((state.particle_gain <= 0).mean())


def class_statistics(state: Class2DState) -> tuple[np.ndarray, np.ndarray]:
    """Per class, the mean over its members of the posterior standard deviation of psi (°) and of the shift (px);
    NaN for a class without members."""
    k = state.classes.shape[0]
    cls = state.particle_class
    out_psi, out_shift = np.full(k, np.nan), np.full(k, np.nan)
    for c in range(k):
        m = cls == c
        if m.any():
            out_psi[c] = float(state.particle_psi_sd[m].mean())
            out_shift[c] = float(state.particle_shift_sd[m].mean())
    return out_psi, out_shift

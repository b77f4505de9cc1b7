"""The default picker on a 4096² micrograph (a K2/K3-sized field of view): what did not scale from 1024²."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cryolens.core.ctf import CTFParams
from cryolens.picking import PickParams, pick_micrograph
from cryolens.simulate.micrographs import MicrographParams, simulate_micrograph
from cryolens.simulate.structures import phantom_structure

from test_picking import SEEDS, scored


@pytest.mark.slow
def test_default_picker_on_a_4k_micrograph():
    """4096² phantom micrograph (seed 300, not used for tuning; ~30 s to simulate): the ice thickness varies across
    the field of view and carbon covers part of it. The local-mean test of the avoidance is scaled by the spread
    between areas a diameter apart (cryolens.picking.peaks.neighbour_scale) and the blob choice compares one peak per
    10 d² (cryolens.picking.picker.AUTO_AREA): F1 0.984 here; with the whole map's spread and 10 peaks (main at
    d4f9f21) 0.934 here and 0.77-0.94 on benchmarks/picking.py --size 4096 micrographs (seed 500), carbon picked."""
    torch.set_num_threads(1)
    d = 150.0
    vol = phantom_structure(int(round(d / 1.75 * 1.4 / 2)) * 2, 1.75, diameter=d).volume
    p = MicrographParams(n_micrographs=1, width=4096, height=4096, particles_per_micrograph=10_000, carbon=True,
                         contaminants=2, aggregates=0, defocus_min=8000, defocus_max=25000, seed=SEEDS[0],
                         structure_units="scattering")
    img, truth = simulate_micrograph([vol], None, pixel_size=1.75, params=p, index=0)
    xy = truth.particles[["rlnCoordinateX", "rlnCoordinateY"]].to_numpy()
    e = truth.extras["carbon"]
    clean = (e.radius - np.hypot(xy[:, 0] - e.x, xy[:, 1] - e.y)) >= d / 2 / 1.75
    c = truth.ctf
    ctf = CTFParams(defocus_u=c["defocus_u"], defocus_v=c["defocus_v"], defocus_angle=c["defocus_angle"],
                    voltage=c["voltage"], cs=c["cs"], amplitude_contrast=c["amplitude_contrast"])
    picks = pick_micrograph(img, pixel_size=1.75, params=PickParams(diameter=d), ctf=ctf)
    m = scored(picks.xy().numpy(), xy, clean, 0.2 * d / 1.75)
    on_carbon = e.on_carbon(picks.x.numpy(), picks.y.numpy())
    assert clean.sum() > 200 and m.f1 >= 0.95, (int(clean.sum()), m.tp, m.fp, m.fn, int(on_carbon.sum()))
    assert on_carbon.sum() <= 2

"""Avoidance of abnormal areas by the default picker (cryolens.picking.peaks.avoidance_mask): the ice level when carbon
and contaminants cover most of a micrograph, and no rim grown around high-variance areas."""

from __future__ import annotations

import torch

from cryolens.picking import PickParams, match_picks, pick_micrograph
from cryolens.picking.peaks import avoidance_mask, ice_level, mode_stats

from test_picking import SEEDS, simulated


def test_ice_is_found_when_carbon_covers_most_of_the_micrograph(device):
    """Carbon (flat, darker) over 64 % of a micrograph: the old reference level (the sharpest histogram peak above the
    median) was the carbon's, so the ice read as abnormal and was avoided; the ice, the brightest extensive level
    (cryolens.picking.peaks.ice_level), keeps its picks and the carbon gets none."""
    img, xy, clean, ctf, d, vol, _ = simulated("phantom", 1.75, SEEDS[1])
    img = img.clone()
    carbon = torch.zeros_like(img, dtype=torch.bool)
    carbon[:, :660] = True  # 64 % of the width
    ice = img[~carbon]
    g = torch.Generator().manual_seed(0)
    img[carbon] = ice.median() - 0.5 * (ice.std()) + 0.2 * ice.std() * torch.randn(int(carbon.sum()), generator=g)
    picks = pick_micrograph(img.to(device), pixel_size=1.75, params=PickParams(diameter=d), ctf=ctf, device=device)
    x = picks.x.cpu().numpy()
    assert (x > 660).all()
    inside = (xy[:, 0] > 660 + d / 1.75) & clean
    m = match_picks(picks.xy().cpu().numpy(), xy[inside], 0.2 * d / 1.75)
    assert inside.sum() >= 5 and m.recall >= 0.75, (inside.sum(), m.tp, len(picks))


def test_textured_patch_is_avoided_without_a_further_rim():
    """A patch of normal mean but high variance (an ice crystal, 10× the noise) is avoided, and so is the band where
    it raises the local SD; that band already reaches ~half a diameter out, so it is not grown further: a particle
    whose disc clears the patch by a quarter diameter (centre 0.75 d from its edge) stays pickable (it was avoided
    when the high-SD area was dilated too)."""
    g = torch.Generator().manual_seed(0)
    n, d, radius = 512, 32.0, 60.0
    yy, xx = torch.meshgrid(torch.arange(float(n)), torch.arange(float(n)), indexing="ij")
    r = torch.hypot(xx - 256, yy - 256)
    img = torch.randn(n, n, generator=g) + 10.0 * (r < radius) * torch.randn(n, n, generator=g)
    mask = avoidance_mask(img, sigma_px=d / 4, mean_z=15.0, sd_z=20.0, dilate_px=d / 4)
    assert bool(mask[r < radius].all())
    assert not bool(mask[r > radius + 0.75 * d].any())


def test_ice_level_is_the_brightest_extensive_population():
    g = torch.Generator().manual_seed(1)
    carbon = -30 + 0.2 * torch.randn(6000, generator=g)  # flat: the sharpest peak, most of the area
    dirt = -80 + 5 * torch.randn(1500, generator=g)
    ice = 0 + 1.0 * torch.randn(2500, generator=g)
    centre, scale = ice_level(torch.cat([carbon, dirt, ice]), 15.0)
    assert abs(centre) < 0.2 and 0.7 < scale < 1.3
    # ice covering most of the map: as before (the mode of the brighter half), a small bright patch ignored
    v = torch.cat([ice.repeat(3), carbon[:2000], 40 + torch.randn(500, generator=g)])
    assert ice_level(v, 15.0) == mode_stats(v, side=1)
    assert abs(ice_level(v, 15.0)[0]) < 0.2


def test_carbon_is_avoided_beside_a_smooth_ice_gradient():
    """A large micrograph whose ice thickness varies smoothly (a spread of the local mean several times the carbon's
    step over its 15-scale threshold, as on 4096² simulated micrographs) and carbon over 40 % of it: the local mean's
    scale comes from neighbouring areas one diameter apart (cryolens.picking.peaks.neighbour_scale), which the
    gradient barely changes, so the carbon is avoided and the ice, thin or thick, is not (with the whole map's spread
    as the scale the carbon read at about -5 and was picked)."""
    g = torch.Generator().manual_seed(2)
    n, d = 1024, 32.0
    yy, xx = torch.meshgrid(torch.arange(float(n)), torch.arange(float(n)), indexing="ij")
    img = torch.randn(n, n, generator=g) + 0.15 * torch.sin(2 * torch.pi * yy / n)  # ice: noise and a gradient
    carbon = xx < 0.4 * n
    img[carbon] -= 1.5
    mask = avoidance_mask(img, sigma_px=d / 4, mean_z=15.0, sd_z=20.0, dilate_px=d / 4)
    assert bool(mask[:, : int(0.4 * n - d)].all())
    assert not bool(mask[:, int(0.4 * n + 2 * d):].any())

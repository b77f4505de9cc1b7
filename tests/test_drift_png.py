"""The Pillow drift plot of ``cryolens motion`` (jobs/drift_png.py): colours, ticks and where the dots land."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from cryolens.jobs.drift_png import BOX, HEIGHT, WIDTH, draw_drift_png, nice_ticks, viridis


def test_viridis_ends_and_middle():
    assert tuple(viridis(0.0)) == (68, 1, 84)
    assert tuple(viridis(1.0)) == (253, 231, 37)
    assert tuple(viridis(0.5)) == (33, 145, 140)
    assert viridis(np.linspace(0, 1, 7)).shape == (7, 3)


def test_nice_ticks_are_round_and_inside():
    t = nice_ticks(-17.3, 2.2)
    assert np.allclose(t, [-15, -10, -5, 0])
    t = nice_ticks(1, 24)
    assert np.allclose(t, [10, 20])
    assert len(nice_ticks(0.0, 0.3)) >= 3


def test_drift_png_puts_first_and_last_frames_where_the_data_say(tmp_path):
    # a straight drift to the right and down: frame 1 at the origin (its dot dark purple), the last
    # frame far right and lowest (y grows downwards), its dot yellow
    d = np.stack([np.linspace(0, 30, 12), np.linspace(0, 10, 12)], 1)
    out = draw_drift_png(d, tmp_path / "m_shifts.png", title="m")
    img = np.asarray(Image.open(out).convert("RGB")).astype(int)
    assert img.shape == (HEIGHT, WIDTH, 3)
    x0, y0, x1, y1 = BOX
    inside = img[y0 + 2:y1 - 1, x0 + 2:x1 - 1]
    yellow = np.argwhere((np.abs(inside - [253, 231, 37]).sum(-1) < 20))
    purple = np.argwhere((np.abs(inside - [68, 1, 84]).sum(-1) < 20))
    assert len(yellow) > 5 and len(purple) > 5
    (yy, yx), (py, px) = yellow.mean(0), purple.mean(0)
    assert yx > px + 100  # 30 Å to the right, on ~190 px for ~33 Å
    assert yy > py + 20  # and 10 Å lower
    assert not (tmp_path / "m_shifts.png.tmp").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m_shifts.png"]


def test_drift_summary_draws_rejected_movies_red_and_bars_to_scale(tmp_path):
    from cryolens.jobs.drift_png import RED, draw_drift_summary_png

    t = [np.stack([np.linspace(0, s, 10), np.linspace(0, -s, 10)], 1) for s in (5.0, 10.0, 20.0)]
    out = draw_drift_summary_png(t, ["a", "b", "c"], [False, True, False], np.array([1.0, 2.0, 4.0]),
                                 np.array([4.0, 8.0, 16.0]), tmp_path / "drift.png")
    img = np.asarray(Image.open(out).convert("RGB")).astype(int)
    assert img.shape == (396, 990, 3)
    assert (np.abs(img[:, :480] - RED).sum(-1) < 10).sum() > 10  # the rejected trajectory
    # stacked bars: the tallest (movie 3, 20 Å) is 4x the first (5 Å)
    blue_or_orange = (np.abs(img[:, 580:970] - [31, 119, 180]).sum(-1) < 10) | \
        (np.abs(img[:, 580:970] - [255, 127, 14]).sum(-1) < 10)
    cols = blue_or_orange.sum(0)
    heights = sorted({int(c) for c in cols if c > 40})
    assert heights and heights[-1] / heights[0] == pytest.approx(4.0, rel=0.05)


def test_drift_plots_skip_non_finite_shifts(tmp_path):
    from cryolens.jobs.drift_png import draw_drift_summary_png

    # a frame whose shift is NaN is left out of the drawing, the others still land where they should
    d = np.stack([np.linspace(0, 30, 12), np.linspace(0, 10, 12)], 1)
    d[5] = np.nan
    out = draw_drift_png(d, tmp_path / "m_shifts.png", title="m")
    img = np.asarray(Image.open(out).convert("RGB")).astype(int)
    x0, y0, x1, y1 = BOX
    inside = img[y0 + 2:y1 - 1, x0 + 2:x1 - 1]
    assert (np.abs(inside - [253, 231, 37]).sum(-1) < 20).sum() > 5  # the last frame's dot
    assert draw_drift_png(np.full((4, 2), np.nan), tmp_path / "all_nan.png", title="n").is_file()
    out = draw_drift_summary_png([d, np.zeros((3, 2))], ["a", "b"], [False, False], np.array([1.0, np.nan]),
                                 np.array([2.0, 1.0]), tmp_path / "drift.png")
    assert Image.open(out).size == (990, 396)

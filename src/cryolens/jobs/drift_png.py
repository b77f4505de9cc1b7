"""A movie's drift plot drawn straight with Pillow (``Movies/<name>_shifts.png`` of ``cryolens motion``).

The per-movie plot is a small fixed layout (trajectory, frame-coloured dots, origin mark, axes
with ticks, a frame colour bar). Drawn with matplotlib it cost ~0.2 CPU-s per movie, as much as
aligning the movie, and held the GIL (the movie threads queued for it); drawn here it takes a
few milliseconds and runs in every thread at once. Same content as the matplotlib version: the
specimen displacement (minus the correction shifts) in Å, y pointing down, equal axes.
"""

from __future__ import annotations

import importlib.util
import math
from functools import lru_cache
from pathlib import Path

import numpy as np

from cryolens.io.atomic import atomic_output

__all__ = ["draw_drift_png", "viridis", "nice_ticks"]

#: viridis at 0, 1/8, ..., 1 (8-bit RGB), interpolated linearly in between.
_VIRIDIS = np.array([(68, 1, 84), (71, 45, 123), (59, 82, 139), (44, 114, 142), (33, 145, 140), (39, 173, 129),
                     (94, 201, 98), (170, 220, 50), (253, 231, 37)], dtype=np.float64)

WIDTH, HEIGHT = 336, 320  # the matplotlib figure's 4.2 x 4.0 inches at 80 dpi
BOX = (67, 32, 262, 278)  # plot area (left, top, right, bottom) in pixels
BAR = (276, 32, 290, 278)  # colour bar


def viridis(t: np.ndarray) -> np.ndarray:
    """RGB (uint8, ``(..., 3)``) of viridis at ``t`` in [0, 1]."""
    x = np.clip(np.asarray(t, dtype=np.float64), 0.0, 1.0) * (len(_VIRIDIS) - 1)
    i = np.minimum(np.floor(x).astype(int), len(_VIRIDIS) - 2)
    f = (x - i)[..., None]
    return np.round(_VIRIDIS[i] * (1 - f) + _VIRIDIS[i + 1] * f).astype(np.uint8)


def nice_ticks(lo: float, hi: float, target: int = 5) -> np.ndarray:
    """Round tick values (steps of 1, 2 or 5 x 10^k) inside ``[lo, hi]``, about ``target`` of them."""
    span = max(hi - lo, 1e-9)
    raw = span / max(1, target - 1)
    mag = 10.0 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    return np.arange(first, hi + 1e-9 * span, step)


@lru_cache(maxsize=4)
def _font(size: int):
    """matplotlib's DejaVu Sans (found without importing matplotlib; it has the Å), else Pillow's default font."""
    from PIL import ImageFont
    spec = importlib.util.find_spec("matplotlib")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        ttf = Path(folder) / "mpl-data" / "fonts" / "ttf" / "DejaVuSans.ttf"
        if ttf.is_file():
            return ImageFont.truetype(str(ttf), size)
    return ImageFont.load_default(size=size)


def _label(v: float) -> str:
    return f"{v:g}" if abs(v) >= 1e-9 else "0"


def draw_drift_png(displacement_A: np.ndarray, path: str | Path, *, title: str) -> Path:
    """Draw the trajectory ``displacement_A (F, 2)`` (x, y in Å, frame order) into ``path`` (PNG, atomically)."""
    from PIL import Image, ImageDraw

    d = np.asarray(displacement_A, dtype=np.float64).reshape(-1, 2)
    img = Image.new("RGB", (WIDTH, HEIGHT), "white")
    draw = ImageDraw.Draw(img)
    x0, y0, x1, y1 = BOX
    pts = np.vstack([d, [[0.0, 0.0]]])
    lo, hi = pts.min(0), pts.max(0)
    centre, half = (lo + hi) / 2, np.maximum((hi - lo) / 2 * 1.08, 0.5)
    scale = min((x1 - x0) / (2 * half[0]), (y1 - y0) / (2 * half[1]))  # equal axes: the tighter one rules
    half = np.array([(x1 - x0) / (2 * scale), (y1 - y0) / (2 * scale)])
    lo, hi = centre - half, centre + half

    def px(p: np.ndarray) -> np.ndarray:  # y grows downwards (inverted y axis)
        return np.stack([x0 + (p[..., 0] - lo[0]) * scale, y0 + (p[..., 1] - lo[1]) * scale], -1)

    small, medium = _font(10), _font(11)
    for v in nice_ticks(lo[0], hi[0]):
        u = x0 + (v - lo[0]) * scale
        draw.line([(u, y1), (u, y1 + 4)], fill="black")
        draw.text((u, y1 + 6), _label(v), fill="black", font=small, anchor="mt")
    for v in nice_ticks(lo[1], hi[1]):
        u = y0 + (v - lo[1]) * scale
        draw.line([(x0 - 4, u), (x0, u)], fill="black")
        draw.text((x0 - 6, u), _label(v), fill="black", font=small, anchor="rm")
    q = px(d)
    if len(q) > 1:
        draw.line([tuple(p) for p in q], fill=(77, 77, 77), width=1)
    colours = viridis(np.linspace(0.0, 1.0, len(q)) if len(q) > 1 else np.zeros(1))
    for p, c in zip(q, colours):
        draw.ellipse([p[0] - 3, p[1] - 3, p[0] + 3, p[1] + 3], fill=tuple(int(v) for v in c))
    o = px(np.zeros(2))
    draw.line([(o[0] - 6, o[1]), (o[0] + 6, o[1])], fill="black", width=1)
    draw.line([(o[0], o[1] - 6), (o[0], o[1] + 6)], fill="black", width=1)
    draw.rectangle(BOX, outline="black")
    draw.text(((x0 + x1) / 2, HEIGHT - 4), "x (Å)", fill="black", font=medium, anchor="md")
    ylab = Image.new("RGB", (60, 16), "white")
    ImageDraw.Draw(ylab).text((30, 8), "y (Å)", fill="black", font=medium, anchor="mm")
    img.paste(ylab.rotate(90, expand=True), (4, (y0 + y1) // 2 - 30))
    draw.text(((x0 + x1) / 2, y0 - 8), title, fill="black", font=small, anchor="md")
    # colour bar: frame 1 at the bottom
    bx0, by0, bx1, by1 = BAR
    ramp = viridis(np.linspace(1.0, 0.0, by1 - by0))[:, None, :].repeat(bx1 - bx0, axis=1)
    img.paste(Image.fromarray(np.ascontiguousarray(ramp), "RGB"), (bx0, by0))
    draw.rectangle(BAR, outline="black")
    n = len(d)
    for f in nice_ticks(1, max(n, 2), target=5):
        if f < 1 or f > n:
            continue
        u = by1 - (f - 1) / max(n - 1, 1) * (by1 - by0)
        draw.line([(bx1, u), (bx1 + 3, u)], fill="black")
        draw.text((bx1 + 5, u), _label(f), fill="black", font=small, anchor="lm")
    draw.text(((bx0 + bx1) / 2, by0 - 8), "frame", fill="black", font=small, anchor="md")
    path = Path(path)
    with atomic_output(path) as tmp:
        img.save(tmp, format="PNG")
    return path

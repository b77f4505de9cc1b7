"""The drift plots of ``cryolens motion`` drawn straight with Pillow: a movie's
(``Movies/<name>_shifts.png``) and all movies' (``drift.png``).

Both are small fixed layouts (trajectories, frame-coloured dots, origin mark, axes with round
ticks, a colour bar or stacked bars). Drawn with matplotlib the per-movie plot cost ~0.2 CPU-s,
as much as aligning the movie, held the GIL (the movie threads queued for it), and the job paid
~0.8 CPU-s to import matplotlib; drawn here each takes a few milliseconds and runs in every
thread at once. Same content as the matplotlib versions: the specimen displacement (minus the
correction shifts) in Å, y pointing down, equal axes.
"""

from __future__ import annotations

import importlib.util
import math
from functools import lru_cache
from pathlib import Path

import numpy as np

from cryolens.io.atomic import atomic_output

__all__ = ["draw_drift_png", "draw_drift_summary_png", "viridis", "nice_ticks"]

#: viridis at 0, 1/8, ..., 1 (8-bit RGB), interpolated linearly in between.
_VIRIDIS = np.array([(68, 1, 84), (71, 45, 123), (59, 82, 139), (44, 114, 142), (33, 145, 140), (39, 173, 129),
                     (94, 201, 98), (170, 220, 50), (253, 231, 37)], dtype=np.float64)
#: matplotlib's default colour cycle ("tab10").
CYCLE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
         (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]
RED = (214, 39, 40)

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


class _Axes:
    """A plot area ``box`` (pixels) showing ``[xlo, xhi] x [ylo, yhi]``; y down when ``invert_y``."""

    def __init__(self, img, box, xlim, ylim, *, invert_y: bool = False):
        from PIL import ImageDraw
        self.img, self.draw, self.box = img, ImageDraw.Draw(img), box
        (self.xlo, self.xhi), (self.ylo, self.yhi), self.invert_y = xlim, ylim, invert_y

    @classmethod
    def equal(cls, img, box, points: np.ndarray, *, margin: float = 0.08) -> "_Axes":
        """Equal scales on x and y around ``points (N, 2)`` (matplotlib's ``adjustable="datalim"``), y down."""
        x0, y0, x1, y1 = box
        lo, hi = points.min(0), points.max(0)
        centre, half = (lo + hi) / 2, np.maximum((hi - lo) / 2 * (1 + margin), 0.5)
        scale = min((x1 - x0) / (2 * half[0]), (y1 - y0) / (2 * half[1]))  # the tighter axis rules
        half = np.array([(x1 - x0) / (2 * scale), (y1 - y0) / (2 * scale)])
        return cls(img, box, (centre[0] - half[0], centre[0] + half[0]), (centre[1] - half[1], centre[1] + half[1]),
                   invert_y=True)

    def px(self, x, y) -> tuple[np.ndarray, np.ndarray]:
        x0, y0, x1, y1 = self.box
        u = x0 + (np.asarray(x, dtype=np.float64) - self.xlo) / (self.xhi - self.xlo) * (x1 - x0)
        t = (np.asarray(y, dtype=np.float64) - self.ylo) / (self.yhi - self.ylo)
        return u, (y0 + t * (y1 - y0)) if self.invert_y else (y1 - t * (y1 - y0))

    def frame(self, *, xlabel: str, ylabel: str, title: str = "", xticks=None, font: int = 10) -> None:
        """Box, ticks with labels, axis labels (y rotated) and a title."""
        from PIL import Image, ImageDraw
        draw, (x0, y0, x1, y1), small, medium = self.draw, self.box, _font(font), _font(font + 1)
        for v in nice_ticks(self.xlo, self.xhi) if xticks is None else xticks:
            u = float(self.px(v, self.ylo)[0])
            draw.line([(u, y1), (u, y1 + 4)], fill="black")
            draw.text((u, y1 + 6), _label(v), fill="black", font=small, anchor="mt")
        for v in nice_ticks(self.ylo, self.yhi):
            u = float(self.px(self.xlo, v)[1])
            draw.line([(x0 - 4, u), (x0, u)], fill="black")
            draw.text((x0 - 6, u), _label(v), fill="black", font=small, anchor="rm")
        draw.rectangle(self.box, outline="black")
        draw.text(((x0 + x1) / 2, y1 + 32), xlabel, fill="black", font=medium, anchor="md")
        lab = Image.new("RGB", (160, 16), "white")
        ImageDraw.Draw(lab).text((80, 8), ylabel, fill="black", font=medium, anchor="mm")
        self.img.paste(lab.rotate(90, expand=True), (max(0, x0 - 60), (y0 + y1) // 2 - 80))
        if title:
            draw.text(((x0 + x1) / 2, y0 - 8), title, fill="black", font=small, anchor="md")

    def origin_mark(self, size: int = 6) -> None:
        u, v = (float(a) for a in self.px(0.0, 0.0))
        self.draw.line([(u - size, v), (u + size, v)], fill="black")
        self.draw.line([(u, v - size), (u, v + size)], fill="black")

    def trajectory(self, d: np.ndarray, colour, width: int = 1) -> None:
        u, v = self.px(d[:, 0], d[:, 1])
        if len(u) > 1:
            self.draw.line(list(zip(u.tolist(), v.tolist())), fill=colour, width=width)

    def legend(self, entries: list[tuple[str, tuple]], *, corner: str = "right") -> None:
        """Coloured line samples with names, in the top ``corner`` of the plot area."""
        x0, y0, x1, _ = self.box
        f = _font(9)
        wide = max([f.getlength(name) for name, _ in entries] + [0.0]) + 28
        left = x1 - wide - 4 if corner == "right" else x0 + 4
        self.draw.rectangle((left, y0 + 4, left + wide, y0 + 8 + 13 * len(entries)), fill="white", outline=(204,) * 3)
        for i, (name, colour) in enumerate(entries):
            v = y0 + 12 + 13 * i
            self.draw.line([(left + 4, v), (left + 20, v)], fill=colour, width=2)
            self.draw.text((left + 24, v), name, fill="black", font=f, anchor="lm")


def _points(a) -> np.ndarray:
    """``a`` as ``(N, 2)`` float64 rows (x, y), without the rows that are not finite (they are not drawn)."""
    d = np.asarray(a, dtype=np.float64).reshape(-1, 2)
    return d[np.isfinite(d).all(1)]


def _save(img, path: str | Path) -> Path:
    path = Path(path)
    with atomic_output(path) as tmp:
        img.save(tmp, format="PNG", compress_level=1)  # 1.75 instead of 2.5 ms a plot, ~30 % larger
    return path


def draw_drift_png(displacement_A: np.ndarray, path: str | Path, *, title: str) -> Path:
    """Draw the trajectory ``displacement_A (F, 2)`` (x, y in Å, frame order) into ``path`` (PNG, atomically)."""
    from PIL import Image

    full = np.asarray(displacement_A, dtype=np.float64).reshape(-1, 2)
    shown = np.isfinite(full).all(1)
    d = full[shown]
    img = Image.new("RGB", (WIDTH, HEIGHT), "white")
    ax = _Axes.equal(img, BOX, np.vstack([d, [[0.0, 0.0]]]))
    ax.frame(xlabel="x (Å)", ylabel="y (Å)", title=title)
    ax.trajectory(d, (77, 77, 77))
    u, v = ax.px(d[:, 0], d[:, 1])
    colours = viridis(np.linspace(0.0, 1.0, len(full)) if len(full) > 1 else np.zeros(len(full)))[shown]
    for a, b, c in zip(u, v, colours):
        ax.draw.ellipse([a - 3, b - 3, a + 3, b + 3], fill=tuple(int(x) for x in c))
    ax.origin_mark()
    # colour bar: frame 1 at the bottom
    bx0, by0, bx1, by1 = BAR
    ramp = viridis(np.linspace(1.0, 0.0, by1 - by0))[:, None, :].repeat(bx1 - bx0, axis=1)
    img.paste(Image.fromarray(np.ascontiguousarray(ramp), "RGB"), (bx0, by0))
    ax.draw.rectangle(BAR, outline="black")
    n, small = len(full), _font(10)
    for f in nice_ticks(1, max(n, 2), target=5):
        if 1 <= f <= n:
            w = by1 - (f - 1) / max(n - 1, 1) * (by1 - by0)
            ax.draw.line([(bx1, w), (bx1 + 3, w)], fill="black")
            ax.draw.text((bx1 + 5, w), _label(f), fill="black", font=small, anchor="lm")
    ax.draw.text(((bx0 + bx1) / 2, by0 - 8), "frame", fill="black", font=small, anchor="md")
    return _save(img, path)


def draw_drift_summary_png(trajectories_A: list[np.ndarray], names: list[str], rejected: list[bool],
                           early_A: np.ndarray, late_A: np.ndarray, path: str | Path) -> Path:
    """All movies' trajectories (Å, + = first frame, red = rejected; the first 8 named) and their early + late
    accumulated motion as stacked bars, side by side, into ``path`` (PNG, atomically)."""
    from PIL import Image

    img = Image.new("RGB", (990, 396), "white")  # the matplotlib figure's 11 x 4.4 inches at 90 dpi
    pts = np.vstack([_points(t) for t in trajectories_A] + [np.zeros((1, 2))])
    left = _Axes.equal(img, (80, 32, 470, 346), pts)
    left.frame(xlabel="x (Å)", ylabel="y (Å)", title="specimen drift (+ = first frame; red = rejected)", font=11)
    legend = []
    for k, (t, name, rej) in enumerate(zip(trajectories_A, names, rejected)):
        colour = RED if rej else CYCLE[k % len(CYCLE)]
        left.trajectory(_points(t), colour)
        if k < 8:
            legend.append((name, colour))
    left.origin_mark()
    if legend:
        left.legend(legend)
    early, late = (np.nan_to_num(np.asarray(a, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
                   for a in (early_A, late_A))
    n = len(early)
    top = float((early + late).max()) * 1.05 if n and (early + late).max() > 0 else 1.0
    right = _Axes(img, (580, 32, 970, 346), (0.4, n + 0.6), (0.0, top))
    right.frame(xlabel="movie", ylabel="accumulated motion (Å)",
                xticks=[v for v in nice_ticks(1, max(n, 1)) if v >= 1 and float(v).is_integer()], font=11)
    for i in range(n):
        u0, _ = right.px(i + 1 - 0.4, 0.0)
        u1, base = right.px(i + 1 + 0.4, 0.0)
        _, e = right.px(0, early[i])
        _, t = right.px(0, early[i] + late[i])
        right.draw.rectangle((float(u0), float(e), float(u1), float(base)), fill=CYCLE[0])
        right.draw.rectangle((float(u0), float(t), float(u1), float(e)), fill=CYCLE[1])
    right.legend([("early", CYCLE[0]), ("late", CYCLE[1])])
    return _save(img, path)

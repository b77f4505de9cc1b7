"""Plots (PNG, matplotlib Agg) and the per-job ``report.html``.

Jobs call these after writing their data outputs; the HTML embeds the PNGs by
relative path so a job folder can be copied or served as it is.
"""

from __future__ import annotations

import html
import os
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cryolens.core.fsc import FSCResult
from cryolens.io.atomic import atomic_output, write_text_atomic

__all__ = ["plot_fsc", "plot_central_slices", "plot_gallery", "new_figure", "save_figure", "warm_matplotlib",
           "write_report", "VERDICT_MARK", "PANELS_MARK"]

#: Where the verdict line goes (after the title) and where the class-count and truth panels go (before the
#: parameters); :func:`cryolens.jobs.report_panels.complete_report` fills them when the job finishes.
VERDICT_MARK = "<!--cryolens:verdict-->"
PANELS_MARK = "<!--cryolens:panels-->"


_backend_chosen = False
_SUBPLOTS_ARGS = {"nrows", "ncols", "sharex", "sharey", "squeeze", "width_ratios", "height_ratios", "subplot_kw",
                  "gridspec_kw"}


def new_figure(**subplots_kwargs):
    """A new matplotlib figure and its axes, as ``plt.subplots(**subplots_kwargs)`` -> ``(fig, axes)``.

    Grid options (``nrows``, ``ncols``, ``squeeze``, ``gridspec_kw``, ...) go to
    ``Figure.subplots``, the rest (``figsize`` in inches, ``dpi``, ...) to the ``Figure``.
    The figure is drawn on an Agg canvas and not registered with pyplot (no global figure
    list: nothing leaks when a caller forgets to close it, and threads that each draw their
    own figure do not share state). The first call also selects the Agg backend
    (``force=False``: a backend already in use stays) for code that goes on to use pyplot.
    matplotlib is imported here, not when cryolens is imported.
    """
    global _backend_chosen
    if not _backend_chosen:
        import matplotlib
        matplotlib.use("Agg", force=False)
        _backend_chosen = True
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    grid = {k: v for k, v in subplots_kwargs.items() if k in _SUBPLOTS_ARGS}
    fig = Figure(**{k: v for k, v in subplots_kwargs.items() if k not in _SUBPLOTS_ARGS})
    FigureCanvasAgg(fig)
    return fig, fig.subplots(**grid)


def warm_matplotlib() -> threading.Thread:
    """Import matplotlib, its Agg canvas and figure modules (~0.6 CPU-s, GIL-bound) in a daemon thread, so
    that a job's first plot does not wait for them; start it when the cores are not all busy (e.g. while a
    few large torch operations run). Returns the started thread."""
    def work() -> None:
        import matplotlib
        matplotlib.use("Agg", force=False)
        from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: F401
        from matplotlib.figure import Figure  # noqa: F401

    t = threading.Thread(target=work, name="warm-matplotlib", daemon=True)
    t.start()
    return t


def save_figure(fig, path: str | os.PathLike, *, dpi: int = 110) -> Path:
    """Save a matplotlib figure atomically (temporary file, then rename) and close it.

    The format follows ``path``'s suffix (PNG for ``.png``); ``dpi`` in dots per inch.
    A pyplot figure is closed even if saving fails.
    """
    path = Path(path)
    try:
        with atomic_output(path) as tmp:
            fig.savefig(tmp, dpi=dpi, bbox_inches="tight")
    finally:
        if getattr(fig.canvas, "manager", None) is not None:  # made by pyplot: drop it from pyplot's list
            import matplotlib.pyplot as plt
            plt.close(fig)
    return path


def _resolution_axis(ax, f_max: float) -> None:
    """A top axis labelled in Å at round resolutions (the frequency axis is linear, so 1/f ticks are fixed)."""
    nice = [50, 30, 20, 15, 10, 8, 6, 5, 4, 3.5, 3, 2.5, 2, 1.8, 1.6, 1.5, 1.4, 1.3, 1.2, 1.1, 1.0]
    ticks: list[float] = []
    for r in reversed(nice):  # from high resolution down, keeping labels at least f_max/8 apart
        if 1 / r <= f_max and (not ticks or 1 / ticks[-1] - 1 / r >= f_max / 8):
            ticks.append(r)
    sec = ax.secondary_xaxis("top")
    sec.set_xticks([1 / r for r in ticks], labels=[f"{r:g}" for r in ticks])
    sec.set_xlabel("resolution (Å)")


def plot_fsc(curves: Mapping[str, FSCResult], path: str | os.PathLike, *,
             thresholds: Sequence[float] = (0.143, 0.5), title: str = "Fourier shell correlation") -> Path:
    """FSC curves against spatial frequency (1/Å) with threshold lines and crossings in the legend."""
    fig, ax = new_figure(figsize=(6.4, 4.2))
    for label, c in curves.items():
        ax.plot(c.frequency, c.fsc, lw=1.6, label=f"{label} ({c.resolution_at(0.143):.2f} Å at 0.143)")
    for t in thresholds:
        ax.axhline(t, color="grey", lw=0.8, ls="--")
        ax.text(0.0, t + 0.01, f"{t}", color="grey", fontsize=8)
    first = next(iter(curves.values()))
    ax.set_xlim(0, first.frequency[-1])
    ax.set_ylim(-0.1, 1.05)
    ax.set_xlabel("spatial frequency (1/Å)")
    ax.set_ylabel("FSC")
    ax.set_title(title)
    _resolution_axis(ax, first.frequency[-1])
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return save_figure(fig, Path(path))


def plot_central_slices(volume: np.ndarray, path: str | os.PathLike, *, title: str = "") -> Path:
    """Central z, y and x slices of a volume side by side."""
    v = np.asarray(volume)
    c = v.shape[0] // 2
    fig, axes = new_figure(ncols=3, figsize=(9, 3.2))
    for ax, img, name in zip(axes, (v[c], v[:, c], v[:, :, c]), ("z (xy plane)", "y (xz plane)", "x (yz plane)")):
        ax.imshow(img, cmap="gray", origin="lower")
        ax.set_title(f"central slice {name}", fontsize=9)
        ax.axis("off")
    if title:
        fig.suptitle(title)
    return save_figure(fig, Path(path))


def write_report(path: str | os.PathLike, *, title: str, summary: Mapping[str, Any],
                 params: Mapping[str, Any], images: Sequence[str] = ()) -> Path:
    """A self-contained HTML page: summary table, parameters, and the PNGs (relative paths).

    The page carries :data:`VERDICT_MARK` and :data:`PANELS_MARK`, filled with the verdict line and the
    class-count and truth panels when the job finishes (:mod:`cryolens.jobs.report_panels`).
    """
    def cell(v: Any) -> str:  # a list of sentences (warnings) one per line, not as a Python list
        if isinstance(v, (list, tuple)) and all(isinstance(x, str) for x in v):
            return "<br>".join(html.escape(x) for x in v) if v else "none"
        return html.escape(str(v))

    def table(d: Mapping[str, Any]) -> str:
        rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{cell(v)}</td></tr>" for k, v in d.items())
        return f"<table>{rows}</table>"
    imgs = "".join(f'<figure><img src="{html.escape(i)}" alt="{html.escape(i)}"></figure>' for i in images)
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;max-width:1000px;margin:2em auto}}th{{text-align:left;padding-right:1em}}
td,th{{border-bottom:1px solid #ddd;padding:2px 6px}}img{{max-width:100%}}
.verdict{{font-size:1.1em;padding:.5em .8em;background:#e8f4ea;border-left:4px solid #2e7d32}}
.verdict.check{{background:#fff4e0;border-left-color:#e65100}}table.grid td,table.grid th{{text-align:right}}
</style></head><body>
<h1>{html.escape(title)}</h1>{VERDICT_MARK}<h2>Summary</h2>{table(summary)}{imgs}{PANELS_MARK}
<h2>Parameters</h2>{table(params)}
</body></html>
"""
    write_text_atomic(path, page)
    return Path(path)


def plot_gallery(images: np.ndarray, path: str | os.PathLike, *, title: str = "", ncols: int = 8) -> Path:
    """A grid of 2-D images (e.g. the first particles of a stack), each scaled on its own."""
    imgs = np.asarray(images)
    nrows = max(1, int(np.ceil(len(imgs) / ncols)))
    fig, axes = new_figure(nrows=nrows, ncols=ncols, figsize=(1.4 * ncols, 1.4 * nrows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, img in zip(axes.ravel(), imgs):
        ax.imshow(img, cmap="gray", origin="lower")
    if title:
        fig.suptitle(title)
    return save_figure(fig, Path(path))

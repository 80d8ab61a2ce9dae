"""The style every evaluation figure is drawn in, whatever ran before it in the process.

Figures are built with matplotlib's object API and the Agg canvas, never ``pyplot``, so plotting works
on a headless machine and leaves no global state behind in a library that other commands import.

They must also ignore the global state that *others* leave behind: nnU-Net's training logger calls
``seaborn.set(font_scale=2.5)`` in the same process (``poi_train`` evaluates at its end, ``poi_demo``
trains and then evaluates), which changes the fonts, sizes and colours of every later figure. Each
figure is therefore built *and saved* inside :func:`_default_style` (matplotlib's defaults plus our
explicit font sizes): text reads its font when it is created, but savefig and the renderer read other
settings when the figure is drawn.
"""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Dict, Iterator, Tuple

import matplotlib
import matplotlib.style
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..atomic import atomic_write

DPI = 150
# At most 2400 px wide and 2250 px high at DPI: readable on a screen without zooming out of it.
MAX_WIDTH_IN, MAX_HEIGHT_IN = 16.0, 15.0


def _style(base_pt: float) -> Dict[str, object]:
    """Explicit font sizes, so that text is the same size relative to the figure whatever ran before."""
    return {
        "font.size": base_pt, "axes.titlesize": base_pt + 1, "axes.labelsize": base_pt,
        "xtick.labelsize": base_pt - 1, "ytick.labelsize": base_pt - 1, "legend.fontsize": base_pt - 1,
        "figure.titlesize": base_pt + 2, "figure.dpi": DPI, "savefig.dpi": DPI,
    }


@contextmanager
def _default_style(base_pt: float) -> Iterator[None]:
    """matplotlib's default style plus our font sizes, for as long as a figure is built and saved."""
    with matplotlib.style.context("default"), matplotlib.rc_context(_style(base_pt)):
        yield


def render(path: Path, figsize: Tuple[float, float], base_pt: float, draw: Callable[[Figure], None]) -> None:
    """Build a figure with ``draw`` and write it to ``path`` as PNG, all inside the default style."""
    with _default_style(base_pt):
        fig = Figure(figsize=figsize, dpi=DPI, layout="constrained")
        FigureCanvasAgg(fig)
        draw(fig)
        atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=DPI))


def empty_note(ax, text: str = "no matched points") -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes)

"""The error-distribution plot: a histogram of the matched errors and their cumulative share of all
reference points (missing points never reach 1), with each success threshold named in a legend."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib
import numpy as np
from matplotlib.figure import Figure

from .plot_style import empty_note, render
from .points import MATCHED, MISSING, PointMatch


def _x_limit(errors: np.ndarray, thresholds: Sequence[float]) -> float:
    """Right end of the error axis: all errors and thresholds, unless a few gross errors would squeeze the
    rest (and the thresholds) into the first few millimetres; then a little beyond the 99th percentile."""
    highest = float(errors[-1])
    body = max(float(np.percentile(errors, 99)), max(thresholds, default=0.0))
    limit = 1.1 * body if highest <= 1.1 * body else highest if highest <= 2 * body else 1.2 * body
    return max(limit, 1e-3)  # all errors 0 and no thresholds: still an axis


def plot_error_distribution(path: Path, rows: Sequence[PointMatch], thresholds_mm: Sequence[float]) -> None:
    """Histogram of matched errors and their CDF over all reference points, with the success thresholds marked.

    The thresholds (often close together: 2, 2.5, 3, 4 mm) are told apart by
    colour in a legend that also gives the fraction of reference points within
    each, rather than by labels on the axis that would run into each other. A
    few gross errors (a point on the wrong structure) would squeeze everything
    else to the left; then the axis stops short of them and says how many
    points lie beyond.
    """
    errors = np.sort([r.error_mm for r in rows if r.status == MATCHED])
    n_ref = sum(r.status in (MATCHED, MISSING) for r in rows)
    thresholds = sorted(float(t) for t in thresholds_mm)

    def draw(fig: Figure) -> None:
        hist, cdf = fig.subplots(1, 2)
        if errors.size:
            x_max = _x_limit(errors, thresholds)
            shown = errors[errors <= x_max]
            hist.hist(shown, bins=min(50, max(5, shown.size // 2)), range=(0.0, x_max), color="tab:blue",
                      alpha=0.8, edgecolor="white")
            beyond = errors.size - shown.size
            if beyond:
                note = f"{beyond} point{'s' * (beyond > 1)} beyond {x_max:.3g} mm\n(largest {errors[-1]:.4g} mm)"
                hist.text(0.98, 0.97, note, transform=hist.transAxes, ha="right", va="top", fontsize=8,
                          bbox={"facecolor": "white", "edgecolor": "lightgrey", "alpha": 0.9})
            # Steps reach n_matched / n_ref, not 1: missing points keep the curve below the top.
            cdf.step(np.concatenate([[0.0], errors]), np.arange(errors.size + 1) / n_ref, where="post",
                     color="tab:blue")
            cdf.set_ylim(0, 1.02)
            for ax in (hist, cdf):
                ax.set_xlim(0, x_max * 1.02)
            colors = matplotlib.colormaps["plasma"](np.linspace(0.0, 0.8, max(len(thresholds), 1)))
            for t, color in zip(thresholds, colors):
                within = float(np.searchsorted(errors, t, side="right")) / n_ref
                for ax in (hist, cdf):
                    ax.axvline(t, color=color, linestyle="--", linewidth=1.0)
                cdf.plot([t], [within], marker="o", markersize=4, color=color, linestyle="none",
                         label=f"{t:g} mm: {100 * within:.1f}%")
            if beyond:
                cdf.plot([], [], linestyle="none", label=note.replace("\n", " "))
            if thresholds or beyond:
                # the curve ends at the fraction matched: the legend goes into the empty corner on the right
                corner = "lower right" if errors.size >= 0.5 * n_ref else "upper right"
                cdf.legend(title="within threshold" if thresholds else None, loc=corner, framealpha=0.9)
        else:
            empty_note(hist)
            empty_note(cdf)
        hist.set_xlabel("error (mm)")
        hist.set_ylabel("matched points")
        hist.set_title("Error distribution")
        cdf.set_xlabel("x: error (mm)")
        cdf.set_ylabel("fraction of points within x")
        n_missing = n_ref - errors.size
        cdf.set_title(f"Cumulative ({n_missing} of {n_ref} reference points missing)" if n_missing else "Cumulative")
        cdf.grid(alpha=0.3)

    render(path, (10.0, 4.2), 9, draw)

"""The two evaluation plots: error per POI (box plot) and the error distribution (histogram + CDF).

Figures are built with matplotlib's object API and the Agg canvas, never
``pyplot``, so plotting works on a headless machine and leaves no global
state behind in a library that other commands import.
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..atomic import atomic_write
from .points import MATCHED, MISSING, PointMatch


def _save(fig: Figure, path: Path) -> None:
    FigureCanvasAgg(fig)
    atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=100))


def _empty_note(ax, text: str = "no matched points") -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes)


def plot_error_per_poi(path: Path, rows: Sequence[PointMatch], poi_names: Mapping[int, str]) -> None:
    """Box plot of the matched errors of each POI id (missing counts in the tick labels)."""
    errors: Dict[int, List[float]] = defaultdict(list)
    missing: Dict[int, int] = defaultdict(int)
    for r in rows:
        if r.status == MATCHED:
            errors[r.poi].append(r.error_mm)
        elif r.status == MISSING:
            missing[r.poi] += 1
    pois = sorted(set(errors) | set(missing))
    fig = Figure(figsize=(max(6.0, 0.5 * len(pois) + 2), 4.5))
    ax = fig.add_subplot()
    if any(errors.values()):
        ax.boxplot([errors.get(p, []) for p in pois], showmeans=True)
        ticks = [f"{poi_names.get(p, p)}" + (f"\n({missing[p]} missing)" if missing[p] else "") for p in pois]
        ax.set_xticks(range(1, len(pois) + 1), ticks, rotation=45 if len(pois) > 8 else 0, fontsize=8)
    else:
        _empty_note(ax)
    ax.set_xlabel("POI")
    ax.set_ylabel("error (mm)")
    ax.set_title("Error per POI")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    _save(fig, path)


def plot_error_distribution(path: Path, rows: Sequence[PointMatch], thresholds_mm: Sequence[float]) -> None:
    """Histogram of matched errors and their CDF over all reference points, with the success thresholds marked."""
    errors = np.sort([r.error_mm for r in rows if r.status == MATCHED])
    n_ref = sum(r.status in (MATCHED, MISSING) for r in rows)
    fig = Figure(figsize=(10, 4))
    hist, cdf = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    if errors.size:
        hist.hist(errors, bins=min(50, max(5, errors.size // 2)), color="tab:blue", alpha=0.8, edgecolor="white")
        # Steps reach n_matched / n_ref, not 1: missing points keep the curve below the top.
        cdf.step(np.concatenate([[0.0], errors]), np.arange(errors.size + 1) / n_ref, where="post")
        cdf.set_ylim(0, 1.02)
        for t in thresholds_mm:
            for ax in (hist, cdf):
                ax.axvline(t, color="tab:red", linestyle="--", linewidth=0.8)
            cdf.text(t, 0.02, f" {t:g}", color="tab:red", fontsize=8)
    else:
        _empty_note(hist)
        _empty_note(cdf)
    hist.set_xlabel("error (mm)")
    hist.set_ylabel("points")
    hist.set_title("Error distribution")
    cdf.set_xlabel("error (mm)")
    cdf.set_ylabel("fraction of reference points within")
    n_missing = n_ref - errors.size
    cdf.set_title(f"Cumulative ({n_missing} of {n_ref} reference points missing)" if n_missing else "Cumulative")
    cdf.grid(alpha=0.3)
    fig.tight_layout()
    _save(fig, path)

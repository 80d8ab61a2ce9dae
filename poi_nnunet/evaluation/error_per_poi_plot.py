"""The error-per-POI plot: box plots per POI, grouped by structure, or a heat strip of median errors.

The plot has a bounded size in pixels whatever the number of landmarks: it wraps the POIs, grouped by
the structure they lie on, into rows of panels, and switches to a heat strip of the median errors (with
the worst POIs listed beside it) when the box plots would take more than ``MAX_BOX_ROWS`` rows.
"""
from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Set, Tuple

import matplotlib
import numpy as np
from matplotlib.cbook import boxplot_stats
from matplotlib.collections import LineCollection
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, Rectangle

from .plot_style import MAX_HEIGHT_IN, MAX_WIDTH_IN, empty_note, render
from .points import MATCHED, MISSING, PointMatch

# Box plots get this much width per POI; a row of panels holds as many POIs as fit into MAX_WIDTH_IN.
SLOT_IN = 0.3
MAX_BOX_ROWS = 4          # more rows of box plots than this and the per-POI plot becomes a heat strip
STRIP_COLUMNS = 50        # POIs per row of the heat strip
WORST_LISTED = 20         # POIs named beside the heat strip, highest median error first
MISSING_COLOR = "tab:red"
_MEDIAN_COLOR, _MEAN_COLOR = "tab:orange", "tab:green"


@dataclass
class _PoiErrors:
    """The matched errors of one POI id over all cases, and how many of its reference points had no prediction."""

    poi: int
    name: str
    errors: List[float] = field(default_factory=list)
    missing: int = 0

    @property
    def median(self) -> float:
        return float(np.median(self.errors)) if self.errors else float("nan")

    @cached_property
    def box(self) -> Dict[str, Any]:
        """Quartiles, whiskers (1.5 IQR), mean and outliers, as ``Axes.boxplot`` would compute them."""
        return boxplot_stats(self.errors, whis=1.5)[0]


def _short(name: str, most: int = 24) -> str:
    """A name cut to ``most`` characters: a long one would take the height of a whole row of box plots."""
    return name if len(name) <= most else name[:most - 1] + "\u2026"


def _group_by_structure(rows: Sequence[PointMatch], poi_names: Mapping[int, str],
                        structure_names: Mapping[int, str]) -> List[Tuple[str, List[_PoiErrors]]]:
    """The reference POIs, one entry per POI id (as in summary.json), grouped by the structure they lie on.

    A POI id that occurs on one structure only (the X-ray phantom's lung
    outline, a wrist bone's landmarks) is shown with that structure. A POI id
    that several structures share (the same POI on every vertebra) pools all of
    them, so it goes into a group of its own rather than under one structure.
    """
    by_poi: Dict[int, _PoiErrors] = {}
    structures: Dict[int, Set[int]] = defaultdict(set)
    for r in rows:
        if r.status not in (MATCHED, MISSING):
            continue
        entry = by_poi.setdefault(r.poi, _PoiErrors(r.poi, _short(str(poi_names.get(r.poi, r.poi)))))
        structures[r.poi].add(r.structure)
        if r.status == MATCHED:
            entry.errors.append(r.error_mm)
        else:
            entry.missing += 1
    groups: Dict[Optional[int], List[_PoiErrors]] = defaultdict(list)
    for poi in sorted(by_poi):
        owners = structures[poi]
        groups[next(iter(owners)) if len(owners) == 1 else None].append(by_poi[poi])
    single = len(groups) == 1

    def title(structure: Optional[int]) -> str:
        if structure is None:
            return "all POIs" if single else "POIs on several structures"
        return _short(str(structure_names.get(structure, f"structure {structure}")))

    order = sorted(groups, key=lambda s: (s is None, s if s is not None else 0))
    return [(title(s), groups[s]) for s in order]


def _split(groups: Sequence[Tuple[str, List[_PoiErrors]]], capacity: int) -> List[Tuple[str, List[_PoiErrors]]]:
    """Cut groups longer than ``capacity`` into near-equal parts titled ``name (1/3)`` and so on."""
    panels = []
    for title, pois in groups:
        parts = math.ceil(len(pois) / capacity)
        size = math.ceil(len(pois) / parts)
        for i in range(parts):
            panels.append((f"{title} ({i + 1}/{parts})" if parts > 1 else title, pois[i * size:(i + 1) * size]))
    return panels


def _pack(widths: Sequence[int], capacity: int) -> List[List[int]]:
    """Indices of the panels in each row: in order, a new row when the next panel would not fit."""
    rows: List[List[int]] = []
    used = capacity + 1
    for i, w in enumerate(widths):
        if used + w > capacity:
            rows.append([])
            used = 0
        rows[-1].append(i)
        used += w
    return rows


def _text_in(chars: int, pt: float) -> float:
    """Rough length in inches of ``chars`` characters of DejaVu Sans at ``pt`` points."""
    return chars * 0.6 * pt / 72


def plot_error_per_poi(path: Path, rows: Sequence[PointMatch], poi_names: Mapping[int, str],
                       structure_names: Optional[Mapping[int, str]] = None) -> None:
    """The matched errors of each POI id, grouped by structure, with the reference points left without a prediction.

    Up to a few rows' worth of POIs (about 200) each gets a box plot, in
    panels per structure wrapped into rows, so that every POI stays named and
    the image stays within about 2400 px. Beyond that, names cannot be
    printed legibly, and the plot becomes a heat strip of the median error
    (one row per structure, each cell labelled with its POI id) beside the list
    of the POIs with the highest median error. ``structure_names`` maps a
    structure (mask label) to its name, e.g. from dataset.json's ``labels``.
    """
    groups = _group_by_structure(rows, poi_names, structure_names or {})
    if not any(p.errors for _, pois in groups for p in pois):
        render(path, (6.0, 3.0), 9, _empty_per_poi)
        return
    capacity = int((MAX_WIDTH_IN - 1.0) / SLOT_IN)
    panels = _split(groups, capacity)
    # a panel is at least 4 slots wide, room for its title
    layout = _pack([max(4, len(pois)) for _, pois in panels], capacity)
    if len(layout) > MAX_BOX_ROWS:
        _plot_heat_strip(path, groups)
    else:
        _plot_boxes(path, panels, layout)


def _empty_per_poi(fig: Figure) -> None:
    ax = fig.add_subplot()
    empty_note(ax)
    ax.set_title("Error per POI")
    ax.set_xticks([])


def _plot_boxes(path: Path, panels: Sequence[Tuple[str, List[_PoiErrors]]], layout: Sequence[Sequence[int]]) -> None:
    """One box plot per POI, a panel per structure (or part of one), panels wrapped into rows; y shared."""
    tick_pt = 7.0
    slots = [sum(max(4, len(panels[i][1])) for i in row) for row in layout]
    width = min(MAX_WIDTH_IN, max(6.0, max(slots) * SLOT_IN + 1.2))
    longest = max(len(p.name) for _, pois in panels for p in pois)
    label_in = _text_in(longest, tick_pt)
    rotate = label_in > 0.9 * (width - 1.2) / max(slots)
    row_in = 1.9 + (label_in if rotate else 0.2)
    height = min(MAX_HEIGHT_IN, 0.8 + row_in * len(layout))
    data_top = _y_limit([p for _, pois in panels for p in pois])
    top = data_top * 1.12  # headroom above the data for the counts of missing points
    clipped = any(e > data_top for _, pois in panels for p in pois for e in p.errors)

    def draw(fig: Figure) -> None:
        outer = fig.add_gridspec(len(layout), 1)
        first = None
        for r, row in enumerate(layout):
            widths = [max(4, len(panels[i][1])) for i in row]
            spare = max(slots) - sum(widths)
            sub = outer[r].subgridspec(1, len(row) + (spare > 0), width_ratios=widths + ([spare] if spare > 0 else []))
            for c, i in enumerate(row):
                ax = fig.add_subplot(sub[0, c], sharey=first)
                first = first or ax
                _box_panel(ax, *panels[i], tick_pt=tick_pt, rotate=rotate, data_top=data_top, top=top)
                if c == 0:
                    ax.set_ylabel("error (mm)")
                else:
                    ax.tick_params(labelleft=False)
        first.set_ylim(0, top)
        handles = [
            Patch(facecolor="white", edgecolor="black", label="box: quartiles; whiskers: 1.5 IQR"),
            Line2D([], [], color=_MEDIAN_COLOR, label="median"),
            Line2D([], [], color=_MEAN_COLOR, marker="^", linestyle="none", label="mean"),
            Line2D([], [], color="black", marker="o", markerfacecolor="none", markersize=4, linestyle="none",
                   label="outlier"),
        ]
        if any(p.missing for _, pois in panels for p in pois):
            handles.append(Line2D([], [], color=MISSING_COLOR, marker="$n$", markersize=7, linestyle="none",
                                  label="n points without prediction"))
        if clipped:
            handles.append(Line2D([], [], color="black", marker="^", markerfacecolor="none", markersize=5,
                                  linestyle="none", label=f"outlier above {data_top:.3g} mm"))
        # one line where the figure is wide enough for it (about 8 in at these font sizes), else two
        fig.legend(handles=handles, loc="outside lower center",
                   ncols=len(handles) if width >= 8.5 else math.ceil(len(handles) / 2),
                   frameon=False)
        fig.suptitle("Error per POI")

    render(path, (width, height), 9, draw)


def _y_limit(pois: Sequence[_PoiErrors]) -> float:
    """Top of the shared error axis: every error, unless a few gross errors would flatten all the boxes.

    A prediction on the wrong structure can be 100 mm off while the boxes
    span a few mm; then the axis ends a little above the highest whisker or
    mean, and the outliers beyond are drawn on its top edge, marked as such.
    """
    stats = [p.box for p in pois if p.errors]
    highest = max(float(np.max(p.errors)) for p in pois if p.errors)
    body = max(max(float(b["whishi"]), float(b["mean"])) for b in stats)
    return max(highest if highest <= 2 * body else 1.2 * body, 1e-3)  # all errors 0: still an axis


def _box_panel(ax, title: str, pois: Sequence[_PoiErrors], tick_pt: float, rotate: bool, data_top: float,
               top: float) -> None:
    """Box plots of one panel, drawn as a few collections rather than seven artists a box (``Axes.boxplot``):
    160 POIs then draw in a fraction of the time. Outliers above ``data_top`` sit on the axis' top edge."""
    positions = list(range(1, len(pois) + 1))
    half = 0.3
    outlines, medians, means, inside, above = [], [], [], [], []
    for x, p in zip(positions, pois):
        if not p.errors:
            continue
        b = p.box
        q1, q3, low, high = b["q1"], b["q3"], b["whislo"], b["whishi"]
        outlines += [[(x - half, q1), (x + half, q1), (x + half, q3), (x - half, q3), (x - half, q1)],
                     [(x, q1), (x, low)], [(x, q3), (x, high)],
                     [(x - half / 2, low), (x + half / 2, low)], [(x - half / 2, high), (x + half / 2, high)]]
        medians.append([(x - half, b["med"]), (x + half, b["med"])])
        means.append((x, b["mean"]))
        inside += [(x, f) for f in b["fliers"] if f <= data_top]
        above += [(x, data_top)] if any(f > data_top for f in b["fliers"]) else []
    ax.add_collection(LineCollection(outlines, colors="black", linewidths=1.0))
    ax.add_collection(LineCollection(medians, colors=_MEDIAN_COLOR, linewidths=1.5))
    for points, style in ((means, {"marker": "^", "markersize": 4, "color": _MEAN_COLOR}),
                          (inside, {"marker": "o", "markersize": 3, "markerfacecolor": "none",
                                    "markeredgecolor": "black"}),
                          (above, {"marker": "^", "markersize": 5, "markerfacecolor": "none",
                                   "markeredgecolor": "black", "clip_on": False})):
        if points:
            xs, ys = zip(*points)
            ax.plot(xs, ys, linestyle="none", **style)
    for x, p in zip(positions, pois):
        if p.missing:
            ax.text(x, top * 0.985, str(p.missing), color=MISSING_COLOR, ha="center", va="top", fontsize=tick_pt,
                    in_layout=False)  # inside the axes: nothing for the layout to make room for
    ax.set_xticks(positions, [p.name for p in pois], rotation=90 if rotate else 0, fontsize=tick_pt)
    pad = (max(len(pois), 4) - len(pois)) / 2  # a narrow panel keeps its boxes in the middle
    ax.set_xlim(0.4 - pad, len(pois) + 0.6 + pad)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)


def _plot_heat_strip(path: Path, groups: Sequence[Tuple[str, List[_PoiErrors]]]) -> None:
    """Median error per POI as coloured cells, a row per structure (or part of one), beside the worst POIs."""
    panels = _split(groups, STRIP_COLUMNS)
    columns = max(len(pois) for _, pois in panels)
    medians = np.full((len(panels), columns), np.nan)
    for r, (_, pois) in enumerate(panels):
        medians[r, :len(pois)] = [p.median for p in pois]
    finite = medians[np.isfinite(medians)]
    vmax = max(float(np.percentile(finite, 98)), 1e-3)
    clipped = bool(finite.max() > vmax)
    label_in = _text_in(max(len(t) for t, _ in panels), 8)
    side_in = 3.6
    cell_in = min(0.32, (MAX_WIDTH_IN - side_in - label_in - 1.2) / columns)
    width = min(MAX_WIDTH_IN, side_in + label_in + 1.2 + cell_in * columns)
    # title and legend above, axis label and colour bar below: about 2 in
    height = min(MAX_HEIGHT_IN, max(4.0, 2.2 + cell_in * len(panels)))
    all_pois = [p for _, pois in groups for p in pois]
    worst = sorted((p for p in all_pois if p.errors), key=lambda p: -p.median)[:WORST_LISTED]
    digits = max(len(str(p.poi)) for p in all_pois)
    cell_pt = min(6.0, cell_in * 72 / (0.7 * digits + 1.1))  # the longest id fits across a cell

    def draw(fig: Figure) -> None:
        strip_ax, list_ax = fig.subplots(1, 2, width_ratios=[width - side_in, side_in])
        cmap = matplotlib.colormaps["viridis"].with_extremes(over="#fde725", bad="white")
        image = strip_ax.imshow(np.ma.masked_invalid(medians), cmap=cmap, vmin=0, vmax=vmax, aspect="equal",
                                interpolation="nearest")
        dots = []  # cells with reference points left without prediction
        for r, (_, pois) in enumerate(panels):
            for c, p in enumerate(pois):
                if not p.errors:
                    strip_ax.add_patch(Rectangle((c - 0.5, r - 0.5), 1, 1, facecolor="lightgrey", edgecolor="none"))
                    shade = 0.0
                else:
                    red, green, blue, _ = to_rgba(cmap(min(p.median / vmax, 1.0)))
                    shade = 0.299 * red + 0.587 * green + 0.114 * blue
                strip_ax.text(c, r, str(p.poi), ha="center", va="center", fontsize=cell_pt, in_layout=False,
                              color="black" if shade > 0.5 or not p.errors else "white")
                if p.missing:
                    dots.append((c + 0.32, r - 0.32))
        if dots:
            strip_ax.plot(*zip(*dots), marker="o", markersize=2.5, color=MISSING_COLOR, linestyle="none")
        strip_ax.set_yticks(range(len(panels)), [t for t, _ in panels], fontsize=8)
        strip_ax.set_xticks([])
        strip_ax.set_xlabel("POIs of each structure in id order (cell text: POI id)")
        for spine in strip_ax.spines.values():
            spine.set_visible(False)
        colorbar = fig.colorbar(image, ax=strip_ax, location="bottom", shrink=0.5, aspect=40,
                                extend="max" if clipped else "neither")
        colorbar.set_label("median error (mm)")
        handles = []
        if any(not p.errors for p in all_pois):
            handles.append(Patch(facecolor="lightgrey", label="no prediction in any case"))
        if dots:
            handles.append(Line2D([], [], color=MISSING_COLOR, marker="o", markersize=3, linestyle="none",
                                  label="some reference points without prediction"))
        if handles:
            strip_ax.legend(handles=handles, loc="lower left", bbox_to_anchor=(0, 1.0), ncols=2, frameon=False,
                            fontsize=7)
        list_ax.axis("off")
        n_missing = sum(p.missing for p in all_pois)
        lines = [f"Highest median error ({len(all_pois)} POIs, {n_missing} points missing)", ""]
        lines += [f"{p.median:7.2f} mm  {p.name} (id {p.poi})" + (f", {p.missing} missing" if p.missing else "")
                  for p in worst]
        list_ax.text(0, 1, "\n".join(lines), va="top", ha="left", fontsize=8, family="monospace",
                     transform=list_ax.transAxes)
        fig.suptitle("Error per POI: median over cases")

    render(path, (width, height), 9, draw)


# ------------------------------------------------------------------------------------------ error distribution

"""The evaluation plots: the same image whatever ran before in the process, bounded and legible at any POI count."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import matplotlib
import numpy as np
import pytest
from matplotlib.figure import Figure
from matplotlib.text import Text
from PIL import Image

from poi_nnunet.evaluation.plots import plot_error_distribution, plot_error_per_poi
from poi_nnunet.evaluation.points import MATCHED, MISSING, PointMatch

THRESHOLDS = (2.0, 2.5, 3.0, 4.0)  # the defaults: close together, the labels that used to merge into one smudge
MAX_PX = 2400
Rows = Tuple[List[PointMatch], Dict[int, str], Optional[Dict[int, str]]]
TextBoxes = List[Tuple[str, np.ndarray]]


def _rows(n_pois: int, n_structures: int, n_cases: int = 3, seed: int = 0) -> Rows:
    """Errors of ``n_pois`` POI ids split over ``n_structures`` named structures, about 5% of points missing.

    A few errors are eight times the rest, as in the demo: a long tail that
    squeezes the success thresholds (2 to 4 mm) together on a linear axis.
    """
    rng = np.random.default_rng(seed)
    rows, poi_names, structure_names = [], {}, {}
    for s, ids in enumerate(np.array_split(np.arange(1, n_pois + 1), n_structures), start=1):
        structure_names[s] = f"bone_{s}"
        for k, poi in enumerate(ids.tolist()):
            poi_names[poi] = f"bone_{s}_point_{k:02d}"
            for c in range(n_cases):
                if rng.random() < 0.05:
                    rows.append(PointMatch(f"c{c}", s, poi, (0.0, 0.0), None, MISSING))
                else:
                    error = float(rng.gamma(2.0, 1.0)) * (8.0 if rng.random() < 0.03 else 1.0)  # a long tail
                    rows.append(PointMatch(f"c{c}", s, poi, (0.0, 0.0), (error, 0.0), MATCHED, error, True))
    return rows, poi_names, structure_names


def _pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGBA"))


def _texts_drawn(draw: Callable[[], None]) -> Tuple[Figure, TextBoxes]:
    """Run ``draw`` and return the figure it saved, with the pixel box of each non-empty text drawn into it."""
    figures: List[Figure] = []
    boxes: Dict[int, Tuple[str, np.ndarray]] = {}  # by text: savefig also draws once, unrendered, for the layout
    original_draw, original_save = Text.draw, Figure.savefig

    def record(self: Text, renderer) -> None:
        original_draw(self, renderer)
        if self.get_visible() and self.get_text().strip():
            extent = self.get_window_extent(renderer)
            boxes[id(self)] = (self.get_text(), np.array([extent.x0, extent.y0, extent.x1, extent.y1]))

    def save(self: Figure, *args, **kwargs):
        figures.append(self)
        return original_save(self, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Text, "draw", record)
        patch.setattr(Figure, "savefig", save)
        draw()
    (fig,) = figures
    return fig, list(boxes.values())


def _overlaps(boxes: TextBoxes, slack: float = 1.0) -> List[Tuple[str, str]]:
    """Pairs of texts whose boxes overlap by more than ``slack`` pixels both ways."""
    arr = np.array([b for _, b in boxes])
    x0, y0, x1, y1 = (arr[:, i][:, None] for i in range(4))
    hit = (x0 < x1.T - slack) & (x1 > x0.T + slack) & (y0 < y1.T - slack) & (y1 > y0.T + slack)
    i, j = np.nonzero(np.triu(hit, k=1))
    return [(boxes[a][0], boxes[b][0]) for a, b in zip(i, j)]


# (POI count, structures, names given): one POI, a few, the demo's 160, 720, and 300 on one unnamed structure
SCENARIOS = [(1, 1, True), (12, 3, True), (160, 4, True), (720, 17, True), (300, 1, False)]
Drawn = Dict[Tuple[int, int, bool], Dict[str, Tuple[Path, Figure, TextBoxes]]]


@pytest.fixture(scope="module")
def drawn(tmp_path_factory: pytest.TempPathFactory) -> Drawn:
    """Each scenario's plots, drawn once for the module: (PNG path, figure, the boxes of its texts)."""
    folder = tmp_path_factory.mktemp("plots")
    out: Drawn = {}
    for n_pois, n_structures, names in SCENARIOS:
        rows, poi_names, structure_names = _rows(n_pois, n_structures)
        if not names:
            poi_names, structure_names = {}, None
        per_poi = folder / f"per_poi_{n_pois}_{n_structures}.png"
        plots = {"per_poi": (per_poi, *_texts_drawn(
            lambda: plot_error_per_poi(per_poi, rows, poi_names, structure_names)))}
        if n_pois == 12:  # the distribution's layout does not depend on the POI count
            dist = folder / f"distribution_{n_pois}.png"
            plots["distribution"] = (dist, *_texts_drawn(lambda: plot_error_distribution(dist, rows, THRESHOLDS)))
        out[(n_pois, n_structures, names)] = plots
    return out


def test_global_style_set_earlier_in_the_process_changes_no_pixel(drawn: Drawn, tmp_path: Path) -> None:
    """nnU-Net's training calls seaborn.set_theme in the process that then evaluates (poi_train, poi_demo).

    Box plots (12 POIs), the heat strip (300 POIs: too many rows of boxes)
    and the distribution must come out pixel for pixel as in a clean process.
    """
    clean = {"boxes": drawn[(12, 3, True)]["per_poi"][0], "strip": drawn[(300, 1, False)]["per_poi"][0],
             "distribution": drawn[(12, 3, True)]["distribution"][0]}
    rows, poi_names, structure_names = _rows(12, 3)
    with matplotlib.rc_context():  # restores the global settings for the other tests
        try:
            import seaborn
            seaborn.set_theme(font_scale=3)
        except ImportError:
            pass
        matplotlib.rcParams.update({"font.size": 40, "axes.labelsize": 60, "figure.dpi": 40, "savefig.dpi": 300,
                                    "figure.autolayout": True, "lines.linewidth": 6})
        plot_error_per_poi(tmp_path / "boxes", rows, poi_names, structure_names)
        plot_error_per_poi(tmp_path / "strip", _rows(300, 1)[0], {})
        plot_error_distribution(tmp_path / "distribution", rows, THRESHOLDS)
    for name, path in clean.items():
        expected, got = _pixels(path), _pixels(tmp_path / name)
        assert got.shape == expected.shape, name
        differing = int(np.any(got != expected, axis=-1).sum())
        assert differing == 0, f"{name}: {differing} pixels depend on global matplotlib settings"


def _scenario_id(scenario: Tuple[int, int, bool]) -> str:
    return f"{scenario[0]}pois-{scenario[1]}structures" + ("" if scenario[2] else "-unnamed")


@pytest.mark.parametrize("scenario", SCENARIOS, ids=_scenario_id)
def test_per_poi_plot_stays_within_bounds_for_any_count(drawn: Drawn, scenario: Tuple[int, int, bool]) -> None:
    """160 POIs used to give an 8200 x 450 px strip; any count must fit on a screen, and still be a real image."""
    path, _, _ = drawn[scenario]["per_poi"]
    with Image.open(path) as image:
        width, height = image.size
    assert 400 <= width <= MAX_PX and 300 <= height <= MAX_PX, (width, height)


@pytest.mark.parametrize("scenario", SCENARIOS, ids=_scenario_id)
def test_no_text_overlaps_or_leaves_the_image(drawn: Drawn, scenario: Tuple[int, int, bool]) -> None:
    """Threshold labels 2/2.5/3/4 used to merge; the CDF's y-label was clipped; POI names ran into each other."""
    for plot, (_, fig, boxes) in drawn[scenario].items():
        assert _overlaps(boxes) == [], plot
        width, height = fig.bbox.width, fig.bbox.height
        outside = [t for t, (x0, y0, x1, y1) in boxes if x0 < 0 or y0 < 0 or x1 > width or y1 > height]
        assert outside == [], plot


def test_box_plots_name_every_poi_and_structure_and_explain_their_markers(drawn: Drawn) -> None:
    _, _, boxes = drawn[(160, 4, True)]["per_poi"]
    texts = {t for t, _ in boxes}
    assert {f"bone_{s}_point_{k:02d}" for s in range(1, 5) for k in range(40)} <= texts
    assert {f"bone_{s}" for s in range(1, 5)} <= texts  # a panel per structure, titled with its name
    assert {"median", "mean", "n points without prediction"} <= texts  # the legend the markers lacked


def test_heat_strip_names_the_structures_and_every_poi_id(drawn: Drawn) -> None:
    """720 POIs: too many names for an axis; each cell carries its POI id, each row its structure."""
    _, _, boxes = drawn[(720, 17, True)]["per_poi"]
    texts = {t for t, _ in boxes}
    assert {str(i) for i in range(1, 721)} <= texts
    assert {f"bone_{s}" for s in range(1, 18)} <= texts
    assert "median error (mm)" in texts


def test_threshold_fractions_are_labelled_once_each(tmp_path: Path) -> None:
    """Each success threshold is named with the fraction of reference points within it (1 of 4 is missing)."""
    rows = [PointMatch("a", 1, i, (0.0,), (e,), MATCHED, e, True) for i, e in enumerate((1.0, 2.2, 3.5), start=1)]
    rows.append(PointMatch("a", 1, 4, (0.0,), None, MISSING))
    _, boxes = _texts_drawn(lambda: plot_error_distribution(tmp_path / "d.png", rows, THRESHOLDS))
    labels = [t for t, _ in boxes if " mm: " in t]
    assert labels == ["2 mm: 25.0%", "2.5 mm: 50.0%", "3 mm: 50.0%", "4 mm: 75.0%"]
    assert "fraction of points within x" in {t for t, _ in boxes}


def test_plots_of_points_without_any_match_are_still_written(tmp_path: Path) -> None:
    rows = [PointMatch("a", 1, 1, (0.0, 0.0), None, MISSING), PointMatch("a", 1, 2, (1.0, 0.0), None, MISSING)]
    plot_error_per_poi(tmp_path / "p.png", rows, {})
    plot_error_distribution(tmp_path / "d.png", rows, THRESHOLDS)
    assert _pixels(tmp_path / "p.png").size and _pixels(tmp_path / "d.png").size

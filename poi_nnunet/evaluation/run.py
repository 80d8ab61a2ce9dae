"""``evaluate_folders``: compare a prediction folder with a reference folder and write the results.

This is the one entry point that ``poi_evaluate``, ``poi_predict`` and the end
of training share; it reads, delegates every metric, and writes.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from ..errors import InvalidInputError, PathLike, PoiNnunetError, Problem
from ..pois import PoiSet, read_poi_file_lenient
from .folders import EvaluationFolder, open_folder, read_mask
from .plots import plot_error_distribution, plot_error_per_poi
from .points import DEFAULT_ID_RADIUS_MM, PointMatch, match_points, unscored_points
from .report import write_points_csv, write_summary
from .segmentation import LabelMetrics, label_metrics
from .statistics import DEFAULT_THRESHOLDS_MM
from .summary import DEFINITIONS, point_summary, segmentation_summary

SUMMARY_FILE, POINTS_FILE = "summary.json", "points.csv"
PLOT_PER_POI, PLOT_DISTRIBUTION = "error_per_poi.png", "error_distribution.png"


def evaluate_folders(ref_dir: PathLike, pred_dir: PathLike, out_dir: Optional[PathLike] = None,
                     poi_names: Optional[Mapping[int, str]] = None, *,
                     thresholds_mm: Sequence[float] = DEFAULT_THRESHOLDS_MM,
                     id_radius_mm: float = DEFAULT_ID_RADIUS_MM,
                     cases: Optional[Sequence[str]] = None) -> Dict:
    """Score the points (and masks, where both sides have them) of ``pred_dir`` against ``ref_dir``.

    Writes ``summary.json``, ``points.csv``, ``error_per_poi.png`` and
    ``error_distribution.png`` into ``out_dir`` (default ``pred_dir/evaluation``)
    and returns the summary (with NaN where ``summary.json`` has null).
    ``poi_names`` overrides the names found in either side's ``dataset.json``;
    ``cases`` restricts the reference to those cases (a fold's validation split).
    """
    ref = open_folder(ref_dir, "reference")
    if cases is not None:
        ref = ref.restricted_to(cases)
    pred = open_folder(pred_dir, "prediction")
    if not ref.poi_files:
        raise PoiNnunetError(f"reference folder {ref.path}: no point files (<case>.json) found")
    common = [c for c in ref.cases if c in pred.poi_files]
    if not common:
        raise PoiNnunetError(
            f"no matching cases: none of the {len(ref.cases)} reference case(s) in {ref.path} "
            f"(e.g. {', '.join(ref.cases[:3])}) has a point file in {pred.path} "
            f"({len(pred.cases)} file(s){': e.g. ' + ', '.join(pred.cases[:3]) if pred.cases else ''})"
        )
    missing_cases = [c for c in ref.cases if c not in pred.poi_files]
    extra_cases = [c for c in pred.cases if c not in ref.poi_files]
    names = dict(poi_names) if poi_names is not None else (ref.poi_names or pred.poi_names)

    rows = _match_all(ref, pred, id_radius_mm)
    seg_per_case, no_pred_mask, no_ref_mask = _compare_masks(ref, pred, common)
    summary = {
        "ref_dir": str(ref.path),
        "pred_dir": str(pred.path),
        "thresholds_mm": [float(t) for t in thresholds_mm],
        "identification_radius_mm": float(id_radius_mm),
        "definitions": DEFINITIONS,
        "cases": {
            "n_ref": len(ref.cases), "n_pred": len(pred.cases), "n_scored": len(ref.cases),
            "missing": missing_cases, "extra": extra_cases,
        },
        "points": point_summary(rows, names, ref.cases, thresholds_mm),
        "segmentation": segmentation_summary(seg_per_case, ref.label_names or pred.label_names,
                                             no_pred_mask, no_ref_mask),
    }
    out = Path(out_dir) if out_dir is not None else pred.path / "evaluation"
    write_points_csv(out / POINTS_FILE, rows, names)
    plot_error_per_poi(out / PLOT_PER_POI, rows, names)
    plot_error_distribution(out / PLOT_DISTRIBUTION, rows, thresholds_mm)
    write_summary(out / SUMMARY_FILE, summary)  # last: its presence means the rest is there too
    return summary


def _match_all(ref: EvaluationFolder, pred: EvaluationFolder, id_radius_mm: float) -> List[PointMatch]:
    """Read every point file (reporting all bad ones at once) and pair the points case by case."""
    problems: List[Problem] = []

    def read(path: Path) -> PoiSet:
        points, found = read_poi_file_lenient(path)
        problems.extend(found)
        return points

    rows: List[PointMatch] = []
    for case in ref.cases:
        ref_points = read(ref.poi_files[case])
        pred_points = read(pred.poi_files[case]) if case in pred.poi_files else PoiSet()
        if not problems:
            rows += match_points(case, ref_points, pred_points, id_radius_mm)
    for case in pred.cases:
        if case not in ref.poi_files:
            rows += unscored_points(case, read(pred.poi_files[case]))
    if problems:
        raise InvalidInputError(problems, headline="cannot evaluate: unreadable point file(s)")
    return rows


def _compare_masks(ref: EvaluationFolder, pred: EvaluationFolder,
                   cases: Sequence[str]) -> Tuple[Dict[str, Dict[int, LabelMetrics]], List[str], List[str]]:
    """Label metrics of each case where both sides have a mask, and the cases where only one side has one."""
    per_case: Dict[str, Dict[int, LabelMetrics]] = {}
    no_pred, no_ref = [], []
    declared = ref.declared_labels() or pred.declared_labels()
    for case in cases:
        ref_file, pred_file = ref.mask_file(case), pred.mask_file(case)
        if ref_file is None or pred_file is None:
            if ref_file is not None:
                no_pred.append(case)
            elif pred_file is not None:
                no_ref.append(case)
            continue
        ref_arr, ref_geo = read_mask(ref_file)
        pred_arr, pred_geo = read_mask(pred_file)
        if not ref_geo.same_grid(pred_geo):
            raise PoiNnunetError(f"{pred_file}: not on the grid of the reference {ref_file} "
                                 f"({ref_geo.describe_difference(pred_geo)})")
        per_case[case] = label_metrics(ref_arr, pred_arr, ref_geo.spacing[::-1], declared, ref.ignore_label)
    return per_case, no_pred, no_ref

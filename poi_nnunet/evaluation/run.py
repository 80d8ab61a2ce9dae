"""``evaluate_folders``: compare a prediction folder with a reference folder and write the results.

Points are scored where both folders have point files; masks wherever both
have a mask for a case. A folder of masks only (a raw dataset's ``labelsTs``
or ``labelsTr_reference``, a segmentation-only model's output) is evaluated
on its masks alone.

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
from .statistics import DEFAULT_THRESHOLDS_MM, DEFAULT_THRESHOLDS_VOXELS
from .summary import DEFINITIONS, point_summary, segmentation_summary
from .voxel_errors import with_voxel_errors

SUMMARY_FILE, POINTS_FILE = "summary.json", "points.csv"
PLOT_PER_POI, PLOT_DISTRIBUTION = "error_per_poi.png", "error_distribution.png"


def evaluate_folders(ref_dir: PathLike, pred_dir: PathLike, out_dir: Optional[PathLike] = None,
                     poi_names: Optional[Mapping[int, str]] = None, *,
                     thresholds_mm: Sequence[float] = DEFAULT_THRESHOLDS_MM,
                     id_radius_mm: float = DEFAULT_ID_RADIUS_MM,
                     cases: Optional[Sequence[str]] = None) -> Dict:
    """Score the points (and masks, where both sides have them) of ``pred_dir`` against ``ref_dir``.

    Points are scored when both sides have point files. When either side has
    none (a reference of masks only: ``labelsTs``, ``labelsTr_reference``, a
    flat mask folder; or a segmentation-only model's prediction, which writes
    masks and no point files) only the masks are compared: ``summary["points"]``
    is then None and ``summary["points_not_scored"]`` says why, rather than
    counting every reference point as missing.

    Writes ``summary.json`` into ``out_dir`` (default ``pred_dir/evaluation``),
    and when points are scored ``points.csv``, ``error_per_poi.png`` and
    ``error_distribution.png`` (stale copies of those are removed otherwise, so
    the folder never mixes two evaluations). Returns the summary (with NaN
    where ``summary.json`` has null). ``poi_names`` overrides the names found in
    either side's ``dataset.json``; ``cases`` restricts the reference to those
    cases (a fold's validation split).
    """
    ref = open_folder(ref_dir, "reference")
    if cases is not None:
        ref = ref.restricted_to(cases)
    pred = open_folder(pred_dir, "prediction")
    if not ref.has_anything:
        raise PoiNnunetError(f"reference folder {ref.path}: nothing to evaluate against: no point files "
                             f"(<case>.json) and no masks ({ref.describe_masks()})")
    if not pred.has_anything:
        raise PoiNnunetError(f"prediction folder {pred.path}: nothing to evaluate: no point files (<case>.json) "
                             f"and no masks ({pred.describe_masks()})")
    names = dict(poi_names) if poi_names is not None else (ref.poi_names or pred.poi_names)
    if ref.poi_files and pred.poi_files:
        summary, rows = _score_points_and_masks(ref, pred, names, thresholds_mm, id_radius_mm)
    else:
        summary, rows = _score_masks_only(ref, pred), None
    summary = {
        "ref_dir": str(ref.path),
        "pred_dir": str(pred.path),
        "thresholds_mm": [float(t) for t in thresholds_mm],
        "thresholds_voxels": [float(t) for t in DEFAULT_THRESHOLDS_VOXELS],
        "identification_radius_mm": float(id_radius_mm),
        "definitions": DEFINITIONS,
        **summary,
    }
    out = Path(out_dir) if out_dir is not None else pred.path / "evaluation"
    if rows is not None:
        write_points_csv(out / POINTS_FILE, rows, names)
        plot_error_per_poi(out / PLOT_PER_POI, rows, names, structure_names=_label_info(ref, pred)[0])
        plot_error_distribution(out / PLOT_DISTRIBUTION, rows, thresholds_mm)
    else:
        for stale in (POINTS_FILE, PLOT_PER_POI, PLOT_DISTRIBUTION):
            (out / stale).unlink(missing_ok=True)
    write_summary(out / SUMMARY_FILE, summary)  # last: its presence means the rest is there too
    return summary


def _score_points_and_masks(ref: EvaluationFolder, pred: EvaluationFolder, names: Mapping[int, str],
                            thresholds_mm: Sequence[float],
                            id_radius_mm: float) -> Tuple[Dict, List[PointMatch]]:
    """Both sides have point files: cases are the point files; masks are compared where both have one."""
    common = [c for c in ref.cases if c in pred.poi_files]
    if not common:
        raise PoiNnunetError(
            f"no matching cases: none of the {len(ref.cases)} reference case(s) in {ref.path} "
            f"(e.g. {', '.join(ref.cases[:3])}) has a point file in {pred.path} "
            f"({len(pred.cases)} file(s){': e.g. ' + ', '.join(pred.cases[:3]) if pred.cases else ''})"
        )
    missing_cases = [c for c in ref.cases if c not in pred.poi_files]
    extra_cases = [c for c in pred.cases if c not in ref.poi_files]
    rows = with_voxel_errors(_match_all(ref, pred, id_radius_mm), {c: ref.grid_file(c) for c in ref.cases})
    seg_per_case, no_pred_mask, no_ref_mask = _compare_masks(ref, pred, common)
    label_names, _, _ = _label_info(ref, pred)
    return {
        "cases": {
            "n_ref": len(ref.cases), "n_pred": len(pred.cases), "n_scored": len(ref.cases),
            "missing": missing_cases, "extra": extra_cases,
        },
        "points": point_summary(rows, names, ref.cases, thresholds_mm, structure_names=label_names),
        "points_not_scored": None,
        "segmentation": segmentation_summary(seg_per_case, label_names, no_pred_mask, no_ref_mask),
    }, rows


def _score_masks_only(ref: EvaluationFolder, pred: EvaluationFolder) -> Dict:
    """One side has no point files: compare the masks of the reference cases, and say why points are not scored.

    The reference cases are its point files where it has them (a ``poisTs``
    folder against a segmentation-only prediction), else its masks. A reference
    case without a predicted mask is listed under ``cases.missing`` (and
    ``segmentation.cases_without_pred_mask`` where the reference has a mask) and
    is not scored; ``cases.n_scored`` counts the cases with both masks.
    """
    ref_cases = ref.cases
    if ref.poi_files:
        reason = (f"no points predicted, the prediction folder {pred.path} has masks but no point files "
                  f"(a segmentation-only model); the {len(ref.poi_files)} reference point file(s) in {ref.path} "
                  f"are not scored")
    else:
        reason = f"the reference folder {ref.path} holds masks only (no point files)"
        if pred.poi_files:
            reason += f"; the {len(pred.poi_files)} predicted point file(s) in {pred.path} are not scored"
    if not any(ref.mask_file(c) for c in ref_cases):
        raise PoiNnunetError(
            f"nothing to compare: the prediction folder {pred.path} has no point files, and the reference folder "
            f"{ref.path} has point files but no masks ({ref.describe_masks()})")
    if not pred.mask_files:
        raise PoiNnunetError(
            f"nothing to compare: the reference folder {ref.path} holds masks only, and the prediction folder "
            f"{pred.path} has no masks ({pred.describe_masks()})")
    pred_cases = sorted(pred.mask_files)
    if not any(c in pred.mask_files for c in ref_cases):
        raise PoiNnunetError(
            f"no matching cases: none of the {len(ref_cases)} reference case(s) in {ref.path} "
            f"(e.g. {', '.join(ref_cases[:3])}) has a mask in {pred.path} ({len(pred_cases)} mask(s): "
            f"e.g. {', '.join(pred_cases[:3])}; looked for {pred.describe_masks()})")
    known = set(ref_cases)
    seg_per_case, no_pred_mask, no_ref_mask = _compare_masks(ref, pred, ref_cases)
    label_names, _, _ = _label_info(ref, pred)
    return {
        "cases": {
            "n_ref": len(ref_cases), "n_pred": len(pred_cases), "n_scored": len(seg_per_case),
            "missing": [c for c in ref_cases if c not in pred.mask_files],
            "extra": [c for c in pred_cases if c not in known],
        },
        "points": None,
        "points_not_scored": reason,
        "segmentation": segmentation_summary(seg_per_case, label_names, no_pred_mask, no_ref_mask),
    }


def _label_info(ref: EvaluationFolder, pred: EvaluationFolder) -> Tuple[Dict[int, str], List[int], Optional[int]]:
    """Label names, declared foreground labels and ignore label, from the reference's dataset.json where it
    names labels, else from the prediction's (nnU-Net leaves the dataset's dataset.json beside its masks).

    The ignore label is never among the declared labels and is never scored: a
    dense reference has none, and a sparse one only marks unannotated voxels.
    """
    source = ref if ref.label_names else pred
    return source.label_names, ref.declared_labels() or pred.declared_labels(), source.ignore_label


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
    _, declared, ignore = _label_info(ref, pred)
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
        per_case[case] = label_metrics(ref_arr, pred_arr, ref_geo.spacing[::-1], declared, ignore)
    return per_case, no_pred, no_ref

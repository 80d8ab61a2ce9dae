"""Assembling ``summary.json``: point statistics by group and segmentation metrics by label.

Top-level shape: ``cases``, ``points`` (None when points are not scored:
a masks-only comparison), ``points_not_scored`` (None, or why not),
``segmentation`` (always present; ``n_cases`` 0 when no case has both masks),
plus the folders, thresholds and ``definitions``.

This module only groups and averages; the metrics themselves live in
:mod:`.statistics` and :mod:`.segmentation`. The policies that a reader of the
numbers needs are written into the summary itself (``DEFINITIONS``).
"""
from __future__ import annotations

from collections import defaultdict
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Sequence

import numpy as np

from .points import EXTRA_CASE, PointMatch
from .segmentation import LabelMetrics, inverse_frequency_weighted_dice
from .statistics import summarise_rows

DEFINITIONS = {
    "cases": "points are scored when both folders have point files: cases are then the reference's point files, "
             "'missing' = reference case without a predicted point file (all its points missing), n_scored = all "
             "reference cases; otherwise only masks are compared: cases are the reference's point files or, "
             "without any, its masks, 'missing' = reference case without a predicted mask (listed, not scored), "
             "n_scored = cases with both masks; 'extra' = predicted case without reference (not scored)",
    "points_not_scored": "null when points are scored; else why not (a masks-only reference, or a prediction "
                         "without point files from a segmentation-only model), and points is null: no reference "
                         "point is counted as missing and no TRE is reported",
    "matching": "points pair by (structure, poi) within a case; 'missing' = reference point without prediction, "
                "'extra' = predicted point without reference; predicted cases without a reference file are "
                "listed under cases.extra, their points have status 'extra_case' and are not scored",
    "tre_mm": "Euclidean distance in world millimetres over matched points; std is the population std (ddof=0)",
    "success_rate": "reference points with error <= threshold (mm) over all reference points; missing points fail",
    "success_rate_voxels": "the same with the error in voxels of the case's reference image (its label file, else "
                           "its first image channel): the world error vector carried into that image's index "
                           "space (direction, spacing), one voxel step along any axis = 1; thresholds_voxels; "
                           "null where a case has no reference image (a flat folder of point files)",
    "identification_rate": "reference points whose prediction is within the identification radius and at least "
                           "as close to them as to any other reference point of the case, over all reference points",
    "dice": "per case and label where both sides have a mask; NaN (null) when the label is absent from both, "
            "0 when absent from one; voxels with the reference's ignore label do not count",
    "asd_mm": "symmetric average surface distance on the reference grid (pooled over the surface voxels of both "
              "masks, face-connected surfaces); null when either mask of the label is empty or the reference "
              "has ignore-label voxels",
    "inverse_frequency_weighted_dice": "per case: sum(dice_m / A_m) / sum(1 / A_m) over foreground labels "
                                       "present in the reference (A_m = reference voxel count); then mean over cases",
    "means": "means skip null values; every mean comes with n, the number of values averaged",
    "null": "a value that is undefined for the group (no matched point, no reference point, empty masks)",
}


def point_summary(rows: Sequence[PointMatch], poi_names: Mapping[int, str], ref_cases: Iterable[str],
                  thresholds_mm: Sequence[float], structure_names: Optional[Mapping[int, str]] = None) -> Dict:
    """Overall, per POI id, per structure and per reference case statistics; extra cases are left out.
    Each POI and each structure carries its ``name`` (null where the dataset names none)."""
    scored = [r for r in rows if r.status != EXTRA_CASE]

    def grouped(key: Callable[[PointMatch], object]) -> Dict[object, List[PointMatch]]:
        groups: Dict[object, List[PointMatch]] = defaultdict(list)
        for row in scored:
            groups[key(row)].append(row)
        return groups

    per_poi = {
        str(poi): {"name": poi_names.get(poi), **summarise_rows(group, thresholds_mm)}
        for poi, group in sorted(grouped(lambda r: r.poi).items())
    }
    structure_names = structure_names or {}
    per_structure = {
        str(s): {"name": structure_names.get(s), **summarise_rows(group, thresholds_mm)}
        for s, group in sorted(grouped(lambda r: r.structure).items())
    }
    by_case = grouped(lambda r: r.case)
    per_case = {case: summarise_rows(by_case.get(case, []), thresholds_mm) for case in sorted(ref_cases)}
    return {
        "overall": summarise_rows(scored, thresholds_mm),
        "per_poi": per_poi,
        "per_structure": per_structure,
        "per_case": per_case,
    }


def segmentation_summary(per_case: Mapping[str, Mapping[int, LabelMetrics]], label_names: Mapping[int, str],
                         without_pred_mask: Sequence[str], without_ref_mask: Sequence[str]) -> Dict:
    """Per-label means over cases, label-averaged means, weighted Dice, and which cases could not be compared."""
    labels = sorted({label for metrics in per_case.values() for label in metrics})
    per_label = {}
    for label in labels:
        dices = [m[label].dice for m in per_case.values() if label in m]
        asds = [m[label].asd_mm for m in per_case.values() if label in m]
        per_label[str(label)] = {"name": label_names.get(label), "dice": _mean(dices), "asd_mm": _mean(asds)}
    weighted = {
        case: inverse_frequency_weighted_dice({l: m.dice for l, m in metrics.items()},
                                              {l: m.ref_voxels for l, m in metrics.items()})
        for case, metrics in per_case.items()
    }
    return {
        "n_cases": len(per_case),
        "cases_without_pred_mask": sorted(without_pred_mask),
        "cases_without_ref_mask": sorted(without_ref_mask),
        "mean_dice": _mean([v["dice"]["mean"] for v in per_label.values()]),
        "mean_asd_mm": _mean([v["asd_mm"]["mean"] for v in per_label.values()]),
        "inverse_frequency_weighted_dice": _mean(list(weighted.values())),
        "per_label": per_label,
        "per_case": {
            case: {
                "inverse_frequency_weighted_dice": weighted[case],
                "labels": {str(l): {"dice": m.dice, "asd_mm": m.asd_mm, "ref_voxels": m.ref_voxels,
                                    "pred_voxels": m.pred_voxels} for l, m in sorted(metrics.items())},
            }
            for case, metrics in sorted(per_case.items())
        },
    }


def _mean(values: Sequence[float]) -> Dict[str, Optional[float]]:
    """Mean of the defined values and how many there were (NaN mean when none)."""
    defined = [v for v in values if v is not None and not np.isnan(v)]
    return {"mean": float(np.mean(defined)) if defined else float("nan"), "n": len(defined)}

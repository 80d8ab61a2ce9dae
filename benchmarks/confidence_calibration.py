"""How well does a point's confidence tell right points from wrong ones?

Given a prediction folder (``poi_predict`` output, written with ``--min_confidence 0`` so that every
point the model found is there) and a reference folder of point files (a raw dataset's ``poisTs``
or any flat folder of ``<case>.json``), every reference point is paired with its prediction by
``(structure, poi)`` (:func:`poi_nnunet.evaluation.points.match_points`); a matched point is
*right* when its error is at most ``--right_mm`` (2 mm). Reported:

* **ROC AUC** of confidence for right vs wrong: the probability that a random right point has a
  higher confidence than a random wrong one (ties count half), from the rank-sum formula
  ``(R_right - n_right (n_right + 1) / 2) / (n_right n_wrong)`` with average ranks. 0.5 is no
  separation, 1 a threshold that splits them perfectly.
* **Thresholds** 0.05 / 0.1 / 0.2 / 0.5: how many points a ``--min_confidence`` there keeps, the
  error (mean, median, p95) of those kept, and how many right points it would drop.
* **Reliability**: per confidence bin, the number of points, their mean confidence, the share that
  is right and their mean error (a calibrated confidence rises with the share right).

Reference points without a prediction are counted as missing (and left out of the AUC): with a
prediction folder written above ``--min_confidence 0`` they include points the threshold removed,
which is why the summary warns when ``predict_from_raw_data_args.json`` shows a threshold.

Run: ``python benchmarks/confidence_calibration.py -pred OUT -ref nnUNet_raw/Dataset.../poisTs``;
other scripts call :func:`calibration_summary`.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
from scipy.stats import rankdata

from poi_nnunet.evaluation.folders import open_folder
from poi_nnunet.evaluation.points import MATCHED, MISSING, match_points
from poi_nnunet.evaluation.report import json_safe
from poi_nnunet.pois import PoiSet, read_poi_file

RIGHT_MM = 2.0
THRESHOLDS = (0.05, 0.1, 0.2, 0.5)
BIN_EDGES = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9, 1.0)


def matched_points(pred_dir: Path, ref_dir: Path) -> Tuple[np.ndarray, np.ndarray, int, int]:
    """Errors (mm) and confidences ``(N,)`` of the matched points, the number of reference points and of
    those without a prediction. A point written without a confidence gets NaN."""
    ref, pred = open_folder(ref_dir, "reference"), open_folder(pred_dir, "prediction")
    errors: List[float] = []
    confidence: List[float] = []
    n_ref = n_missing = 0
    for case, path in sorted(ref.poi_files.items()):
        predicted = read_poi_file(pred.poi_files[case]) if case in pred.poi_files else PoiSet()
        by_key = predicted.by_key()
        for row in match_points(case, read_poi_file(path), predicted):
            if row.status == MISSING:
                n_ref, n_missing = n_ref + 1, n_missing + 1
            elif row.status == MATCHED:
                n_ref += 1
                errors.append(row.error_mm)
                value = by_key[row.key].confidence
                confidence.append(float("nan") if value is None else float(value))
    return np.asarray(errors, float), np.asarray(confidence, float), n_ref, n_missing


def roc_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Rank-sum ROC AUC of ``scores`` for ``positive`` vs the rest (NaN without both kinds)."""
    positive = np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if not n_pos or not n_neg:
        return float("nan")
    ranks = rankdata(scores)  # average ranks for ties
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _errors(values: np.ndarray) -> Dict[str, float]:
    if not len(values):
        return {"mean_mm": float("nan"), "median_mm": float("nan"), "p95_mm": float("nan")}
    return {"mean_mm": float(values.mean()), "median_mm": float(np.median(values)),
            "p95_mm": float(np.percentile(values, 95))}


def threshold_table(errors: np.ndarray, confidence: np.ndarray, right: np.ndarray,
                    thresholds: Sequence[float] = THRESHOLDS) -> List[Dict[str, Any]]:
    """Per threshold: points kept (confidence at least it), their errors, right points dropped."""
    rows = []
    for t in thresholds:
        kept = confidence >= t
        rows.append({"threshold": float(t), "kept": int(kept.sum()), "kept_fraction": float(kept.mean()),
                     "right_dropped": int((right & ~kept).sum()), "wrong_kept": int((~right & kept).sum()),
                     **_errors(errors[kept])})
    return rows


def reliability_table(errors: np.ndarray, confidence: np.ndarray, right: np.ndarray,
                      edges: Sequence[float] = BIN_EDGES) -> List[Dict[str, Any]]:
    """Per confidence bin ``[lo, hi)`` (the last one closed): count, mean confidence, share right, mean error."""
    rows = []
    for i, (lo, hi) in enumerate(zip(edges[:-1], edges[1:])):
        last = i == len(edges) - 2
        inside = (confidence >= lo) & ((confidence <= hi) if last else (confidence < hi))
        n = int(inside.sum())
        rows.append({"low": float(lo), "high": float(hi), "n": n,
                     "mean_confidence": float(confidence[inside].mean()) if n else float("nan"),
                     "right_fraction": float(right[inside].mean()) if n else float("nan"),
                     "mean_mm": float(errors[inside].mean()) if n else float("nan")})
    return rows


def prediction_threshold(pred_dir: Path) -> Optional[float]:
    """The ``--min_confidence`` the folder was predicted with, where poi_predict recorded it."""
    args = Path(pred_dir) / "predict_from_raw_data_args.json"
    try:
        return float(json.loads(args.read_text())["min_confidence"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def calibration_summary(pred_dir: Path, ref_dir: Path, right_mm: float = RIGHT_MM,
                        thresholds: Sequence[float] = THRESHOLDS) -> Dict[str, Any]:
    """Everything this script reports, as a dict (see the module docstring); JSON-safe except NaN."""
    errors, confidence, n_ref, n_missing = matched_points(Path(pred_dir), Path(ref_dir))
    scored = np.isfinite(confidence)
    errors, confidence = errors[scored], confidence[scored]
    right = errors <= right_mm
    threshold = prediction_threshold(Path(pred_dir))
    return {
        "right_mm": float(right_mm), "n_reference": n_ref, "n_matched": int(len(errors) + (~scored).sum()),
        "n_missing": n_missing, "n_without_confidence": int((~scored).sum()), "n_right": int(right.sum()),
        "right_fraction": float(right.mean()) if len(right) else float("nan"),
        "auc": roc_auc(confidence, right), "errors": _errors(errors),
        "predicted_with_min_confidence": threshold,
        "warning": (f"predicted with --min_confidence {threshold:g}: points under it are missing, not scored; "
                    "predict with --min_confidence 0" if threshold else None),
        "thresholds": threshold_table(errors, confidence, right, thresholds),
        "reliability": reliability_table(errors, confidence, right),
    }


def format_summary(summary: Dict[str, Any]) -> str:
    lines = [f"{summary['n_matched']} of {summary['n_reference']} reference points predicted "
             f"({summary['n_missing']} missing); {summary['n_right']} right (error <= {summary['right_mm']:g} mm)",
             f"ROC AUC of confidence, right vs wrong: {summary['auc']:.3f}"]
    if summary["warning"]:
        lines.append(f"warning: {summary['warning']}")
    lines.append("threshold   kept  kept%  right dropped  wrong kept  mean mm  median mm  p95 mm")
    for r in summary["thresholds"]:
        lines.append(f"{r['threshold']:>9.2f} {r['kept']:>6d} {100 * r['kept_fraction']:>5.1f} {r['right_dropped']:>14d} "
                     f"{r['wrong_kept']:>11d} {r['mean_mm']:>8.2f} {r['median_mm']:>10.2f} {r['p95_mm']:>7.2f}")
    lines.append("confidence bin     n  mean conf  right%  mean mm")
    for r in summary["reliability"]:
        lines.append(f"[{r['low']:.2f}, {r['high']:.2f}) {r['n']:>6d} {r['mean_confidence']:>10.3f} "
                     f"{100 * r['right_fraction']:>7.1f} {r['mean_mm']:>8.2f}")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-pred", required=True, help="poi_predict output folder (predicted with --min_confidence 0)")
    parser.add_argument("-ref", required=True, help="reference point files (poisTs or a flat folder)")
    parser.add_argument("--right_mm", type=float, default=RIGHT_MM, help="a point is right within this error")
    parser.add_argument("--json", default=None, help="also write the summary to this file")
    args = parser.parse_args(argv)
    summary = calibration_summary(Path(args.pred), Path(args.ref), args.right_mm)
    print(format_summary(summary))
    if args.json:
        Path(args.json).write_text(json.dumps(json_safe(summary), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

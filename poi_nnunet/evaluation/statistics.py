"""Numbers that summarise a group of point rows: TRE, success rates, identification rate.

Rates divide by the number of *reference* points, so a missing prediction is a
failure rather than a point that quietly leaves the denominator. TRE
statistics are over matched points only (a missing point has no error) and
always travel with the counts that say how many points were missing.
Undefined values (no matched point, no reference point) are NaN here and
``null`` in ``summary.json``.
"""
from __future__ import annotations

from typing import Dict, Iterable, List, Sequence

import numpy as np

from .points import EXTRA, MATCHED, MISSING, PointMatch

DEFAULT_THRESHOLDS_MM = (2.0, 2.5, 3.0, 4.0)
# Beside the millimetres users cite: "within 2 mm" says little at 5.5 mm pixels, "within one voxel" does.
DEFAULT_THRESHOLDS_VOXELS = (1.0, 2.0)


def threshold_key(threshold_mm: float) -> str:
    """``2.0 -> "2"``, ``2.5 -> "2.5"``: the key a success rate is stored under."""
    return f"{threshold_mm:g}"


def tre_statistics(errors_mm: Sequence[float]) -> Dict[str, float]:
    """Mean, median, population standard deviation (ddof=0) and maximum of the errors; NaN when empty."""
    errors = np.asarray(errors_mm, dtype=np.float64)
    if errors.size == 0:
        return {"mean": float("nan"), "median": float("nan"), "std": float("nan"), "max": float("nan")}
    return {
        "mean": float(errors.mean()),
        "median": float(np.median(errors)),
        "std": float(errors.std()),
        "max": float(errors.max()),
    }


def success_rates(errors_mm: Sequence[float], n_reference: int,
                  thresholds_mm: Iterable[float] = DEFAULT_THRESHOLDS_MM) -> Dict[str, float]:
    """Fraction of the ``n_reference`` points whose error is <= each threshold (missing points fail)."""
    errors = np.asarray(errors_mm, dtype=np.float64)
    if errors.size > n_reference:
        raise ValueError(f"{errors.size} errors for only {n_reference} reference points")
    return {
        threshold_key(t): (float(np.count_nonzero(errors <= t)) / n_reference if n_reference else float("nan"))
        for t in thresholds_mm
    }


def identification_rate(rows: Sequence[PointMatch]) -> float:
    """Identified reference points over all reference points (see :func:`match_points`)."""
    n_ref = sum(r.status in (MATCHED, MISSING) for r in rows)
    return sum(r.identified for r in rows) / n_ref if n_ref else float("nan")


def summarise_rows(rows: Sequence[PointMatch], thresholds_mm: Iterable[float] = DEFAULT_THRESHOLDS_MM,
                   thresholds_voxels: Iterable[float] = DEFAULT_THRESHOLDS_VOXELS) -> Dict:
    """Counts, TRE statistics, success rates (in mm, and in voxels where every matched row has its error in
    voxels, else None) and identification rate of one group of rows."""
    matched: List[float] = [r.error_mm for r in rows if r.status == MATCHED]
    in_voxels = np.array([r.error_voxels for r in rows if r.status == MATCHED], dtype=np.float64)
    n_missing = sum(r.status == MISSING for r in rows)
    n_extra = sum(r.status == EXTRA for r in rows)
    n_ref = len(matched) + n_missing
    return {
        "n_ref": n_ref,
        "n_pred": len(matched) + n_extra,
        "n_matched": len(matched),
        "n_missing": n_missing,
        "n_extra": n_extra,
        "tre_mm": tre_statistics(matched),
        "success_rate": success_rates(matched, n_ref, thresholds_mm),
        "success_rate_voxels": success_rates(in_voxels, n_ref, thresholds_voxels)
        if n_ref and np.isfinite(in_voxels).all() else None,
        "identification_rate": identification_rate(rows),
    }

"""Cleaning (seed 000): POIs too far from their structure's surface are flagged, never deleted.

The threshold is planned per POI id from the fingerprint, because some POIs
sit on the surface by definition (a ligament attachment point) and others
inside (a vertebral body centre): each id is compared with its own kind.
"""
from __future__ import annotations

from typing import Any, Dict, List

import numpy as np

# Tukey's fence, Q3 + 1.5 IQR, per POI id: robust to the few bad points it is meant to catch, so it
# is computed from all points, flagged ones included.
FENCE_IQR_FACTOR = 1.5
# A point on the true surface can lie up to one voxel diagonal from the nearest boundary voxel centre
# of the rasterised label; closer than this (with 10% slack) the raster cannot tell it off the surface.
MIN_VOXEL_DIAGONALS = 1.1


def surface_thresholds(fingerprint: Dict[str, Any]) -> Dict[str, float]:
    """Per POI id: Tukey's upper fence (mm) of its distances to its structure's surface."""
    per_id: Dict[int, List[float]] = {}
    for c in fingerprint["cases"]:
        for p in c["points"]:
            if p["surface_distance_mm"] is not None:
                per_id.setdefault(p["poi"], []).append(p["surface_distance_mm"])
    out: Dict[str, float] = {}
    for poi, values in sorted(per_id.items()):
        q1, q3 = np.percentile(values, [25, 75])
        out[str(poi)] = float(q3 + FENCE_IQR_FACTOR * (q3 - q1))
    return out


def case_threshold(fence_mm: float, spacing: List[float]) -> float:
    """The distance above which a point of this case is flagged: the id's fence, but never below
    :data:`MIN_VOXEL_DIAGONALS` voxel diagonals of the case's grid."""
    return max(fence_mm, MIN_VOXEL_DIAGONALS * float(np.linalg.norm(spacing)))


def flag_far_pois(fingerprint: Dict[str, Any], thresholds: Dict[str, float]) -> List[Dict[str, Any]]:
    """Every point farther from its surface than its case's threshold, with the numbers that flagged it."""
    flagged = []
    for c in fingerprint["cases"]:
        for p in c["points"]:
            d = p["surface_distance_mm"]
            fence = thresholds.get(str(p["poi"]))
            if d is None or fence is None:
                continue
            limit = case_threshold(fence, c["spacing"])
            if d > limit:
                flagged.append({"case": c["case"], "structure": p["structure"], "poi": p["poi"],
                                "surface_distance_mm": round(d, 3), "threshold_mm": round(limit, 3)})
    return flagged


def flagged_keys(flagged: List[Dict[str, Any]]) -> Dict[str, set]:
    """``{case: {(structure, poi), ...}}`` for quick lookup while preprocessing."""
    out: Dict[str, set] = {}
    for f in flagged:
        out.setdefault(f["case"], set()).add((int(f["structure"]), int(f["poi"])))
    return out

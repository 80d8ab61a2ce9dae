"""The planner's cleaning rule on augmented training samples (seed 000, section 6 of its issue).

Seed 000 found that elastic deformation pushed some surface POIs off their bone: masks were interpolated by
nearest neighbour, points by a smooth transform. Here points move exactly with the sampling field, but the
label patch is still resampled by nearest neighbour (rotation, scaling, elastic deformation alike), so a
point can end up farther from its structure's *resampled* surface than any training case showed. Such a
target would teach a wrong place, so the loader masks it, by the rule the planner cleans raw cases with
(:mod:`planners.cleaning`): a POI is off its surface when it is farther from it than its id's fence, or
``min_voxel_diagonals`` voxel diagonals of the patch grid where that is larger.

The distance is bounded with boxes, not measured. The planner measures to the nearest boundary voxel centre
of the structure (a structure voxel with a face on another label). With ``r`` the fence's half-width in
voxels around the point's nearest voxel: a point is off its surface when that box holds no voxel of its
structure (its surface is then at least ``r + 1/2`` voxels away), or when the box one voxel wider holds
nothing else (its boundary voxels are then at least ``r + 1/2`` voxels away inside). A box reaches up to
``sqrt(D)`` times farther than a ball, so the check flags only points certainly beyond the fence and keeps
every point the planner would keep; a box the patch cuts off is not judged. It costs two small windows
per point, no distance transform. 3D patches only: a 2D slice of a 3D scan does not show the surface of
a point between slices, and a 2D projection's labels hide structures behind others (the planner does not
measure such points either).
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np


def off_surface(points: np.ndarray, structures: Sequence[int], pois: Sequence[int], label: np.ndarray,
                spacing_mm: np.ndarray, fences_mm: Mapping[int, float], min_voxel_diagonals: float) -> np.ndarray:
    """``(S,)`` bool: which of the points ``(S, D)`` (patch voxels, NaN: none) lie off their structure's surface.

    ``structures`` / ``pois``: each point's structure label and POI id; ``label`` the patch's label map
    ``(*patch)``; ``spacing_mm`` ``(D,)`` mm per patch voxel step; ``fences_mm`` the planner's fence per POI id.
    Points of structure 0 (landmarks without a mask), of ids without a fence, or whose box leaves the patch
    are never flagged.
    """
    points = np.asarray(points, dtype=np.float64)
    spacing = np.asarray(spacing_mm, dtype=np.float64)
    floor = float(min_voxel_diagonals) * float(np.linalg.norm(spacing))
    flagged = np.zeros(len(points), dtype=bool)
    for i, (point, structure, poi) in enumerate(zip(points, structures, pois)):
        fence = fences_mm.get(int(poi))
        if fence is None or int(structure) <= 0 or not np.all(np.isfinite(point)):
            continue
        radius = np.ceil(max(float(fence), floor) / spacing).astype(int)
        centre = np.round(point).astype(int)
        inner = _window(label, centre, radius)
        if inner is None:
            continue  # the patch does not show all the box: no judgement
        if not (inner == int(structure)).any():
            flagged[i] = True  # no voxel of its structure near it
            continue
        outer = _window(label, centre, radius + 1)
        flagged[i] = outer is not None and bool((outer == int(structure)).all())  # deep inside it
    return flagged


def _window(label: np.ndarray, centre: np.ndarray, radius: np.ndarray):
    """The box of half-width ``radius`` voxels around ``centre``; None where it leaves the patch."""
    lo, hi = centre - radius, centre + radius + 1
    if np.any(lo < 0) or np.any(hi > np.asarray(label.shape)):
        return None
    return label[tuple(slice(a, b) for a, b in zip(lo, hi))]

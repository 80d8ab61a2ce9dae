"""Rigid groups of landmarks: which POIs of a landmark-only dataset keep their relative positions.

A landmark-only dataset (every POI of structure 0) says nothing about which POIs belong to one object.
One prior of all of them is useless where the objects lie anywhere relative to each other (three
polygons placed freely: the whole configuration's spread is about its radius), although each object's
own corners are rigid, and it is those the model confuses. So the planner splits the POIs into groups
whose pairwise distances hold across the training cases, and plans a prior per group.

Dissimilarity of POIs ``i`` and ``j``: the coefficient of variation (std / mean) of their distance over
the cases that have both; it ignores where a case lies and how it is turned, but not its scale. Average
linkage on it, cut at :data:`DISTANCE_CV_CUT`: on the polygons phantom the corners of one polygon merge
below 0.15 (circumradius 11-16 mm, +-15 % anisotropic scale, 8 % jitter) and the polygons join only at
0.33 and above (placed anywhere in a 90 x 102 mm image); a rigid shape scaled by a uniform 0.7-1.4 has a
CV of about 0.19 for every pair and stays one group.
"""
from __future__ import annotations

from typing import List

import numpy as np
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.spatial.distance import squareform

DISTANCE_CV_CUT = 0.25  # average-linkage height at which POIs stop being one rigid group (see the docstring)
UNKNOWN_DISSIMILARITY = 10.0  # a pair fewer than two cases have: far above the cut, never joined by itself


def distance_variation(shapes: np.ndarray) -> np.ndarray:
    """``(P, P)`` coefficient of variation of each POI pair's distance over the cases ``(N, P, D)`` (mm, NaN:
    missing) that have both; :data:`UNKNOWN_DISSIMILARITY` where fewer than two cases do, 0 on the diagonal
    (and for a pair that always coincides)."""
    shapes = np.asarray(shapes, dtype=np.float64)
    distance = np.linalg.norm(shapes[:, :, None] - shapes[:, None], axis=-1)  # (N, P, P), NaN where missing
    both = np.isfinite(distance)
    count = both.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(both, distance, 0.0).sum(0) / count
        variance = np.where(both, (distance - mean) ** 2, 0.0).sum(0) / count
        cv = np.where(mean > 0, np.sqrt(variance) / mean, 0.0)
    cv = np.where(count >= 2, cv, UNKNOWN_DISSIMILARITY)
    np.fill_diagonal(cv, 0.0)
    return cv


def rigid_groups(shapes: np.ndarray, min_size: int, cut: float = DISTANCE_CV_CUT) -> List[List[int]]:
    """POI indices of each rigid group of the cases ``(N, P, D)`` (see the module docstring), each sorted,
    groups ordered by their first POI; a group of fewer than ``min_size`` POIs (``D + 1``: too few for a
    fit) is left out."""
    p = np.asarray(shapes).shape[1]
    if p < 2:
        return [list(range(p))] if p >= min_size else []
    cv = distance_variation(shapes)
    label = fcluster(linkage(squareform((cv + cv.T) / 2, checks=False), method="average"), cut, criterion="distance")
    groups = [np.nonzero(label == k)[0].tolist() for k in np.unique(label)]
    return sorted((g for g in groups if len(g) >= min_size), key=lambda g: g[0])

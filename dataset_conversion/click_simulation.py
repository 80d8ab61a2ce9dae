"""Clicks as arrays: where a simulated annotator clicks, and which voxels a click labels.

Everything here works on numpy arrays in numpy axis order (``[z,] y, x``) with
the spacing in the same order, in mm; :mod:`dataset_conversion.clicks` reads
and writes the files around it. Distances are Euclidean in mm between voxel
centres, so an anisotropic grid (thick slices) is handled as the patient is,
not as the array is.

Rules (the module docstring of :mod:`dataset_conversion.clicks` states them
for users):

* **Structure clicks** are drawn uniformly, without replacement, among the
  structure's *interior* voxels: those whose distance to the nearest voxel
  outside the structure is at least ``fraction`` times the largest such
  distance in the structure. The threshold is relative, so a thin structure
  (one voxel thick, say) falls back to its deepest voxels instead of having
  none. Beyond the image's edge counts as outside: a structure cut by the
  field of view is not clicked on the cut.
* **Background clicks** are drawn among background voxels at least
  ``margin_mm`` from every structure voxel; where no background voxel is that
  far, among those at least ``fraction`` times the farthest background
  distance (the deepest background).
* **Painting** a click labels the voxel that contains it plus every voxel
  whose centre lies within ``radius_mm`` of it; where the balls of two clicks
  overlap, the nearer click wins. With ``truth`` (simulation), a voxel is
  labelled only where the dense truth agrees, so a simulated annotation is
  never wrong.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from scipy import ndimage

#: Slack (mm) on "within radius_mm", so a voxel exactly on the sphere counts despite rounding.
RADIUS_TOLERANCE_MM = 1e-6


@dataclass(frozen=True)
class Click:
    """One click: the class clicked (0 = background) and where, as a continuous numpy-order index (D,)."""

    label: int
    array_index: Tuple[float, ...]


def border_distance_mm(mask: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """Per voxel of ``mask`` (bool, shape S), the distance in mm to the nearest voxel centre outside it
    (0 outside the mask). The image is padded with one outside voxel per side, so its edge is a border."""
    padded = np.pad(mask.astype(bool), 1, constant_values=False)
    distance = ndimage.distance_transform_edt(padded, sampling=tuple(float(s) for s in spacing))
    return distance[tuple(slice(1, -1) for _ in mask.shape)]


def interior_voxels(mask: np.ndarray, spacing: Sequence[float], fraction: float) -> Tuple[np.ndarray, float]:
    """``(K, D)`` integer array indices of the voxels of ``mask`` at least ``fraction`` x its deepest
    border distance from its border, and that required distance in mm (0 and an empty array for an
    empty mask)."""
    distance = border_distance_mm(mask, spacing)
    deepest = float(distance.max()) if distance.size else 0.0
    if deepest <= 0:
        return np.zeros((0, mask.ndim), dtype=np.int64), 0.0
    required = fraction * deepest
    return np.argwhere(distance >= required - RADIUS_TOLERANCE_MM), required


def background_voxels(dense: np.ndarray, spacing: Sequence[float], margin_mm: float,
                      fraction: float) -> np.ndarray:
    """``(K, D)`` array indices of background voxels (``dense == 0``) far enough from every structure.

    Distance to structures only (the image edge is no structure); at least ``margin_mm``, or, where no
    background voxel is that far, at least ``fraction`` x the farthest one's distance.
    """
    background = dense == 0
    if not background.any():
        return np.zeros((0, dense.ndim), dtype=np.int64)
    if background.all():
        return np.argwhere(background)
    distance = ndimage.distance_transform_edt(background, sampling=tuple(float(s) for s in spacing))
    farthest = float(distance.max())
    required = margin_mm if farthest >= margin_mm else fraction * farthest
    return np.argwhere(background & (distance >= required - RADIUS_TOLERANCE_MM))


def draw_clicks(dense: np.ndarray, spacing: Sequence[float], per_structure: int, background: int,
                rng: np.random.Generator, fraction: float = 0.5, margin_mm: float = 5.0) -> List[Click]:
    """Simulated clicks on one densely labelled case (``dense``: integer array, shape S, 0 = background).

    ``per_structure`` clicks on every label value present (fewer where the structure has fewer interior
    voxels), then ``background`` background clicks, in label order; ``rng`` alone decides which.
    """
    clicks: List[Click] = []
    # Each structure's distances within its bounding box: exact (the box's outer ring is outside the
    # structure, as beyond the image edge is), and far cheaper than whole-image transforms on a large CT.
    boxes = ndimage.find_objects(dense) if dense.max() > 0 else []
    for value, box in enumerate(boxes, start=1):
        if box is None:
            continue
        candidates, _ = interior_voxels(dense[box] == value, spacing, fraction)
        clicks += _choose(candidates + np.array([s.start for s in box]), per_structure, value, rng)
    if background > 0:
        clicks += _choose(background_voxels(dense, spacing, margin_mm, fraction), background, 0, rng)
    return clicks


def _choose(candidates: np.ndarray, count: int, label: int, rng: np.random.Generator) -> List[Click]:
    if count <= 0 or len(candidates) == 0:
        return []
    picked = rng.choice(len(candidates), size=min(count, len(candidates)), replace=False)
    return [Click(label, tuple(float(c) for c in candidates[i])) for i in sorted(picked)]


def containing_voxel(click: Click) -> Tuple[int, ...]:
    """The voxel whose extent holds the click (voxel centres sit on integer indices)."""
    return tuple(int(np.floor(c + 0.5)) for c in click.array_index)


def paint_clicks(shape: Sequence[int], spacing: Sequence[float], clicks: Sequence[Click], radius_mm: float,
                 ignore_value: int, truth: Optional[np.ndarray] = None) -> np.ndarray:
    """The sparse label map (int32, ``shape``): ``ignore_value`` everywhere except what the clicks label.

    Each click labels its containing voxel and every voxel centre within ``radius_mm`` (mm, Euclidean
    with ``spacing``); overlapping balls go to the nearest click. With ``truth`` (same shape), a voxel
    is labelled only where ``truth`` equals the click's label. Clicks must lie inside the array.
    """
    spacing_arr = np.asarray(spacing, dtype=np.float64)
    sparse = np.full(tuple(shape), ignore_value, dtype=np.int32)
    nearest = np.full(tuple(shape), np.inf, dtype=np.float32)  # distance (mm) to the click that owns a voxel
    reach = np.floor(radius_mm / spacing_arr + RADIUS_TOLERANCE_MM).astype(int) + 1
    for click in clicks:
        position = np.asarray(click.array_index, dtype=np.float64)
        centre = np.clip(containing_voxel(click), 0, np.asarray(shape) - 1)  # a click on the image's outer edge
        lo = np.maximum(centre - reach, 0)
        hi = np.minimum(centre + reach + 1, shape)
        box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
        grid = np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi)], indexing="ij")
        offsets = np.stack([(g - p) * s for g, p, s in zip(grid, position, spacing_arr)], axis=-1)
        distance = np.sqrt((offsets ** 2).sum(axis=-1))
        inside = distance <= radius_mm + RADIUS_TOLERANCE_MM
        inside[tuple(centre - lo)] = True
        if truth is not None:
            inside &= truth[box] == click.label
        take = inside & (distance < nearest[box])
        sparse[box][take] = click.label
        nearest[box][take] = distance[take]
    return sparse


def annotated_voxels(sparse: np.ndarray, ignore_value: int) -> Dict[str, int]:
    """``{"annotated": voxels not ignore, "total": all voxels}`` of one sparse map."""
    return {"annotated": int(np.count_nonzero(sparse != ignore_value)), "total": int(sparse.size)}

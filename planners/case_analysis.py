"""What one training case tells the planner about its points (the per-case part of the POI fingerprint).

Everything is measured in the image's *grid frame*: continuous numpy index
``([z,] y, x)`` times the spacing, in millimetres. Distances there are true
millimetres for any orthonormal direction matrix, and positions are comparable
across cases that share an orientation, which is what nnU-Net itself assumes.
Runs in worker processes, so it takes and returns only plain data.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import SimpleITK as sitk
from scipy import ndimage
from scipy.spatial import cKDTree

from poi_nnunet.geometry import ImageGeometry
from poi_nnunet.pois import read_poi_file

# A structure's neighbours are the (up to) two POI-bearing structures whose centres lie within this
# factor of the nearest one's distance: the vertebra above and below, but not two below at the end
# of a scan, where only one neighbour exists.
NEIGHBOUR_DISTANCE_FACTOR = 1.5
MAX_NEIGHBOURS = 2


def analyze_case(case: str, image_file: str, label_file: Optional[str], poi_file: Optional[str],
                 ignore_label: Optional[int] = None) -> Dict[str, Any]:
    """Measure field of view, structure extents, POI positions and their surface and neighbour distances;
    for sparse labels (an ``ignore_label``), the extent of each class's clicks instead of the structures' (the
    POIs are then measured as in a landmark-only dataset: whole-image boxes, no surface distances)."""
    geo = ImageGeometry.from_file(image_file)
    spacing = geo.spacing[::-1]  # array order
    shape = np.array(geo.size[::-1])
    result: Dict[str, Any] = {
        "case": case,
        "dim": geo.dim,
        "spacing": spacing.tolist(),
        "shape": shape.tolist(),
        "fov_mm": (shape * spacing).tolist(),
        "structures": {},
        "points": [],
        "poi_bearing_fraction": 0.0,
    }
    if ignore_label is not None and label_file is not None and Path(label_file).is_file():
        result["annotated_extent_mm"] = annotated_extents(
            sitk.GetArrayFromImage(sitk.ReadImage(label_file)), spacing, ignore_label)
    pois = read_poi_file(poi_file) if poi_file and Path(poi_file).is_file() else None
    if pois is None or len(pois) == 0:
        return result
    label = None
    # sparse labels hold a few clicks, not the structures: their boxes and surfaces would be the clicks' (POIs
    # "far from the surface" by tens of mm, flagged and dropped), so POIs are measured as without masks
    if label_file is not None and Path(label_file).is_file() and ignore_label is None:
        label = sitk.GetArrayFromImage(sitk.ReadImage(label_file))
    grid = geo.world_to_array(pois.positions()) * spacing  # (N, dim) grid mm
    structures = sorted({p.structure for p in pois})
    boxes = _bounding_boxes(label, structures, shape)
    result["structures"] = {str(s): _structure_stats(boxes[s], spacing) for s in structures}
    _add_neighbour_crops(result["structures"])
    result["poi_bearing_fraction"] = _bearing_fraction(label, structures, boxes)
    occluded = _occluded(label, pois, grid / spacing) if geo.dim == 2 else [False] * len(pois)
    surface = _surface_distances(label, pois, grid, boxes, spacing)
    nearest = _nearest_same_structure(pois, grid)
    for i, p in enumerate(pois):
        result["points"].append({
            "structure": p.structure, "poi": p.poi, "grid_mm": grid[i].tolist(),
            "surface_distance_mm": None if occluded[i] else surface[i], "occluded": occluded[i],
            "nearest_poi_mm": nearest[i],
        })
    return result


def annotated_extents(label: np.ndarray, spacing: np.ndarray, ignore_label: int) -> Dict[str, float]:
    """Per clicked class of a sparse label map (not background, not the ignore label): the diagonal (mm)
    of the box around its clicked voxels' centres, an upper bound of their largest pairwise distance."""
    out: Dict[str, float] = {}
    boxes = ndimage.find_objects(np.where(label == ignore_label, 0, label).astype(np.int64, copy=False))
    for index, box in enumerate(boxes):
        if box is not None:
            size = np.array([b.stop - b.start - 1 for b in box], float) * spacing
            out[str(index + 1)] = float(np.linalg.norm(size))
    return out


def _bounding_boxes(label: Optional[np.ndarray], structures: List[int],
                    shape: np.ndarray) -> Dict[int, Tuple[slice, ...]]:
    """Voxel bounding box per structure; structure 0 (and any case without labels) is the whole image."""
    whole = tuple(slice(0, int(n)) for n in shape)
    out: Dict[int, Tuple[slice, ...]] = {}
    objects = ndimage.find_objects(label.astype(np.int64, copy=False)) if label is not None else []
    for s in structures:
        if s == 0 or label is None:
            out[s] = whole
        elif s - 1 < len(objects) and objects[s - 1] is not None:
            out[s] = objects[s - 1]
        else:  # the validator guarantees presence; stay defined anyway
            out[s] = whole
    return out


def _structure_stats(box: Tuple[slice, ...], spacing: np.ndarray) -> Dict[str, Any]:
    lo = np.array([b.start for b in box], float)
    hi = np.array([b.stop for b in box], float)
    # voxel i covers [i - 0.5, i + 0.5], so a box of voxels [lo, hi) spans (hi - lo) voxels
    return {
        "extent_mm": ((hi - lo) * spacing).tolist(),
        "box_mm": [((lo - 0.5) * spacing).tolist(), ((hi - 0.5) * spacing).tolist()],
        "centre_mm": ((lo + hi - 1) / 2 * spacing).tolist(),
    }


def _add_neighbour_crops(stats: Dict[str, Dict[str, Any]]) -> None:
    """Size of a crop centred on each structure that also holds its neighbours (seed 000's vertebra crops)."""
    keys = [k for k in stats if k != "0"]
    centres = np.array([stats[k]["centre_mm"] for k in keys]) if keys else np.zeros((0, 1))
    for i, k in enumerate(keys):
        members = [k]
        if len(keys) > 1:
            d = np.linalg.norm(centres - centres[i], axis=1)
            d[i] = np.inf
            order = np.argsort(d)[:MAX_NEIGHBOURS]
            members += [keys[j] for j in order if d[j] <= NEIGHBOUR_DISTANCE_FACTOR * d[order[0]]]
        lo = np.min([stats[m]["box_mm"][0] for m in members], axis=0)
        hi = np.max([stats[m]["box_mm"][1] for m in members], axis=0)
        centre = np.array(stats[k]["centre_mm"])
        stats[k]["neighbours"] = [int(m) for m in members[1:]]
        stats[k]["crop_with_neighbours_mm"] = (2 * np.maximum(centre - lo, hi - centre)).tolist()
    if "0" in stats:
        stats["0"]["neighbours"] = []
        stats["0"]["crop_with_neighbours_mm"] = stats["0"]["extent_mm"]


def _bearing_fraction(label: Optional[np.ndarray], structures: List[int], boxes: Dict[int, Tuple[slice, ...]]) -> float:
    """Fraction of the image's voxels that belong to a structure carrying POIs (1.0 for structure 0)."""
    if label is None or 0 in structures:
        return 1.0
    count = 0
    for s in structures:
        count += int(np.count_nonzero(label[boxes[s]] == s))
    return count / float(label.size)


def _surface_distances(label: Optional[np.ndarray], pois, grid: np.ndarray, boxes,
                       spacing: np.ndarray) -> List[Optional[float]]:
    """Distance (mm) from each POI to the nearest boundary voxel centre of its own structure.

    Structure 0 has no surface (the whole image is the structure), so its points get ``None``.
    """
    out: List[Optional[float]] = [None] * len(pois)
    if label is None:
        return out
    by_structure: Dict[int, List[int]] = {}
    for i, p in enumerate(pois):
        if p.structure != 0:
            by_structure.setdefault(p.structure, []).append(i)
    for s, idx in by_structure.items():
        box = boxes[s]
        padded = tuple(slice(max(b.start - 1, 0), b.stop + 1) for b in box)
        mask = label[padded] == s
        if not mask.any():
            continue
        boundary = mask & ~ndimage.binary_erosion(mask, border_value=0)
        offset = np.array([b.start for b in padded], float)
        surface_mm = (np.argwhere(boundary) + offset) * spacing
        dist, _ = cKDTree(surface_mm).query(grid[idx])
        for i, d in zip(idx, np.atleast_1d(dist)):
            out[i] = float(d)
    return out


def _occluded(label: Optional[np.ndarray], pois, index: np.ndarray) -> List[bool]:
    """Per POI of a 2D case: whether the voxel nearest to it holds *another* structure's label.

    A 2D image may be a projection (an X-ray), where one label map cannot show a structure behind
    another: a lung's outline runs on behind the heart, and its POIs there lie inside the heart's label,
    far from the lung's visible surface though placed right. Their surface distance says nothing, so it
    is not measured (and such POIs are never flagged by cleaning). A 3D label map shows every structure
    whole, so there a POI inside another structure is misplaced, and it stays checked.
    """
    if label is None:
        return [False] * len(pois)
    voxel = np.clip(np.rint(index).astype(int), 0, np.array(label.shape) - 1)
    under = label[tuple(voxel.T)]
    return [bool(p.structure != 0 and u != 0 and u != p.structure) for p, u in zip(pois, under)]


def _nearest_same_structure(pois, grid: np.ndarray) -> List[Optional[float]]:
    """Distance (mm) to the closest other POI of the same structure in this case."""
    out: List[Optional[float]] = [None] * len(pois)
    structures = np.array([p.structure for p in pois])
    for s in np.unique(structures):
        idx = np.flatnonzero(structures == s)
        if len(idx) < 2:
            continue
        d = np.linalg.norm(grid[idx][:, None] - grid[idx][None], axis=-1)
        np.fill_diagonal(d, np.inf)
        for i, v in zip(idx, d.min(axis=1)):
            out[i] = float(v)
    return out

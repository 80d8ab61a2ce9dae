"""A case's uv(w) target map: each voxel of a structure gets the template coordinate of its correspondent.

Seed 001 (DenseSeg), section 2.1.1, per structure with a template (:mod:`poi_nnunet.uv.template`):

1. the case's POIs ``L_i`` (mm: voxel index times spacing) are carried onto the template's ``T_i`` by
   the least-squares similarity ``S`` (rotation, isotropic scale, translation, no reflection; Umeyama,
   :func:`poi_nnunet.shape_prior.similarity_fit`);
2. the sparse displacement ``d_i = T_i - S(L_i)`` left after it is interpolated linearly over the
   mapped POIs ``S(L_i)`` (``scipy.interpolate.LinearNDInterpolator``: a Delaunay triangulation,
   barycentric weights, in 2D and 3D);
3. a voxel ``x`` of the structure gets ``t = S(x) + d(S(x))``, and its uv is ``template.to_uv(t)``.

At a POI ``t = T_i`` exactly, so the map read at a POI is that POI's template uv; an affine deformation
of the template is reproduced exactly inside the hull (linear interpolation of an affine field).

**Undefined voxels are NaN**: voxels of a structure outside the convex hull of its POIs (linear
interpolation has no value there, as in the seed), voxels of structures without a template or with
fewer than ``D + 1`` affinely independent valid POIs in the case, and every voxel outside the
structures. They are not supervised by the dense term; the trainer's landmark term (the predicted map
sampled at the POIs, seed Eq. 4) supervises the border, where contour POIs lie.

One label per voxel (the label map), so one ``D``-channel map holds every structure: its size depends
neither on the number of POIs nor on the number of structures.
"""
from __future__ import annotations

from typing import Mapping, Sequence, Tuple

import numpy as np
from scipy import ndimage
from scipy.interpolate import LinearNDInterpolator
from scipy.spatial import Delaunay, QhullError

from ..shape_prior import similarity_fit
from .template import UvTemplate, UvTemplates

RANK_TOLERANCE = 1e-6  # smallest singular value / largest below which the POIs span fewer than D axes

PointKey = Tuple[int, int]  # (structure label, POI id)


def uv_target_map(labels: np.ndarray, points: Mapping[PointKey, Sequence[float]], spacing_mm: Sequence[float],
                  templates: UvTemplates) -> np.ndarray:
    """``(D, *S)`` float32 uv map of a case (NaN where undefined; see the module docstring).

    ``labels`` ``S`` (``D`` axes): the structure label of each voxel (values <= 0: no structure).
    ``points``: ``(structure, poi)`` -> continuous voxel index ``(D,)`` of ``labels``' axes; pass only
    valid (not cleaned) points. ``spacing_mm`` ``(D,)``: mm per voxel along each axis of ``labels``.
    """
    labels = np.asarray(labels)
    dim = labels.ndim
    spacing = np.asarray(spacing_mm, dtype=np.float64).reshape(-1)
    if spacing.shape != (dim,):
        raise ValueError(f"spacing {spacing_mm} for a {dim}-axis label map")
    if len(templates) and templates.dim != dim:
        raise ValueError(f"{templates.dim}-axis templates for a {dim}-axis label map")
    out = np.full((dim,) + labels.shape, np.nan, dtype=np.float32)
    boxes = ndimage.find_objects(np.maximum(labels, 0).astype(np.int64, copy=False))
    for template in templates:
        s = template.structure
        if s <= 0 or s > len(boxes) or boxes[s - 1] is None:
            continue
        pois = [p for p in template.pois if (s, p) in points]
        if len(pois) < dim + 1:
            continue
        case_mm = np.array([points[(s, p)] for p in pois], dtype=np.float64).reshape(-1, dim) * spacing
        target = template.points_mm[template.index(pois)]
        voxels = _structure_voxels(labels, s, boxes[s - 1], case_mm / spacing)
        if len(voxels):
            uv = structure_uv(voxels * spacing, case_mm, target, template)
            out[(slice(None),) + tuple(voxels.T)] = uv.T
    return out


def structure_uv(voxels_mm: np.ndarray, case_mm: np.ndarray, target_mm: np.ndarray,
                 template: UvTemplate, hull_margin_mm: float = 0.0) -> np.ndarray:
    """``(M, D)`` uv of positions ``voxels_mm`` ``(M, D)`` of one structure whose POIs lie at ``case_mm``
    ``(P, D)`` and are ``target_mm`` ``(P, D)`` in ``template`` (NaN outside the POIs' hull, and all NaN
    where they span fewer than ``D`` axes).

    ``hull_margin_mm > 0`` (case mm) also gives a value to positions outside the hull by at most that
    much: the residual displacement is read where the segment from the position to the POIs' centroid
    enters the hull (:func:`hull_entry`), so the value continues the one inside. The target maps keep
    the margin at 0; ``--add-points`` uses it, because a point added on a convex outline between two
    contour POIs lies just outside their chord.
    """
    dim = case_mm.shape[1]
    centred = case_mm - case_mm.mean(0)
    singular = np.linalg.svd(centred, compute_uv=False)
    if len(case_mm) < dim + 1 or singular[-1] <= RANK_TOLERANCE * max(singular[0], 1e-300):
        return np.full(voxels_mm.shape, np.nan)
    similarity = similarity_fit(case_mm, target_mm)
    mapped = similarity.apply(case_mm)
    try:
        hull = Delaunay(mapped)
    except QhullError:  # numerically flat despite the rank test
        return np.full(voxels_mm.shape, np.nan)
    displacement = LinearNDInterpolator(hull, target_mm - mapped)
    y = similarity.apply(voxels_mm)
    d = displacement(y)
    outside = ~np.isfinite(d).all(1)
    if hull_margin_mm > 0 and outside.any():
        entry = hull_entry(y[outside], hull, mapped.mean(0))
        near = np.linalg.norm(y[outside] - entry, axis=1) <= hull_margin_mm * similarity.scale
        rows = np.flatnonzero(outside)[near]
        d[rows] = displacement(entry[near])
    return template.to_uv(y + d)


def hull_entry(points: np.ndarray, hull: Delaunay, centre: np.ndarray, steps: int = 40) -> np.ndarray:
    """``(M, D)``: for each of ``points`` ``(M, D)`` outside the convex ``hull``, a position on the segment
    to ``centre`` (inside the hull) within ``2^-steps`` of the segment's length of where it enters the
    hull, on the inside (bisection: the hull is convex, so the segment crosses its boundary once)."""
    points = np.asarray(points, dtype=np.float64)
    lo = np.zeros(len(points))  # fraction of the way to the centre: outside at lo, inside at hi
    hi = np.ones(len(points))
    for _ in range(steps):
        mid = (lo + hi) / 2
        inside = hull.find_simplex(points + (centre - points) * mid[:, None]) >= 0
        hi = np.where(inside, mid, hi)
        lo = np.where(inside, lo, mid)
    return points + (centre - points) * hi[:, None]


def _structure_voxels(labels: np.ndarray, structure: int, box: Tuple[slice, ...], case_voxels: np.ndarray) -> np.ndarray:
    """``(M, D)`` integer indices of the voxels of ``structure`` inside its ``box`` and the POIs' bounding box
    (voxels beyond the latter are outside their hull: no need to interpolate there)."""
    lo = np.maximum([b.start for b in box], np.floor(case_voxels.min(0)).astype(int))
    hi = np.minimum([b.stop for b in box], np.floor(case_voxels.max(0)).astype(int) + 1)
    if np.any(hi <= lo):
        return np.zeros((0, labels.ndim), dtype=int)
    window = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    local = np.argwhere(labels[window] == structure)
    return local + lo

"""Morphological smoothing of a fused pseudo label map (seed 002, section 3.1.3: "after morphological smoothing,
the pseudo mask is used to train the final model").

The fused map of three 2D models is ragged: slices where one plane's model dropped out leave cracks, single
voxels where the models disagreed stick out as spurs or float around as specks, and a vertebral body may have
holes. :func:`smooth_label_map` cleans each chosen label on its own, in this order:

1. binary closing (dilate, then erode) with an ellipsoid of ``closing_radius_mm``: bridges cracks and fills
   dents narrower than about twice the radius;
2. binary opening (erode, then dilate) with an ellipsoid of ``opening_radius_mm``: removes spurs, specks and
   bridges thinner than about twice the radius;
3. hole filling (``scipy.ndimage.binary_fill_holes``): background pockets the label encloses, in the full
   dimensionality of the map (in 3D the spinal canal is open at both ends and stays; on a single 2D axial
   slice it would be filled, so pass ``fill_holes=False`` there);
4. keeping the largest connected component (face connectivity, ties to the first component in raster order):
   a vertebra is one piece, so whatever else carries its label is a misclassification.

Radii are in mm and become a per-axis number of voxels through the spacing (:func:`ellipsoid_structuring_element`),
so the same call does the same thing on isotropic and anisotropic grids. The defaults are for vertebrae on
seed 002's 1 mm grid. A 2 mm closing bridges cracks up to 4 voxels wide (where one plane's model dropped out
for a slice or two) and fills dents narrower than ~4 mm, while the real concavities of a lumbar vertebra, such
as the spinal canal (~15 mm across) and the notches between its processes, are much wider. A 1.5 mm opening
(on a 1 mm grid the 3x3x3 cube without its 8 corners) removes spurs, one-voxel bumps, specks and bridges
thinner than 3 mm, while laminae, pedicles and processes are thicker; it costs the 8 corner voxels of a box.
A 1 mm opening would be the 6-neighbour cross, which leaves the first voxel of every spur standing and
shaves the edges off a box. Closing comes first so that a cracked vertebra is joined before step 4 picks one
piece of it.

How labels are put back together (each label was smoothed without looking at the others):

* labels not in ``labels_to_smooth`` (and background 0 only where no smoothed label claims it) are never
  changed; a smoothed label cannot grow onto them;
* a voxel a smoothed label keeps stays with it, whoever else claims it ("the original label wins");
* a voxel a label loses, or a background voxel, goes to the one smoothed label that claims it, and to
  background when none or several do (contested voxels, e.g. between two neighbouring vertebrae that both
  close towards each other, are left out of the pseudo mask rather than decided arbitrarily).

Rarely, losing a contested voxel can split a label that step 4 left in one piece; nothing re-joins it.
Arrays are in numpy axis order and ``spacing_mm`` follows that order (the reverse of SimpleITK's GetSpacing).
"""
from __future__ import annotations

from typing import Iterable, Sequence, Tuple

import numpy as np
from scipy import ndimage

#: Closing radius (mm): bridges the cracks (up to 4 voxels on a 1 mm grid) left where one plane's model dropped out.
DEFAULT_CLOSING_RADIUS_MM = 2.0
#: Opening radius (mm): removes spurs, bumps and bridges thinner than 3 mm (on a 1 mm grid), thinner than any part
#: of a lumbar vertebra.
DEFAULT_OPENING_RADIUS_MM = 1.5

# Offsets exactly on the ellipsoid's surface (e.g. radius 3 mm, spacing 1.5 mm, offset 2) belong to it
# whatever floating-point rounding says.
_EPS = 1e-9


def ellipsoid_structuring_element(radius_mm: float, spacing_mm: Sequence[float]) -> np.ndarray:
    """Boolean structuring element of every voxel offset within ``radius_mm`` of the centre, in mm.

    Offset ``i`` (voxels, per axis) belongs when ``Σ_d (i_d * spacing_d / radius)² <= 1``, so the half-width
    along axis ``d`` is ``floor(radius / spacing_d)`` voxels and the element is an ellipsoid in voxel space on
    an anisotropic grid. Shape ``(2 * half_width_d + 1, ...)``, one axis per entry of ``spacing_mm``; a radius
    smaller than every spacing (or 0) gives the single centre voxel, i.e. no change.
    """
    spacing = np.asarray(spacing_mm, dtype=np.float64)
    if spacing.ndim != 1 or spacing.size == 0 or np.any(~np.isfinite(spacing)) or np.any(spacing <= 0):
        raise ValueError(f"spacing must be positive numbers, one per axis; got {tuple(spacing_mm)}")
    if not np.isfinite(radius_mm) or radius_mm < 0:
        raise ValueError(f"radius must be a finite number >= 0 mm, got {radius_mm}")
    if radius_mm == 0:
        return np.ones((1,) * spacing.size, dtype=bool)
    half = np.floor(radius_mm / spacing + _EPS).astype(int)
    grids = np.meshgrid(*[np.arange(-h, h + 1) * s / radius_mm for h, s in zip(half, spacing)], indexing="ij")
    return sum(g ** 2 for g in grids) <= 1.0 + _EPS


def structuring_element_half_widths(radius_mm: float, spacing_mm: Sequence[float]) -> Tuple[int, ...]:
    """Voxels the element of ``radius_mm`` reaches along each axis: ``floor(radius / spacing)``."""
    return tuple((s - 1) // 2 for s in ellipsoid_structuring_element(radius_mm, spacing_mm).shape)


def smooth_label_map(labels: np.ndarray, spacing_mm: Sequence[float], labels_to_smooth: Iterable[int],
                     closing_radius_mm: float = DEFAULT_CLOSING_RADIUS_MM,
                     opening_radius_mm: float = DEFAULT_OPENING_RADIUS_MM, *, fill_holes: bool = True,
                     keep_largest_component: bool = True) -> np.ndarray:
    """Label map of the same shape and dtype with each label of ``labels_to_smooth`` smoothed (module docstring).

    ``labels``: integer label map ``(*spatial)``, 2D or 3D (any number of axes works), values >= 0, 0 the
    background. ``spacing_mm``: voxel size per axis in mm, numpy axis order. ``labels_to_smooth``: foreground
    labels to clean; labels absent from the map are skipped (a case may lack a vertebra). A radius of 0 skips
    that step; ``fill_holes`` and ``keep_largest_component`` switch off steps 3 and 4. The input is not changed.
    """
    labels = np.asarray(labels)
    if labels.dtype.kind not in "iu":
        raise ValueError(f"labels must be an integer label map, got dtype {labels.dtype}")
    if len(spacing_mm) != labels.ndim:
        raise ValueError(f"spacing {tuple(spacing_mm)} does not fit a label map with {labels.ndim} axes")
    chosen = sorted({int(v) for v in labels_to_smooth})
    if any(v <= 0 for v in chosen):
        raise ValueError(f"labels_to_smooth must be foreground labels (> 0), got {chosen}")
    if labels.size and int(labels.min()) < 0:
        raise ValueError("label maps must not hold negative values")
    closing = ellipsoid_structuring_element(closing_radius_mm, spacing_mm)
    opening = ellipsoid_structuring_element(opening_radius_mm, spacing_mm)
    if not chosen or labels.size == 0:
        return labels.copy()

    # Claims of the smoothed labels: how many claim each voxel (saturating at 2, all the rule needs), the
    # last claimant (meaningful where exactly one claims), and where a label keeps a voxel it had.
    claims = np.zeros(labels.shape, dtype=np.uint8)
    claimant = np.zeros(labels.shape, dtype=labels.dtype)
    kept = np.zeros(labels.shape, dtype=bool)
    boxes = ndimage.find_objects(labels, max_label=max(chosen))
    for label in chosen:
        box = boxes[label - 1]
        if box is None:
            continue
        mask = labels[box] == label
        smoothed = _smooth_mask(mask, closing, opening, fill_holes, keep_largest_component)
        # the result stays inside the label's bounding box: closing with a symmetric convex element never
        # reaches past a set's bounding box, and every later step only removes voxels or fills enclosed ones
        count = claims[box]
        count[smoothed] = np.minimum(count[smoothed], 1) + 1
        claimant[box][smoothed] = label
        kept[box] |= smoothed & mask

    is_smoothed = np.isin(labels, chosen)
    out = labels.copy()
    out[is_smoothed] = 0
    out[kept] = labels[kept]
    taken = (claims == 1) & ~kept & ((labels == 0) | is_smoothed)
    out[taken] = claimant[taken]
    return out


def _smooth_mask(mask: np.ndarray, closing: np.ndarray, opening: np.ndarray, fill_holes: bool,
                 keep_largest_component: bool) -> np.ndarray:
    """Steps 1-4 on one boolean mask; same shape.

    The mask is padded with background by more than the elements' half-widths first: scipy treats voxels
    beyond the array as background only while eroding (``border_value=0``), and without room to dilate into,
    the closing would then eat a mask that touches the edge of its crop.
    """
    pad = [max(c, o) // 2 + 1 for c, o in zip(closing.shape, opening.shape)]
    work = np.pad(mask, [(p, p) for p in pad])
    if closing.size > 1:
        work = ndimage.binary_closing(work, structure=closing)
    if opening.size > 1:
        work = ndimage.binary_opening(work, structure=opening)
    if fill_holes:
        work = ndimage.binary_fill_holes(work)
    if keep_largest_component and work.any():
        components, n = ndimage.label(work, structure=ndimage.generate_binary_structure(work.ndim, 1))
        if n > 1:
            sizes = np.bincount(components.ravel())[1:]
            work = components == int(np.argmax(sizes)) + 1
    return work[tuple(slice(p, p + s) for p, s in zip(pad, mask.shape))]


"""Overlap and surface metrics of label masks: Dice, ASD, inverse-frequency-weighted Dice.

NaN policy (also written into ``summary.json``):

* Dice is NaN when the label is absent from both masks (nothing to get
  right), and 0 when it is in only one of them.
* ASD is NaN when either mask of the label is empty (no surface to measure
  from), and when the reference holds nnU-Net's ignore label (a sparse
  reference has no true surface).
* Means skip NaN values and report how many values they averaged.

Spacings are in numpy axis order (``[z,] y, x``), i.e. the reverse of what
SimpleITK's ``GetSpacing`` returns, because the masks are numpy arrays.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterable, Mapping, Optional, Sequence, Tuple

import numpy as np
from scipy import ndimage


@dataclass(frozen=True)
class LabelMetrics:
    """Metrics of one label in one case, with the voxel counts behind them."""

    dice: float
    asd_mm: float
    ref_voxels: int
    pred_voxels: int


def dice(ref_mask: np.ndarray, pred_mask: np.ndarray) -> float:
    """``2|R∩P| / (|R| + |P|)``; NaN when both masks are empty."""
    ref_mask, pred_mask = np.asarray(ref_mask, bool), np.asarray(pred_mask, bool)
    total = int(ref_mask.sum()) + int(pred_mask.sum())
    if total == 0:
        return float("nan")
    return 2.0 * int(np.logical_and(ref_mask, pred_mask).sum()) / total


def surface(mask: np.ndarray) -> np.ndarray:
    """Voxels of the mask with a face neighbour outside it (the image border counts as outside)."""
    mask = np.asarray(mask, bool)
    inner = ndimage.binary_erosion(mask, structure=ndimage.generate_binary_structure(mask.ndim, 1), border_value=0)
    return mask & ~inner


def average_surface_distance(ref_mask: np.ndarray, pred_mask: np.ndarray, spacing: Sequence[float]) -> float:
    """Symmetric average surface distance in mm; NaN when either mask is empty.

    Every surface voxel of each mask contributes its distance (between voxel
    centres, scaled by ``spacing``) to the nearest surface voxel of the other
    mask; the result is the mean over all those surface voxels of both masks
    together (the pooled definition of Heimann et al. 2009), so it is symmetric.
    """
    ref_surface, pred_surface = surface(ref_mask), surface(pred_mask)
    n_ref, n_pred = int(ref_surface.sum()), int(pred_surface.sum())
    if n_ref == 0 or n_pred == 0:
        return float("nan")
    sampling = np.asarray(spacing, dtype=np.float64)
    if sampling.shape != (ref_surface.ndim,):
        raise ValueError(f"spacing {tuple(spacing)} does not fit masks with {ref_surface.ndim} axes")
    to_pred = ndimage.distance_transform_edt(~pred_surface, sampling=sampling)[ref_surface]
    to_ref = ndimage.distance_transform_edt(~ref_surface, sampling=sampling)[pred_surface]
    return float((to_pred.sum() + to_ref.sum()) / (n_ref + n_pred))


def inverse_frequency_weighted_dice(dice_by_label: Mapping[int, float], ref_voxels_by_label: Mapping[int, int]) -> float:
    """``Σ dice_m / A_m  /  Σ 1 / A_m`` with ``A_m`` the reference voxel count of label m.

    Rare labels weigh as much as common ones (seed 002's class-weighted Dice).
    Labels absent from the reference (``A_m = 0``, infinite weight) and labels
    with NaN Dice are left out; NaN when none is left. Seed 002's Eq. 5 sums
    over every class, background included; here, as in nnU-Net's metrics,
    background is not a label, so the value scores the structures alone (a
    well-segmented background would add its Dice, near 1, at the smallest
    weight, and raise the seed's number slightly).
    """
    weights, values = [], []
    for label, value in dice_by_label.items():
        count = int(ref_voxels_by_label.get(label, 0))
        if count > 0 and not np.isnan(value):
            weights.append(1.0 / count)
            values.append(value)
    if not weights:
        return float("nan")
    w = np.asarray(weights)
    return float(np.dot(w, values) / w.sum())


def label_metrics(ref: np.ndarray, pred: np.ndarray, spacing: Sequence[float], declared_labels: Iterable[int] = (),
                  ignore_label: Optional[int] = None) -> Dict[int, LabelMetrics]:
    """Dice and ASD of each label between two label maps on the same grid.

    The labels measured are those present in either map plus ``declared_labels``
    (so a declared label absent from both shows up, with NaN); background (0)
    and ``ignore_label`` are never measured. Voxels whose reference value is ``ignore_label`` do not count for Dice, and
    ASD is NaN throughout when there are any. Each label is measured inside the
    bounding box of both of its masks (plus one voxel), which gives the same
    numbers as the whole image at a fraction of the cost.
    """
    if ref.shape != pred.shape:
        raise ValueError(f"label maps differ in shape: {ref.shape} vs {pred.shape}")
    has_ignore = ignore_label is not None and bool(np.any(ref == ignore_label))
    ref_boxes, pred_boxes = _boxes(ref), _boxes(pred)
    out: Dict[int, LabelMetrics] = {}
    labels = (set(ref_boxes) | set(pred_boxes) | {int(v) for v in declared_labels}) - {0, ignore_label}
    for label in sorted(labels):
        box = _union_box(ref_boxes.get(label), pred_boxes.get(label), ref.shape)
        if box is None:
            out[label] = LabelMetrics(float("nan"), float("nan"), 0, 0)
            continue
        r, p = ref[box] == label, pred[box] == label
        if has_ignore:
            p &= ref[box] != ignore_label
        asd = float("nan") if has_ignore else average_surface_distance(r, p, spacing)
        out[label] = LabelMetrics(dice(r, p), asd, int(r.sum()), int(p.sum()))
    return out


def _boxes(labels: np.ndarray) -> Dict[int, Tuple[slice, ...]]:
    """Bounding box of every positive value of an integer label map."""
    arr = labels if labels.dtype.kind in "iu" else labels.astype(np.int64)
    if arr.dtype.kind == "i" and arr.size and arr.min() < 0:
        raise ValueError("label maps must not hold negative values")
    return {i + 1: box for i, box in enumerate(ndimage.find_objects(arr)) if box is not None}


def _union_box(a: Optional[Tuple[slice, ...]], b: Optional[Tuple[slice, ...]],
               shape: Tuple[int, ...]) -> Optional[Tuple[slice, ...]]:
    boxes = [x for x in (a, b) if x is not None]
    if not boxes:
        return None
    return tuple(
        slice(max(min(bx[d].start for bx in boxes) - 1, 0), min(max(bx[d].stop for bx in boxes) + 1, shape[d]))
        for d in range(len(shape))
    )

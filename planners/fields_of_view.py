"""Fields of view of long scans (seed 000's lower limb), planned from the POI fingerprint.

A whole-image dataset whose scans do not fit the configuration's patch at its
spacing (a leg from hip to ankle) is split into fields of view: groups of POI
channels that lie close enough along the scan to be seen in one patch. Stretches
without POIs (the shafts) belong to no field of view. Each field of view gets
its own model (``poi_train ... --fov NAME``), trained on crops centred on its
POIs; a new scan is searched by a whole-scan model, the coarse pass, planned by
nnU-Net's own rules (:func:`plan_coarse_configuration`), and each field of view
is placed at the middle of the box of its POIs' coarse estimates (see
:mod:`poi_nnunet.inference.fields_of_view` for why neither the segmentation nor
the image extent).

Grouping (:func:`plan_fields_of_view`): channels are sorted by their median
position along the axis the scan overflows most, then taken greedily: a channel
joins the current group while the group's box still fits the patch in every
case that holds it (the 95th percentile over cases of the box, plus the margin
on both sides); otherwise it opens the next group. The margin is what a
channel's target needs around it (the heatmap's support) plus one coarse voxel
(how far off the coarse estimate that centres the crop may be).
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from poi_nnunet.plan import FIELD_OF_VIEW_PREFIX

FOV_PERCENTILE = 95  # of the per-case box of a group's POIs


def overflow_axis(crop_mm: np.ndarray, patch_mm: np.ndarray) -> Optional[int]:
    """The configuration axis along which the scan exceeds the patch most; None where it fits the patch."""
    ratio = np.asarray(crop_mm, float) / np.asarray(patch_mm, float)
    return int(np.argmax(ratio)) if float(ratio.max()) > 1.0 else None


def plan_fields_of_view(shapes: np.ndarray, channels: Sequence[Dict[str, Any]], crop_mm: np.ndarray,
                        patch_mm: np.ndarray, margin_mm: np.ndarray) -> List[Dict[str, Any]]:
    """Fields of view of a whole-image configuration, ``[]`` where the scans fit its patch.

    ``shapes`` ``(cases, C, D)``: each case's position (mm, configuration axes) of each of the ``C``
    ``channels``, NaN where the case lacks it; ``crop_mm`` what a scan covers (the planned crop);
    ``patch_mm`` the patch's extent; ``margin_mm`` (per axis) the room a point needs on each side.
    Returns ``{"name", "channels": [{"structure", "poi"}], "extent_mm"}`` per field of view, in order
    along the scan; ``extent_mm`` is the box the crop must show (never more than the patch).
    """
    axis = overflow_axis(crop_mm, patch_mm)
    if axis is None:
        return []
    shapes = np.asarray(shapes, float)
    seen = np.isfinite(shapes).all(-1).any(0)
    if not seen.any():
        return []
    median = np.full(len(channels), np.inf)
    median[seen] = np.nanmedian(shapes[:, seen, axis], axis=0)
    order = [int(k) for k in np.argsort(median, kind="stable") if seen[k]]
    room = np.asarray(patch_mm, float) - 2 * np.asarray(margin_mm, float)
    groups: List[List[int]] = []
    for k in order:
        if groups and np.all(group_box_mm(shapes[:, groups[-1] + [k]]) <= room + 1e-9):
            groups[-1].append(k)
        else:
            groups.append([k])
    out = []
    for n, members in enumerate(groups, start=1):
        box = group_box_mm(shapes[:, members]) + 2 * np.asarray(margin_mm, float)
        out.append({"name": f"{FIELD_OF_VIEW_PREFIX}{n}",
                    "channels": [{"structure": channels[k]["structure"], "poi": int(channels[k]["poi"])}
                                 for k in sorted(members)],
                    "extent_mm": [round(float(v), 3) for v in np.minimum(box, patch_mm)]})
    return out


def group_box_mm(shapes: np.ndarray) -> np.ndarray:
    """Per axis, the 95th percentile over cases of the box (max - min) of a group's points ``(cases, K, D)``;
    cases holding none of them do not count, a case holding one has a box of 0."""
    finite = np.isfinite(shapes).all(-1)
    boxes = []
    for case, ok in zip(shapes, finite):
        if ok.any():
            boxes.append(case[ok].max(0) - case[ok].min(0))
    return np.percentile(np.array(boxes), FOV_PERCENTILE, axis=0)


# nnU-Net's own rule for searching 3d_lowres's spacing: grow in steps of 3%, and where some axes are more than
# twice as fine as the coarsest, grow only those first.
COARSE_SPACING_STEP = 1.03
COARSE_SPACING_ANISOTROPY = 2.0
MAX_COARSE_SPACING_STEPS = 1000


def next_coarse_spacing(spacing: np.ndarray) -> np.ndarray:
    """One step of nnU-Net's 3d_lowres spacing search: the axes finer than half the coarsest grow by 3%, or,
    where none is, every axis does (so an anisotropic grid becomes less so before it gets coarser)."""
    spacing = np.asarray(spacing, float)
    fine = spacing.max() / spacing > COARSE_SPACING_ANISOTROPY
    return np.where(fine, spacing * COARSE_SPACING_STEP, spacing) if fine.any() else spacing * COARSE_SPACING_STEP


def plan_coarse_configuration(plan_at: Callable[[np.ndarray, Tuple[int, ...]], Dict[str, Any]],
                              spacing: Sequence[float], crop_mm: np.ndarray) -> Dict[str, Any]:
    """nnU-Net configuration ``3d_coarse``: the finest spacing at which nnU-Net's own planning puts the whole
    scan (``crop_mm``, the 95th percentile of what scans cover) in one patch.

    ``plan_at(spacing, shape)`` is the planner's ``get_plans_for_configuration`` for a median image of
    ``shape`` voxels, so the patch, network topology and batch size at each spacing are what nnU-Net would
    choose for that image under its memory budget. The search starts at ``spacing`` (``3d_fullres``'s) and
    grows it as nnU-Net grows ``3d_lowres``'s (:func:`next_coarse_spacing`) until the planned patch covers
    the image. Why not ``3d_fullres``'s patch at a spacing stretched along the scan only: a leg of 800 x 130
    x 130 mm in a 64 x 40 x 40 patch gets 12.5 x 3.25 x 3.25 mm voxels, and nnU-Net's rotations, drawn in
    voxels, then shear the anatomy four to one; nnU-Net's own planning keeps the voxels near isotropic and
    gives the network as many poolings along the scan as it needs to see all of it.
    """
    crop_mm = np.asarray(crop_mm, float)
    current = np.asarray(spacing, float)
    for _ in range(MAX_COARSE_SPACING_STEPS):
        shape = tuple(int(v) for v in np.ceil(crop_mm / current - 1e-6))
        config = plan_at(current, shape)
        if np.all(np.asarray(config["patch_size"]) >= shape):
            config["batch_dice"] = False  # one scan per patch, as nnU-Net's 3d_lowres
            return config
        current = next_coarse_spacing(current)
    raise RuntimeError(f"no spacing up to {_mm(current)} mm puts the whole scan ({_mm(crop_mm)} mm) in one patch "
                       "of nnU-Net's planning; the coarse pass cannot be planned")


def _mm(v: np.ndarray) -> str:
    return " x ".join(f"{x:.4g}" for x in v)

"""Fields of view of long scans (seed 000's lower limb), planned from the POI fingerprint.

A whole-image dataset whose scans do not fit the configuration's patch at its
spacing (a leg from hip to ankle) is split into fields of view: groups of POI
channels that lie close enough along the scan to be seen in one patch. Stretches
without POIs (the shafts) belong to no field of view. Each field of view gets
its own model (``poi_train ... --fov NAME``), trained on crops centred on its
POIs; a new scan is searched by a whole-scan model at the coarse spacing
(:func:`coarse_configuration`), and each field of view is placed at the mean of
its POIs' coarse estimates (see :mod:`poi_nnunet.inference.fields_of_view` for
why neither the segmentation nor the image extent).

Grouping (:func:`plan_fields_of_view`): channels are sorted by their median
position along the axis the scan overflows most, then taken greedily: a channel
joins the current group while the group's box still fits the patch in every
case that holds it (the 95th percentile over cases of the box, plus the margin
on both sides); otherwise it opens the next group. The margin is what a
channel's target needs around it (the heatmap's support) plus one coarse voxel
(how far off the coarse estimate that centres the crop may be).
"""
from __future__ import annotations

import copy
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from poi_nnunet.plan import COARSE_CONFIGURATION

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
        out.append({"name": f"fov{n}",
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


def coarse_configuration(fullres: Dict[str, Any], coarse_spacing: Sequence[float], crop_mm: np.ndarray,
                         plans_name: str) -> Dict[str, Any]:
    """nnU-Net configuration ``3d_coarse``: the ``3d_fullres`` network and patch at the spacing where the
    whole scan fits the patch, so one patch shows all of it (the coarse pass that places the fields of view).

    A copy of the ``3d_fullres`` configuration with its own spacing, median shape and data identifier
    (nnU-Net preprocesses it like any configuration); its ``poi`` block is planned like every other.
    """
    config = copy.deepcopy(fullres)
    config.pop("poi", None)
    spacing = [float(v) for v in coarse_spacing]
    config["spacing"] = spacing
    config["median_image_size_in_voxels"] = [float(round(c / s, 2)) for c, s in zip(crop_mm, spacing)]
    config["data_identifier"] = f"{plans_name}_{COARSE_CONFIGURATION}"
    return config

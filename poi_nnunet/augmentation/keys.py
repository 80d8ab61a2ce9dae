"""The keypoint entries of an augmentation ``data_dict`` and how transforms read and write them.

nnU-Net's transforms pass a per-sample ``data_dict`` (``image``, ``segmentation``)
along the pipeline. Points ride in the same dict:

* ``keypoints``: ``Tensor[N, D]``, continuous voxel positions in the array
  order (``[z,] y, x``) of the tensor currently in ``image``; voxel centres on
  integers. Row ``i`` is *slot* ``i``: a slot always means the same POI, so
  heatmap channel ``i`` can be rendered from row ``i`` without a lookup.
* ``keypoints_valid``: ``bool[N]``, False for a POI that is not annotated in
  this case or has left the patch. Its row is still moved (for bookkeeping)
  but must not be used as a target. A point that has no position in the patch
  (caught in a fold of an elastic field) becomes NaN.
* ``patch_to_sample``: ``(D, D)`` linear part of the map from patch voxels to
  sample voxels (column ``i``: where one step along patch axis ``i`` goes;
  rotation and scaling augmentation set it; the loader turns it into mm).
* ``centre_layer``: which slot layer the sample is centred on; mirroring that
  exchanges left and right structures exchanges it too.
* ``structure_map``: ``Tensor[K, *spatial]`` float, per-voxel values that belong to
  the anatomy of the structure the voxel is in (uv(w) template coordinates), NaN
  where undefined; resampled with the image's own grid, never across structures
  (:mod:`poi_nnunet.augmentation.structure_maps`).

Transforms compute in float64 numpy and hand back the caller's float dtype.
"""
from __future__ import annotations

from typing import Tuple

import numpy as np
import torch

KEYPOINTS = "keypoints"
KEYPOINTS_VALID = "keypoints_valid"
# Per-sample entries that transforms keep up to date beside the points:
PATCH_TO_SAMPLE = "patch_to_sample"  # float64 (D, D): patch voxel step -> sample voxels (linear part)
CENTRE_LAYER = "centre_layer"  # int: slot layer of the structure a crop is centred on (-1 unknown)
STRUCTURE_MAP = "structure_map"  # float (K, *spatial): per-structure anatomical values, NaN undefined


def read_points(data_dict: dict) -> Tuple[np.ndarray, np.ndarray, torch.dtype]:
    """Pop the keypoints out of ``data_dict``: ``(points float64 (N, D), valid bool (N,), dtype)``.

    Popping keeps nnU-Net's own ``apply`` from calling its ``_apply_to_keypoints``,
    which raises. Missing ``keypoints_valid`` means every finite point is valid.
    """
    points = torch.as_tensor(data_dict.pop(KEYPOINTS))
    if points.ndim != 2:
        raise ValueError(f"{KEYPOINTS} must have shape (N, D), got {tuple(points.shape)}")
    dtype = points.dtype if points.is_floating_point() else torch.float64
    coords = points.detach().cpu().numpy().astype(np.float64)
    valid = data_dict.get(KEYPOINTS_VALID)
    if valid is None:
        valid_np = np.ones(len(coords), dtype=bool)
    else:
        valid_np = torch.as_tensor(valid).detach().cpu().numpy().astype(bool).reshape(len(coords))
    valid_np &= np.all(np.isfinite(coords), axis=1)
    return coords, valid_np, dtype


def write_points(data_dict: dict, coords: np.ndarray, valid: np.ndarray, dtype: torch.dtype) -> dict:
    """Put moved keypoints (and their validity) back into ``data_dict``."""
    data_dict[KEYPOINTS] = torch.as_tensor(np.ascontiguousarray(coords), dtype=dtype)
    data_dict[KEYPOINTS_VALID] = torch.as_tensor(np.ascontiguousarray(valid), dtype=torch.bool)
    return data_dict

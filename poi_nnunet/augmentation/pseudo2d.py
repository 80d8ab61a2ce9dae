"""nnU-Net's "dummy 2D" augmentation for anisotropic 3D data, extended to points.

For very anisotropic patches nnU-Net folds the first spatial axis into the
channels, augments in 2D and unfolds again. Points follow: the first coordinate
is set aside (the in-plane transform cannot move it) and the 2D transforms see
``(N, 2)`` keypoints. The sample is not resampled along that axis, so a point
is valid only if it already lies within the sample's extent there.
"""
from __future__ import annotations

import numpy as np
from batchgeneratorsv2.transforms.utils.pseudo2d import Convert2DTo3DTransform, Convert3DTo2DTransform

from ..geometry import inside_extent
from .keys import KEYPOINTS, read_points, write_points

FOLDED_AXIS_KEY = "keypoints_folded_axis"


class PointConvert3DTo2DTransform(Convert3DTo2DTransform):
    """Fold axis 0 into channels; keypoints keep their in-plane coordinates, axis 0 is stashed."""

    def apply(self, data_dict: dict, **params) -> dict:
        if data_dict.get(KEYPOINTS) is None:
            return super().apply(data_dict, **params)
        depth = data_dict["image"].shape[1]
        coords, valid, dtype = read_points(data_dict)
        if coords.shape[1] != 3:
            raise ValueError(f"dummy 2D augmentation needs 3D keypoints, got {coords.shape[1]} coordinates")
        valid &= inside_extent(coords[:, :1], (depth,))
        data_dict = super().apply(data_dict, **params)
        data_dict[FOLDED_AXIS_KEY] = coords[:, 0].copy()
        return write_points(data_dict, coords[:, 1:], valid, dtype)


class PointConvert2DTo3DTransform(Convert2DTo3DTransform):
    """Unfold the channels again and put the stashed axis-0 coordinate back in front."""

    def apply(self, data_dict: dict, **params) -> dict:
        folded = data_dict.pop(FOLDED_AXIS_KEY, None)
        if data_dict.get(KEYPOINTS) is None:
            return super().apply(data_dict, **params)
        coords, valid, dtype = read_points(data_dict)
        data_dict = super().apply(data_dict, **params)
        if folded is None:
            raise ValueError("keypoints reached Convert2DTo3D without having passed PointConvert3DTo2DTransform")
        return write_points(data_dict, np.concatenate([folded[:, None], coords], axis=1), valid, dtype)

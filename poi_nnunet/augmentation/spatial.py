"""nnU-Net's spatial augmentation (rotation, scaling, elastic deformation, crop), extended to points.

``SpatialTransform`` samples one map per sample and resamples the image with
``grid_sample``: patch voxel ``y`` reads the sample at ``x = T(y)``. A point
moves the other way, so :class:`PointSpatialTransform` rebuilds ``T`` from the
very parameters drawn for the image, inverts it for each point (exactly for the
affine part, by Newton's method on the displacement field otherwise) and checks
the result against the grid the image was sampled with.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from batchgeneratorsv2.transforms.spatial.spatial import SpatialTransform

from ..geometry import PatchSampling, inside_extent, interpolate_field
from .keys import KEYPOINTS, PATCH_TO_SAMPLE, STRUCTURE_MAP, read_points, write_points
from .structure_maps import move_structure_map

# How far (voxels) the point map may stray from the image's grid before we call it a bug:
# float32 grids are good to ~1e-5, a convention change in batchgeneratorsv2 is >= 0.5.
GRID_AGREEMENT_TOLERANCE = 1e-3


class PointSpatialTransform(SpatialTransform):
    """``SpatialTransform`` that also moves ``data_dict['keypoints']`` and updates ``keypoints_valid``.

    Takes exactly the arguments of ``SpatialTransform``. A point whose patch
    position falls outside ``[-0.5, size - 0.5]`` becomes invalid; its coordinates
    are kept as computed, never clamped (a point outside says where a target is
    not). Where an elastic field folds so that a point has no unique position,
    it has no position at all: its coordinates become NaN, so no target is
    rendered for it. ``patch_to_sample`` records the linear part of the patch ->
    sample map (rotation and scaling), from which the loader derives mm per patch step.
    A ``structure_map`` is resampled with the same grid, structure by structure
    (:func:`~poi_nnunet.augmentation.structure_maps.move_structure_map`).
    """

    def apply(self, data_dict: dict, **params) -> dict:
        structure_map = data_dict.pop(STRUCTURE_MAP, None)
        if structure_map is None:
            return self._apply_with_points(data_dict, **params)
        labels = data_dict["segmentation"]
        data_dict = self._apply_with_points(data_dict, **params)
        data_dict[STRUCTURE_MAP] = move_structure_map(structure_map, labels, data_dict["segmentation"], params,
                                                      self.patch_size, self.align_corners)
        return data_dict

    def _apply_with_points(self, data_dict: dict, **params) -> dict:
        if data_dict.get(KEYPOINTS) is None:
            return super().apply(data_dict, **params)
        sample_shape = tuple(data_dict["image"].shape[1:])
        coords, valid, dtype = read_points(data_dict)
        data_dict = super().apply(data_dict, **params)
        sampling = sampling_from_parameters(
            params, self.patch_size, sample_shape, self.center_deformation, self.align_corners
        )
        moved, solved = sampling.sample_to_patch(coords)
        if params["grid"] is not None:
            check_against_grid(sampling, params["grid"].numpy(), sample_shape, self.align_corners, moved[solved])
        moved[~solved] = np.nan
        valid = valid & solved & inside_extent(moved, self.patch_size)
        data_dict[PATCH_TO_SAMPLE] = sampling.linear.copy()
        return write_points(data_dict, moved, valid, dtype)


def sampling_from_parameters(
    params: dict,
    patch_size: Sequence[int],
    sample_shape: Sequence[int],
    center_deformation: bool,
    align_corners: bool = False,
) -> PatchSampling:
    """The patch -> sample map that ``SpatialTransform`` applies with ``params`` (from its ``get_parameters``).

    Without a grid it crops around ``floor(center)``. With one, patch voxel ``y`` gets
    ``g = A @ (y - (p - 1) / 2 + d(y)) + center - s / 2 - m`` (``m``: the grid mean it
    subtracts when it centres an elastic deformation), which ``grid_sample`` reads at
    ``x = g + (s - 1) / 2``, or ``x = g * (s - 1) / s + (s - 1) / 2`` with ``align_corners``.
    """
    patch = np.asarray(patch_size, dtype=np.float64)
    center = np.asarray(params["center_location_in_pixels"], dtype=np.float64)
    if params["grid"] is None:
        start = [math.floor(c) - int(p) // 2 for c, p in zip(center, patch_size)]
        return PatchSampling.crop(start, patch_size)
    dim = len(patch_size)
    linear = np.eye(dim) if params["affine"] is None else np.asarray(params["affine"], dtype=np.float64)
    displacement = params["elastic_offsets"]
    if displacement is not None:
        displacement = displacement.numpy()
    if center_deformation and displacement is not None:
        grid_mean = linear @ displacement.mean(axis=tuple(range(dim)), dtype=np.float64)
    else:
        grid_mean = np.zeros(dim)
    size = np.asarray(sample_shape, dtype=np.float64)
    scale = (size - 1) / size if align_corners else np.ones(dim)
    offset = scale * (center - size / 2 - grid_mean - linear @ ((patch - 1) / 2)) + (size - 1) / 2
    return PatchSampling(tuple(patch_size), scale[:, None] * linear, offset, displacement)


def check_against_grid(
    sampling: PatchSampling,
    grid: np.ndarray,
    sample_shape: Sequence[int],
    align_corners: bool,
    patch_points: np.ndarray,
) -> None:
    """Raise if the point map disagrees with the ``grid_sample`` grid the image was resampled with.

    Cheap (a few interpolations per point), so it runs on every sample: it is what turns
    a silent change of convention in batchgeneratorsv2 into a loud error instead of
    landmarks that drift away from the anatomy.
    """
    inner = np.all((patch_points >= 0) & (patch_points <= np.asarray(sampling.patch_size) - 1), axis=1)
    if not inner.any():
        return
    pts = patch_points[inner]
    normalised = interpolate_field(grid, pts)[:, ::-1]  # grid_sample stores x, y[, z]
    size = np.asarray(sample_shape, dtype=np.float64)
    from_grid = (normalised + 1) * (size - 1) / 2 if align_corners else ((normalised + 1) * size - 1) / 2
    error = np.abs(from_grid - sampling.patch_to_sample(pts)).max()
    if error > GRID_AGREEMENT_TOLERANCE:
        raise RuntimeError(
            f"keypoint map disagrees with the image's sampling grid by {error:.3g} voxels; "
            "batchgeneratorsv2's SpatialTransform conventions have changed"
        )

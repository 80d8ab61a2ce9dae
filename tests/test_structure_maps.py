"""Dense anatomical targets (uv maps) move exactly with the image, and never across structures.

The reference is the image itself, as in ``test_augmentation_exactness``: the sample's map holds each
voxel's own coordinates (structure 2's shifted by +1000, so a blend of the two is visible), and so do
the image channels, which nnU-Net resamples with its own ``grid_sample``. After rotation, anisotropic
scaling, a strong elastic deformation and mirroring, the map read (scipy's linear interpolation) at a
moved point deep inside structure 1 must give back that point's original position, as the image does.
"""
from __future__ import annotations

from typing import Tuple

import numpy as np
import pytest
import torch
from batchgeneratorsv2.transforms.utils.compose import ComposeTransforms
from scipy.ndimage import binary_erosion, map_coordinates

from poi_nnunet.augmentation import (
    PointConvert2DTo3DTransform,
    PointConvert3DTo2DTransform,
    PointMirrorTransform,
    PointSpatialTransform,
    get_point_aware_training_transforms,
)
from poi_nnunet.augmentation.structure_maps import crop_structure_map

TOLERANCE = 1e-3
OFFSET = 1000.0  # structure 2's values: its coordinates + OFFSET
SETUPS = {
    "2d": ((48, 48), (80, 80), False, (-np.pi, np.pi)),
    "3d": ((28, 28, 28), (40, 40, 40), False, (-np.pi / 4, np.pi / 4)),
    "3d_dummy_2d": ((16, 28, 28), (16, 40, 40), True, (-np.pi, np.pi)),
}


def _pipeline(patch: Tuple[int, ...], dummy_2d: bool, rotation, flip: Tuple[int, ...]) -> ComposeTransforms:
    dim = len(patch)
    full = get_point_aware_training_transforms(
        patch, rotation, None, tuple(range(dim)), dummy_2d, use_mask_for_norm=[False], foreground_labels=[1, 2],
        p_elastic_deform=1.0, elastic_deform_scale=(0.1, 0.2), elastic_deform_magnitude=(4.0, 7.0))
    kept = [t for t in full.transforms if type(t) in (PointSpatialTransform, PointMirrorTransform,
                                                      PointConvert3DTo2DTransform, PointConvert2DTo3DTransform)]
    spatial = next(t for t in kept if type(t) is PointSpatialTransform)
    spatial.p_rotation = spatial.p_scaling = 1.0
    spatial.p_synchronize_scaling_across_axes = 0
    mirror = next(t for t in kept if type(t) is PointMirrorTransform)
    mirror.get_parameters = lambda **_: {"axes": list(flip)}
    return ComposeTransforms(kept)


def _sample(shape: Tuple[int, ...]):
    """Labels: 1 in the lower half of the last axis, 2 above it, 0 in a frame of 3 voxels; the map and
    the image hold each voxel's coordinates (map: NaN in the background, structure 2 shifted)."""
    coords = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij"))
    labels = np.zeros(shape, np.int16)
    inner = tuple(slice(3, s - 3) for s in shape)
    labels[inner] = 1
    upper = coords[-1] >= shape[-1] // 2
    labels[(labels == 1) & upper] = 2
    values = np.where(labels > 0, coords, np.nan).astype(np.float32)
    values[:, labels == 2] += OFFSET
    return torch.from_numpy(coords), torch.from_numpy(labels[None]), torch.from_numpy(values), labels


@pytest.mark.parametrize("mirrored", [False, True])
@pytest.mark.parametrize("name", sorted(SETUPS))
def test_map_read_at_moved_points_gives_their_original_values(name: str, mirrored: bool) -> None:
    patch, sample_shape, dummy_2d, rotation = SETUPS[name]
    dim = len(patch)
    transforms = _pipeline(patch, dummy_2d, rotation, tuple(range(dim)) if mirrored else ())
    image, segmentation, values, labels = _sample(sample_shape)
    deep_inside = binary_erosion(labels == 1, iterations=3)
    rng = np.random.default_rng(dim + 10 * dummy_2d)
    np.random.seed(5)
    torch.manual_seed(5)
    checked = 0
    for _ in range(3):
        candidates = rng.uniform(0, np.asarray(sample_shape) - 1, size=(600, dim))
        points = candidates[deep_inside[tuple(np.round(candidates).astype(int).T)]]
        out = transforms(image=image.clone(), segmentation=segmentation.clone(), structure_map=values.clone(),
                         keypoints=torch.from_numpy(points.copy()),
                         keypoints_valid=torch.ones(len(points), dtype=torch.bool))
        moved_map = out["structure_map"].numpy().astype(np.float64)
        seg = out["segmentation"][0].numpy()
        assert moved_map.shape == (dim, *patch)
        moved, valid = out["keypoints"].numpy(), out["keypoints_valid"].numpy()
        inside = valid & np.all((moved >= 0) & (moved <= np.asarray(patch) - 1), axis=1)
        corners = np.stack([np.floor(moved[inside]).astype(int) + np.array([(c >> d) & 1 for d in range(dim)])
                            for c in range(2 ** dim)])
        corners = np.minimum(corners, np.asarray(patch) - 1)
        defined = np.isfinite(moved_map[0][tuple(corners.transpose(2, 0, 1))]).all(0)
        use = np.flatnonzero(inside)[defined]
        read = np.stack([map_coordinates(moved_map[k], moved[use].T, order=1) for k in range(dim)], axis=1)
        assert np.abs(read - points[use]).max() < TOLERANCE, (name, mirrored)
        checked += len(use)
        # never a blend of the two structures, and defined only inside a structure
        has = np.isfinite(moved_map[0])
        assert not has[seg == 0].any()
        assert (moved_map[:, has & (seg == 1)] < OFFSET / 2).all()
        assert (moved_map[:, has & (seg == 2)] > OFFSET / 2).all()
        # away from borders the map equals the resampled image (nnU-Net's own grid_sample) wherever defined
        interior = binary_erosion(seg == 1, iterations=2) & has
        assert np.abs(moved_map[:, interior] - out["image"].numpy()[:, interior]).max() < TOLERANCE
        assert interior.sum() > 0.02 * np.prod(patch)
    assert checked >= 50, checked


def test_crop_without_a_grid_is_the_plain_crop_padded_with_nan() -> None:
    values = torch.arange(2 * 6 * 7, dtype=torch.float32).reshape(2, 6, 7)
    out = crop_structure_map(values, center=(1.7, 6.2), patch_size=(4, 4))
    # centre floored to (1, 6): rows -1..2, columns 4..7
    assert out.shape == (2, 4, 4)
    assert torch.isnan(out[:, 0]).all() and torch.isnan(out[:, :, 3]).all()
    assert torch.equal(out[:, 1:, :3], values[:, 0:3, 4:7])

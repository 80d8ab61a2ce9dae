"""Points move exactly with the voxels through the training augmentation, checked with coordinate channels.

Bright dots blur under elastic deformation and resampling, so they can only confirm a point to a fraction
of a voxel. Here the image *is* the reference: channel ``k`` of the sample holds every voxel's own index
along axis ``k``. The spatial transform resamples those channels with the same ``grid_sample`` call as any
image, and mirroring flips them like any image, so after augmentation the channels at a patch position
hold the sample position that patch position was read from. Reading them (linear interpolation, scipy's,
not the project's) at each returned keypoint must give back the point's original sample position.

That read-back is exact up to float32 rounding, not an approximation: within one patch cell the map
patch -> sample is multilinear (an affine map of the identity plus a linearly interpolated displacement
field), the coordinate channels are linear in the sample, so the resampled channels hold the map exactly
at voxel centres and their multilinear interpolation reproduces it exactly in between. Hence the
1e-3 voxel tolerance: float32 grids and values over ~80 voxels round at ~1e-5, while any convention
slip (half a voxel, a transposed axis, a mirror off by one) is >= 0.5 voxel.

The pipeline is the training one (``get_point_aware_training_transforms``, as ``PoiHeatmapTrainer`` builds
it) with only its voxel-moving transforms kept: nnU-Net's intensity transforms would change the
coordinate values. Rotation, scaling, a strong elastic deformation and mirroring are all forced on.
"""
from __future__ import annotations

from typing import Tuple

import numpy as np
import pytest
import torch
from batchgeneratorsv2.transforms.utils.compose import ComposeTransforms
from scipy.ndimage import map_coordinates

from poi_nnunet.augmentation import (
    PointConvert2DTo3DTransform,
    PointConvert3DTo2DTransform,
    PointMirrorTransform,
    PointSpatialTransform,
    get_point_aware_training_transforms,
)

TOLERANCE_VOXELS = 1e-3
NUM_POINTS = 400
# name: (patch, sample, dummy 2D, rotation range). The sample is the loader's larger crop; for dummy 2D
# its first axis is not enlarged (as in nnU-Net) and the in-plane transform cannot move it.
SETUPS = {
    "2d": ((48, 48), (80, 80), False, (-np.pi, np.pi)),
    "3d": ((28, 28, 28), (40, 40, 40), False, (-np.pi / 4, np.pi / 4)),
    "3d_dummy_2d": ((10, 28, 28), (10, 40, 40), True, (-np.pi, np.pi)),
}
# the left-right axis is the last one; slots (0, 1), (2, 3), ... are left/right partners
PERMUTATION_PAIRS = 2


def _permutation(n: int) -> np.ndarray:
    perm = np.arange(n)
    for k in range(PERMUTATION_PAIRS):
        perm[2 * k], perm[2 * k + 1] = 2 * k + 1, 2 * k
    return perm


def _spatial_and_mirror(patch: Tuple[int, ...], dummy_2d: bool, rotation, perm: np.ndarray,
                        flip: Tuple[int, ...]) -> ComposeTransforms:
    """The training pipeline's voxel-moving transforms, every random choice forced on."""
    dim = len(patch)
    full = get_point_aware_training_transforms(
        patch, rotation, None, tuple(range(dim)), dummy_2d, use_mask_for_norm=[False],
        foreground_labels=[1], swap_axes=(dim - 1,), slot_permutation=perm,
        p_elastic_deform=1.0, elastic_deform_scale=(0.1, 0.2), elastic_deform_magnitude=(4.0, 7.0))
    kept = [t for t in full.transforms if type(t) in (PointSpatialTransform, PointMirrorTransform,
                                                      PointConvert3DTo2DTransform, PointConvert2DTo3DTransform)]
    kinds = [type(t) for t in kept]
    expected = [PointSpatialTransform, PointMirrorTransform]
    if dummy_2d:
        expected = [PointConvert3DTo2DTransform, PointSpatialTransform, PointConvert2DTo3DTransform,
                    PointMirrorTransform]
    assert kinds == expected, kinds  # the exact classes, in the order training applies them
    spatial = kept[kinds.index(PointSpatialTransform)]
    spatial.p_rotation = spatial.p_scaling = 1.0  # nnU-Net draws each with probability 0.2
    spatial.p_synchronize_scaling_across_axes = 0  # anisotropic scaling: a transposed axis cannot hide
    assert spatial.p_elastic_deform == 1.0 and spatial.elastic_deform_magnitude == (4.0, 7.0)
    mirror = kept[kinds.index(PointMirrorTransform)]
    assert tuple(mirror.allowed_axes) == tuple(range(dim))
    mirror.get_parameters = lambda **_: {"axes": list(flip)}  # nnU-Net flips each axis with probability 0.5
    return ComposeTransforms(kept)


def _coordinate_image(shape: Tuple[int, ...]) -> torch.Tensor:
    """Channels 0..D-1: each voxel's index along that axis; channel D: ones, which padding would dim."""
    grids = np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij")
    return torch.from_numpy(np.stack([*grids, np.ones(shape, np.float32)]))


def _fully_sampled(ones: np.ndarray, points: np.ndarray) -> np.ndarray:
    """True where every voxel the linear interpolation at a point uses was read from inside the sample
    (its ones channel is still 1: grid_sample's zero padding never blended in)."""
    shape = np.asarray(ones.shape)
    lo = np.clip(np.floor(np.nan_to_num(points)).astype(int), 0, shape - 1)
    ok = np.ones(len(points), bool)
    for corner in range(2 ** ones.ndim):
        step = np.array([(corner >> d) & 1 for d in range(ones.ndim)])
        idx = np.minimum(lo + step, shape - 1)
        ok &= np.abs(ones[tuple(idx.T)] - 1.0) < 1e-6
    return ok


@pytest.mark.parametrize("flip_kind", ["all_axes", "not_left_right"])
@pytest.mark.parametrize("name", sorted(SETUPS))
def test_keypoints_read_back_their_own_coordinates_after_augmentation(name: str, flip_kind: str) -> None:
    patch, sample_shape, dummy_2d, rotation = SETUPS[name]
    dim = len(patch)
    flip = tuple(range(dim)) if flip_kind == "all_axes" else tuple(range(dim - 1))
    swapped = (dim - 1) in flip  # a flip of the left-right axis exchanges partner slots
    perm = _permutation(NUM_POINTS)
    transforms = _spatial_and_mirror(patch, dummy_2d, rotation, perm, flip)
    rng = np.random.default_rng(dim + 10 * dummy_2d)
    np.random.seed(3)
    torch.manual_seed(3)
    checked = 0
    for _ in range(3):
        # anywhere in the sample, sub-voxel, in float64 as the data loader hands them over
        points = rng.uniform(0, np.asarray(sample_shape) - 1, size=(NUM_POINTS, dim))
        out = transforms(image=_coordinate_image(sample_shape), segmentation=torch.zeros((1, *sample_shape),
                         dtype=torch.int16), keypoints=torch.from_numpy(points.copy()),
                         keypoints_valid=torch.ones(NUM_POINTS, dtype=torch.bool))
        image = out["image"].numpy().astype(np.float64)
        assert image.shape == (dim + 1, *patch)
        moved, valid = out["keypoints"].numpy(), out["keypoints_valid"].numpy()
        assert moved.dtype == np.float64
        origin = points[perm] if swapped else points  # slot i now holds its partner's point
        between = np.all((moved >= 0) & (moved <= np.asarray(patch) - 1), axis=1)
        use = valid & between & _fully_sampled(image[dim], moved)
        read = np.stack([map_coordinates(image[k], moved[use].T, order=1) for k in range(dim)], axis=1)
        error = np.abs(read - origin[use])
        assert error.max() < TOLERANCE_VOXELS, (name, flip_kind, error.max())
        # the augmentation really moved the points: the patch position is far from a plain crop's
        shift = moved[use] - origin[use]
        assert np.ptp(shift, axis=0).max() > 5.0
        # a valid point never lies outside the patch; one caught in a fold has no position (NaN) and is invalid
        assert np.all((moved[valid] >= -0.5) & (moved[valid] <= np.asarray(patch) - 0.5))
        assert not valid[~np.all(np.isfinite(moved), axis=1)].any()
        checked += int(use.sum())
    assert checked >= 60, checked

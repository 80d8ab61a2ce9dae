"""Patch space in poi_nnunet.geometry: the sample <-> patch map augmentation moves points through."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter, map_coordinates

from poi_nnunet.geometry import PatchSampling, flip_points, inside_extent, interpolate_field


def smooth_field(shape: tuple, magnitude: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    field = np.stack([gaussian_filter(rng.normal(size=shape), 5) for _ in shape], axis=-1)
    return (field * magnitude / np.abs(field).max()).astype(np.float32)


def test_interpolation_matches_scipy_linear_with_border_hold() -> None:
    field = smooth_field((9, 11, 7), 2.0, 0)
    points = np.random.default_rng(1).uniform(-3, 13, size=(50, 3))
    expected = np.stack([map_coordinates(field[..., c], points.T, order=1, mode="nearest") for c in range(3)], -1)
    np.testing.assert_allclose(interpolate_field(field, points), expected, atol=1e-5)


@pytest.mark.parametrize("shape", [(64, 64), (32, 32, 32)])
def test_displaced_map_inverts_to_sub_micro_voxel(shape: tuple) -> None:
    dim = len(shape)
    linear = np.eye(dim) * 1.2 + np.random.default_rng(2).uniform(-0.2, 0.2, size=(dim, dim))
    sampling = PatchSampling(shape, linear, np.full(dim, 4.5), smooth_field(shape, 3.0, 3))
    patch_points = np.random.default_rng(4).uniform(-4, shape[0] + 4, size=(100, dim))
    found, solved = sampling.sample_to_patch(sampling.patch_to_sample(patch_points))
    assert solved.all()
    np.testing.assert_allclose(found, patch_points, atol=1e-6)


def test_point_inside_a_fold_is_unsolved() -> None:
    """Where the field folds a point is imaged several times; none of them is 'the' point."""
    y = np.arange(32, dtype=np.float64)
    amplitude = 2.0 * 16 / (2 * np.pi)  # slope up to 2, so y + d(y) doubles back around y = 8
    field = np.zeros((32, 32, 2), dtype=np.float32)
    field[..., 1] = (amplitude * np.sin(2 * np.pi * y / 16))[None, :]
    sampling = PatchSampling((32, 32), np.eye(2), np.zeros(2), field)
    _, solved = sampling.sample_to_patch([[10.0, 8.0], [10.0, 16.0]])
    assert solved.tolist() == [False, True]


def test_extent_and_flip_follow_voxel_centres() -> None:
    assert inside_extent([[-0.5, 9.5], [-0.51, 0.0], [0.0, 9.51], [np.nan, 1.0]], (4, 10)).tolist() == [
        True, False, False, False,
    ]
    np.testing.assert_allclose(flip_points([[0.0, 2.25]], [1], (4, 10)), [[0.0, 6.75]])

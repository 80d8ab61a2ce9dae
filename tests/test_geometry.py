"""World <-> voxel maps agree with SimpleITK and round-trip, on awkward grids."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from poi_nnunet.geometry import ImageGeometry


def _rotation(axis: np.ndarray, angle: float) -> np.ndarray:
    axis = axis / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k


def _image(size, spacing, origin, direction) -> sitk.Image:
    img = sitk.Image([int(s) for s in size], sitk.sitkFloat32)
    img.SetSpacing([float(s) for s in spacing])
    img.SetOrigin([float(o) for o in origin])
    img.SetDirection([float(d) for d in np.asarray(direction).ravel()])
    return img


GRIDS_3D = {
    "identity": (np.eye(3), (1.0, 1.0, 1.0)),
    "anisotropic": (np.eye(3), (0.4, 0.9, 3.5)),
    "flipped": (np.diag([-1.0, 1.0, -1.0]), (0.8, 0.8, 2.0)),
    "oblique": (_rotation(np.array([0.3, -0.5, 0.8]), 0.7), (0.7, 1.3, 2.5)),
    "oblique_flipped": (_rotation(np.array([1.0, 2.0, 0.5]), 2.1) @ np.diag([1.0, -1.0, 1.0]), (1.1, 0.6, 4.0)),
    "permuted": (np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]), (0.5, 2.0, 1.0)),
}


@pytest.mark.parametrize("name", sorted(GRIDS_3D))
def test_index_to_world_matches_simpleitk_3d(name: str) -> None:
    direction, spacing = GRIDS_3D[name]
    img = _image((7, 9, 5), spacing, (-12.5, 40.25, 118.0), direction)
    geo = ImageGeometry.from_image(img)
    rng = np.random.default_rng(0)
    idx = rng.uniform(-0.5, 6.5, size=(50, 3))
    expected = np.array([img.TransformContinuousIndexToPhysicalPoint(list(map(float, i))) for i in idx])
    np.testing.assert_allclose(geo.index_to_world(idx), expected, atol=1e-9)
    back = np.array([img.TransformPhysicalPointToContinuousIndex(list(map(float, w))) for w in expected])
    np.testing.assert_allclose(geo.world_to_index(expected), back, atol=1e-9)


@pytest.mark.parametrize("name", sorted(GRIDS_3D))
def test_round_trip_keeps_sub_voxel_precision(name: str) -> None:
    direction, spacing = GRIDS_3D[name]
    geo = ImageGeometry.from_image(_image((64, 64, 40), spacing, (100.0, -250.0, 33.3), direction))
    world = np.random.default_rng(1).uniform(-300, 300, size=(200, 3))
    assert np.max(np.abs(geo.index_to_world(geo.world_to_index(world)) - world)) < 1e-4
    assert np.max(np.abs(geo.array_to_world(geo.world_to_array(world)) - world)) < 1e-4


def test_2d_oblique_matches_simpleitk() -> None:
    angle = 0.4
    direction = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]) @ np.diag([1.0, -1.0])
    img = _image((20, 11), (0.3, 1.7), (5.0, -8.0), direction)
    geo = ImageGeometry.from_image(img)
    idx = np.array([[0.0, 0.0], [19.0, 10.0], [3.25, 7.75], [-0.5, 10.5]])
    expected = np.array([img.TransformContinuousIndexToPhysicalPoint(list(map(float, i))) for i in idx])
    np.testing.assert_allclose(geo.index_to_world(idx), expected, atol=1e-9)
    np.testing.assert_allclose(geo.world_to_index(expected), idx, atol=1e-9)


def test_array_order_is_reversed_index_order() -> None:
    """numpy arrays from SimpleITK are ([z,] y, x): the bright voxel's array index maps to its world point."""
    direction, spacing = GRIDS_3D["oblique"]
    img = _image((6, 7, 8), spacing, (1.0, 2.0, 3.0), direction)
    arr = np.zeros((8, 7, 6), dtype=np.float32)
    arr[5, 2, 4] = 1.0
    bright = sitk.GetImageFromArray(arr)
    bright.CopyInformation(img)
    geo = ImageGeometry.from_image(bright)
    expected = bright.TransformIndexToPhysicalPoint((4, 2, 5))
    np.testing.assert_allclose(geo.array_to_world([5, 2, 4]), expected, atol=1e-9)


def test_single_point_in_single_point_out() -> None:
    geo = ImageGeometry.from_image(_image((4, 4, 4), (2.0, 2.0, 2.0), (0, 0, 0), np.eye(3)))
    out = geo.index_to_world([1.5, 0.25, 3.0])
    assert out.shape == (3,)
    np.testing.assert_allclose(out, [3.0, 0.5, 6.0])


def test_extent_is_half_a_voxel_beyond_the_centres() -> None:
    geo = ImageGeometry.from_image(_image((10, 5), (1.0, 1.0), (0, 0), np.eye(2)))
    assert geo.contains_index([-0.5, 4.5])
    assert geo.contains_index([9.5, -0.5])
    assert not geo.contains_index([9.51, 2.0])
    assert not geo.contains_index([3.0, -0.6])


def test_header_only_read_matches_full_read(tmp_path) -> None:
    direction, spacing = GRIDS_3D["oblique_flipped"]
    img = _image((5, 6, 7), spacing, (1.5, -2.5, 9.0), direction)
    path = tmp_path / "img.nii.gz"
    sitk.WriteImage(img, str(path))
    from_file = ImageGeometry.from_file(path)
    from_read = ImageGeometry.from_image(sitk.ReadImage(str(path)))
    assert from_file.same_grid(from_read, tol=1e-9)
    assert from_file.describe_difference(from_read) == ""


def test_unreadable_file_names_the_file(tmp_path) -> None:
    from poi_nnunet.errors import PoiNnunetError

    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"this is not an image")
    with pytest.raises(PoiNnunetError, match="broken.nii.gz"):
        ImageGeometry.from_file(bad)

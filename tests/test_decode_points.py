"""Decoding predicted heatmaps into world points, without a network: known Gaussian peaks at sub-voxel
positions in a transposed, cropped, anisotropically resampled preprocessed space must come back as the
right world points, in both crop modes."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from poi_nnunet.channels import ChannelLayout
from poi_nnunet.geometry import ImageGeometry, PreprocessedSpace
from poi_nnunet.heatmaps import render_gaussian_heatmaps
from poi_nnunet.inference.decoding import (
    MIN_CONFIDENCE,
    DecodedPoints,
    decode_points,
    decode_structures,
    decode_whole_image,
    structure_boxes,
    structure_margin,
)

AMPLITUDE = 10.0
# Decoding is sub-voxel: a float32 Gaussian's fitted peak lands within ~0.02 preprocessed voxels of
# where it was drawn, i.e. well under 0.05 mm at these spacings (<= 2.5 mm raw, resampled finer),
# while a convention slip (half a voxel, a swapped axis, centre- instead of edge-aligned resampling)
# moves a point by >= 0.2 mm.
TOL_MM = 0.05 + 1e-6


def _space_3d() -> PreprocessedSpace:
    """A rotated raw image (spacing 0.8 x 1.1 x 2.5 mm), transposed, cropped and resampled unevenly."""
    angle = np.radians(20)
    direction = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, -1.0]])
    raw = ImageGeometry(origin=(12.0, -40.0, 7.5), spacing=(0.8, 1.1, 2.5), direction=direction, size=(40, 36, 16))
    # nnU-Net's raw array is (z, y, x) = (16, 36, 40); transpose puts z last
    transpose = (1, 2, 0)
    bbox = ((2, 34), (3, 37), (1, 15))  # transposed axes (y, x, z)
    crop = (32, 34, 14)
    resampled = (29, 31, 25)  # y, x finer/coarser, z much finer: anisotropic scale
    return PreprocessedSpace(raw, transpose, bbox, crop, resampled)


def _space_2d() -> PreprocessedSpace:
    raw = ImageGeometry(origin=(-30.0, 12.0), spacing=(0.7, 1.3), direction=np.eye(2), size=(50, 40))
    return PreprocessedSpace(raw, (0, 1, 2), ((0, 1), (0, 40), (0, 50)), (1, 40, 50), (1, 52, 35))


def _whole_image_layout(pairs) -> ChannelLayout:
    block = {"crop_mode": "whole_image",
             "poi_channels": [{"structure": s, "poi": p, "name": f"p{p}"} for s, p in pairs]}
    return ChannelLayout.from_channels(block["crop_mode"], block["poi_channels"], {"labels": {"background": 0, "a": 1, "b": 2}})


def _structure_layout(pois, labels=(1, 2)) -> ChannelLayout:
    block = {"crop_mode": "structure_with_neighbours",
             "poi_channels": [{"structure": None, "poi": p, "name": f"p{p}"} for p in pois]}
    return ChannelLayout.from_channels(block["crop_mode"], block["poi_channels"], {"labels": {"background": 0, **{f"s{v}": v for v in labels}}})


def _render(points: np.ndarray, shape, sigma) -> torch.Tensor:
    """Sum of Gaussians: ``points`` (C, K, 3) preprocessed positions, K peaks per channel."""
    pts = torch.as_tensor(points, dtype=torch.float64)
    maps = torch.zeros((pts.shape[0], *shape), dtype=torch.float64)
    for k in range(pts.shape[1]):
        maps += render_gaussian_heatmaps(pts[None, :, k], torch.ones(1, pts.shape[0], dtype=torch.bool), shape,
                                         sigma, amplitude=AMPLITUDE)[0]
    return maps.float()


def _raw_image(raw: ImageGeometry) -> sitk.Image:
    """An empty SimpleITK image on the raw grid: the reference for index -> world."""
    image = sitk.Image([int(s) for s in raw.size], sitk.sitkUInt8)
    image.SetOrigin(tuple(float(v) for v in raw.origin))
    image.SetSpacing(tuple(float(v) for v in raw.spacing))
    image.SetDirection(tuple(float(v) for v in np.asarray(raw.direction).ravel()))
    return image


def _raw_itk_index(space: PreprocessedSpace, preprocessed) -> list:
    """Written out per axis, independently of poi_nnunet.geometry: preprocessed axis ``i`` is nnU-Net
    array axis ``transpose_forward[i]``; resampling ``crop -> new`` voxels aligns voxel edges, so index
    ``p`` came from cropped index ``(p + 0.5) * crop / new - 0.5``, plus the crop start. nnU-Net's array
    is ``(z, y, x)`` (``(1, y, x)`` for a 2D image), so the ITK index ``(x, y[, z])`` is it reversed."""
    array = [0.0, 0.0, 0.0]
    for i, p in enumerate(np.asarray(preprocessed, float)):
        crop, new = space.shape_after_crop[i], space.shape_after_resampling[i]
        array[space.transpose_forward[i]] = (p + 0.5) * crop / new - 0.5 + space.bbox[i][0]
    return array[::-1][: space.raw.dim]


def _expected_world(space: PreprocessedSpace, preprocessed) -> np.ndarray:
    index = _raw_itk_index(space, preprocessed)
    return np.array(_raw_image(space.raw).TransformContinuousIndexToPhysicalPoint(index))


def _world_error(decoded: DecodedPoints, space: PreprocessedSpace, expected: dict) -> float:
    """Largest world distance between decoded and expected ``{(structure, poi): preprocessed position}``,
    the expectation being SimpleITK's world point of the raw voxel that position was resampled from."""
    pois = decoded.to_world(space)
    assert set(pois.keys()) == set(expected)
    worst = 0.0
    for p in pois:
        truth = _expected_world(space, expected[p.key])
        worst = max(worst, float(np.linalg.norm(np.asarray(p.position) - truth)))
    return worst


def test_whole_image_decodes_sub_voxel_peaks_to_world_mm() -> None:
    space = _space_3d()
    shape = space.shape_after_resampling
    rng = np.random.default_rng(0)
    truth = rng.uniform(4, np.array(shape) - 5, size=(4, 3)) + rng.uniform(-0.5, 0.5, size=(4, 3))
    layout = _whole_image_layout([(1, 11), (1, 12), (2, 13), (0, 14)])
    maps = _render(truth[:, None], shape, (1.5, 2.0, 1.2))
    decoded = decode_whole_image(maps, layout, AMPLITUDE)
    assert decoded.positions.shape == (4, 3)
    np.testing.assert_allclose(decoded.confidence, 1.0, atol=1e-3)
    expected = {k: t for k, t in zip(layout.channel_keys, truth)}
    assert _world_error(decoded, space, expected) < TOL_MM
    assert max(space.spacing) > 1.5 * min(space.spacing)  # the test covers anisotropy


def test_whole_image_leaves_out_weak_channels_as_not_found() -> None:
    space = _space_3d()
    shape = space.shape_after_resampling
    truth = np.array([[10.3, 12.6, 8.2], [15.1, 9.9, 14.4]])
    layout = _whole_image_layout([(1, 1), (1, 2)])
    maps = _render(truth[:, None], shape, 1.5)
    maps[1] *= 0.5 * MIN_CONFIDENCE  # a faint peak: below the minimum confidence
    decoded = decode_points(maps, layout, AMPLITUDE)
    assert decoded.pois.tolist() == [1]
    assert _world_error(decoded, space, {(1, 1): truth[0]}) < TOL_MM


def test_2d_image_decodes_in_plane_with_z_zero() -> None:
    space = _space_2d()
    shape = space.shape_after_resampling
    truth = np.array([[0.0, 20.37, 11.81], [0.0, 33.6, 25.25]])
    layout = _whole_image_layout([(0, 5), (0, 6)])
    maps = _render(truth[:, None], shape, (1.0, 1.4, 1.1))
    decoded = decode_whole_image(maps, layout, AMPLITUDE)
    np.testing.assert_allclose(decoded.positions[:, 0], 0.0)
    pois = decoded.to_world(space)
    assert pois.dim == 2
    assert _world_error(decoded, space, {(0, 5): truth[0], (0, 6): truth[1]}) < TOL_MM


def _two_structures(shape):
    seg = np.zeros(shape, dtype=np.int16)
    seg[2:10, 3:12, 2:11] = 1
    seg[17:26, 16:27, 12:22] = 2
    return seg


def test_structure_mode_picks_each_structures_own_peak() -> None:
    space = _space_3d()
    shape = space.shape_after_resampling
    seg = _two_structures(shape)
    layout = _structure_layout([101, 102])
    # every channel has a peak on each structure (as a network draws them), at sub-voxel positions
    own = {
        (1, 101): [5.3, 6.7, 4.2], (1, 102): [7.6, 9.2, 8.55],
        (2, 101): [20.4, 19.1, 15.7], (2, 102): [23.2, 24.35, 19.4],
    }
    peaks = np.array([[own[(1, 101)], own[(2, 101)]], [own[(1, 102)], own[(2, 102)]]])
    maps = _render(peaks, shape, (1.2, 1.2, 1.5))
    decoded = decode_structures(maps, seg, layout, sigma_voxels=(1.2, 1.2, 1.5), amplitude=AMPLITUDE)
    assert len(decoded) == 4
    assert _world_error(decoded, space, own) < TOL_MM
    np.testing.assert_allclose(decoded.confidence, 1.0, atol=2e-3)


def test_structure_mode_skips_tiny_and_unknown_structures() -> None:
    shape = (20, 20, 20)
    seg = np.zeros(shape, dtype=np.int16)
    seg[2:8, 2:8, 2:8] = 1
    seg[15, 15, 15] = 2  # a stray voxel is not a structure
    seg[10:14, 10:14, 10:14] = 7  # not a structure label of the dataset
    boxes = structure_boxes(seg, [1, 2], margin=(3, 3, 3))
    assert [label for label, _ in boxes] == [1]
    assert boxes[0][1].slices == (slice(0, 11), slice(0, 11), slice(0, 11))
    layout = _structure_layout([101])
    maps = _render(np.array([[[4.2, 5.1, 3.3]]]), shape, 1.0)
    decoded = decode_points(maps, layout, AMPLITUDE, segmentation=seg, sigma_voxels=(1.0, 1.0, 1.0))
    assert decoded.structures.tolist() == [1]


def test_structure_margin_is_three_sigma_plus_two_voxels() -> None:
    assert structure_margin((1.0, 0.4, 2.1)).tolist() == [5, 4, 9]
    assert structure_margin((0.7, 1.5)).tolist() == [7, 5, 7]  # 2d configuration: z borrows the largest


def test_points_past_the_border_move_onto_it_or_are_not_found() -> None:
    space = _space_2d()  # preprocessed y has 52 voxels for 40 raw voxels of 1.3 mm
    rows = [[0, 10.0, 10.0], [0, -6.0, 10.0], [0, -1.0, 10.0]]  # inside; 4.2 raw voxels out; 0.38 raw voxels out
    decoded = DecodedPoints(np.array([0, 0, 0]), np.array([1, 2, 3]), np.array(rows), np.array([0.9, 0.9, 0.9]))
    pois = decoded.to_world(space)
    assert [p.poi for p in pois] == [1, 3]
    assert all(space.raw.contains_world(p.position) for p in pois)
    np.testing.assert_allclose(pois.positions()[0], _expected_world(space, rows[0]), atol=1e-9)
    image = _raw_image(space.raw)
    # 0.38 raw voxels past the top edge (index -0.5) is moved onto it; x is left alone
    moved = image.TransformPhysicalPointToContinuousIndex(tuple(pois.positions()[1]))
    np.testing.assert_allclose(moved, [_raw_itk_index(space, rows[2])[0], -0.5], atol=1e-5)
    assert _raw_itk_index(space, rows[2])[1] == pytest.approx(-0.5 * 40 / 52 - 0.5)  # hand-computed


def test_structure_mode_needs_a_segmentation() -> None:
    with pytest.raises(ValueError, match="segmentation"):
        decode_points(torch.zeros(1, 4, 4, 4), _structure_layout([1]), AMPLITUDE)


def test_decoding_in_channel_groups_gives_the_same_points(monkeypatch: pytest.MonkeyPatch) -> None:
    import poi_nnunet.inference.decoding as decoding

    shape = (12, 14, 16)
    truth = np.array([[4.2, 5.5, 6.1], [7.7, 8.3, 9.9], [6.0, 3.4, 11.2]])
    maps = _render(truth[:, None], shape, 1.3)
    groups = [np.arange(3)]
    whole = decoding.decode_channels(maps, AMPLITUDE, None, groups).positions
    monkeypatch.setattr(decoding, "MAX_DECODE_VOXELS", 2 * int(np.prod(shape)))  # groups of 2 channels
    grouped = decoding.decode_channels(maps, AMPLITUDE, None, groups).positions
    np.testing.assert_allclose(grouped, whole, atol=1e-4)
    np.testing.assert_allclose(grouped, truth, atol=0.01)

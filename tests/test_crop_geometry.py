"""Crops and 2D/3D axes in poi_nnunet.geometry, against values worked out by hand, and the promise they
exist for: the training loader and the predictor cut the same box for the same centre."""
from __future__ import annotations

import pickle
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from nnunetv2.utilities.label_handling.label_handling import LabelManager

from poi_nnunet.channels import ChannelLayout
from poi_nnunet.data_loader import CaseSlots
from poi_nnunet.geometry import CropBox, drop_slice_axis, flip_points, last_axes, pad_axes, pad_to_3d

LABELS = {"background": 0, "v": 1, "w": 2}


# ----------------------------------------------------------------------------------------------- choosing a crop
def test_crop_centred_on_a_point_starts_half_a_patch_before_it() -> None:
    # 10.4 - 8 / 2 = 6.4 -> 6 and 7.6 - 4 = 3.6 -> 4
    assert CropBox.centred_on((10.4, 7.6), (8, 8)) == CropBox((6, 4), (8, 8))
    # with training's shift: 10 + 1.6 - 4 = 7.6 -> 8 and 10 - 2.4 - 4 = 3.6 -> 4
    assert CropBox.centred_on((10.0, 10.0), (8, 8), shift=np.array([1.6, -2.4])).start == (8, 4)


@pytest.mark.parametrize("centre, start", [(4.5, 0), (5.5, 2), (6.5, 2), (7.5, 4), (3.5, 0), (2.5, -2)])
def test_crop_start_rounds_half_to_even(centre: float, start: int) -> None:
    # centre - 4 is 0.5, 1.5, 2.5, 3.5, -0.5, -1.5: numpy's (and the trained models') round half to even
    assert CropBox.centred_on((centre,), (8,)).start == (start,)


def test_integer_centre_lands_just_past_the_middle_of_an_even_patch() -> None:
    box = CropBox.centred_on((20.0, 13.0), (8, 6))
    assert box.start == (16, 10)
    np.testing.assert_array_equal(box.to_crop([20.0, 13.0]), [4.0, 3.0])  # size // 2, not (size - 1) / 2


def test_crop_centred_in_an_array_splits_the_slack() -> None:
    assert CropBox.centred_in((64, 10), (32, 4)) == CropBox((16, 3), (32, 4))  # 31.5 - 15.5, 4.5 - 1.5
    assert CropBox.centred_in((11,), (4,)).start == (4,)  # 5 - 1.5 = 3.5 -> 4
    assert CropBox.centred_in((13,), (4,)).start == (4,)  # 6 - 1.5 = 4.5 -> 4
    # an array smaller than the patch: 4 - 7.5 = -3.5 -> -4, so 4 voxels of padding before and 3 after
    box = CropBox.centred_in((9,), (16,))
    assert box.start == (-4,) and box.stop == (12,)
    np.testing.assert_array_equal(box.cut(np.arange(1, 10)), [0] * 4 + list(range(1, 10)) + [0] * 3)


def test_bounds_enclosing_growing_and_clipping() -> None:
    box = CropBox.enclosing((np.array([2, 7, 4]), np.array([3, 5, 5])))
    assert box == CropBox.from_bounds((2, 3), (8, 6)) == CropBox((2, 3), (6, 3))
    grown = box.grown((3, 3))
    assert grown.start == (-1, 0) and grown.stop == (11, 9)
    assert grown.clipped((10, 20)) == CropBox((0, 0), (10, 9))
    assert CropBox((12, 0), (3, 2)).clipped((10, 20)).size == (0, 2)  # misses the array along axis 0


# ----------------------------------------------------------------------------------------------- using a crop
def test_points_move_by_the_crop_start() -> None:
    box = CropBox((6, -4), (8, 8))
    np.testing.assert_array_equal(box.from_crop([[2.25, 3.0], [0.0, 0.0]]), [[8.25, -1.0], [6.0, -4.0]])
    np.testing.assert_array_equal(box.to_crop([[8.25, -1.0]]), [[2.25, 3.0]])
    with pytest.raises(ValueError):
        box.to_crop([[1.0, 2.0, 3.0]])


def test_cut_pads_outside_and_keeps_each_voxel_at_its_crop_position() -> None:
    volume = np.arange(5 * 7).reshape(1, 5, 7)  # a channel axis in front is kept whole
    box = CropBox((-1, 4), (3, 4))
    crop = box.cut(volume, pad_value=-1)
    assert crop.shape == (1, 3, 4)
    np.testing.assert_array_equal(crop[0], [[-1, -1, -1, -1], [4, 5, 6, -1], [11, 12, 13, -1]])
    assert crop[0, 2, 1] == volume[0, 1, 5]  # crop voxel (2, 1) is volume voxel (2 - 1, 1 + 4)
    assert box.bbox == [[-1, 2], [4, 8]]
    assert CropBox((1, 4), (3, 2)).slices == (slice(1, 4), slice(4, 6))
    with pytest.raises(ValueError):
        box.slices  # numpy would read a negative start from the end


def test_flip_is_size_minus_one_minus_x() -> None:
    np.testing.assert_array_equal(flip_points([[2.0, 3.25]], [1], (5, 10)), [[2.0, 5.75]])  # 10 - 1 - 3.25
    np.testing.assert_array_equal(flip_points([2.0, 3.25], [0, 1], (5, 10)), [2.0, 5.75])  # 5 - 1 - 2
    batch = torch.tensor([[[1.0, 2.0], [0.5, 5.0]]])  # (N, C, D), as predicted on a flipped crop
    flipped = flip_points(batch, [0], (4, 6))
    assert flipped.dtype == torch.float32 and flipped.shape == batch.shape
    np.testing.assert_array_equal(flipped.numpy(), [[[2.0, 2.0], [2.5, 5.0]]])
    assert batch[0, 0, 0] == 1.0, "the input is not modified"


# ----------------------------------------------------------------------------------------------- 2D / 3D axes
def test_2d_points_get_z_zero_in_front_and_per_axis_values_a_leading_fill() -> None:
    np.testing.assert_array_equal(pad_to_3d([[3.0, 4.0], [5.5, 6.0]]), [[0.0, 3.0, 4.0], [0.0, 5.5, 6.0]])
    np.testing.assert_array_equal(pad_to_3d([1.0, 2.0, 3.0]), [1.0, 2.0, 3.0])
    np.testing.assert_array_equal(pad_axes([0.8, 1.2], 3, 1.0), [1.0, 0.8, 1.2])
    np.testing.assert_array_equal(last_axes([7, 8, 9], 2), [8, 9])
    np.testing.assert_array_equal(last_axes([[1.0, 2.0, 3.0]], 3), [[1.0, 2.0, 3.0]])


def test_dropping_the_slice_axis_makes_points_of_other_slices_unknown() -> None:
    out = drop_slice_axis([[0.4, 1.0, 2.0], [-0.6, 3.0, 4.0], [0.5, 5.0, 6.0], [-0.5, 7.0, 8.0]])
    np.testing.assert_array_equal(out, [[1.0, 2.0], [np.nan, np.nan], [5.0, 6.0], [7.0, 8.0]])


# ----------------------------------------------------------------------------------------------- training == inference
class _Dataset:
    """One preprocessed case for the loader, with nnU-Net's ``class_locations`` pickle beside it."""

    def __init__(self, folder: Path, seg: np.ndarray):
        self.identifiers = ["c"]
        self.source_folder = str(folder)
        self.seg = seg[None].astype(np.int16)
        locations = {label: np.argwhere(self.seg == label) for label in (1, 2)}  # rows (channel, z, y, x)
        with open(folder / "c.pkl", "wb") as f:
            pickle.dump({"class_locations": locations}, f)

    def load_case(self, key: str):
        return self.seg.astype(np.float32), self.seg, None, {"class_locations": {}}


def _predictor(monkeypatch: pytest.MonkeyPatch, layout: ChannelLayout, patch):
    from poi_nnunet.inference.coarse_refine import CoarseRefinePredictor

    predictor = CoarseRefinePredictor.__new__(CoarseRefinePredictor)  # only the crop choice
    predictor.layout = layout
    predictor.min_structure_voxels = 4
    monkeypatch.setattr(CoarseRefinePredictor, "configuration_manager",
                        property(lambda self: SimpleNamespace(patch_size=list(patch))), raising=False)
    return predictor


@pytest.mark.parametrize("dim", [3, 2])
def test_training_and_inference_cut_the_same_box_around_a_structure(
        dim: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The coarse_refine loader (no shift) and the predictor, on the same label map, crop the same box."""
    from trainers.coarse_refine_data import CentredPoiDataLoader

    layout = ChannelLayout.from_channels("structure_with_neighbours", [{"structure": None, "poi": 10, "name": "a"}],
                                         {"labels": LABELS})
    shape = (12, 20, 30) if dim == 3 else (1, 20, 30)
    seg = np.zeros(shape, dtype=np.int16)
    seg[..., 10:14, 20:26] = 1  # 3D: z 0..11, so the centroid is (5.5, 11.5, 22.5); 2D: (0, 11.5, 22.5)
    patch = (8,) * dim
    # the POI is nowhere near the label: the coarse_refine loader centres on the label, as the predictor must
    slots = CaseSlots(np.array([[1.0, 1.0, 1.0], [np.nan] * 3]))
    loader = CentredPoiDataLoader(_Dataset(tmp_path, seg), 1, patch, patch, LabelManager(LABELS, None), layout,
                                  {"c": slots}, True, spacing=(1.0,) * dim, centre_shift=(0.0,) * dim)
    layer, trained = loader.structure_centred_bbox("c", shape, slots)
    crops = _predictor(monkeypatch, layout, patch).structure_crops((1, *shape), seg)
    assert layer == 0 and [(label, index) for label, index, _ in crops] == [(1, 0)]
    predicted = crops[0][2]
    # by hand: 11.5 - 4 = 7.5 -> 8 and 22.5 - 4 = 18.5 -> 18 (half to even); 3D z: 5.5 - 4 = 1.5 -> 2
    if dim == 3:
        assert trained == predicted == CropBox((2, 8, 18), (8, 8, 8))
    else:  # the loader's crop keeps nnU-Net's axis of one slice (z: round(0 - 0.5) = 0), the 2d network's does not
        assert predicted == CropBox((8, 18), (8, 8))
        assert trained == CropBox((0, *predicted.start), (1, *predicted.size))

"""The POI data loader: points are cropped and augmented with their voxels, and unknown targets are masked."""
from __future__ import annotations

from typing import Dict, List, Tuple

import numpy as np
import pytest
import torch
from nnunetv2.utilities.label_handling.label_handling import LabelManager
from scipy.ndimage import map_coordinates

from poi_nnunet.augmentation import PointMirrorTransform, PointSpatialTransform, get_point_aware_training_transforms
from poi_nnunet.channels import ChannelLayout
from poi_nnunet.data_loader import CaseSlots, PoiDataLoader
from poi_nnunet.heatmaps import decode_heatmaps
from poi_nnunet.plan import PoiPlan
from trainers.heatmap_loss import render_point_targets

LABELS = {"background": 0, "left": 1, "right": 2}
DATASET_JSON = {"labels": LABELS, "poi_mirror_pairs": [[10, 11]]}


def whole_image_layout() -> ChannelLayout:
    block = {"crop_mode": "whole_image",
             "poi_channels": [{"structure": 1, "poi": 10, "name": "a"}, {"structure": 1, "poi": 11, "name": "b"},
                              {"structure": 2, "poi": 12, "name": "c"}]}
    return ChannelLayout.from_channels(block["crop_mode"], block["poi_channels"], DATASET_JSON)


def structure_layout() -> ChannelLayout:
    block = {"crop_mode": "structure_with_neighbours",
             "poi_channels": [{"structure": None, "poi": 10, "name": "a"}, {"structure": None, "poi": 11, "name": "b"}]}
    return ChannelLayout.from_channels(block["crop_mode"], block["poi_channels"], DATASET_JSON)


class InMemoryDataset:
    """Stands in for nnU-Net's preprocessed dataset. Its image is the reference the loader's points are
    checked against: channel ``k`` holds each voxel's own index along axis ``k`` of the case, the last
    channel is all ones (zero padding dims it). Crop, resampling and flips move these values with the
    voxels, so the channels read at a returned keypoint say where in the case that keypoint is."""

    def __init__(self, cases: Dict[str, CaseSlots], shape):
        self.identifiers = sorted(cases)
        self.cases = {}
        grids = np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij")
        image = np.stack([*grids, np.ones(shape, np.float32)])
        for key in cases:
            seg = np.zeros((1, *shape), dtype=np.int16)
            seg[0, ..., : shape[-1] // 2] = 1
            seg[0, ..., shape[-1] // 2:] = 2
            self.cases[key] = (image, seg)

    def load_case(self, key: str):
        image, seg = self.cases[key]
        return image, seg, None, {"class_locations": {1: np.argwhere(seg == 1), 2: np.argwhere(seg == 2)}}


def case_positions(image: torch.Tensor, points: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Read a sample's coordinate channels at patch positions ``(N, D)`` (scipy's linear interpolation):
    the case positions ``(N, D)`` they came from, and whether that reading is exact (every voxel it uses
    lies in the patch and was sampled from inside the case, not from padding)."""
    arr = image.numpy().astype(np.float64)
    dim = len(arr.shape) - 1
    coords = arr[-1 - dim:-1]  # a 2D sample still carries the case's (constant) z channel in front
    ones = arr[-1]
    shape = np.array(ones.shape)
    read = np.stack([map_coordinates(c, points.T, order=1) for c in coords], axis=1)
    exact = np.all((points >= 0) & (points <= shape - 1), axis=1)
    lo = np.clip(np.floor(np.nan_to_num(points)).astype(int), 0, shape - 1)
    for corner in range(2 ** dim):
        step = np.array([(corner >> d) & 1 for d in range(dim)])
        exact &= np.abs(ones[tuple(np.minimum(lo + step, shape - 1).T)] - 1.0) < 1e-6
    return read, exact


def label_manager() -> LabelManager:
    return LabelManager(LABELS, regions_class_order=None)


def test_whole_image_layout_slots_are_channels() -> None:
    layout = whole_image_layout()
    assert layout.num_slots == layout.num_channels == 3
    assert layout.slot_keys() == [(1, 10), (1, 11), (2, 12)]
    assert layout.mirror_permutation([[10, 11]], []).tolist() == [1, 0, 2]


def test_structure_layout_has_a_layer_per_label() -> None:
    layout = structure_layout()
    assert layout.layers == (1, 2)
    assert layout.slot_keys() == [(1, 10), (1, 11), (2, 10), (2, 11)]
    assert layout.channel_permutation([[10, 11]], []).tolist() == [1, 0]


def test_crop_without_augmentation_shifts_points_by_the_crop_origin() -> None:
    layout = whole_image_layout()
    truth = np.array([[0.0, 20.25, 30.5], [0.0, 40.0, 10.0], [np.nan] * 3])
    slots = CaseSlots(truth)
    ds = InMemoryDataset({"c": slots}, (1, 64, 64))
    np.random.seed(0)
    loader = PoiDataLoader(ds, 1, (32, 32), (32, 32), label_manager(), layout, {"c": slots}, False, spacing=(1.0, 1.0))
    seen_inside = 0
    for _ in range(6):
        batch = loader.generate_train_batch()
        kp, inside, valid = batch["keypoints"][0].numpy(), batch["keypoints_inside"][0], batch["channel_valid"][0]
        assert np.isnan(kp[2]).all() and not valid[2], "an absent point stays absent and masks its channel"
        assert valid[:2].all(), "annotated points are supervised, inside the patch or not"
        # the crop's first voxel, read from the image: a crop starts on a voxel and shifts every point by it
        image = batch["data"][0].numpy()
        start = np.array([image[1, 0, 0], image[2, 0, 0]])
        assert np.all(start == np.round(start))
        np.testing.assert_allclose(kp[:2], truth[:2, 1:] - start, atol=1e-5)
        read, exact = case_positions(batch["data"][0], kp[:2])
        np.testing.assert_allclose(read[exact], truth[:2, 1:][exact], atol=1e-4)
        for i in range(2):
            assert bool(inside[i]) == bool(np.all((kp[i] >= -0.5) & (kp[i] <= 31.5)))
        seen_inside += int(exact.sum())
    assert seen_inside >= 2


@pytest.mark.parametrize("dim", [2, 3])
def test_augmented_keypoints_and_their_targets_sit_where_the_image_came_from(dim: int) -> None:
    """Crop, rotation, scaling, elastic deformation and mirroring move the image; read at the returned
    keypoint, its coordinate channels must give the case's point (exact up to float32 rounding: the
    resampled coordinate channels are linear within each patch cell), and so must they at the decoded
    peak of the target rendered for the network. A left-right flip hands slot ``i`` its partner's point."""
    layout = whole_image_layout()
    permutation = layout.mirror_permutation([[10, 11]], [])
    assert permutation.tolist() == [1, 0, 2]
    shape = (1, 72, 72) if dim == 2 else (40, 40, 40)
    patch = (48, 48) if dim == 2 else (28, 28, 28)
    rng = np.random.default_rng(dim)
    cases = {}
    for k in range(3):
        base = np.array([[13.0, 13.0, 13.0], [13.0, 27.0, 27.0], [27.0, 13.0, 27.0]]) * (shape[-1] / 40)
        pos = base + rng.uniform(-2, 2, size=(3, 3))
        if dim == 2:
            pos[:, 0] = 0.0
        cases[f"c{k}"] = CaseSlots(pos)
    ds = InMemoryDataset(cases, shape)
    transforms = get_point_aware_training_transforms(
        patch, (-np.pi / 6, np.pi / 6), None, tuple(range(dim)), False, use_mask_for_norm=[False],
        foreground_labels=[1, 2], swap_axes=(dim - 1,), slot_permutation=permutation,
        p_elastic_deform=1.0, elastic_deform_magnitude=(1.5, 3.0))
    # keep what moves voxels: intensity augmentation would change the coordinate values
    transforms.transforms = [t for t in transforms.transforms if isinstance(t, (PointSpatialTransform, PointMirrorTransform))]
    spatial = transforms.transforms[0]
    spatial.p_rotation = spatial.p_scaling = 1.0  # nnU-Net draws each with probability 0.2
    # as in nnU-Net, the sample is cropped larger than the patch
    initial = (64, 64) if dim == 2 else (40, 40, 40)
    loader = PoiDataLoader(ds, 2, initial, patch, label_manager(), layout, cases, False, spacing=(1.0,) * dim,
                           transforms=transforms)
    plan = PoiPlan(layout.mode, (40.0,) * dim, (1.5,) * dim, 1.0, 3.0, (8,) * dim, (1.0, 2.0), (0.1, 0.2),
                   tuple({"structure": s, "poi": p, "name": n} for (s, p), n in zip(layout.channel_keys,
                                                                                    layout.channel_names)))
    np.random.seed(1)
    torch.manual_seed(1)
    checked, flips = 0, set()
    for _ in range(4):
        batch = loader.generate_train_batch()
        targets = render_point_targets(batch["keypoints"], layout, patch, plan)
        for b in range(2):
            image = batch["data"][b]
            # was the left-right (last) axis flipped? the last coordinate channel then falls along it
            flipped = float(np.diff(image[-2].numpy(), axis=-1).mean()) < 0
            flips.add(flipped)
            truth = cases[batch["keys"][b]].positions[:, 3 - dim:]
            truth = truth[permutation] if flipped else truth
            kp = batch["keypoints"][b].numpy().astype(np.float64)
            read, exact = case_positions(image, kp)
            use = exact & batch["keypoints_inside"][b].numpy()
            np.testing.assert_allclose(read[use], truth[use], atol=1e-3)
            for c in np.flatnonzero(use):
                if np.any((kp[c] < 4) | (kp[c] > np.array(patch) - 5)):
                    continue  # a target cut by the patch border has a biased fitted centre
                peak, _ = decode_heatmaps(targets[b, c][None, None].float())
                at, ok = case_positions(image, peak[0].double().numpy())
                assert ok[0]
                # the fit of a float32 Gaussian is good to ~0.01 patch voxel, i.e. ~0.02 case voxel
                np.testing.assert_allclose(at[0], truth[c], atol=0.05)
            checked += int(use.sum())
    assert checked >= 8 and flips == {False, True}


def test_structure_mode_centres_on_a_structure_and_masks_unknown_channels() -> None:
    layout = structure_layout()
    # structure 1 (left half) has both POIs; structure 2 (right half) lacks POI 11
    positions = np.array([[16.0, 20.0, 10.0], [16.0, 24.0, 12.0], [16.0, 20.0, 40.0], [np.nan] * 3])
    slots = CaseSlots(positions)
    ds = InMemoryDataset({"c": slots}, (32, 32, 56))
    np.random.seed(3)
    loader = PoiDataLoader(ds, 1, (24, 24, 24), (24, 24, 24), label_manager(), layout, {"c": slots}, True, spacing=(1.0, 1.0, 1.0))
    seen_masked = seen_full = 0
    for _ in range(20):
        batch = loader.generate_train_batch()
        kp = batch["keypoints"][0].reshape(2, 2, 3)
        inside = batch["keypoints_inside"][0].reshape(2, 2)
        assert inside[0].all() or inside[1, 0], "the crop is centred on an annotated structure"
        # and the points in view are where the image says they are
        read, exact = case_positions(batch["data"][0], batch["keypoints"][0].numpy().astype(np.float64))
        assert exact.sum() >= 1
        np.testing.assert_allclose(read[exact], positions[exact], atol=1e-4)
        labels = set(torch.unique(batch["target"][0]).tolist())
        valid = batch["channel_valid"][0].tolist()
        if 2 in labels:
            assert valid == [True, False], "structure 2 is in view without POI 11: channel 11 is unknown"
            seen_masked += 1
        else:
            assert valid == [True, True]
            seen_full += 1
        assert torch.isnan(kp[1, 1]).all()
    assert seen_masked > 0 and seen_full > 0, (seen_masked, seen_full)

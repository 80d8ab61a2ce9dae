"""The POI data loader: points are cropped and augmented with their voxels, and unknown targets are masked."""
from __future__ import annotations

from typing import Dict, List

import numpy as np
import pytest
import torch
from nnunetv2.utilities.label_handling.label_handling import LabelManager

from poi_nnunet.augmentation import get_point_aware_training_transforms
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
    """Stands in for nnU-Net's preprocessed dataset: blobs in the image at every POI."""

    def __init__(self, cases: Dict[str, CaseSlots], shape, sigma: float = 1.5):
        self.identifiers = sorted(cases)
        self.cases = {}
        grids = np.meshgrid(*[np.arange(s, dtype=float) for s in shape], indexing="ij")
        for key, slots in cases.items():
            image = np.zeros((1, *shape), dtype=np.float32)
            seg = np.zeros((1, *shape), dtype=np.int16)
            for pos in slots.positions[slots.usable]:
                d2 = sum((g - p) ** 2 for g, p in zip(grids, pos[3 - len(shape):]))
                image[0] += np.exp(-d2 / (2 * sigma**2)).astype(np.float32)
            seg[0, ..., : shape[-1] // 2] = 1
            seg[0, ..., shape[-1] // 2:] = 2
            self.cases[key] = (image, seg)

    def load_case(self, key: str):
        image, seg = self.cases[key]
        return image, seg, None, {"class_locations": {1: np.argwhere(seg == 1), 2: np.argwhere(seg == 2)}}


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
    slots = CaseSlots(np.array([[0.0, 20.25, 30.5], [0.0, 40.0, 10.0], [np.nan] * 3]))
    ds = InMemoryDataset({"c": slots}, (1, 64, 64))
    np.random.seed(0)
    loader = PoiDataLoader(ds, 1, (32, 32), (32, 32), label_manager(), layout, {"c": slots}, False, spacing=(1.0, 1.0))
    batch = loader.generate_train_batch()
    kp, inside, valid = batch["keypoints"][0].numpy(), batch["keypoints_inside"][0], batch["channel_valid"][0]
    assert np.isnan(kp[2]).all() and not valid[2], "an absent point stays absent and masks its channel"
    assert valid[:2].all(), "annotated points are supervised, inside the patch or not"
    lbs = np.array([20.25, 30.5]) - kp[0]
    np.testing.assert_allclose(kp[1], np.array([40.0, 10.0]) - lbs, atol=1e-5)
    assert np.all(lbs == np.round(lbs)), "a crop starts on a voxel"
    for i in range(2):
        assert bool(inside[i]) == bool(np.all((kp[i] >= -0.5) & (kp[i] <= 31.5)))


@pytest.mark.parametrize("dim", [2, 3])
def test_rendered_targets_sit_on_the_augmented_blobs(dim: int) -> None:
    """Rotation, scaling, elastic deformation and mirroring move the blobs; the targets must follow."""
    layout = whole_image_layout()
    shape = (1, 72, 72) if dim == 2 else (40, 40, 40)
    patch = (48, 48) if dim == 2 else (28, 28, 28)
    rng = np.random.default_rng(dim)
    cases = {}
    for k in range(3):
        # three blobs well apart (a window around one never sees another), jittered per case
        base = np.array([[13.0, 13.0, 13.0], [13.0, 27.0, 27.0], [27.0, 13.0, 27.0]]) * (shape[-1] / 40)
        pos = base + rng.uniform(-2, 2, size=(3, 3))
        if dim == 2:
            pos[:, 0] = 0.0
        cases[f"c{k}"] = CaseSlots(pos)
    ds = InMemoryDataset(cases, shape)
    transforms = get_point_aware_training_transforms(
        patch, (-np.pi / 6, np.pi / 6), None, tuple(range(dim)), False, use_mask_for_norm=[False],
        foreground_labels=[1, 2], swap_axes=(dim - 1,), slot_permutation=layout.mirror_permutation([[10, 11]], []),
        p_elastic_deform=1.0)
    # keep what moves voxels; intensity augmentation (low-resolution simulation, say) blurs blobs unevenly
    transforms.transforms = [t for t in transforms.transforms if "Spatial" in type(t).__name__
                             or "Mirror" in type(t).__name__ or "Convert" in type(t).__name__]
    # as in nnU-Net, the sample is cropped larger than the patch, so rotations never sample padding
    initial = (64, 64) if dim == 2 else (40, 40, 40)
    loader = PoiDataLoader(ds, 2, initial, patch, label_manager(), layout, cases, False, spacing=(1.0,) * dim,
                           transforms=transforms)
    np.random.seed(1)
    torch.manual_seed(1)
    checked = 0
    for _ in range(3):
        batch = loader.generate_train_batch()
        plan = PoiPlan(layout.mode, (40.0,) * dim, 1.5, (1.5,) * dim, 1.0, 3.0, (8,) * dim, (1.0, 2.0), (0.1, 0.2),
                       tuple({"structure": s, "poi": p, "name": n} for (s, p), n in zip(layout.channel_keys,
                                                                                        layout.channel_names)))
        targets = render_point_targets(batch["keypoints"], layout, patch, plan)
        image = batch["data"][:, 0]
        for b in range(2):
            for c in range(3):
                kp = batch["keypoints"][b, c]
                if not batch["keypoints_inside"][b, c] or bool(((kp < 4) | (kp > torch.tensor(patch) - 5)).any()):
                    continue  # a blob cut by the patch border has a biased centre
                window = torch.zeros_like(image[b])
                idx = tuple(slice(max(int(round(float(x))) - 4, 0), int(round(float(x))) + 5) for x in kp)
                window[idx] = 1
                found, _ = decode_heatmaps(image[b][None, None] * window)
                np.testing.assert_allclose(found[0, 0].numpy(), kp.numpy(), atol=0.5)
                peak = torch.nonzero(targets[b, c] == targets[b, c].max())[0].float()
                assert torch.all((peak - kp).abs() <= 0.5 + 1e-4)
                checked += 1
    assert checked >= 4


def test_structure_mode_centres_on_a_structure_and_masks_unknown_channels() -> None:
    layout = structure_layout()
    # structure 1 (left half) has both POIs; structure 2 (right half) lacks POI 11
    positions = np.array([[16.0, 20.0, 10.0], [16.0, 24.0, 12.0], [16.0, 20.0, 40.0], [np.nan] * 3])
    slots = CaseSlots(positions)
    ds = InMemoryDataset({"c": slots}, (32, 32, 56))
    np.random.seed(3)
    loader = PoiDataLoader(ds, 1, (24, 24, 24), (24, 24, 24), label_manager(), layout, {"c": slots}, True, spacing=(1.0, 1.0, 1.0))
    seen_masked = seen_full = False
    for _ in range(20):
        batch = loader.generate_train_batch()
        kp = batch["keypoints"][0].reshape(2, 2, 3)
        inside = batch["keypoints_inside"][0].reshape(2, 2)
        assert inside[0].all() or inside[1, 0], "the crop is centred on an annotated structure"
        labels = set(torch.unique(batch["target"][0]).tolist())
        valid = batch["channel_valid"][0].tolist()
        if 2 in labels:
            assert valid == [True, False], "structure 2 is in view without POI 11: channel 11 is unknown"
            seen_masked = True
        else:
            assert valid == [True, True]
            seen_full = True
        assert torch.isnan(kp[1, 1]).all()
    assert seen_masked

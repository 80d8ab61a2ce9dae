"""nnU-Net's data loader, with each sample's POIs cropped and augmented together with its voxels.

A batch gains three entries beside nnU-Net's ``data`` / ``target`` / ``keys``:

* ``keypoints`` ``(B, S, D)``: every slot of the :class:`ChannelLayout` in the
  final patch's voxel coordinates (array order, voxel centres on integers);
  NaN where the case has no usable point (absent, or removed by cleaning).
  Points outside the patch keep their position: their heatmap is a known
  zero (or a tail) there, which is information, so they are not clamped and
  not dropped.
* ``keypoints_inside`` ``(B, S)``: the point lies inside the patch.
* ``channel_valid`` ``(B, C)``: whether heatmap channel ``c`` may be supervised
  in this sample. A channel is masked when the truth there is unknown: its
  point is not annotated (whole-image mode), or a structure visible in the
  patch lacks that POI (structure mode). An unknown target is never replaced
  by an all-zero one.

In structure mode a sample is centred on one annotated structure (with a
random shift of up to an eighth of the patch), so it shows that structure
with its neighbours, as seed 000 trains on a vertebra with the one above and
below.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from acvl_utils.cropping_and_padding.bounding_boxes import crop_and_pad_nd
from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader
from threadpoolctl import threadpool_limits

from .augmentation.keys import KEYPOINTS, KEYPOINTS_VALID
from .channels import STRUCTURE_MODE, ChannelLayout
from .geometry import inside_extent
from .preprocessing import PreprocessedPois


@dataclass(frozen=True)
class CaseSlots:
    """One preprocessed case's points on the slot grid: ``(S, 3)`` positions, NaN where unusable."""

    positions: np.ndarray

    @property
    def usable(self) -> np.ndarray:
        return np.all(np.isfinite(self.positions), axis=1)


def case_slots(pois: PreprocessedPois, layout: ChannelLayout) -> CaseSlots:
    """Place a case's trainable points (valid, not cleaned) on the slot grid.

    In whole-image mode a point whose (structure, POI) has no channel is left out: the plans
    decide what the network predicts.
    """
    index = layout.slot_index()
    positions = np.full((layout.num_slots, 3), np.nan)
    for s, p, pos, ok in zip(pois.structures, pois.pois, pois.positions, pois.valid):
        slot = index.get((int(s), int(p)))
        if ok and slot is not None:
            positions[slot] = pos
    return CaseSlots(positions)


class PoiDataLoader(nnUNetDataLoader):
    """``nnUNetDataLoader`` whose samples carry their POIs through crop and augmentation."""

    def __init__(self, data, batch_size: int, patch_size, final_patch_size, label_manager,
                 layout: ChannelLayout, slots: Dict[str, CaseSlots], structure_centred: bool,
                 oversample_foreground_percent: float = 0.0, transforms=None,
                 probabilistic_oversampling: bool = False):
        super().__init__(data, batch_size, patch_size, final_patch_size, label_manager,
                         oversample_foreground_percent=oversample_foreground_percent, sampling_probabilities=None,
                         pad_sides=None, probabilistic_oversampling=probabilistic_oversampling,
                         transforms=transforms)
        self.layout = layout
        self.slots = slots
        self.structure_centred = structure_centred and layout.mode == STRUCTURE_MODE
        self._layer_of_slot = np.repeat(np.arange(layout.num_layers), layout.num_channels)
        self._layer_labels = np.asarray(layout.layers)

    # ------------------------------------------------------------------ where to crop
    def structure_centred_bbox(self, shape: Sequence[int], case: CaseSlots) -> Optional[Tuple[List[int], List[int]]]:
        """A crop centred on a random annotated structure of the case (None when it has none)."""
        usable = case.usable.reshape(self.layout.num_layers, self.layout.num_channels)
        layers = np.flatnonzero(usable.any(axis=1))
        if len(layers) == 0:
            return None
        layer = int(np.random.choice(layers))
        pts = case.positions.reshape(self.layout.num_layers, self.layout.num_channels, 3)[layer][usable[layer]]
        centre = pts.mean(axis=0)[3 - len(shape):]
        patch = np.asarray(self.patch_size)
        shift = np.random.uniform(-1, 1, size=len(shape)) * patch / 8
        lbs = [int(round(c + s - p / 2)) for c, s, p in zip(centre, shift, patch)]
        return lbs, [lb + int(p) for lb, p in zip(lbs, patch)]

    # ------------------------------------------------------------------ batch
    def generate_train_batch(self) -> dict:
        keys = self.get_indices()
        data_all = seg_all = None
        points_all, inside_all, valid_all = [], [], []
        with torch.no_grad(), threadpool_limits(limits=1, user_api=None):
            for j, key in enumerate(keys):
                data, seg, seg_prev, properties = self._data.load_case(key)
                case = self.slots[key]
                shape = data.shape[1:]
                bbox = self.structure_centred_bbox(shape, case) if self.structure_centred else None
                if bbox is None:
                    bbox = self.get_bbox(shape, self.get_do_oversample(j), properties["class_locations"])
                lbs, ubs = bbox
                box = [[lo, hi] for lo, hi in zip(lbs, ubs)]
                image = torch.from_numpy(crop_and_pad_nd(data, box, 0)).float()
                label = torch.from_numpy(crop_and_pad_nd(seg, box, -1, cast_cropped_to=np.int16)).to(torch.int16)
                points = case.positions - np.asarray(lbs, dtype=np.float64)
                if self.patch_size_was_2d:
                    image, label = image[:, 0], label[:, 0]
                    off_slice = np.abs(points[:, 0]) > 0.5
                    points = points[:, 1:].copy()
                    points[off_slice] = np.nan  # a 2D sample sees one slice; points elsewhere are unknown here
                sample = {"image": image, "segmentation": label,
                          KEYPOINTS: torch.from_numpy(points), KEYPOINTS_VALID: torch.from_numpy(np.isfinite(points).all(1))}
                if self.transforms is not None:
                    sample = self.transforms(**sample)
                if data_all is None:
                    data_all = torch.empty((self.batch_size, *sample["image"].shape), dtype=torch.float32)
                    segs = sample["segmentation"]
                    seg_all = ([torch.empty((self.batch_size, *s.shape), dtype=s.dtype) for s in segs]
                               if isinstance(segs, list) else torch.empty((self.batch_size, *segs.shape), dtype=segs.dtype))
                data_all[j] = sample["image"]
                full_res = sample["segmentation"][0] if isinstance(sample["segmentation"], list) else sample["segmentation"]
                if isinstance(seg_all, list):
                    for k, s in enumerate(sample["segmentation"]):
                        seg_all[k][j] = s
                else:
                    seg_all[j] = sample["segmentation"]
                moved = sample[KEYPOINTS].to(torch.float32)
                inside = sample[KEYPOINTS_VALID].numpy() & inside_extent(moved.numpy(), sample["image"].shape[1:])
                points_all.append(moved)
                inside_all.append(torch.from_numpy(inside))
                valid_all.append(self.channel_valid(torch.isfinite(moved).all(1).numpy(), full_res))
        return {"data": data_all, "target": seg_all, "keys": keys,
                "keypoints": torch.stack(points_all), "keypoints_inside": torch.stack(inside_all),
                "channel_valid": torch.from_numpy(np.stack(valid_all))}

    def channel_valid(self, usable: np.ndarray, segmentation: torch.Tensor) -> np.ndarray:
        """Which channels have a known target in this patch (see the module docstring)."""
        usable = usable.reshape(self.layout.num_layers, self.layout.num_channels)
        if self.layout.mode != STRUCTURE_MODE:
            return usable[0]
        seen = set(torch.unique(segmentation).tolist())
        visible = np.array([label in seen for label in self._layer_labels])
        if not visible.any():
            return usable.any(axis=0)  # no structure in view: peaks of annotated ones outside are still known
        return usable[visible].all(axis=0)

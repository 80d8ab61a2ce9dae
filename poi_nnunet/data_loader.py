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
  point is not annotated (whole-image mode), a structure visible in the
  patch lacks that POI (structure mode), or the point was caught in a fold of
  the elastic deformation. An unknown target is never replaced by an all-zero one.
* ``centre_layer`` ``(B,)``: the slot layer of the structure the sample is
  centred on (structure mode; -1 where nnU-Net's own crop was taken), 0 in
  whole-image mode. A left-right flip that exchanges paired structures
  exchanges it too.
* ``off_surface`` (int): how many of the batch's points the planner's cleaning rule masked after
  augmentation (:mod:`.augmentation.surface_check`): their slots are NaN, so they are no target.
* ``patch_spacing_mm`` ``(B, D)``: how long one patch voxel step is in mm along
  each patch axis, after the scaling augmentation (the configuration's
  spacing times the sampled scale).
* ``structure_map`` ``(B, K, *patch)`` float (only where a loader subclass
  provides :meth:`PoiDataLoader.structure_map`, as the ``uv`` trainer's does):
  per-voxel values of the anatomy (uv template coordinates), cut with the same
  box as the image and resampled with its grid, NaN where undefined.

In structure mode a sample is centred on one annotated structure (see
:meth:`PoiDataLoader.crop_centre`), with a random shift of at most
``centre_shift_voxels`` (:func:`centre_shift_voxels`), so it shows that
structure with its neighbours, as seed 000 trains on a vertebra with the one
above and below. A field of view's model (whole-image mode, the plan's
``field_of_view``) is centred the same way on the middle of the box of the
case's POIs of that field of view, the rule its predictor places the crop by
(on their coarse estimates); the shift is bounded by the slack the field of
view's planned extent leaves in the patch, but is at least a sixteenth of it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader
from threadpoolctl import threadpool_limits

from .augmentation.keys import CENTRE_LAYER, KEYPOINTS, KEYPOINTS_VALID, PATCH_TO_SAMPLE, STRUCTURE_MAP
from .augmentation.surface_check import off_surface
from .channels import ChannelLayout
from .geometry import CropBox, drop_slice_axis, inside_extent, last_axes, pad_axes
from .plan import STRUCTURE_MODE, PoiPlan
from .preprocessing import PreprocessedPois


OFF_SURFACE = "off_surface"  # batch key: points the cleaning rule masked after augmentation


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


def centre_shift_voxels(plan: PoiPlan, spacing: Sequence[float], patch_size: Sequence[int]) -> np.ndarray:
    """Largest random shift (voxels, per axis) of a structure-centred crop's centre.

    The slack the patch leaves around the planned crop (``crop_size_mm``: the structure with its
    neighbours), so a shift never pushes a neighbour out of view; but at least a sixteenth of the
    patch, so the model also sees crops off the centroid it is given at inference, and at most an
    eighth.
    """
    patch = np.asarray(patch_size, dtype=float)
    crop_mm = last_axes(np.asarray(plan.crop_size_mm, dtype=float), len(patch))
    crop = crop_mm / last_axes(np.asarray(spacing, dtype=float), len(patch))
    return np.clip((patch - crop) / 2, patch / 16, patch / 8)


def patch_spacing_mm(spacing: np.ndarray, patch_to_sample: Optional[np.ndarray]) -> np.ndarray:
    """mm per patch voxel step along each patch axis: ``|diag(spacing) @ A[:, i]|``.

    ``A`` (``patch_to_sample``) takes a patch step to sample voxels; scaling it by the sample's
    spacing gives the step in mm, which stays right when a rotation mixes axes of different spacing.
    Without a spatial transform a step is one voxel. Dummy-2D augmentation moves the two in-plane
    axes only; the folded axis keeps its spacing.
    """
    spacing = np.asarray(spacing, dtype=np.float64)
    if patch_to_sample is None:
        return spacing.copy()
    linear = np.eye(len(spacing))
    a = np.asarray(patch_to_sample, dtype=np.float64)
    linear[len(spacing) - len(a):, len(spacing) - len(a):] = a
    return np.linalg.norm(spacing[:, None] * linear, axis=0)


class PoiDataLoader(nnUNetDataLoader):
    """``nnUNetDataLoader`` whose samples carry their POIs through crop and augmentation."""

    def __init__(self, data, batch_size: int, patch_size, final_patch_size, label_manager,
                 layout: ChannelLayout, slots: Dict[str, CaseSlots], structure_centred: bool,
                 spacing: Sequence[float], centre_shift: Optional[Sequence[float]] = None,
                 oversample_foreground_percent: float = 0.0, transforms=None,
                 probabilistic_oversampling: bool = False, surface_fences_mm: Optional[Mapping[int, float]] = None,
                 min_voxel_diagonals: float = 1.1):
        """``spacing``: the configuration's (mm, per patch axis); ``centre_shift``: largest shift of a
        structure-centred crop per axis in voxels (default: an eighth of the final patch);
        ``surface_fences_mm`` / ``min_voxel_diagonals``: the planner's cleaning rule, applied to every
        augmented sample (:mod:`.augmentation.surface_check`; None or empty: not applied)."""
        super().__init__(data, batch_size, patch_size, final_patch_size, label_manager,
                         oversample_foreground_percent=oversample_foreground_percent, sampling_probabilities=None,
                         pad_sides=None, probabilistic_oversampling=probabilistic_oversampling,
                         transforms=transforms)
        self.layout = layout
        self.slots = slots
        # structure mode: crops centred on one structure's POIs; whole-image mode (a field of view's model, whose
        # layout holds that field of view's channels only): on all of the case's POIs
        self.structure_centred = bool(structure_centred)
        self._layer_labels = np.asarray(layout.layers)
        self.spacing = np.asarray(spacing, dtype=np.float64)
        final = np.asarray(final_patch_size, dtype=np.float64)
        self.centre_shift = final / 8 if centre_shift is None else np.asarray(centre_shift, dtype=np.float64)
        # the cleaning rule needs a 3D patch of instance labels (see augmentation.surface_check)
        judged = len(final_patch_size) == 3 and not self.patch_size_was_2d and not label_manager.has_regions
        self.surface_fences_mm = dict(surface_fences_mm or {}) if judged else {}
        self.min_voxel_diagonals = float(min_voxel_diagonals)
        keys = layout.slot_keys()
        self._slot_structures = np.array([s for s, _ in keys], dtype=int)
        self._slot_pois = np.array([p for _, p in keys], dtype=int)

    # ------------------------------------------------------------------ where to crop
    def crop_centre(self, key: str, case: CaseSlots, layer: int) -> np.ndarray:
        """Centre (preprocessed voxels, 3 axes) of a crop on structure ``layer``: its annotated POIs' mean; in
        whole-image mode (a field of view's model) the middle of their box, the centre the field of view was
        planned to fit around (:func:`poi_nnunet.inference.fields_of_view.field_of_view_centre` places it so)."""
        usable = case.usable.reshape(self.layout.num_layers, self.layout.num_channels)[layer]
        points = case.positions.reshape(self.layout.num_layers, self.layout.num_channels, 3)[layer][usable]
        if self.layout.mode != STRUCTURE_MODE:
            return (points.min(axis=0) + points.max(axis=0)) / 2
        return points.mean(axis=0)

    def structure_centred_bbox(self, key: str, shape: Sequence[int], case: CaseSlots) -> Tuple[int, Optional[CropBox]]:
        """A random annotated structure's layer and a crop centred on it (``(-1, None)`` when there is none).

        The crop is :meth:`CropBox.centred_on` the structure's centre plus a random shift, the rule the
        coarse_refine predictor centres its crops by (without the shift). ``shape``: the case's array
        (3 axes); a 2d configuration's ``patch_size`` and crop start with its axis of one slice, which
        is never shifted.
        """
        usable = case.usable.reshape(self.layout.num_layers, self.layout.num_channels)
        layers = np.flatnonzero(usable.any(axis=1))
        if len(layers) == 0:
            return -1, None
        layer = int(np.random.choice(layers))
        centre = last_axes(self.crop_centre(key, case, layer), len(shape))
        bound = pad_axes(self.centre_shift, len(shape), 0.0)
        shift = np.random.uniform(-1, 1, size=len(shape)) * bound
        return layer, CropBox.centred_on(centre, self.patch_size, shift)

    # ------------------------------------------------------------------ dense anatomical targets
    def structure_map(self, key: str) -> Optional[np.ndarray]:
        """The case's ``(K, *array shape)`` per-voxel anatomical values (NaN: undefined) that ride along
        with the image (``structure_map`` in the batch), or None (the default: none)."""
        return None

    # ------------------------------------------------------------------ batch
    def generate_train_batch(self) -> dict:
        keys = self.get_indices()
        data_all = seg_all = None
        points_all, inside_all, valid_all, centre_all, spacing_all, maps_all = [], [], [], [], [], []
        off_surface_count = 0
        with torch.no_grad(), threadpool_limits(limits=1, user_api=None):
            for j, key in enumerate(keys):
                data, seg, seg_prev, properties = self._data.load_case(key)
                case = self.slots[key]
                shape = data.shape[1:]
                layer, box = self.structure_centred_bbox(key, shape, case) if self.structure_centred else (-1, None)
                if self.layout.mode != STRUCTURE_MODE:
                    layer = 0
                if box is None:
                    box = CropBox.from_bounds(*self.get_bbox(shape, self.get_do_oversample(j),
                                                             properties["class_locations"]))
                image = torch.from_numpy(box.cut(data, 0)).float()
                label = torch.from_numpy(box.cut(seg, -1, cast_to=np.int16)).to(torch.int16)
                points = box.to_crop(case.positions)
                if self.patch_size_was_2d:
                    image, label = image[:, 0], label[:, 0]
                    points = drop_slice_axis(points)
                sample = {"image": image, "segmentation": label, CENTRE_LAYER: layer,
                          KEYPOINTS: torch.from_numpy(points), KEYPOINTS_VALID: torch.from_numpy(np.isfinite(points).all(1))}
                values = self.structure_map(key)
                if values is not None:
                    cut = torch.from_numpy(np.asarray(box.cut(values, np.nan, cast_to=np.float32), dtype=np.float32))
                    sample[STRUCTURE_MAP] = cut[:, 0] if self.patch_size_was_2d else cut
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
                spacing_mm = patch_spacing_mm(self.spacing, sample.get(PATCH_TO_SAMPLE))
                if self.surface_fences_mm:  # the planner's cleaning rule on the augmented sample
                    off = off_surface(moved.numpy(), self._slot_structures, self._slot_pois, full_res[0].numpy(),
                                      spacing_mm, self.surface_fences_mm, self.min_voxel_diagonals)
                    moved[torch.from_numpy(off)] = float("nan")
                    off_surface_count += int(off.sum())
                inside = sample[KEYPOINTS_VALID].numpy() & inside_extent(moved.numpy(), sample["image"].shape[1:])
                points_all.append(moved)
                inside_all.append(torch.from_numpy(inside))
                valid_all.append(self.channel_valid(torch.isfinite(moved).all(1).numpy(), full_res))
                centre_all.append(int(sample.get(CENTRE_LAYER, layer)))
                spacing_all.append(spacing_mm)
                if STRUCTURE_MAP in sample:
                    maps_all.append(sample[STRUCTURE_MAP].float())
        batch = {"data": data_all, "target": seg_all, "keys": keys,
                 "keypoints": torch.stack(points_all), "keypoints_inside": torch.stack(inside_all),
                 "channel_valid": torch.from_numpy(np.stack(valid_all)),
                 "centre_layer": torch.tensor(centre_all, dtype=torch.long),
                 "patch_spacing_mm": torch.from_numpy(np.stack(spacing_all)).float(),
                 OFF_SURFACE: off_surface_count}
        if maps_all:
            batch[STRUCTURE_MAP] = torch.stack(maps_all)
        return batch

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

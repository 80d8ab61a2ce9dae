"""Predicted heatmaps (preprocessed space) -> points, per crop mode of the plans.

Everything here works on one case's network output in nnU-Net's preprocessed
voxel space: heatmaps ``(C, z, y, x)`` (a 2D image is ``(C, 1, y, x)``) and,
in structure mode, the predicted label map ``(z, y, x)``. Positions come back
as continuous preprocessed indices (3 axes, z = 0 for a 2D image) and go to
world mm through the case's :class:`~poi_nnunet.geometry.PreprocessedSpace`.

Rules (documented here because the evaluator counts what is left out as missing):

* A channel whose confidence (fitted peak height / training amplitude, see
  :func:`~poi_nnunet.heatmaps.decode_heatmaps`) is below ``min_confidence``
  (default :data:`MIN_CONFIDENCE`) is *not found* and is not written.
* A point whose fit ends at most one raw voxel past the image's border is moved
  onto the border; farther out it is not found (the unified format allows no
  point outside the image).
* ``whole_image``: one point per channel, structure ``channel_keys[c][0]``.
* ``structure_with_neighbours``: every structure label of the dataset that the
  predicted segmentation holds with at least ``min_structure_voxels`` voxels
  gets every channel decoded inside its bounding box grown by
  ``peak_support_sigmas * heatmap_sigma_voxels + 2`` voxels per axis (both from the plan). The network draws each
  POI's peak on *every* structure in view, so the box is what tells a
  structure's own peak from its neighbours'; the flip side is that a POI
  whose true position lies outside its structure's grown box (a POI far from
  its structure) cannot be found, and a neighbour's peak inside the box can
  win over a weak own peak.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..channels import ChannelLayout
from ..geometry import CropBox, PreprocessedSpace, pad_axes, pad_to_3d
from ..heatmaps import decode_heatmaps
from ..plan import DEFAULT_PEAK_SUPPORT_SIGMAS, STRUCTURE_MODE, WHOLE_IMAGE
from ..pois import PoiSet

MIN_CONFIDENCE = 0.1
MIN_STRUCTURE_VOXELS = 4
BOX_MARGIN_VOXELS = 2
MAX_OVERSHOOT_VOXELS = 1.0
MAX_DECODE_VOXELS = 2**26  # float32 voxels decoded at once (256 MiB)


@dataclass
class DecodedPoints:
    """Points of one case in preprocessed voxel space, arrays aligned by point."""

    structures: np.ndarray  # (N,) int
    pois: np.ndarray  # (N,) int
    positions: np.ndarray  # (N, 3) float64, preprocessed (z, y, x)
    confidence: np.ndarray  # (N,) float64 in [0, 1]

    def __len__(self) -> int:
        return len(self.pois)

    @classmethod
    def empty(cls) -> "DecodedPoints":
        return cls(np.zeros(0, int), np.zeros(0, int), np.zeros((0, 3)), np.zeros(0))

    @classmethod
    def concatenate(cls, parts: Sequence["DecodedPoints"]) -> "DecodedPoints":
        parts = [p for p in parts if len(p)]
        if not parts:
            return cls.empty()
        return cls(np.concatenate([p.structures for p in parts]), np.concatenate([p.pois for p in parts]),
                   np.concatenate([p.positions for p in parts]), np.concatenate([p.confidence for p in parts]))

    def select(self, keep: np.ndarray) -> "DecodedPoints":
        return DecodedPoints(self.structures[keep], self.pois[keep], self.positions[keep], self.confidence[keep])

    def to_world(self, space: PreprocessedSpace) -> PoiSet:
        """World mm points, kept inside the raw image (see :func:`inside_image`)."""
        if not len(self):
            return PoiSet()
        world, keep = inside_image(space, space.preprocessed_to_world(self.positions))
        return PoiSet.from_arrays(self.structures[keep], self.pois[keep], world[keep],
                                  np.clip(self.confidence[keep], 0.0, 1.0))


def inside_image(space: PreprocessedSpace, world: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """World points moved into the raw image's extent, and which to keep.

    A fit may end just past the border for a landmark on it: up to :data:`MAX_OVERSHOOT_VOXELS` raw
    voxels out, the point is moved onto the border (the unified format allows no point outside the
    image). Farther out, or not finite, it is not found.
    """
    index = space.raw.world_to_index(world)
    lo, hi = -0.5, np.asarray(space.raw.size, float) - 0.5
    overshoot = np.maximum(np.maximum(lo - index, index - hi), 0.0).max(axis=1)
    keep = np.all(np.isfinite(index), axis=1) & (overshoot <= MAX_OVERSHOOT_VOXELS)
    inward = 1e-6
    moved = space.raw.index_to_world(np.clip(np.nan_to_num(index), lo + inward, hi - inward))
    return np.where((overshoot > 0)[:, None], moved, world), keep


def decode_volume(heatmaps: torch.Tensor, amplitude: float) -> Tuple[np.ndarray, np.ndarray]:
    """Sub-voxel peak of every channel of ``(C, z, y, x)``: ``(C, 3)`` positions and ``(C,)`` confidences.

    A single slice (a 2D image) is decoded as 2D and given z = 0. Channels are decoded in groups of at
    most :data:`MAX_DECODE_VOXELS` voxels, so hundreds of 3D heatmaps never sit in float32 at once.
    """
    if heatmaps.ndim != 4:
        raise ValueError(f"heatmaps must be (C, z, y, x), got {tuple(heatmaps.shape)}")
    per_group = max(1, MAX_DECODE_VOXELS // max(1, heatmaps[0].numel()))
    coords, confidence = [], []
    for start in range(0, heatmaps.shape[0], per_group):
        maps = heatmaps[start:start + per_group].float()
        one_slice = maps.shape[1] == 1
        c, p = decode_heatmaps(maps[None, :, 0] if one_slice else maps[None], amplitude=amplitude)
        coords.append(pad_to_3d(c[0].double().cpu().numpy()))  # a 2D image's points get z = 0
        confidence.append(p[0].double().cpu().numpy())
    if not coords:
        return np.zeros((0, 3)), np.zeros(0)
    return np.concatenate(coords), np.concatenate(confidence)


def decode_whole_image(heatmaps: torch.Tensor, layout: ChannelLayout, amplitude: float,
                       min_confidence: float = MIN_CONFIDENCE) -> DecodedPoints:
    """One point per channel: channel ``c`` is the pair ``layout.channel_keys[c]``."""
    _check_channels(heatmaps, layout)
    positions, confidence = decode_volume(heatmaps, amplitude)
    keys = np.array(layout.channel_keys, dtype=int).reshape(-1, 2)
    found = confidence >= min_confidence
    return DecodedPoints(keys[:, 0], keys[:, 1], positions, confidence).select(found)


def structure_margin(sigma_voxels: Sequence[float],
                     support_sigmas: float = DEFAULT_PEAK_SUPPORT_SIGMAS) -> np.ndarray:
    """Per preprocessed axis, voxels added around a structure's box: ``ceil(support_sigmas * sigma + 2)``.

    ``sigma_voxels`` has one entry per configuration axis; a 2d configuration's missing
    through-plane axis borrows the largest in-plane sigma.
    """
    sigma = pad_axes(sigma_voxels, 3, fill=max(float(s) for s in sigma_voxels))
    return np.array([math.ceil(support_sigmas * s + BOX_MARGIN_VOXELS) for s in sigma], dtype=int)


def structure_boxes(segmentation: np.ndarray, labels: Sequence[int], margin: Sequence[int],
                    min_voxels: int = MIN_STRUCTURE_VOXELS) -> List[Tuple[int, CropBox]]:
    """``(label, box)`` for each of ``labels`` the segmentation holds with at least ``min_voxels`` voxels.

    A box is the label's bounding box grown by ``margin`` voxels per axis, clipped to the array
    (3 axes, like the segmentation).
    """
    seg = np.asarray(segmentation)
    boxes = []
    for label in labels:
        where = np.nonzero(seg == label)
        if len(where[0]) < min_voxels:
            continue
        boxes.append((int(label), CropBox.enclosing(where).grown(margin).clipped(seg.shape)))
    return boxes


def decode_structures(heatmaps: torch.Tensor, segmentation: np.ndarray, layout: ChannelLayout,
                      sigma_voxels: Sequence[float], amplitude: float, min_confidence: float = MIN_CONFIDENCE,
                      min_structure_voxels: int = MIN_STRUCTURE_VOXELS,
                      support_sigmas: float = DEFAULT_PEAK_SUPPORT_SIGMAS) -> DecodedPoints:
    """Every channel decoded inside each predicted structure's grown box (see the module docstring)."""
    _check_channels(heatmaps, layout)
    if tuple(np.shape(segmentation)) != tuple(heatmaps.shape[1:]):
        raise ValueError(f"segmentation {np.shape(segmentation)} does not match heatmaps {tuple(heatmaps.shape)}")
    pois = np.array([p for _, p in layout.channel_keys], dtype=int)
    parts = []
    for label, box in structure_boxes(segmentation, layout.layers, structure_margin(sigma_voxels, support_sigmas),
                                      min_structure_voxels):
        positions, confidence = decode_volume(heatmaps[(slice(None), *box.slices)], amplitude)
        positions = box.from_crop(positions)
        found = confidence >= min_confidence
        parts.append(DecodedPoints(np.full(len(pois), label), pois, positions, confidence).select(found))
    return DecodedPoints.concatenate(parts)


def decode_points(heatmaps: torch.Tensor, layout: ChannelLayout, amplitude: float,
                  segmentation: Optional[np.ndarray] = None, sigma_voxels: Optional[Sequence[float]] = None,
                  min_confidence: float = MIN_CONFIDENCE,
                  support_sigmas: float = DEFAULT_PEAK_SUPPORT_SIGMAS) -> DecodedPoints:
    """Decode by the layout's mode; structure mode needs the preprocessed segmentation and sigma."""
    if layout.mode == WHOLE_IMAGE:
        return decode_whole_image(heatmaps, layout, amplitude, min_confidence)
    if layout.mode == STRUCTURE_MODE:
        if segmentation is None or sigma_voxels is None:
            raise ValueError("structure mode decodes inside predicted structures: pass segmentation and sigma_voxels")
        return decode_structures(heatmaps, segmentation, layout, sigma_voxels, amplitude, min_confidence,
                                 support_sigmas=support_sigmas)
    raise ValueError(f"unknown crop mode {layout.mode!r}")


def _check_channels(heatmaps: torch.Tensor, layout: ChannelLayout) -> None:
    if heatmaps.ndim != 4 or heatmaps.shape[0] != layout.num_channels:
        raise ValueError(f"expected heatmaps (C={layout.num_channels}, z, y, x), got {tuple(heatmaps.shape)}")

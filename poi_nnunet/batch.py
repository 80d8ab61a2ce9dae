"""What a POI trainer hands its loss beside nnU-Net's ``(output, target)``, and what the loss gives back.

The POI data loader (:mod:`poi_nnunet.data_loader`) adds point entries to
nnU-Net's batch dict; :meth:`PoiBatch.from_loader` moves them to the device as
one typed object, and the trainer calls ``loss(output, target, batch)``: the
loss reads everything it needs from its arguments, nothing from attributes set
before the call. It returns a :class:`LossOutput`, the total to back-propagate
and its named terms for the log.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Mapping, Optional, Union

import torch
from torch import Tensor


@dataclass(frozen=True)
class PoiBatch:
    """One batch's points, on the training device (S slots, C channels, D patch axes)."""

    keypoints: Tensor  # (B, S, D) float: patch voxels, array order; NaN where unknown
    inside: Tensor  # (B, S) bool: the point is a valid target inside the patch
    channel_valid: Tensor  # (B, C) bool: heatmap channel c has a known target in this sample
    centre_layer: Tensor  # (B,) long: slot layer the crop is centred on (-1 unknown; 0 whole image)
    patch_spacing_mm: Tensor  # (B, D) float: mm per patch voxel step after scaling augmentation
    # Fraction of training done (current_epoch / num_epochs), for losses whose targets follow a schedule;
    # 1 (the end state: the planned targets) where no trainer fills it.
    progress: float = 1.0
    # (B, K, *patch) float: per-voxel anatomical values (uv template coordinates), NaN where undefined;
    # None where the loader provides none (every method but ``uv``)
    structure_map: Optional[Tensor] = None

    @classmethod
    def from_loader(cls, batch: Mapping[str, Tensor], device: Union[str, torch.device],
                    progress: float = 1.0) -> "PoiBatch":
        def move(name: str) -> Tensor:
            return batch[name].to(device, non_blocking=True)

        structure_map = move("structure_map").float() if "structure_map" in batch else None
        return cls(move("keypoints").float(), move("keypoints_inside").bool(), move("channel_valid").bool(),
                   move("centre_layer").long(), move("patch_spacing_mm").float(), float(progress), structure_map)


@dataclass
class LossOutput:
    """A loss's value to back-propagate and its terms (plain floats, detached) for the log."""

    total: Tensor
    terms: Dict[str, float] = field(default_factory=dict)

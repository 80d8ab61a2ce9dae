"""Which network output channel predicts which POI, and where each case's points sit in a batch.

The planner writes the channel list (``plans[...]['poi']['poi_channels']``); this
module turns it into the fixed *slot grid* the data loader, the trainers and the
predictor share:

* ``whole_image`` mode: one layer, one slot per channel, channel ``c`` is the
  ``(structure, poi)`` pair of the plans.
* ``structure_with_neighbours`` mode: channel ``c`` is a POI id, shared by all
  structures; slot ``(layer l, channel c)`` is POI ``c`` of the ``l``-th
  structure label of the dataset. A channel's heatmap carries a peak for every
  structure in view, and the predictor tells them apart by the predicted
  segmentation.

A fixed grid keeps every sample's keypoints the same shape (so they batch) and
makes mirror-pair swaps a fixed permutation of slots.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from .augmentation import mirror_slot_permutation
from .plan import STRUCTURE_MODE, WHOLE_IMAGE, PoiPlan


@dataclass(frozen=True)
class ChannelLayout:
    mode: str
    channel_keys: Tuple[Tuple[int, int], ...]  # (structure, poi); structure is -1 in structure mode
    channel_names: Tuple[str, ...]
    layers: Tuple[int, ...]  # structure label of each slot layer; (-1,) in whole-image mode

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_plan(cls, plan: PoiPlan, dataset_json: Mapping[str, Any]) -> "ChannelLayout":
        return cls.from_channels(plan.crop_mode, plan.poi_channels, dataset_json)

    @classmethod
    def from_channels(cls, mode: str, channels: Sequence[Mapping[str, Any]],
                      dataset_json: Mapping[str, Any]) -> "ChannelLayout":
        """The layout of a crop mode and the plans' ``poi_channels`` list."""
        names = tuple(str(c["name"]) for c in channels)
        if mode == STRUCTURE_MODE:
            keys = tuple((-1, int(c["poi"])) for c in channels)
            layers = tuple(structure_labels(dataset_json))
        else:
            keys = tuple((int(c["structure"]), int(c["poi"])) for c in channels)
            layers = (-1,)
        return cls(mode, keys, names, layers)

    # ------------------------------------------------------------------ sizes
    @property
    def num_channels(self) -> int:
        return len(self.channel_keys)

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def num_slots(self) -> int:
        return self.num_layers * self.num_channels

    # ------------------------------------------------------------------ slots
    def slot_keys(self) -> List[Tuple[int, int]]:
        """``(structure, poi)`` of every slot, layer-major: slot ``l * C + c``."""
        if self.mode == WHOLE_IMAGE:
            return list(self.channel_keys)
        return [(s, p) for s in self.layers for _, p in self.channel_keys]

    def slot_index(self) -> Dict[Tuple[int, int], int]:
        return {k: i for i, k in enumerate(self.slot_keys())}

    def mirror_permutation(self, poi_pairs: Sequence[Sequence[int]],
                           structure_pairs: Sequence[Sequence[int]]) -> np.ndarray:
        """Slot permutation for a left-right flip (see :func:`mirror_slot_permutation`)."""
        pairs = [tuple(p) for p in poi_pairs]
        structures = [tuple(p) for p in structure_pairs]
        if not pairs and not structures:
            return np.arange(self.num_slots)
        return mirror_slot_permutation(self.slot_keys(), pairs, structures)

    def layer_permutation(self, structure_pairs: Sequence[Sequence[int]]) -> Optional[np.ndarray]:
        """Slot-layer permutation for a left-right flip (structure mode), None where no layer moves.

        A flipped left femur looks like a right one: the layer of each structure becomes its partner's.
        """
        partner = {int(a): int(b) for a, b in structure_pairs} | {int(b): int(a) for a, b in structure_pairs}
        index = {label: i for i, label in enumerate(self.layers)}
        perm = np.array([index.get(partner.get(label, label), i) for i, label in enumerate(self.layers)])
        return None if np.array_equal(perm, np.arange(len(perm))) else perm

    def channel_permutation(self, poi_pairs: Sequence[Sequence[int]],
                            structure_pairs: Sequence[Sequence[int]]) -> np.ndarray:
        """Output-channel permutation for a left-right flip of a prediction (test-time mirroring)."""
        if self.mode == WHOLE_IMAGE:
            return self.mirror_permutation(poi_pairs, structure_pairs)
        partner = {int(a): int(b) for a, b in poi_pairs} | {int(b): int(a) for a, b in poi_pairs}
        index = {p: c for c, (_, p) in enumerate(self.channel_keys)}
        return np.array([index.get(partner.get(p, p), c) for c, (_, p) in enumerate(self.channel_keys)])


def structure_labels(dataset_json: Mapping[str, Any]) -> List[int]:
    """Label values that can carry POIs: every integer label but background and ignore."""
    out = []
    for name, value in dataset_json["labels"].items():
        if isinstance(value, int) and value != 0 and name != "ignore":
            out.append(int(value))
    return sorted(out)

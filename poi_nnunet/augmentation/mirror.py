"""nnU-Net's mirroring, extended to points, with left/right POI pairs swapped when the left-right axis flips.

nnU-Net mirrors along any allowed spatial axis. Flipping moves every point with
its voxel, but only a flip of the patient's left-right axis turns a left
landmark into something that looks like the right one. So the transform is told
which array axes are left-right (``swap_axes``, after nnU-Net's transpose) and
a slot permutation (:func:`mirror_slot_permutation`); when an odd number of
``swap_axes`` is flipped, slot ``i`` takes the point that was in slot
``permutation[i]``. Slots never change meaning, so targets stay channel-aligned.
"""
from __future__ import annotations

from typing import Hashable, Optional, Sequence, Tuple

import numpy as np
import torch
from batchgeneratorsv2.transforms.spatial.mirroring import MirrorTransform

from ..geometry import flip_points
from .keys import CENTRE_LAYER, KEYPOINTS, STRUCTURE_MAP, read_points, write_points
from .structure_maps import flip_structure_map


class PointMirrorTransform(MirrorTransform):
    """``MirrorTransform`` that also flips ``data_dict['keypoints']`` and swaps mirror-pair slots.

    ``swap_axes``: spatial array axes (0-based, like ``allowed_axes``) that are the
    patient's left-right axis. ``slot_permutation``: an involution over slots,
    ``None`` or identity when no POI has a mirror partner. ``layer_permutation``:
    the same over slot layers (structures), applied to the sample's
    ``centre_layer`` so that a crop centred on a left structure is, once flipped,
    centred on its right partner, whose slots now hold its points.
    """

    def __init__(
        self,
        allowed_axes: Tuple[int, ...],
        swap_axes: Sequence[int] = (),
        slot_permutation: Optional[Sequence[int]] = None,
        label_swaps: Sequence[Tuple[int, int]] = (),
        layer_permutation: Optional[Sequence[int]] = None,
    ):
        super().__init__(allowed_axes)
        self.layer_permutation = None if layer_permutation is None else np.asarray(layer_permutation, dtype=np.int64)
        self.label_swaps = tuple((int(a), int(b)) for a, b in label_swaps)
        self.swap_axes = tuple(int(a) for a in swap_axes)
        self.slot_permutation = None if slot_permutation is None else np.asarray(slot_permutation, dtype=np.int64)
        if self.slot_permutation is not None:
            perm = self.slot_permutation
            if sorted(perm.tolist()) != list(range(len(perm))) or not np.array_equal(perm[perm], np.arange(len(perm))):
                raise ValueError(f"slot_permutation must swap slots in pairs, got {perm.tolist()}")

    def swaps_pairs(self, axes: Sequence[int]) -> bool:
        """Whether mirroring along ``axes`` exchanges left and right."""
        return sum(a in self.swap_axes for a in axes) % 2 == 1

    def apply(self, data_dict: dict, **params) -> dict:
        if data_dict.get(STRUCTURE_MAP) is not None:  # moves with the image; its values are the anatomy's own
            data_dict[STRUCTURE_MAP] = flip_structure_map(data_dict[STRUCTURE_MAP], list(params["axes"]))
        if data_dict.get(KEYPOINTS) is None:
            return super().apply(data_dict, **params)
        size = tuple(data_dict["image"].shape[1:])
        coords, valid, dtype = read_points(data_dict)
        data_dict = super().apply(data_dict, **params)
        axes = list(params["axes"])
        coords = flip_points(coords, axes, size)
        if self.slot_permutation is not None and self.swaps_pairs(axes):
            if len(self.slot_permutation) != len(coords):
                raise ValueError(
                    f"slot_permutation covers {len(self.slot_permutation)} slots but the sample has {len(coords)}"
                )
            coords, valid = coords[self.slot_permutation], valid[self.slot_permutation]
        centre = data_dict.get(CENTRE_LAYER)
        if self.layer_permutation is not None and centre is not None and centre >= 0 and self.swaps_pairs(axes):
            data_dict[CENTRE_LAYER] = int(self.layer_permutation[int(centre)])
        if self.label_swaps and self.swaps_pairs(axes) and data_dict.get("segmentation") is not None:
            data_dict["segmentation"] = swap_labels(data_dict["segmentation"], self.label_swaps)
        return write_points(data_dict, coords, valid, dtype)


def swap_labels(segmentation: torch.Tensor, label_swaps: Sequence[Tuple[int, int]]) -> torch.Tensor:
    """Exchange label values pairwise (left lung <-> right lung) in a label tensor; other values stay."""
    out = segmentation.clone()
    for a, b in label_swaps:
        out[segmentation == a] = b
        out[segmentation == b] = a
    return out


def _partners(pairs: Sequence[Tuple[int, int]], what: str) -> dict:
    partner = {}
    for a, b in pairs:
        for x, y in ((int(a), int(b)), (int(b), int(a))):
            if partner.get(x, y) != y or x == y:
                raise ValueError(f"{what} {x} appears in more than one mirror pair (or is paired with itself)")
            partner[x] = y
    return partner


def mirror_slot_permutation(
    slot_keys: Sequence[Tuple[Hashable, int]],
    poi_mirror_pairs: Sequence[Tuple[int, int]],
    structure_mirror_pairs: Sequence[Tuple[int, int]] = (),
) -> np.ndarray:
    """Slot permutation for :class:`PointMirrorTransform` from the dataset's mirror pairs.

    ``slot_keys[i]`` is ``(structure, poi)`` of slot ``i``. Its mirror image is
    ``(structure partner, poi partner)``, each defaulting to itself: a pair of POIs
    on one vertebra swaps within the vertebra, while a left-lung contour point
    becomes the matching right-lung point. A slot whose partner has no slot
    cannot be mirrored faithfully, so that is an error rather than a silently
    mislabelled landmark.
    """
    poi_partner = _partners(poi_mirror_pairs, "POI")
    structure_partner = _partners(structure_mirror_pairs, "structure")
    index = {tuple(key): i for i, key in enumerate(slot_keys)}
    perm = np.arange(len(slot_keys))
    for i, (structure, poi) in enumerate(slot_keys):
        other = (structure_partner.get(structure, structure), poi_partner.get(int(poi), int(poi)))
        if other == (structure, poi):
            continue
        if other not in index:
            raise ValueError(f"slot {(structure, poi)} has mirror partner {other}, which has no slot")
        perm[i] = index[other]
    if not np.array_equal(perm[perm], np.arange(len(perm))):
        raise ValueError("mirror pairs do not form a consistent left/right exchange of slots")
    return perm

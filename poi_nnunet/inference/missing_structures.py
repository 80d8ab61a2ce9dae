"""Structure mode: finding a structure the predicted segmentation missed, from its heatmap peaks.

In structure mode every POI channel draws its peak on *every* structure in view, and a structure's
points are decoded inside its predicted segmentation's box. A structure the segmentation misses
(labelled background) would lose all its points although the heatmaps show them. Rules:

* **Expected structures** are the layout's layers (the labels that have POIs in the training
  set). One the segmentation holds with fewer than ``min_structure_voxels`` voxels is *absent*.
* **Unexplained peaks.** A channel's highest voxel outside every present structure's grown box
  (the boxes the decoder searches) is unexplained when it rises at least
  :data:`RELATIVE_PEAK_HEIGHT` of the channel's highest peak above the channel's background (its
  median): a peak as clear as the segmented structures' own, which none of them accounts for.
  Relative, so it holds for the ``heatmap`` trainer's calibrated heights and ``coarse_refine``'s
  weakly trained logits alike, and independent of ``--min_confidence`` (at 0, noise must not
  become a structure).
* **Which structure.** Each unexplained peak goes to the absent structure whose segmentation logit
  is highest at the peak's voxel (the network's own second choice there; a region-based model
  has no such logit and gets no fallback). A structure's peaks then stand in for its mask: its
  channels are decoded around them as around a segmented structure (the peaks' bounding box
  grown by the same margin), and the points it gives are listed as decoded without their
  structure (:attr:`~.decoding.DecodedPoints.unbounded`).
* An absent structure with no unexplained peak keeps its points reported as missing, with the
  reason ``structure_not_segmented``; with provided labels (``--labels``) there is no fallback.
"""
from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch

from ..channels import ChannelLayout
from ..geometry import CropBox
from .decoding import MIN_STRUCTURE_VOXELS, DecodedPoints, decode_structures, structure_boxes, structure_margin

RELATIVE_PEAK_HEIGHT = 0.5


def unexplained_peaks(heatmaps: torch.Tensor, present: Sequence[CropBox],
                      relative_height: float = RELATIVE_PEAK_HEIGHT) -> Tuple[np.ndarray, np.ndarray]:
    """Channels with a peak outside every ``present`` box, and that peak's voxel: ``(K,)``, ``(K, 3)``.

    ``heatmaps`` ``(C, z, y, x)`` (any float dtype, CPU); ``present``: boxes (3 axes) of the segmented
    structures. See the module docstring for the rule.
    """
    channels, voxels = [], []
    shape = tuple(heatmaps.shape[1:])
    outside = torch.ones(shape, dtype=torch.bool)
    for box in present:
        outside[box.slices] = False
    if not bool(outside.any()):
        return np.zeros(0, dtype=int), np.zeros((0, 3), dtype=int)
    for c in range(heatmaps.shape[0]):
        channel = heatmaps[c].float()
        background = channel.median()
        highest = channel.max() - background
        masked = torch.where(outside, channel, torch.full_like(channel, -torch.inf))
        at = int(masked.argmax())
        if bool(highest > 0) and bool(masked.reshape(-1)[at] - background >= relative_height * highest):
            channels.append(c)
            voxels.append(np.unravel_index(at, shape))
    return np.asarray(channels, dtype=int), np.asarray(voxels, dtype=int).reshape(-1, 3)


def attribute_peaks(voxels: np.ndarray, segmentation_logits: torch.Tensor, absent: Sequence[int]) -> np.ndarray:
    """The absent structure label each peak voxel ``(K, 3)`` most looks like: ``(K,)``.

    ``segmentation_logits`` ``(n_labels, z, y, x)``, channel ``k`` the logit of label ``k`` (a label
    model: labels consecutive from 0).
    """
    absent = np.asarray(sorted(absent), dtype=int)
    if not len(voxels) or not len(absent):
        return np.zeros(0, dtype=int)
    index = torch.from_numpy(np.asarray(voxels, dtype=np.int64))
    at = segmentation_logits[:, index[:, 0], index[:, 1], index[:, 2]].float()  # (n_labels, K)
    return absent[at[torch.from_numpy(absent)].argmax(0).numpy()]


def peaks_by_structure(heatmaps: torch.Tensor, segmentation_logits: torch.Tensor, present: Sequence[CropBox],
                       absent: Sequence[int]) -> Dict[int, np.ndarray]:
    """Absent structure label -> voxels ``(k, 3)`` of the unexplained peaks given to it (see module docstring)."""
    if not len(absent):
        return {}
    _, voxels = unexplained_peaks(heatmaps, present)
    labels = attribute_peaks(voxels, segmentation_logits, absent)
    return {int(label): voxels[labels == label] for label in np.unique(labels)}


def peak_label_map(shape: Sequence[int], peaks: Dict[int, np.ndarray]) -> np.ndarray:
    """A label map ``shape`` (3 axes) holding only each structure's peak voxels: the stand-in mask whose
    grown bounding box the decoder searches."""
    labels = np.zeros(tuple(shape), dtype=np.int32)
    for label, voxels in peaks.items():
        labels[tuple(np.asarray(voxels, dtype=int).T)] = label
    return labels


def absent_structures(layers: Sequence[int], present: Sequence[int]) -> List[int]:
    """Layout layers (structure labels with POIs) not among ``present``."""
    found = {int(p) for p in present}
    return [int(label) for label in layers if int(label) not in found and int(label) >= 0]


def missing_structure_peaks(heatmaps: torch.Tensor, segmentation_logits: torch.Tensor, segmentation: np.ndarray,
                            layout: ChannelLayout, sigma_voxels: Sequence[float], support_sigmas: float,
                            min_structure_voxels: int = MIN_STRUCTURE_VOXELS) -> Dict[int, np.ndarray]:
    """Absent structure label -> its unexplained peak voxels ``(k, 3)``, outside the boxes the decoder
    searches around the structures ``segmentation`` (3 axes) holds (see the module docstring)."""
    margin = structure_margin(sigma_voxels, support_sigmas)
    boxes = structure_boxes(segmentation, layout.layers, margin, min_structure_voxels)
    absent = absent_structures(layout.layers, [label for label, _ in boxes])
    return peaks_by_structure(heatmaps, segmentation_logits, [box for _, box in boxes], absent)


def recover_missing_structures(points: DecodedPoints, heatmaps: torch.Tensor,
                               segmentation_logits: torch.Tensor, segmentation: np.ndarray, layout: ChannelLayout,
                               sigma_voxels: Sequence[float], amplitude: float, min_confidence: float,
                               support_sigmas: float, same_peak_sigmas: float) -> DecodedPoints:
    """``points`` (structure mode, decoded in the predicted ``segmentation``) plus those of absent structures
    found from their heatmap peaks (module docstring); their ``structure_not_segmented`` entries give way
    to what decoding them gave."""
    peaks = missing_structure_peaks(heatmaps, segmentation_logits, segmentation, layout, sigma_voxels, support_sigmas)
    if not peaks:
        return points
    found = decode_structures(heatmaps, peak_label_map(segmentation.shape, peaks), layout, sigma_voxels, amplitude,
                              min_confidence=min_confidence, min_structure_voxels=1, support_sigmas=support_sigmas,
                              same_peak_sigmas=same_peak_sigmas)
    out = DecodedPoints.concatenate([points, found])
    out.dropped = ([d for d in points.dropped if d.structure not in peaks]
                   + [d for d in found.dropped if d.structure in peaks])
    out.unbounded = list(points.unbounded) + [(int(s), int(p)) for s, p in zip(found.structures, found.pois)]
    return out

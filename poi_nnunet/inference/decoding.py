"""Predicted heatmaps (preprocessed space) -> points, per crop mode of the plans.

Everything here works on one case's network output in nnU-Net's preprocessed
voxel space: heatmaps ``(C, z, y, x)`` (a 2D image is ``(C, 1, y, x)``) and,
in structure mode, the predicted label map ``(z, y, x)``. Positions come back
as continuous preprocessed indices (3 axes, z = 0 for a 2D image) and go to
world mm through the case's :class:`~poi_nnunet.geometry.PreprocessedSpace`.

Rules (documented here because the evaluator counts what is left out as missing):

* A channel whose confidence (fitted peak height / training amplitude, see
  :func:`~poi_nnunet.heatmaps.decode_heatmaps`, times the ambiguity factor of
  :mod:`.peak_assignment`, which is 1 for a clear single peak) is below ``min_confidence``
  (default :data:`MIN_CONFIDENCE`) is *not found* and is not written.
* A point whose fit ends at most one raw voxel past the image's border is moved
  onto the border; farther out it is not found (the unified format allows no
  point outside the image).
* ``whole_image``: one point per channel, structure ``channel_keys[c][0]``. Where a
  segmentation is given (the predictor passes its own, or ``--labels``), a channel of a structure
  label (not 0) looks for its peak only inside that structure's bounding box grown as in
  structure mode (below); a channel whose structure is not in the segmentation (or has fewer than
  ``min_structure_voxels`` voxels) is decoded over the whole image and listed in
  :attr:`DecodedPoints.unbounded`, and one with no peak inside its box is not found
  (``no_peak_in_structure``).
* Channels compete for peaks (:mod:`.peak_assignment`: a few candidate peaks per channel, channels
  assigned jointly to distinct peaks, confidence lowered by ambiguity): in whole-image mode the
  channels of one structure (structure 0, "no structure", is one group), in structure mode all
  channels inside one structure's box. Without a conflict a channel decodes exactly as the
  argmax fit alone; see that module for the rules. Where a conflict stays ambiguous, the plans'
  shape prior (``shape_prior``: whole-image mode its group per structure label, structure mode the
  structure's group) decides (:mod:`.prior_assignment`).
* Nothing is dropped silently: :attr:`DecodedPoints.dropped` lists every ``(structure, poi)`` that
  is not written and why (see the reason constants: ``below_min_confidence`` (the fitted height),
  ``ambiguous`` (the height is enough, the ambiguity factor brings it below the minimum),
  ``peak_taken`` (another channel got the channel's only peak), ``no_peak_in_structure``,
  ``structure_not_segmented`` (structure mode: no box to decode in) and ``outside_image``
  (:meth:`DecodedPoints.outside_image`, known once the case's space is)).
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
from collections import Counter
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..channels import ChannelLayout
from ..geometry import CropBox, PreprocessedSpace, pad_axes, pad_to_3d
from ..heatmaps import fit_heatmap_peaks
from ..plan import DEFAULT_PEAK_SUPPORT_SIGMAS, STRUCTURE_MODE, WHOLE_IMAGE
from ..pois import PoiSet
from ..shape_prior import ShapeGroup, ShapePrior
from .peak_assignment import NONE, SAME_PEAK_SIGMAS, Candidates, assign_peaks, find_candidates

MIN_CONFIDENCE = 0.1
MIN_STRUCTURE_VOXELS = 4
BOX_MARGIN_VOXELS = 2
MAX_OVERSHOOT_VOXELS = 1.0
MAX_DECODE_VOXELS = 2**26  # float32 voxels decoded at once (256 MiB)

# Why a (structure, poi) is not written (DroppedPoint.reason); see the module docstring.
BELOW_MIN_CONFIDENCE = "below_min_confidence"
AMBIGUOUS = "ambiguous"
PEAK_TAKEN = "peak_taken"
NO_PEAK_IN_STRUCTURE = "no_peak_in_structure"
STRUCTURE_NOT_SEGMENTED = "structure_not_segmented"
OUTSIDE_IMAGE = "outside_image"
FIELD_OF_VIEW_NOT_FOUND = "field_of_view_not_found"  # a long scan's coarse pass found none of its POIs


@dataclass(frozen=True)
class DroppedPoint:
    """A ``(structure, poi)`` the decoder looked for and does not write, and why."""

    structure: int
    poi: int
    reason: str


@dataclass
class DecodedPoints:
    """Points of one case in preprocessed voxel space, arrays aligned by point.

    ``dropped``: what was looked for and is not among the points, with the reason;
    ``unbounded``: ``(structure, poi)`` of whole-image channels decoded over the whole image because
    their structure was not in the segmentation (they may be among the points).
    """

    structures: np.ndarray  # (N,) int
    pois: np.ndarray  # (N,) int
    positions: np.ndarray  # (N, 3) float64, preprocessed (z, y, x)
    confidence: np.ndarray  # (N,) float64 in [0, 1]
    dropped: List[DroppedPoint] = field(default_factory=list)
    unbounded: List[Tuple[int, int]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.pois)

    @classmethod
    def empty(cls) -> "DecodedPoints":
        return cls(np.zeros(0, int), np.zeros(0, int), np.zeros((0, 3)), np.zeros(0))

    @classmethod
    def concatenate(cls, parts: Sequence["DecodedPoints"]) -> "DecodedPoints":
        dropped = [d for p in parts for d in p.dropped]
        unbounded = [k for p in parts for k in p.unbounded]
        parts = [p for p in parts if len(p)]
        if not parts:
            return cls(*cls.empty().arrays(), dropped=dropped, unbounded=unbounded)
        return cls(np.concatenate([p.structures for p in parts]), np.concatenate([p.pois for p in parts]),
                   np.concatenate([p.positions for p in parts]), np.concatenate([p.confidence for p in parts]),
                   dropped, unbounded)

    def arrays(self) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        return self.structures, self.pois, self.positions, self.confidence

    def select(self, keep: np.ndarray, reason: Optional[str] = None) -> "DecodedPoints":
        """The points ``keep``; with a ``reason``, the others are added to :attr:`dropped` with it."""
        dropped = list(self.dropped)
        if reason is not None:
            gone = ~np.asarray(keep, dtype=bool)
            dropped += [DroppedPoint(int(s), int(p), reason) for s, p in zip(self.structures[gone], self.pois[gone])]
        return DecodedPoints(self.structures[keep], self.pois[keep], self.positions[keep], self.confidence[keep],
                             dropped, list(self.unbounded))

    def outside_image(self, space: PreprocessedSpace) -> List[DroppedPoint]:
        """The points :meth:`to_world` leaves out (past the raw image's border, see :func:`inside_image`)."""
        if not len(self):
            return []
        _, keep = inside_image(space, space.preprocessed_to_world(self.positions))
        return [DroppedPoint(int(s), int(p), OUTSIDE_IMAGE) for s, p in zip(self.structures[~keep], self.pois[~keep])]

    def report(self, space: Optional[PreprocessedSpace] = None) -> str:
        """One line on what was not written (and what was decoded without its structure's bounds),
        empty where nothing was; with ``space``, points outside the image count too."""
        dropped = self.dropped + (self.outside_image(space) if space is not None else [])
        parts = [f"{n} {reason.replace('_', ' ')}" for reason, n in sorted(Counter(d.reason for d in dropped).items())]
        line = ""
        if parts:
            line = f"{len(dropped)} point(s) not written ({', '.join(parts)})"
        if self.unbounded:
            line += ("; " if line else "") + (f"{len(self.unbounded)} channel(s) decoded over the whole image "
                                              "(structure not in the segmentation)")
        return line

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


@dataclass
class ChannelPeaks:
    """Each channel's chosen peak (:func:`decode_channels`), arrays aligned by channel."""

    positions: np.ndarray  # (C, 3) float64 voxel indices of the decoded array; NaN without a peak
    confidence: np.ndarray  # (C,) fitted height / amplitude times the ambiguity factor
    height_confidence: np.ndarray  # (C,) fitted height / amplitude alone
    has_peak: np.ndarray  # (C,) bool: False where a channel's box holds no peak
    peak_taken: np.ndarray  # (C,) bool: every peak of the channel went to other channels

    def points(self, structures: np.ndarray, pois: np.ndarray, min_confidence: float) -> DecodedPoints:
        """The channels found (confidence at least ``min_confidence``), the others dropped with their reason."""
        reason = np.full(len(self.confidence), "", dtype=object)
        reason[self.confidence < min_confidence] = AMBIGUOUS
        reason[self.peak_taken & (self.confidence < min_confidence)] = PEAK_TAKEN
        reason[self.height_confidence < min_confidence] = BELOW_MIN_CONFIDENCE
        reason[~self.has_peak] = NO_PEAK_IN_STRUCTURE
        found = reason == ""
        structures, pois = np.asarray(structures, dtype=int), np.asarray(pois, dtype=int)
        dropped = [DroppedPoint(int(s), int(p), str(r)) for s, p, r in zip(structures, pois, reason) if r]
        return DecodedPoints(structures[found], pois[found], self.positions[found], self.confidence[found], dropped)


def _spatial_box(box: CropBox, one_slice: bool) -> CropBox:
    return CropBox(box.start[1:], box.size[1:]) if one_slice else box


def decode_channels(heatmaps: torch.Tensor, amplitude: float, sigma_voxels: Optional[Sequence[float]],
                    groups: Sequence[np.ndarray], boxes: Optional[Sequence[Optional[CropBox]]] = None,
                    own_alternatives: bool = True, same_peak_sigmas: float = SAME_PEAK_SIGMAS,
                    priors: Sequence[ShapeGroup] = ()) -> ChannelPeaks:
    """Peaks of ``(C, z, y, x)`` heatmaps with channels of each of ``groups`` assigned to distinct peaks.

    ``boxes``: per channel, the box (3 axes, inside the array) its peak must lie in, None for the whole
    array. ``sigma_voxels``: the heatmap width per configuration axis (a 2d configuration's 2 axes are
    the last two); without it, half the fit's window radius stands in. ``own_alternatives``: see
    :func:`~poi_nnunet.inference.peak_assignment.assign_peaks`. Channels are decoded in groups of at most
    :data:`MAX_DECODE_VOXELS` voxels (so hundreds of 3D heatmaps never sit in float32 at once), and a
    channel's best candidate is exactly :func:`~poi_nnunet.heatmaps.decode_heatmaps`' fit.
    """
    if heatmaps.ndim != 4:
        raise ValueError(f"heatmaps must be (C, z, y, x), got {tuple(heatmaps.shape)}")
    heatmaps = heatmaps.cpu()  # candidate search and assignment index with CPU tensors and numpy
    n = heatmaps.shape[0]
    one_slice = heatmaps.shape[1] == 1
    sigma = None if sigma_voxels is None else pad_axes(sigma_voxels, 3, fill=max(float(v) for v in sigma_voxels))
    per_group = max(1, MAX_DECODE_VOXELS // max(1, heatmaps[0].numel()))
    parts = []
    for start in range(0, n, per_group):
        maps = heatmaps[start:start + per_group].float()
        spatial = maps[:, 0] if one_slice else maps  # a 2D image is decoded as 2D
        fit = fit_heatmap_peaks(spatial[None], amplitude=amplitude)
        if sigma is None:
            sigma = np.full(3, fit.radius / 2.0)
        part_boxes = None if boxes is None else [None if b is None else _spatial_box(b, one_slice)
                                                 for b in boxes[start:start + len(maps)]]
        parts.append(find_candidates(spatial, fit, sigma[1:] if one_slice else sigma, amplitude, part_boxes))
    if not parts:
        empty = np.zeros(0)
        return ChannelPeaks(np.zeros((0, 3)), empty, empty, empty.astype(bool), empty.astype(bool))
    cands = Candidates.concatenate(parts)
    chosen, factor = assign_peaks(cands, groups, sigma[1:] if one_slice else sigma, own_alternatives,
                                  same_peak_sigmas, priors)
    slot = np.maximum(chosen, 0)  # a channel whose peaks were all taken keeps its best, with factor 0
    rows = np.arange(n)
    has_peak = cands.valid[:, 0]
    refit = np.nonzero(has_peak & ~cands.fitted[rows, slot])[0]  # only chosen peaks are fitted
    for start in range(0, len(refit), per_group):
        channels = refit[start:start + per_group]
        maps = heatmaps[torch.from_numpy(channels)].float()
        cands.refit(maps[:, 0] if one_slice else maps, channels, slot[channels], amplitude)
    positions = np.where(has_peak[:, None], pad_to_3d(cands.positions[rows, slot]), np.nan)  # 2D: z = 0
    height = np.where(has_peak, cands.confidence[rows, slot], 0.0)
    return ChannelPeaks(positions, height * factor, height, has_peak, has_peak & (chosen == NONE))


def decode_whole_image(heatmaps: torch.Tensor, layout: ChannelLayout, amplitude: float,
                       min_confidence: float = MIN_CONFIDENCE, segmentation: Optional[np.ndarray] = None,
                       sigma_voxels: Optional[Sequence[float]] = None,
                       support_sigmas: float = DEFAULT_PEAK_SUPPORT_SIGMAS,
                       min_structure_voxels: int = MIN_STRUCTURE_VOXELS,
                       same_peak_sigmas: float = SAME_PEAK_SIGMAS,
                       shape_prior: Optional[ShapePrior] = None) -> DecodedPoints:
    """One point per channel: channel ``c`` is the pair ``layout.channel_keys[c]``; with a ``segmentation``
    (and ``sigma_voxels``), a structure's channels look for their peaks inside its grown box (see the
    module docstring)."""
    _check_channels(heatmaps, layout)
    keys = np.array(layout.channel_keys, dtype=int).reshape(-1, 2)
    boxes: Optional[List[Optional[CropBox]]] = None
    unbounded: List[Tuple[int, int]] = []
    if segmentation is not None:
        _check_segmentation(segmentation, heatmaps)
        if sigma_voxels is None:
            raise ValueError("decoding inside structures needs sigma_voxels (the structure box margin)")
        labels = sorted({int(s) for s in keys[:, 0] if s != 0})
        found = dict(structure_boxes(segmentation, labels, structure_margin(sigma_voxels, support_sigmas),
                                     min_structure_voxels))
        boxes = [found.get(int(s)) for s in keys[:, 0]]
        unbounded = [(int(s), int(p)) for s, p in keys if s != 0 and int(s) not in found]
    groups = [np.nonzero(keys[:, 0] == s)[0] for s in np.unique(keys[:, 0])]
    peaks = decode_channels(heatmaps, amplitude, sigma_voxels, groups, boxes, own_alternatives=True,
                            same_peak_sigmas=same_peak_sigmas,
                            priors=() if shape_prior is None else shape_prior.groups)
    points = peaks.points(keys[:, 0], keys[:, 1], min_confidence)
    points.unbounded = unbounded
    return points


def _group_of(shape_prior: Optional[ShapePrior], label: int) -> Tuple[ShapeGroup, ...]:
    group = None if shape_prior is None else shape_prior.group_for(label)
    return () if group is None else (group,)


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
                      support_sigmas: float = DEFAULT_PEAK_SUPPORT_SIGMAS,
                      same_peak_sigmas: float = SAME_PEAK_SIGMAS,
                      shape_prior: Optional[ShapePrior] = None) -> DecodedPoints:
    """Every channel decoded inside each predicted structure's grown box (see the module docstring)."""
    _check_channels(heatmaps, layout)
    _check_segmentation(segmentation, heatmaps)
    pois = np.array([p for _, p in layout.channel_keys], dtype=int)
    everyone = [np.arange(len(pois))]
    parts = []
    boxes = structure_boxes(segmentation, layout.layers, structure_margin(sigma_voxels, support_sigmas),
                            min_structure_voxels)
    for label, box in boxes:
        peaks = decode_channels(heatmaps[(slice(None), *box.slices)], amplitude, sigma_voxels, everyone,
                                own_alternatives=False, same_peak_sigmas=same_peak_sigmas,
                                priors=_group_of(shape_prior, label))
        peaks.positions = box.from_crop(peaks.positions)
        parts.append(peaks.points(np.full(len(pois), label), pois, min_confidence))
    present = {label for label, _ in boxes}
    absent = [DroppedPoint(int(label), int(p), STRUCTURE_NOT_SEGMENTED)
              for label in layout.layers if label not in present for p in pois]
    points = DecodedPoints.concatenate(parts)
    points.dropped = absent + points.dropped
    return points


def decode_points(heatmaps: torch.Tensor, layout: ChannelLayout, amplitude: float,
                  segmentation: Optional[np.ndarray] = None, sigma_voxels: Optional[Sequence[float]] = None,
                  min_confidence: float = MIN_CONFIDENCE,
                  support_sigmas: float = DEFAULT_PEAK_SUPPORT_SIGMAS,
                  same_peak_sigmas: float = SAME_PEAK_SIGMAS,
                  shape_prior: Optional[ShapePrior] = None) -> DecodedPoints:
    """Decode by the layout's mode; structure mode needs the preprocessed segmentation and sigma, whole-image
    mode bounds a structure's channels to it where a segmentation (with sigma) is given."""
    if layout.mode == WHOLE_IMAGE:
        return decode_whole_image(heatmaps, layout, amplitude, min_confidence, segmentation, sigma_voxels,
                                  support_sigmas, same_peak_sigmas=same_peak_sigmas, shape_prior=shape_prior)
    if layout.mode == STRUCTURE_MODE:
        if segmentation is None or sigma_voxels is None:
            raise ValueError("structure mode decodes inside predicted structures: pass segmentation and sigma_voxels")
        return decode_structures(heatmaps, segmentation, layout, sigma_voxels, amplitude, min_confidence,
                                 support_sigmas=support_sigmas, same_peak_sigmas=same_peak_sigmas,
                                 shape_prior=shape_prior)
    raise ValueError(f"unknown crop mode {layout.mode!r}")


def _check_segmentation(segmentation: np.ndarray, heatmaps: torch.Tensor) -> None:
    if tuple(np.shape(segmentation)) != tuple(heatmaps.shape[1:]):
        raise ValueError(f"segmentation {np.shape(segmentation)} does not match heatmaps {tuple(heatmaps.shape)}")


def _check_channels(heatmaps: torch.Tensor, layout: ChannelLayout) -> None:
    if heatmaps.ndim != 4 or heatmaps.shape[0] != layout.num_channels:
        raise ValueError(f"expected heatmaps (C={layout.num_channels}, z, y, x), got {tuple(heatmaps.shape)}")

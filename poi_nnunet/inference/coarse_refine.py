"""Prediction with a coarse_refine model (:mod:`trainers.coarse_refine`): one crop per structure.

Per case, in nnU-Net's preprocessed space:

1. **Structures.** nnU-Net's sliding window over the whole case gives the segmentation (its
   heatmap channels are kept in :class:`CasePrediction` but not decoded); or a label map is provided
   (``predict_case(..., segmentation=...)``), in which case the window pass is skipped and that map is
   also the segmentation written out. Every structure label of the plans' layout holding at least
   ``min_structure_voxels`` voxels gets one crop.
2. **Crops.** A patch-size crop centred on the label's centroid (the training crops' centre, see
   :mod:`trainers.coarse_refine_data`) by :meth:`~poi_nnunet.geometry.CropBox.centred_on`, the rule the
   loader crops by, and zero-padded where it leaves the volume as the loader pads (:meth:`CropBox.cut`).
   In whole-image mode one crop centred on the image where the image fits the patch; where it does
   not, nnU-Net's sliding-window tiles cover it, and each channel's point comes from the tile where
   its heatmap peak is highest, so no part of the image is left unsearched.
3. **Points.** ``forward_points`` gives the crop's coarse and refined points of *its centre structure
   only*, so a structure's points always come from the crop centred on it, never from a neighbour's
   crop where it is only context. Points are averaged over folds and, with test-time mirroring,
   over flipped crops (``point_tta``, default: whenever ``use_mirroring``; un-flipped; left/right
   partner POIs and structures exchanged on the patient's
   left-right axis, as :class:`PoiPredictor` does for heatmaps).
4. **Confidence** is the share of the coarse stage's spatial softmax near its expected coordinate
   (:func:`~.confidence.soft_argmax_confidence`; :mod:`.confidence` says why not the heatmap logits'
   height), averaged over folds and mirrored crops; a channel below ``min_confidence`` is not found
   and is listed in :attr:`DecodedPoints.dropped` with the reason, like every point not written.
5. **Missed structures.** In structure mode, a structure of the layout that the predicted
   segmentation misses but whose heatmap channels peak where no segmented structure is gets a crop
   centred on those peaks (:mod:`.missing_structures`); otherwise its points are reported as
   ``structure_not_segmented``.

``point_stage="coarse"`` writes the soft-argmax points instead of the refined ones (the ablation).
Points go to world mm through :class:`~poi_nnunet.geometry.PreprocessedSpace` in the shared writers.
"""
from __future__ import annotations

import itertools
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from ..errors import PoiNnunetError
from ..geometry import CropBox, PreprocessedSpace, flip_points, last_axes, pad_to_3d
from ..heatmaps import spatial_softmax
from ..plan import STRUCTURE_MODE
from .confidence import soft_argmax_confidence
from .decoding import (BELOW_MIN_CONFIDENCE, MIN_STRUCTURE_VOXELS, OUTSIDE_IMAGE, STRUCTURE_NOT_SEGMENTED,
                       DecodedPoints, DroppedPoint)
from .missing_structures import missing_structure_peaks
from .predictor import CasePrediction, PoiPredictor, checked_segmentation

POINT_STAGES = ("refined", "coarse")


class CoarseRefinePredictor(PoiPredictor):
    """:class:`PoiPredictor` whose points come from the coarse_refine heads, one crop per structure."""

    def __init__(self, *args: Any, point_stage: str = "refined", min_structure_voxels: int = MIN_STRUCTURE_VOXELS,
                 crop_batch_size: int = 4, point_tta: Optional[bool] = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        if point_stage not in POINT_STAGES:
            raise PoiNnunetError(f"point_stage must be one of {POINT_STAGES}, got {point_stage!r}")
        self.point_stage = point_stage
        self.min_structure_voxels = int(min_structure_voxels)
        self.crop_batch_size = int(crop_batch_size)
        self.point_tta = point_tta  # None: mirror the crops whenever use_mirroring (up to 8 passes per crop)

    # ------------------------------------------------------------------ one case
    def predict_case(self, data: Union[np.ndarray, torch.Tensor], space: PreprocessedSpace,
                     segmentation: Optional[np.ndarray] = None) -> CasePrediction:
        """Segmentation (sliding window, or ``segmentation`` given in preprocessed space) and the points."""
        data = self.checked_input(data)
        self.set_case_space(space)
        try:
            recovered = {}
            if segmentation is None:
                logits = self.predict_logits_from_preprocessed_data(data).cpu()
                seg_logits, heatmaps = logits[: self.num_segmentation_outputs], logits[self.num_segmentation_outputs:]
                if self.has_segmentation:
                    segmentation = np.asarray(self.label_manager.convert_logits_to_segmentation(seg_logits.float()))
                if self.finds_missing_structures(False):
                    recovered = self.missing_structure_peaks(heatmaps, seg_logits, segmentation)
            else:
                segmentation = checked_segmentation(segmentation, data)
                seg_logits = self._one_hot(segmentation)
                heatmaps = torch.zeros((0, *data.shape[1:]), dtype=torch.float16)
            points = self.predict_points(data, segmentation, recovered)
        finally:
            self.set_case_space(None)
        return CasePrediction(seg_logits, heatmaps, points, segmentation)

    def predict_field_of_view(self, data: Union[np.ndarray, torch.Tensor], space: PreprocessedSpace,
                              centre: np.ndarray) -> DecodedPoints:
        """The points of a field of view's model (:mod:`.fields_of_view`) from one patch-size crop centred on
        ``centre`` (preprocessed voxels, 3 axes: where the coarse pass put the field of view), as its loader
        centres training crops on the field of view's POIs; no segmentation pass."""
        data = self.checked_input(data)
        patch = np.asarray(self.configuration_manager.patch_size, dtype=float)
        box = CropBox.centred_on(last_axes(np.asarray(centre, dtype=float), len(patch)), patch)
        volume = data[:, 0].numpy() if len(patch) == 2 else data.numpy()
        self.set_case_space(space)
        try:
            return self.tiled_points(volume, [(0, 0, box)])
        finally:
            self.set_case_space(None)

    def _one_hot(self, segmentation: np.ndarray) -> torch.Tensor:
        """A provided label map as nnU-Net-shaped 'logits', so the writers export it unchanged."""
        if self.label_manager.has_regions:
            raise PoiNnunetError("a provided segmentation needs a label (not region) model")
        labels = torch.from_numpy(segmentation.astype(np.int64))
        out = torch.zeros((self.num_segmentation_outputs, *segmentation.shape), dtype=torch.float16)
        out.scatter_(0, labels[None].clamp(0, self.num_segmentation_outputs - 1), 1.0)
        return out

    def missing_structure_peaks(self, heatmaps: torch.Tensor, seg_logits: torch.Tensor,
                                segmentation: np.ndarray) -> Dict[int, np.ndarray]:
        """Absent structure -> its unexplained heatmap peak voxels ``(k, 3)`` (:mod:`.missing_structures`),
        outside the boxes the heatmap trainer's decoder would search around the segmented structures."""
        plan = self.poi_plan
        return missing_structure_peaks(heatmaps, seg_logits, segmentation, self.layout, plan.heatmap_sigma_voxels,
                                       plan.peak_support_sigmas, self.min_structure_voxels)

    def structure_crops(self, data_shape: Sequence[int], segmentation: Optional[np.ndarray],
                        recovered: Optional[Dict[int, np.ndarray]] = None) -> List[Tuple[int, int, CropBox]]:
        """``(structure label, layer index, crop)`` of every crop (array axes of the network input); a
        structure of ``recovered`` (label -> peak voxels, 3 axes) is cropped around its peaks' centroid."""
        patch = np.asarray(self.configuration_manager.patch_size, dtype=float)
        shape = last_axes(np.asarray(data_shape, dtype=float), len(patch))
        if self.layout.mode != STRUCTURE_MODE:
            return [(0, 0, start) for start in self.whole_image_tiles(shape, patch)]
        if segmentation is None:
            raise PoiNnunetError("structure mode needs a segmentation to centre crops on")
        seg = np.asarray(segmentation)
        if len(patch) == 2:
            seg = seg[0]
        crops = []
        for layer, label in enumerate(self.layout.layers):
            where = np.nonzero(seg == label)
            if len(where[0]) < self.min_structure_voxels:
                continue
            centroid = np.array([w.mean() for w in where])
            crops.append((int(label), layer, CropBox.centred_on(centroid, patch)))  # as the loader, without its shift
        layers = list(self.layout.layers)
        for label, voxels in sorted((recovered or {}).items()):
            centroid = np.asarray(voxels, dtype=float).mean(0)[3 - len(patch):]
            crops.append((int(label), layers.index(label), CropBox.centred_on(centroid, patch)))
        return crops

    def whole_image_tiles(self, shape: np.ndarray, patch: np.ndarray) -> List[CropBox]:
        """Crops covering the whole image: one centred crop where it fits the patch, else nnU-Net's
        sliding-window tiles (``tile_step_size`` overlap) along every axis larger than the patch."""
        from nnunetv2.inference.sliding_window_prediction import compute_steps_for_sliding_window

        centred = CropBox.centred_in(shape, patch)  # also the start along axes no larger than the patch
        if np.all(shape <= patch):
            return [centred]
        size = np.maximum(shape, patch).astype(int)
        steps = compute_steps_for_sliding_window(tuple(size), tuple(patch.astype(int)), self.tile_step_size)
        return [CropBox([s if n > p else c for s, n, p, c in zip(start, shape, patch, centred.start)], centred.size)
                for start in itertools.product(*steps)]

    def predict_points(self, data: torch.Tensor, segmentation: Optional[np.ndarray],
                       recovered: Optional[Dict[int, np.ndarray]] = None) -> DecodedPoints:
        """Points of every structure (preprocessed coordinates, 3 axes); every point not found is in
        ``dropped`` with its reason. ``recovered``: see :meth:`structure_crops`."""
        patch = [int(p) for p in self.configuration_manager.patch_size]
        if len(patch) == 2 and data.shape[1] != 1:
            raise PoiNnunetError("a 2d coarse_refine model predicts 2D images only (one slice)")
        volume = data[:, 0].numpy() if len(patch) == 2 else data.numpy()
        crops = self.structure_crops(data.shape[1:], segmentation, recovered)
        if self.layout.mode != STRUCTURE_MODE:  # channel c is the pair channel_keys[c]
            return self.tiled_points(volume, crops)
        pois = np.array([p for _, p in self.layout.channel_keys], dtype=int)
        parts = []
        for i in range(0, len(crops), self.crop_batch_size):
            chunk = crops[i:i + self.crop_batch_size]
            x = torch.from_numpy(np.stack([box.cut(volume, 0) for _, _, box in chunk])).float()
            layers = torch.tensor([layer for _, layer, _ in chunk], dtype=torch.long)
            coords, confidence = self.crop_points(x, layers)
            for (label, _, box), c, conf in zip(chunk, coords, confidence):
                positions = pad_to_3d(box.from_crop(c.double().numpy()))  # a 2d model's points get z = 0
                parts.append(self.found(DecodedPoints(np.full(len(pois), label), pois, positions, conf)))
        points = DecodedPoints.concatenate(parts)
        cropped = {label for label, _, _ in crops}
        points.dropped = [DroppedPoint(int(label), int(p), STRUCTURE_NOT_SEGMENTED)
                          for label in self.layout.layers if label not in cropped for p in pois] + points.dropped
        points.unbounded = [(int(s), int(p)) for s, p in zip(points.structures, points.pois) if s in (recovered or {})]
        return points

    def found(self, points: DecodedPoints) -> DecodedPoints:
        """The points at or above ``min_confidence`` with a finite position; the others dropped with the reason."""
        points = points.select(points.confidence >= self.min_confidence, BELOW_MIN_CONFIDENCE)
        return points.select(np.all(np.isfinite(points.positions), axis=1), OUTSIDE_IMAGE)

    def tiled_points(self, volume: np.ndarray, crops: List[Tuple[int, int, CropBox]]) -> DecodedPoints:
        """Whole-image points from several tiles: each channel's point comes from the tile where its
        heatmap peak is highest (the tile that sees the landmark; a tile without it was trained to a
        flat heatmap there)."""
        best_conf = np.full(self.layout.num_channels, -np.inf)
        best_pos = np.full((self.layout.num_channels, 3), np.nan)
        for i in range(0, len(crops), self.crop_batch_size):
            chunk = crops[i:i + self.crop_batch_size]
            images = [box.cut(volume, 0) for _, _, box in chunk]
            coords, confidence = self.crop_points(torch.from_numpy(np.stack(images)).float(),
                                                  torch.zeros(len(chunk), dtype=torch.long))
            for (_, _, box), c, conf in zip(chunk, coords, confidence):
                positions = pad_to_3d(box.from_crop(c.double().numpy()))
                better = conf > best_conf
                best_conf[better], best_pos[better] = conf[better], positions[better]
        keys = np.array(self.layout.channel_keys, dtype=int).reshape(-1, 2)
        return self.found(DecodedPoints(keys[:, 0], keys[:, 1], best_pos, np.clip(best_conf, 0, 1)))

    # ------------------------------------------------------------------ network
    @torch.inference_mode()
    def crop_points(self, x: torch.Tensor, layers: torch.Tensor) -> Tuple[torch.Tensor, np.ndarray]:
        """Points ``(N, C, D)`` (crop voxels, CPU) and confidences ``(N, C)`` of crops ``x`` ``(N, in, *patch)``,
        averaged over folds and mirrored crops; a pass's confidence is its soft-argmax's mass near its
        coarse point (:func:`~.confidence.soft_argmax_confidence`, the same with or without a flip)."""
        network = getattr(self.network, "_orig_mod", self.network)
        network.eval()
        x = x.to(self.device)
        layers = layers.to(self.device)
        flips = self._flip_sets()
        total, peak, n = None, None, 0
        for params in self.list_of_parameters:
            network.load_state_dict(params)
            for flip in flips:
                xs = torch.flip(x, [a + 2 for a in flip]) if flip else x
                structure = self._mirrored_layers(layers) if self._flips_left_right(flip) else layers
                out = network.forward_points(xs, structure)
                pts = (out.refined if self.point_stage == "refined" else out.coarse).float()
                heat = soft_argmax_confidence(spatial_softmax(out.heatmaps.float(), network.beta), out.coarse.float(),
                                              self.poi_plan.heatmap_sigma_voxels)
                if flip:
                    pts = flip_points(pts, flip, x.shape[2:])  # back to the unflipped crop's voxels
                if self._flips_left_right(flip):
                    perm = torch.as_tensor(self._channel_permutation(), device=pts.device)
                    pts, heat = pts.index_select(1, perm), heat.index_select(1, perm)
                total = pts if total is None else total + pts
                peak = heat if peak is None else peak + heat
                n += 1
        confidence = (peak / n).clamp(0, 1)
        return (total / n).cpu(), confidence.cpu().double().numpy()

    def _flip_sets(self) -> List[Tuple[int, ...]]:
        mirror = self.use_mirroring if self.point_tta is None else self.point_tta
        axes = list(self.allowed_mirroring_axes or ()) if mirror else []
        return [()] + [c for i in range(len(axes)) for c in itertools.combinations(axes, i + 1)]

    def _flips_left_right(self, flip: Tuple[int, ...]) -> bool:
        if not flip or self.mirror_permutation is None:
            return False
        if self.left_right_axis is None:
            raise RuntimeError("CoarseRefinePredictor: set_case_space(space) must be called before predicting")
        return self.left_right_axis in flip

    def _channel_permutation(self) -> np.ndarray:
        pairs = self.dataset_json.get("poi_mirror_pairs") or []
        structures = self.dataset_json.get("structure_mirror_pairs") or []
        return np.asarray(self.layout.channel_permutation(pairs, structures), dtype=int)

    def _mirrored_layers(self, layers: torch.Tensor) -> torch.Tensor:
        """Layer index of each crop's mirror-partner structure (a flipped left femur looks like a right one)."""
        pairs = self.dataset_json.get("structure_mirror_pairs") or []
        perm = self.layout.layer_permutation(pairs) if self.layout.mode == STRUCTURE_MODE else None
        if perm is None:
            return layers
        perm = torch.as_tensor(perm, dtype=layers.dtype, device=layers.device)
        return torch.where(layers >= 0, perm[layers.clamp_min(0)], layers)  # the training loader's mapping

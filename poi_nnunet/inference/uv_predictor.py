"""``UvPredictor``: nnU-Net's sliding window for segmentation + uv(w) networks, then template points.

The window loop is :class:`PoiPredictor`'s (nnU-Net's Gaussian-weighted tiles, fold averaging; the
uv channels are averaged like logits, which is meaningful for coordinates). No test-time mirroring:
the ``uv`` trainer never sees mirrored anatomy (:mod:`trainers.uv`). Per structure of the plans'
templates, every template POI (and every added point, :meth:`UvPredictor.add_template_points`) is
looked for among the voxels the segmentation gives that structure, as the voxels whose predicted
template coordinates are nearest to its own (:func:`~.uv_extraction.extract_template_points`). Its
confidence is the uv distance in mm mapped through the heatmap sigma (:func:`~.uv_extraction.uv_confidence`),
so ``--min_confidence`` means what it means for the heatmap trainers.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from ..errors import PoiNnunetError
from ..geometry import PreprocessedSpace
from ..uv.template import UvTemplate, UvTemplates
from .decoding import BELOW_MIN_CONFIDENCE, NO_PEAK_IN_STRUCTURE, STRUCTURE_NOT_SEGMENTED, DecodedPoints, DroppedPoint
from .predictor import CasePrediction, PoiPredictor, checked_segmentation
from .uv_extraction import extract_template_points, uv_confidence


class UvPredictor(PoiPredictor):
    """:class:`PoiPredictor` for the ``uv`` trainer (see the module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        # structure -> (POI ids, (P, D) template uv) of points added after training (--add-points)
        self.added: Dict[int, Tuple[List[int], np.ndarray]] = {}

    @property
    def templates(self) -> UvTemplates:
        templates = self.poi_plan.uv_templates if self.poi_plan is not None else None
        if templates is None:
            raise PoiNnunetError("the model's plans have no uv templates: it was not trained by the uv trainer")
        return templates

    @property
    def num_outputs(self) -> int:
        return self.num_segmentation_outputs + self.templates.dim

    def _output_mirror_permutation(self) -> Optional[np.ndarray]:
        return None  # never mirrored (module docstring)

    def add_template_points(self, structure: int, pois: Sequence[int], uv: np.ndarray) -> None:
        """Also extract ``pois`` of ``structure`` at template coordinates ``uv`` ``(P, D)`` in every case."""
        template = self.templates.for_structure(structure)
        if template is None:
            raise PoiNnunetError(f"structure {structure} has no uv template in the plans")
        taken = set(template.pois) | set(self.added.get(structure, ([], None))[0])
        clash = sorted(set(int(p) for p in pois) & taken)
        if clash:
            raise PoiNnunetError(f"added POI id(s) {clash} of structure {structure} are already predicted")
        old_pois, old_uv = self.added.get(structure, ([], np.zeros((0, template.dim))))
        self.added[structure] = (old_pois + [int(p) for p in pois],
                                 np.concatenate([old_uv, np.asarray(uv, dtype=np.float64).reshape(-1, template.dim)]))

    def targets(self, template: UvTemplate) -> Tuple[List[int], np.ndarray]:
        """POI ids and ``(P, D)`` template uv of everything extracted for ``template``'s structure."""
        pois, uv = list(template.pois), template.uv_of(template.pois)
        if template.structure in self.added:
            extra_pois, extra_uv = self.added[template.structure]
            pois, uv = pois + extra_pois, np.concatenate([uv, extra_uv])
        return pois, uv

    @property
    def sigma_mm(self) -> float:
        """The heatmap sigma in mm, the scale of every trainer's confidence."""
        spacing = np.asarray(self.configuration_manager.spacing, dtype=np.float64)
        return float(np.mean(np.asarray(self.poi_plan.heatmap_sigma_voxels)[-len(spacing):] * spacing))

    def predict_case(self, data: Union[np.ndarray, torch.Tensor], space: PreprocessedSpace,
                     segmentation: Optional[np.ndarray] = None) -> CasePrediction:
        """Sliding-window prediction (all folds) of one preprocessed case ``(channels, z, y, x)``, then the
        template points of every structure in ``segmentation`` (given: ``poi_predict --labels``) or in
        the predicted one."""
        data = torch.from_numpy(np.ascontiguousarray(data)) if isinstance(data, np.ndarray) else data
        expected = self.network_input_channels()
        if expected is not None and data.shape[0] != expected:
            raise PoiNnunetError(f"preprocessed data has {data.shape[0]} channels, the network takes {expected}")
        logits = self.predict_logits_from_preprocessed_data(data).cpu()
        if logits.shape[0] != self.num_outputs:
            raise PoiNnunetError(f"the network gives {logits.shape[0]} outputs, expected {self.num_outputs} "
                                 f"({self.num_segmentation_outputs} segmentation + {self.templates.dim} uv)")
        seg_logits, uv = logits[: self.num_segmentation_outputs], logits[self.num_segmentation_outputs:]
        if segmentation is not None:
            segmentation = checked_segmentation(segmentation, data)
        else:
            segmentation = np.asarray(self.label_manager.convert_logits_to_segmentation(seg_logits.float()))
        points = self.extract(uv.float().numpy(), segmentation)
        return CasePrediction(seg_logits, uv, points, segmentation)

    def extract(self, uv: np.ndarray, segmentation: np.ndarray) -> DecodedPoints:
        """Template points of every planned structure from ``uv`` ``(D, z, y, x)`` and the label map
        ``(z, y, x)`` (preprocessed space; a 2D case is ``(1, y, x)``); positions in ``(z, y, x)``."""
        d = self.templates.dim
        lead = uv.ndim - 1 - d  # a 2D case's leading axis of one voxel
        if lead not in (0, 1) or (lead == 1 and uv.shape[1] != 1):
            raise PoiNnunetError(f"a {d}-channel uv map cannot describe a case of shape {uv.shape[1:]}")
        if lead:
            uv, segmentation = uv[:, 0], segmentation[0]
        parts = [self.structure_points(template, uv, segmentation == template.structure, lead)
                 for template in self.templates]
        return DecodedPoints.concatenate(parts)

    def structure_points(self, template: UvTemplate, uv: np.ndarray, mask: np.ndarray, lead: int) -> DecodedPoints:
        """One structure's points (see :meth:`extract`); a structure without voxels has all its points
        dropped as not segmented."""
        pois, targets = self.targets(template)
        structures = np.full(len(pois), template.structure)
        if not mask.any():
            return DecodedPoints(*DecodedPoints.empty().arrays(),
                                 dropped=[DroppedPoint(template.structure, p, STRUCTURE_NOT_SEGMENTED) for p in pois])
        found = extract_template_points(uv, mask, targets)
        positions = np.concatenate([np.zeros((len(pois), lead)), found.positions], axis=1)
        confidence = uv_confidence(found.distance, template.half_extent, self.sigma_mm)
        confidence = np.where(found.found, confidence, 0.0)
        points = DecodedPoints(structures, np.asarray(pois), positions, confidence)
        points = points.select(found.found, NO_PEAK_IN_STRUCTURE)
        return points.select(points.confidence >= self.min_confidence, BELOW_MIN_CONFIDENCE)

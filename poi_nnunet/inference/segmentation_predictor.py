"""``SegmentationPredictor``: ``poi_predict`` for models whose network is nnU-Net's segmentation alone.

Used for ``-tr point_sup`` (point-supervised segmentation) and ``-tr nnunet`` (nnU-Net's own trainer,
e.g. the final model of ``poi_pseudo_masks``). It is nnU-Net's sliding window, fold averaging and
test-time mirroring (with ``structure_mirror_pairs`` swapped after a left-right flip, as for every POI
model); it writes ``OUT/<case><file_ending>`` only: no point files, and no complaint that there are
no points. It reads no ``poi`` block, so it also predicts a model trained on plans without one.
"""
from __future__ import annotations

from typing import Any, List, Optional, Tuple, Union

import numpy as np
import torch
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager
from torch import nn

from ..errors import PoiNnunetError
from ..geometry import PreprocessedSpace
from .predictor import CasePrediction, PoiPredictor


class SegmentationPredictor(PoiPredictor):
    """A :class:`PoiPredictor` without point channels (see the module docstring)."""

    writes_points = False

    def manual_initialization(self, network: nn.Module, plans_manager: PlansManager,
                              configuration_manager: ConfigurationManager, parameters: Optional[List[dict]],
                              dataset_json: dict, trainer_name: str,
                              inference_allowed_mirroring_axes: Optional[Tuple[int, ...]]) -> None:
        nnUNetPredictor.manual_initialization(self, network, plans_manager, configuration_manager, parameters,
                                              dataset_json, trainer_name, inference_allowed_mirroring_axes)
        self.num_segmentation_outputs = int(self.label_manager.num_segmentation_heads)
        pairs = dataset_json.get("structure_mirror_pairs") or []
        permutation = self._segmentation_permutation(pairs) if pairs else None
        identity = permutation is None or np.array_equal(permutation, np.arange(len(permutation)))
        self.mirror_permutation = None if identity else permutation

    @property
    def num_outputs(self) -> int:
        return self.num_segmentation_outputs

    def predict_case(self, data: Union[np.ndarray, torch.Tensor], space: PreprocessedSpace,
                     segmentation: Optional[np.ndarray] = None) -> CasePrediction:
        """nnU-Net's logits for one preprocessed case ``(channels, z, y, x)``; no points."""
        if segmentation is not None:
            raise PoiNnunetError("--labels gives structures to look for points in; a segmentation-only model "
                                 "predicts no points")
        logits = self.case_logits(self.checked_input(data), space)
        return CasePrediction(logits, logits[:0], None)

    def finds_missing_structures(self, segmentation_provided: bool) -> bool:
        return False


def predictor_class_of(trainer_class: Any) -> type:
    """The predictor for a trainer class: its ``predictor_class``, or this one for a trainer without
    (nnU-Net's own ``nnUNetTrainer`` and its variants, which train segmentation only)."""
    return getattr(trainer_class, "predictor_class", None) or SegmentationPredictor

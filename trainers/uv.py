"""``uv``: DenseSeg's dense correspondence (seed 001) on nnU-Net's network, in 2D and 3D.

Beside the segmentation the network predicts, for every voxel, the template coordinate of its
anatomical correspondent (``uv`` in 2D, ``uvw`` in 3D, in ``[-1, 1]`` over the structure's template
box; :mod:`poi_nnunet.uv`). Any point of a template is then found as the voxels whose predicted
coordinates are nearest to its own (:mod:`poi_nnunet.inference.uv_extraction`), so the network's cost
does not grow with the number of landmarks, and points that were never trained can be added later.

* **Head** (:class:`~poi_nnunet.heads.UvHead`): two residual units and a ``tanh``-bounded 1x1
  convolution beside nnU-Net's last segmentation layer; ``D`` channels shared by all structures (the
  label map says whose template a voxel refers to).
* **Targets**: the maps written at preprocessing (``<data folder>_uv/``), cut and augmented with the
  image (:mod:`poi_nnunet.augmentation.structure_maps`), never re-derived from moved points.
* **Loss** (:mod:`trainers.uv_loss`): nnU-Net's Dice+CE plus ``uv_weight / 2 * (L1 + L_LM) +
  tv_weight * TV``. The seed's tuned weights are 0.13 (segmentation, a BCE), 0.66 (uv) and 0.2 (TV);
  nnU-Net's Dice+CE keeps weight 1 here and the other two keep their ratio to the segmentation's.
* **No mirroring**, in training and at test time (as nnU-Net's ``nnUNetTrainerNoMirroring``). A
  mirrored structure is anatomy of the other chirality, whose template coordinates would only be right
  if each template were mirror-symmetric about its box centre (and paired structures mirror images of
  each other). DenseSeg trains with rotation, scaling and translation only.
"""
from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Dict, Optional

import numpy as np
import torch
from torch import nn

from poi_nnunet.data_loader import PoiDataLoader
from poi_nnunet.errors import PoiNnunetError
from poi_nnunet.heads import add_uv_head
from poi_nnunet.inference.uv_predictor import UvPredictor
from poi_nnunet.plan import PoiPlan
from poi_nnunet.preprocessing.uv_files import load_uv_map, preprocessed_uv_file
from poi_nnunet.tuning.space import Tunable

from .base import PoiTrainer
from .uv_loss import SegmentationAndUvLoss, slot_templates


class UvDataLoader(PoiDataLoader):
    """:class:`PoiDataLoader` whose samples carry the case's uv target map (memory-mapped, cut per patch)."""

    def __init__(self, *args, uv_folder: str, **kwargs):
        super().__init__(*args, **kwargs)
        self.uv_folder = uv_folder
        self._maps: Dict[str, np.ndarray] = {}

    def structure_map(self, key: str) -> Optional[np.ndarray]:
        if key not in self._maps:
            self._maps[key] = load_uv_map(preprocessed_uv_file(self.uv_folder, key))
        return self._maps[key]


class PoiUvTrainer(PoiTrainer):
    """Segmentation + one uv(w) map (see the module docstring)."""

    data_loader_class = UvDataLoader
    predictor_class = UvPredictor
    # relative to nnU-Net's segmentation loss, the seed's tuned ratios: 0.66 / 0.13 and 0.2 / 0.13
    uv_weight: float = 0.66 / 0.13
    tv_weight: float = 0.2 / 0.13
    # poi_tune: a decade either side of the seed's ratios (5.1 and 1.5)
    tunable: ClassVar[Dict[str, Tunable]] = {
        "uv_weight": Tunable(0.5, 50.0, log=True),
        "tv_weight": Tunable(0.15, 15.0, log=True),
    }
    pruning_term: ClassVar[Optional[str]] = "uv_lm"  # the landmark term, before its weight

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.uv_templates = self.check_uv_plan(self.poi_plan, self.has_segmentation, configuration)

    @staticmethod
    def check_uv_plan(plan: PoiPlan, has_segmentation: bool, configuration: str):
        """The plan's templates, or an error that says why this dataset and configuration cannot train uv."""
        if not has_segmentation:
            raise PoiNnunetError("the uv trainer needs label maps (a uv map lives inside each structure); this "
                                 "dataset is landmark-only: train heatmap or coarse_refine instead")
        if plan.uv_templates is None or not len(plan.uv_templates):
            raise PoiNnunetError(f"the plans' {configuration} configuration has no uv templates: they are planned "
                                 "per structure with at least D + 1 POIs in two cases, for configurations whose "
                                 "axes are the data's (not a 2d configuration of 3D data); plan again with "
                                 "poi_plan_and_preprocess if the plans predate them")
        return plan.uv_templates

    @classmethod
    def add_poi_heads(cls, network: nn.Module, plan: PoiPlan, configuration_manager, num_input_channels: int,
                      num_segmentation_outputs: int) -> nn.Module:
        """A uv head (``D`` channels) beside the last segmentation layer (deep-supervision outputs stay
        segmentation-only)."""
        if plan.uv_templates is None:
            raise PoiNnunetError("the plans have no uv templates; plan again with poi_plan_and_preprocess")
        return add_uv_head(network, plan.uv_templates.dim)

    def build_poi_loss(self, segmentation_loss: Optional[nn.Module]) -> SegmentationAndUvLoss:
        slot_uv, slot_structure = slot_templates(self.poi_layout.slot_keys(), self.uv_templates, self.uv_templates.dim)
        return SegmentationAndUvLoss(segmentation_loss, self.num_segmentation_outputs, slot_uv, slot_structure,
                                     self.uv_weight, self.tv_weight).to(self.device)

    def loader_arguments(self) -> dict:
        return {"uv_folder": str(Path(self.preprocessed_dataset_folder))}

    def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):
        """nnU-Net's settings without mirroring, in training and at test time (module docstring)."""
        rotation, dummy_2d, initial_patch_size, _ = super().configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        self.inference_allowed_mirroring_axes = None
        return rotation, dummy_2d, initial_patch_size, None

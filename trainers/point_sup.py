"""``point_sup``: segmentation from a few clicked voxels per structure (seed 002), on nnU-Net's network.

The dataset's ``labelsTr`` are sparse (``poi_convert clicks``): clicked voxels hold their class, every
other voxel nnU-Net's ignore label. The network is nnU-Net's, unchanged (segmentation output only);
what differs is the loss (:mod:`trainers.point_sup_loss`): the point cross-entropy on the clicks plus
three terms that need no labels, rotation consistency, separation and the planned prior extent
(``poi.point_sup_extent_mm``).

**Consistency pass.** Each training step runs the network a second time, on the batch turned by a
random right angle with a flip (:mod:`poi_nnunet.augmentation.right_angles`): in 2D in the image
plane, in 3D in the plane of the two axes with the most similar spacing (quarter turns only where the
patch is square there, else half turns). This about doubles a step's cost (``benchmarks/point_sup.py``
measures it); validation steps run one pass.

Prediction is nnU-Net's segmentation (``poi_predict -tr point_sup`` writes masks only, as does
``-tr nnunet``), with nnU-Net's test-time mirroring.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import ClassVar, Dict, Optional

import numpy as np
import torch
from torch import nn

from poi_nnunet.augmentation.right_angles import RightAngleTransform, RotationPlane, rotation_plane
from poi_nnunet.batch import PoiBatch
from poi_nnunet.errors import PoiNnunetError
from poi_nnunet.inference.segmentation_predictor import SegmentationPredictor
from poi_nnunet.raw_dataset import DENSE_REFERENCE_FOLDER
from poi_nnunet.tuning.space import Tunable

from .base import PoiTrainer
from .point_sup_loss import PointSupervisionLoss, PointSupOutput, PointSupWeights, full_resolution


class PoiPointSupTrainer(PoiTrainer):
    """nnU-Net's segmentation trained from clicks (see the module docstring)."""

    predictor_class = SegmentationPredictor
    loss_weights: PointSupWeights = PointSupWeights()
    # poi_tune: fields of PointSupWeights, a decade either side of their defaults. The point term is the
    # reference (weight 1), as nnU-Net's Dice+CE is for the other methods: scaling all four only scales the
    # learning rate.
    tunable: ClassVar[Dict[str, Tunable]] = {
        "consistency": Tunable(0.1, 10.0, log=True),
        "separation": Tunable(0.01, 1.0, log=True),
        "extent": Tunable(0.1, 10.0, log=True),
    }

    @classmethod
    def search_space(cls) -> Dict[str, Tunable]:
        """The declared terms less those the class switches off (weight 0): tuning them would undo an ablation
        variant (``point_sup_no_consistency`` stays without consistency)."""
        return {k: v for k, v in cls.tunable.items() if getattr(cls.loss_weights, k) != 0}

    def loss_weight(self, name: str) -> float:
        return float(getattr(self.loss_weights, name))

    def set_loss_weight(self, name: str, value: float) -> None:
        self.loss_weights = replace(self.loss_weights, **{name: float(value)})

    @classmethod
    def default_loss_weight(cls, name: str) -> float:
        return float(getattr(cls.loss_weights, name))

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        lm = self.label_manager
        if not lm.has_ignore_label:
            raise PoiNnunetError("point_sup trains from sparse labels: the dataset needs nnU-Net's 'ignore' label "
                                 "(the highest label value) on every voxel nobody clicked; make such a dataset with "
                                 "poi_convert clicks, or train a densely labelled one with the nnunet trainer")
        if lm.has_regions:
            raise PoiNnunetError("point_sup does not train region-based labels ('regions_class_order'); use "
                                 "one label per structure")
        self.extent_mm = dict(self.poi_plan.point_sup_extent_mm or {})
        # decided again once the cases' left-right axes are known (mirror_settings)
        self.rotation: Optional[RotationPlane] = rotation_plane(self.configuration_manager.spacing,
                                                                self.configuration_manager.patch_size)
        self._transforms = np.random.default_rng(fold if isinstance(fold, int) else 0)

    def on_train_start(self) -> None:
        super().on_train_start()
        w = self.loss_weights
        turns = "off: every axis is left-right in some case" if self.rotation is None else \
            f"rotates axes {self.rotation.axes} by {[90 * t for t in self.rotation.turns]} degrees (+ flip)"
        self.print_to_log_file(
            f"point_sup: weights point {w.point}, consistency {w.consistency}, separation {w.separation}, extent "
            f"{w.extent}; consistency {turns}; extent radii (mm) "
            f"{self.extent_mm or 'none planned: the extent term is off'}")

    def mirror_settings(self, points, mirror_axes):
        """nnU-Net's mirroring as the base sets it; with lateralised labels (``structure_mirror_pairs``) the
        consistency transforms also keep every case's left-right axis fixed (module right_angles)."""
        settings = super().mirror_settings(points, mirror_axes)
        if self.dataset_json.get("structure_mirror_pairs"):
            n_axes = len(self.configuration_manager.patch_size)
            lateral = {p.space.left_right_patch_axis(n_axes) for p in points.values()} - {-1}
            self.rotation = rotation_plane(self.configuration_manager.spacing, self.configuration_manager.patch_size,
                                           fixed_axes=lateral)
        return settings

    def build_poi_loss(self, segmentation_loss: Optional[nn.Module]) -> PointSupervisionLoss:
        """The four-term loss; nnU-Net's Dice+CE is not used, only its deep-supervision weights."""
        ds_weights = getattr(segmentation_loss, "weight_factors", None)
        return PointSupervisionLoss(self.label_manager.num_segmentation_heads, self.label_manager.ignore_label,
                                    self.extent_mm, self.loss_weights, ds_weights)

    def forward_network(self, data: torch.Tensor, batch: PoiBatch):
        """nnU-Net's pass; in training with the consistency term on, a second pass on the turned batch."""
        outputs = self.network(data)
        if not self.network.training or not self.loss_weights.consistency or self.rotation is None:
            return outputs
        transform = RightAngleTransform.random(self.rotation, self._transforms)
        transformed = full_resolution(self.network(transform.apply(data)))
        return PointSupOutput(outputs, transformed, transform)

    def validation_reference(self, raw_dataset: Path) -> Path:
        """The dense masks of the training cases (``poi_convert clicks`` keeps them for evaluation): the
        validation cases' Dice against them is what point supervision is for."""
        return raw_dataset / DENSE_REFERENCE_FOLDER

    def segmentation_output(self, output):
        return super().segmentation_output(output.outputs if isinstance(output, PointSupOutput) else output)

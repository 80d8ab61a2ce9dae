"""``coarse_refine``: seed 000's coarse-to-fine POI model on the heatmap trainer's network.

Network: the heatmap trainer's (the plans' nnU-Net network with one heatmap channel per POI channel)
wrapped in :class:`~poi_nnunet.coarse_refine_network.CoarseRefineNetwork`, which adds the
soft-argmax coarse stage and the patch + transformer refinement stage; built from the plans alone,
so ``poi_predict`` rebuilds it.

Data: structure-centred crops (centre = the structure's label centroid plus a random shift, see
:mod:`trainers.coarse_refine_data`), nnU-Net's augmentation plus elastic deformation
(``p_elastic_deform``, with the ranges the plan derives from the crop size; seed 000 relied on it),
points moved exactly by the point-aware transforms. Only the centre structure's POIs are targets;
neighbours are context (:mod:`trainers.coarse_refine_loss` has the loss and its weights).

Resolution: heatmaps, coarse points and refinement patches all live at the configuration's spacing
on patch-size crops. Long scans get a separate whole-scan coarse pass that places one such model per
field of view (:mod:`planners.fields_of_view`, :mod:`poi_nnunet.inference.fields_of_view`).

Many POIs: a training step refines ``refine_subset`` channels per sample (the centre structure's valid
targets first, random ones to fill), not all C, so its patch sampling, patch CNN and attention cost
those of ``refine_subset`` POIs whatever C is (about 20-25 ms of one CPU thread per refined POI and
sample, forward and backward, on ``benchmarks/train_step.py``'s spine); the coarse stage and its loss
stay on every channel (cheap beside the heatmaps). Validation and inference refine every channel.
What a smaller subset trades: (a) where a sample has more valid targets than ``refine_subset``, each
is refined (and its refinement loss counted) in only a random share of the steps: fewer points per
step teach the refinement, a noisier gradient that favours no POI (the draw is uniform among the valid
ones, and the term is still a mean per refined valid point, so ``refine_weight`` means the same); (b) the attention sees
``refine_subset`` POIs in a training step but all C at inference, so the smaller it is against C, the
further the inference context (its size, every POI at once) lies from any the transformer was trained
on. At or above the number of annotated POIs per structure (a) vanishes; at or above C both do and
training is exactly as before. The default 64 is above the synthetic spine's 35 POIs per structure.

Inference: :class:`~poi_nnunet.inference.coarse_refine.CoarseRefinePredictor`.
"""
from __future__ import annotations

from typing import ClassVar, Dict, Optional

import torch
from torch import nn

from poi_nnunet.batch import PoiBatch
from poi_nnunet.coarse_refine_network import CoarseRefineNetwork
from poi_nnunet.inference.coarse_refine import CoarseRefinePredictor
from poi_nnunet.plan import PoiPlan
from poi_nnunet.tuning.space import Tunable

from .coarse_refine_data import CentredPoiDataLoader
from .coarse_refine_loss import CoarseRefineLoss, point_targets
from .heatmap import PoiHeatmapTrainer


class PoiCoarseRefineTrainer(PoiHeatmapTrainer):
    """Heatmap + soft-argmax coarse points, refined by patch embeddings and self-attention across POIs."""

    data_loader_class = CentredPoiDataLoader
    predictor_class = CoarseRefinePredictor
    p_elastic_deform: float = 0.2
    coarse_weight: float = 0.02
    refine_weight: float = 0.02
    refine_jitter_voxels: float = 1.0  # std of the noise on refinement patch centres while training
    refine_on_features: bool = True  # refinement patches of image and last decoder features (False: image only)
    # POI channels refined per sample in a training step (valid targets first; 0: all). The cost of the
    # refinement stage grows with it, not with C; see the module docstring for what a smaller one trades.
    refine_subset: int = 64
    # poi_tune: the heatmap trainer's weight and amplitude, and the two point terms (a decade either side of
    # their defaults). Not the sigma: the planned refinement patch is sized from it (3 sigma around a point).
    tunable: ClassVar[Dict[str, Tunable]] = {
        **{k: v for k, v in PoiHeatmapTrainer.tunable.items() if k != "heatmap_sigma_mm"},
        "coarse_weight": Tunable(0.002, 0.2, log=True),
        "refine_weight": Tunable(0.002, 0.2, log=True),
    }
    pruning_term: ClassVar[Optional[str]] = "refined_mm"  # the refined points' error in mm

    @classmethod
    def add_poi_heads(cls, network: nn.Module, plan: PoiPlan, configuration_manager, num_input_channels: int,
                      num_segmentation_outputs: int) -> nn.Module:
        """The heatmap head, then the coarse and refinement stages around the whole network. The structure
        embedding has one row per segmentation output (at least the structure layers) plus 'unknown'."""
        backbone = super().add_poi_heads(network, plan, configuration_manager, num_input_channels,
                                         num_segmentation_outputs)
        patch = [int(p) for p in configuration_manager.patch_size]
        refine = [min(int(r), p) for r, p in zip(plan.refine_patch_size, patch)]
        return CoarseRefineNetwork(backbone, num_segmentation_outputs, plan.num_channels,
                                   max(int(num_segmentation_outputs), 1), num_input_channels, refine,
                                   refine_on_features=cls.refine_on_features,
                                   refine_jitter_voxels=cls.refine_jitter_voxels,
                                   refine_subset=cls.refine_subset)

    def _do_i_compile(self) -> bool:
        return False  # the point heads run data-dependent patch sampling; not worth a compiled graph

    def build_poi_loss(self, segmentation_loss: Optional[nn.Module]) -> CoarseRefineLoss:
        if self.poi_plan.structure_mode and not self.has_segmentation:
            raise RuntimeError("coarse_refine in structure mode needs label maps to centre crops on")
        per_channel = self.heatmap_weight / max(self.poi_layout.num_channels, 1)  # see coarse_refine_loss
        return CoarseRefineLoss(segmentation_loss, self.poi_layout, self.poi_plan, self.num_segmentation_outputs,
                                per_channel, self.coarse_weight, self.refine_weight)

    def forward_network(self, data: torch.Tensor, batch: PoiBatch):
        """The points; in training the network refines a subset, preferring the channels the loss scores."""
        return self.network(data, batch.centre_layer, point_targets(batch, self.poi_layout)[1])

    def segmentation_output(self, output):
        return super().segmentation_output(output.output)

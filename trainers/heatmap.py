"""``heatmap``: nnU-Net's segmentation network with one more output channel per POI channel.

The plans' network is built unchanged; beside its last 1x1 segmentation
convolution sits a small heatmap head on the same decoder features
(:mod:`poi_nnunet.heads`: a hidden layer at least as wide as the POI count,
since a plain widened 1x1 convolution cannot separate more POIs than the
decoder has features), so the last ``C`` channels of the full-resolution
output are heatmaps. Targets are Gaussians rendered from the points the loader
moved through augmentation (:mod:`trainers.heatmap_loss`).

Where the plan says so (``poi.heatmap_deep_supervision``), every lower deep-supervision output ends in
heatmap channels too, trained at its resolution (:class:`~trainers.heatmap_loss.DeepSupervisedHeatmapLoss`):
the deep decoder stages then learn *which* landmark from the start, as they learn which structure from
nnU-Net's segmentation deep supervision. On the landmark-only polygon phantom (no segmentation to teach
them) this took the mean error over all points after 2000 iterations from 11.7 mm (41 % given to another
landmark) to 0.51 mm (1 %); see ``benchmarks/learning_speed.py`` and the README.

Loss: nnU-Net's Dice + CE (with deep supervision) on the segmentation channels
where the dataset has labels, plus ``heatmap_weight`` times the masked squared
error on the full-resolution heatmaps (the heatmap-regression baseline of seed
001). Squared error against a scaled Gaussian is chosen because its optimum is
the Gaussian itself, whose peak the decoder fits to sub-voxel precision. It is
counted in peaks, not averaged over voxels (see
:class:`~poi_nnunet.losses.MaskedHeatmapLoss`): as a plain MSE the peaks drowned
in the zero background beside a segmentation loss of order one, and the heads
learnt to predict zero everywhere.
"""
from __future__ import annotations

from typing import ClassVar, Dict, Optional

from torch import nn

from poi_nnunet.heads import add_heatmap_head, add_lower_heatmap_heads
from poi_nnunet.plan import PoiPlan
from poi_nnunet.tuning.space import Tunable

from .base import PoiTrainer
from .heatmap_loss import DeepSupervisedHeatmapLoss, SegmentationAndHeatmapLoss


class PoiHeatmapTrainer(PoiTrainer):
    """Segmentation + one heatmap per POI channel of the plans."""

    # 1 per POI against Dice+CE: in the demo's CPU budget (1500 steps, 160 X-ray POIs) points went from none
    # found to 5.4 mm mean TRE, while the segmentation's Dice fell from 0.92 to 0.70; 0.1 kept more Dice
    # (EMA pseudo-Dice 0.77 after a 750-step run, against 0.63 at step 750 of the 1500) but left 7% of the
    # validation points unfound and the rest at 17.7 mm.
    heatmap_weight: float = 1.0
    # Heatmap heads on the lower deep-supervision outputs: None = as the plan says, True/False = forced
    # (the training variants compared by benchmarks/learning_speed.py).
    deep_supervised_heatmaps: Optional[bool] = None
    min_sigma_voxels: float = 1.0  # floor of a lower level's target sigma (its own voxels)
    # poi_tune's search space. The weight spans 0.1 (more Dice, points left unfound in the demo) to beyond 1;
    # sigma and amplitude are what the seed's heatmap-regression baseline tuned (alpha = 44 at sigma = 8 px):
    # sigma as a factor of the planned one (whose floor is 2 voxels: 0.75x keeps 1.5), amplitude around the
    # planned 10 up to beyond the seed's 44.
    tunable: ClassVar[Dict[str, Tunable]] = {
        "heatmap_weight": Tunable(0.05, 5.0, log=True),
        "heatmap_sigma_mm": Tunable(0.75, 2.0, log=True, in_plan=True, relative=True),
        "heatmap_amplitude": Tunable(2.0, 60.0, log=True, in_plan=True),
    }
    pruning_term: ClassVar[Optional[str]] = "poi_loss"  # the heatmap loss counted in peaks, before its weight

    @classmethod
    def supervises_heatmaps_deeply(cls, plan: PoiPlan) -> bool:
        return plan.heatmap_deep_supervision if cls.deep_supervised_heatmaps is None else cls.deep_supervised_heatmaps

    @classmethod
    def add_poi_heads(cls, network: nn.Module, plan: PoiPlan, configuration_manager, num_input_channels: int,
                      num_segmentation_outputs: int) -> nn.Module:
        """A heatmap head beside the last segmentation layer: the full-resolution output is the
        segmentation logits followed by one heatmap per POI channel; with deep supervision of the
        heatmaps, each lower output likewise."""
        network = add_heatmap_head(network, plan.num_channels)
        return add_lower_heatmap_heads(network, plan.num_channels) if cls.supervises_heatmaps_deeply(plan) else network

    def build_poi_loss(self, segmentation_loss: Optional[nn.Module]) -> SegmentationAndHeatmapLoss:
        args = (segmentation_loss, self.poi_layout, self.poi_plan, self.num_segmentation_outputs, self.heatmap_weight)
        if self.supervises_heatmaps_deeply(self.poi_plan):
            return DeepSupervisedHeatmapLoss(*args, min_sigma_voxels=self.min_sigma_voxels)
        return SegmentationAndHeatmapLoss(*args)

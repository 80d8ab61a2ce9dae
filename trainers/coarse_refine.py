"""``coarse_refine``: seed 000's coarse-to-fine POI model on top of the heatmap trainer.

Network: the plans' nnU-Net network with one heatmap logit channel per POI channel (exactly what
:class:`PoiHeatmapTrainer` builds) wrapped in :class:`~poi_nnunet.refinement.CoarseRefineNetwork`,
which adds the soft-argmax coarse stage and the patch + transformer refinement stage.
:meth:`build_network_architecture` builds both from the plans alone, so ``poi_predict`` rebuilds it.

Data: structure-centred crops (centre = the structure's label centroid plus a random shift, see
:mod:`trainers.coarse_refine_data`), nnU-Net's augmentation plus elastic deformation
(``p_elastic_deform``; seed 000 relied on it), points moved exactly by the point-aware transforms.
Only the centre structure's POIs are targets; neighbours are context (:mod:`trainers.coarse_refine_loss`
has the loss and its weights).

Resolution. The plans' ``coarse_spacing`` is the spacing at which the whole crop fits the
configuration's patch. Where it equals the configuration's spacing (``coarse_to_fine`` false, as on the
synthetic spine) the heatmaps, the coarse points and the refinement patches all live at full
resolution: the coarse stage sees the whole crop and the refinement looks closer with its own
features. Where ``coarse_to_fine`` is true this trainer still trains on configuration-patch crops at full
resolution (the crop is cut to the patch, so a neighbour may be partly out of view) and logs a
warning: a separate low-resolution coarse pass is not implemented.

Inference goes through :class:`poi_nnunet.inference.coarse_refine.CoarseRefinePredictor`
(:meth:`poi_predictor_class`), which ``poi_predict`` and the end-of-training validation pick up.
"""
from __future__ import annotations

from typing import List
from unittest import mock

import numpy as np
import torch
from torch import nn

from poi_nnunet.channels import STRUCTURE_MODE
from poi_nnunet.refinement import CoarseRefineNetwork

from . import heatmap as heatmap_module
from .coarse_refine_data import CENTRE_LAYER, CentredPoiDataLoader
from .coarse_refine_loss import CoarseRefineLoss, render_centre_targets
from .heatmap import PoiHeatmapTrainer, SegmentationView, poi_block_of


class PoiCoarseRefineTrainer(PoiHeatmapTrainer):
    """Heatmap + soft-argmax coarse points, refined by patch embeddings and self-attention across POIs."""

    p_elastic_deform: float = 0.2
    coarse_weight: float = 0.02
    refine_weight: float = 0.02
    refine_jitter_voxels: float = 1.0  # std of the noise on refinement patch centres while training
    refine_on_features: bool = True  # refinement patches of image and last decoder features (False: image only)

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.spacing_mm = [float(s) for s in self.configuration_manager.spacing]

    # ------------------------------------------------------------------ network
    @classmethod
    def build_network_architecture(cls, plans_manager, configuration_manager, num_input_channels: int,
                                   num_output_channels: int, enable_deep_supervision: bool = True) -> nn.Module:
        """The heatmap trainer's network (plans' nnU-Net network + C heatmap channels) plus the two heads.

        The structure embedding has one row per segmentation output (an upper bound of the structure
        layers, which are foreground labels) plus one for 'unknown'.
        """
        backbone = PoiHeatmapTrainer.build_network_architecture(plans_manager, configuration_manager,
                                                                num_input_channels, num_output_channels,
                                                                enable_deep_supervision)
        block = poi_block_of(configuration_manager)
        patch = [int(p) for p in configuration_manager.patch_size]
        refine = [min(int(r), p) for r, p in zip(block["refine_patch_size"], patch)]
        return CoarseRefineNetwork(backbone, num_output_channels, len(block["poi_channels"]),
                                   max(int(num_output_channels), 1), num_input_channels, refine,
                                   refine_on_features=cls.refine_on_features)

    @staticmethod
    def poi_predictor_class():
        """The predictor ``poi_predict`` and the end-of-training validation use for this trainer."""
        from poi_nnunet.inference.coarse_refine import CoarseRefinePredictor

        return CoarseRefinePredictor

    def _do_i_compile(self) -> bool:
        return False  # the wrapper keeps points from forward(); compiled graphs would break on it

    def initialize(self):
        super().initialize()
        self.points_network().refine_jitter_voxels = float(self.refine_jitter_voxels)
        if self.poi_block.get("coarse_to_fine"):
            self.print_to_log_file("coarse_refine: the plans ask for a coarser coarse stage "
                                   f"({self.poi_block.get('coarse_spacing')} mm); this trainer runs it at the "
                                   "configuration's spacing on patch-size crops (see trainers/coarse_refine.py)")

    def points_network(self) -> CoarseRefineNetwork:
        network = self.network
        if isinstance(network, SegmentationView):  # the heatmap trainer's validation step swaps it in
            network = network.network
        network = network.module if self.is_ddp else network
        return getattr(network, "_orig_mod", network)

    # ------------------------------------------------------------------ loss
    def _build_loss(self) -> CoarseRefineLoss:
        segmentation = super(PoiHeatmapTrainer, self)._build_loss() if self.has_segmentation else None
        per_channel = self.heatmap_weight / max(self.poi_layout.num_channels, 1)  # see coarse_refine_loss
        loss = CoarseRefineLoss(segmentation, self.heatmap_loss(),
                                self.num_segmentation_outputs, per_channel, self.spacing_mm,
                                self.coarse_weight, self.refine_weight)
        loss.points_source = lambda: self.points_network().last_points
        return loss

    def point_targets(self, batch: dict, shape):
        return render_centre_targets(batch["keypoints"].to(self.device), batch["keypoints_inside"].to(self.device),
                                     batch[CENTRE_LAYER].to(self.device), self.poi_layout, tuple(shape),
                                     self.heatmap_sigma_voxels, self.heatmap_amplitude)

    def train_step(self, batch: dict) -> dict:
        network = self.points_network()
        try:
            with network.points_for(batch[CENTRE_LAYER].to(self.device)):
                return super().train_step(batch)
        finally:
            network.last_points = None

    def validation_step(self, batch: dict) -> dict:
        network = self.points_network()
        try:
            with network.points_for(batch[CENTRE_LAYER].to(self.device)):
                return super().validation_step(batch)
        finally:
            network.last_points = None

    def on_validation_epoch_end(self, val_outputs: List[dict]) -> None:
        super().on_validation_epoch_end(val_outputs)
        coarse = np.nanmean([o.get("coarse_mm", np.nan) for o in val_outputs])
        refined = np.nanmean([o.get("refined_mm", np.nan) for o in val_outputs])
        self.print_to_log_file(f"val point error (mm, patch space): coarse {coarse:.3f}, refined {refined:.3f}, "
                               f"beta {float(self.points_network().beta):.3f}")

    # ------------------------------------------------------------------ data
    def get_dataloaders(self):
        """The heatmap trainer's loaders, with :class:`CentredPoiDataLoader` in place of the POI loader."""
        if self.poi_layout.mode == STRUCTURE_MODE and not self.has_segmentation:
            raise RuntimeError("coarse_refine in structure mode needs label maps to centre crops on")
        with mock.patch.object(heatmap_module, "PoiDataLoader", CentredPoiDataLoader):
            return super().get_dataloaders()

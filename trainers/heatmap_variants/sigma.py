"""``heatmap_sigma``: targets start wide and narrow to the planned sigma over the first half of training.

A narrow Gaussian gives an untrained network almost nothing to follow: outside a few voxels of the
point its target is zero, whatever the prediction does there. A wide one (``start_factor`` x the
planned sigma, same amplitude) reaches much farther, so early gradients point towards the landmark
from a larger part of the patch; narrowing then restores the planned width that decoding and the
confidence are calibrated for. The sigma is a linear function of training progress,
``sigma(p) = sigma_plan * (k + (1 - k) * min(p / until, 1))``, with ``p`` = current_epoch / num_epochs
reaching the loss as ``PoiBatch.progress``. The peak-counted MSE's normaliser (one whole peak's
energy) and the rendered reach follow the sigma in use, so a missing peak costs 1 at every width.
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple

from torch import Tensor, nn

from poi_nnunet.batch import PoiBatch
from poi_nnunet.channels import ChannelLayout
from poi_nnunet.losses import MaskedHeatmapLoss
from poi_nnunet.plan import PoiPlan

from ..heatmap import PoiHeatmapTrainer
from ..heatmap_loss import SegmentationAndHeatmapLoss, render_point_targets


def annealed_sigma(planned: Sequence[float], progress: float, start_factor: float,
                   until: float) -> Tuple[float, ...]:
    """Per-axis sigma at ``progress`` in [0, 1]: ``start_factor`` x ``planned`` at 0, ``planned`` from ``until`` on."""
    t = min(max(float(progress) / until, 0.0), 1.0) if until > 0 else 1.0
    factor = start_factor + (1.0 - start_factor) * t
    return tuple(float(s) * factor for s in planned)


class AnnealedSigmaHeatmapLoss(SegmentationAndHeatmapLoss):
    """:class:`SegmentationAndHeatmapLoss` with targets (and the MSE's peak normaliser) at the
    :func:`annealed_sigma` of ``batch.progress``."""

    def __init__(self, segmentation: Optional[nn.Module], layout: ChannelLayout, plan: PoiPlan,
                 num_segmentation_outputs: int, heatmap_weight: float, start_factor: float, until: float):
        super().__init__(segmentation, layout, plan, num_segmentation_outputs, heatmap_weight)
        self.start_factor = float(start_factor)
        self.until = float(until)

    def sigma_voxels(self, batch: PoiBatch) -> Tuple[float, ...]:
        return annealed_sigma(self.plan.heatmap_sigma_voxels, batch.progress, self.start_factor, self.until)

    def heatmap_targets(self, batch: PoiBatch, shape: Sequence[int]) -> Tuple[Tensor, Tensor]:
        targets = render_point_targets(batch.keypoints, self.layout, tuple(shape), self.plan, self.sigma_voxels(batch))
        return targets, batch.channel_valid

    def heatmap_terms(self, pred: Tensor, heatmaps: Tensor, valid: Tensor,
                      batch: PoiBatch) -> Tuple[Tensor, Dict[str, float]]:
        sigma = self.sigma_voxels(batch)
        heat = MaskedHeatmapLoss(amplitude=self.plan.heatmap_amplitude, sigma_voxels=sigma)(pred, heatmaps, valid)
        return self.heatmap_weight * heat, {"poi_loss": float(heat.detach()),
                                            "sigma_voxels": sigma[-1]}


class PoiHeatmapSigmaTrainer(PoiHeatmapTrainer):
    """``heatmap`` with the target sigma annealed from ``sigma_start_factor`` (2.5) x the planned sigma
    down to it over the first ``sigma_anneal_until`` (half) of training.

    2.5: a planned sigma of 2 voxels starts at 5, whose peak still separates landmarks a few sigmas
    apart (the plan's separation is counted in planned sigmas) while reaching 15 voxels; narrowing
    by half-time leaves the second half to train at the width decoding expects.
    """

    deep_supervised_heatmaps = False  # the change alone, as compared (benchmarks/learning_speed.py)

    sigma_start_factor: float = 2.5
    sigma_anneal_until: float = 0.5

    def build_poi_loss(self, segmentation_loss: Optional[nn.Module]) -> AnnealedSigmaHeatmapLoss:
        return AnnealedSigmaHeatmapLoss(segmentation_loss, self.poi_layout, self.poi_plan,
                                        self.num_segmentation_outputs, self.heatmap_weight,
                                        self.sigma_start_factor, self.sigma_anneal_until)

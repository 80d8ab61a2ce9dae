"""Targets and loss of the coarse_refine trainer.

Target: the centre structure's POIs only (one Gaussian per channel, so a
channel's soft-argmax has one peak to find); the neighbours in the crop are
context, and their peaks of the same POI ids are *background* in the target.
A channel is masked (no heatmap or coordinate loss, zero gradient) where the
centre structure's POI is absent or was removed by cleaning; the coordinate
losses are further masked where the augmented point left the patch (soft-argmax
can only answer inside it).

Loss = nnU-Net's segmentation loss (where the dataset has labels)
+ ``heatmap_weight / C`` x the heatmap trainer's heatmap loss (counted in peaks, so a mean over the
  C POI channels: 1 when every heatmap is zero)
+ ``coarse_weight`` x Wing(coarse - truth) + ``refine_weight`` x Wing(refined - truth), each the mean
  over the valid points, coordinates in mm: patch voxels times the sample's own patch spacing
  (``PoiBatch.patch_spacing_mm``: the configuration's spacing times the scaling augmentation's
  factor, so a millimetre is a millimetre of the anatomy in every sample). The refinement term counts
  the channels the network refined (``PointPrediction.refined_channels``: in training a subset, the
  valid targets first, see :mod:`poi_nnunet.coarse_refine_network`); still a mean per point, so its
  weight means the same whatever the subset size.
Every term is of order one. Unlike the heatmap trainer, whose points come from the heatmaps alone,
here the coordinate losses train the points directly and the heatmap term only shapes the
soft-argmax: summed over POIs (as the heatmap trainer does) it drowned the rest, and in the CPU
ablation the segmentation found no structure and the refined points were no better than the coarse.

Why Wing: its log part (errors below ``w`` = 10 mm) has gradient
``w / (epsilon + |x|)``, which *grows* as the error shrinks, so the
refinement keeps learning at the 1-3 mm errors it exists for (L1's gradient is
flat there, L2's vanishes); its linear part keeps early coarse errors of tens of
mm and annotation outliers from dominating, as L2 would. ``epsilon`` = 2 mm
(about one voxel of the synthetic spine) sets where the log part saturates.
Seed 000's source used it too. Weights: per point the Wing sum over three
axes is ~20 at 2 mm per axis and ~55 at 10 mm; ``0.02`` puts it at the scale of
nnU-Net's Dice + CE (order 1) so neither the segmentation nor the heatmap
term is drowned under nnU-Net's SGD with gradient clipping at 12.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from poi_nnunet.batch import LossOutput, PoiBatch
from poi_nnunet.channels import ChannelLayout
from poi_nnunet.coarse_refine_network import PointPrediction
from poi_nnunet.heatmaps import render_gaussian_heatmaps
from poi_nnunet.losses import WingLoss, masked_point_loss
from poi_nnunet.plan import PoiPlan

from .heatmap_loss import SegmentationAndHeatmapLoss


def centre_points(keypoints: Tensor, centre_layer: Tensor, layout: ChannelLayout) -> Tensor:
    """``(B, S, D)`` slot keypoints -> ``(B, C, D)`` of the centre layer (NaN for layer -1)."""
    b, _, d = keypoints.shape
    grid = keypoints.reshape(b, layout.num_layers, layout.num_channels, d)
    layer = centre_layer.clamp_min(0).to(grid.device)
    out = grid[torch.arange(b, device=grid.device), layer]
    unknown = (centre_layer < 0).to(grid.device)
    return torch.where(unknown[:, None, None], torch.full_like(out, float("nan")), out)


def point_targets(batch: PoiBatch, layout: ChannelLayout) -> Tuple[Tensor, Tensor]:
    """``(B, C, D)`` centre-structure points (patch voxels, NaN zeroed) and the ``(B, C)`` mask of those
    that are known and inside the patch (soft-argmax can only answer inside it)."""
    points = centre_points(batch.keypoints, batch.centre_layer, layout)
    inside = centre_points(batch.inside.float()[..., None], batch.centre_layer, layout)[..., 0]
    valid = torch.isfinite(points).all(-1) & (torch.nan_to_num(inside) > 0.5)
    return torch.nan_to_num(points), valid


def refined_targets(output: PointPrediction, truth: Tensor, valid: Tensor) -> Tuple[Tensor, Tensor]:
    """``truth`` ``(B, C, D)`` and ``valid`` ``(B, C)`` of the channels the network refined: ``(B, K, ...)``."""
    if output.refined_channels is None:
        return truth, valid
    index = output.refined_channels.to(truth.device)
    rows = torch.arange(index.shape[0], device=index.device)[:, None]
    return truth[rows, index], valid[rows, index]


class CoarseRefineLoss(SegmentationAndHeatmapLoss):
    """:class:`SegmentationAndHeatmapLoss` on the centre structure's heatmaps, plus Wing losses on the
    coarse and refined points in mm; ``output`` is the network's :class:`PointPrediction`."""

    def __init__(self, segmentation: Optional[nn.Module], layout: ChannelLayout, plan: PoiPlan,
                 num_segmentation_outputs: int, heatmap_weight: float, coarse_weight: float, refine_weight: float,
                 wing: Optional[WingLoss] = None):
        super().__init__(segmentation, layout, plan, num_segmentation_outputs, heatmap_weight)
        self.coarse_weight = float(coarse_weight)
        self.refine_weight = float(refine_weight)
        self.wing = wing if wing is not None else WingLoss(w=10.0, epsilon=2.0, reduction="none")

    def heatmap_targets(self, batch: PoiBatch, shape: Sequence[int]) -> Tuple[Tensor, Tensor]:
        """Heatmaps of the centre structure's POIs only; a channel is masked where that POI is unknown."""
        points = centre_points(batch.keypoints, batch.centre_layer, self.layout)
        usable = torch.isfinite(points).all(-1)
        heatmaps = render_gaussian_heatmaps(torch.nan_to_num(points), usable, tuple(shape),
                                            self.plan.heatmap_sigma_voxels, self.plan.heatmap_amplitude)
        return heatmaps, usable

    def forward(self, output: PointPrediction, target, batch: PoiBatch) -> LossOutput:
        if not isinstance(output, PointPrediction):
            raise TypeError("coarse_refine loss: run the network as network(data, centre_layer) to get the points")
        result = super().forward(output.output, target, batch)
        truth, valid = self.point_targets(batch)
        refined_truth, refined_valid = refined_targets(output, truth, valid)
        spacing = batch.patch_spacing_mm[:, None, :].to(output.coarse.dtype)
        coarse = masked_point_loss(output.coarse * spacing, truth * spacing, valid, "wing", self.wing)
        refined = masked_point_loss(output.refined * spacing, refined_truth * spacing, refined_valid, "wing",
                                    self.wing)
        result.total = result.total + self.coarse_weight * coarse + self.refine_weight * refined
        result.terms.update(coarse_loss=float(coarse.detach()), refine_loss=float(refined.detach()),
                            coarse_mm=self.error_mm(output.coarse, truth, valid, spacing),
                            refined_mm=self.error_mm(output.refined, refined_truth, refined_valid, spacing))
        return result

    def point_targets(self, batch: PoiBatch) -> Tuple[Tensor, Tensor]:
        """:func:`point_targets` of this loss's layout."""
        return point_targets(batch, self.layout)

    @staticmethod
    @torch.no_grad()
    def error_mm(points: Tensor, truth: Tensor, valid: Tensor, spacing: Tensor) -> float:
        """Mean Euclidean error (mm) of the valid points (for the log; NaN where none is valid)."""
        if not bool(valid.any()):
            return float("nan")
        return float(((points - truth) * spacing).norm(dim=-1)[valid].mean())

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
  over the valid points, coordinates in mm (patch voxels times the configuration's spacing).
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

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch
from torch import Tensor, nn

from poi_nnunet.channels import ChannelLayout
from poi_nnunet.heatmaps import render_gaussian_heatmaps
from poi_nnunet.losses import WingLoss, masked_point_loss
from poi_nnunet.refinement import PointPrediction

from .poi_loss import PointTargets, SegmentationAndHeatmapLoss


@dataclass
class CoarseRefineTargets(PointTargets):
    points: Tensor  # (B, C, D) patch voxels of the centre structure's POIs, NaN where absent
    points_valid: Tensor  # (B, C) bool: the coordinate losses' mask
    structure: Tensor  # (B,) long centre layer


def centre_points(keypoints: Tensor, centre_layer: Tensor, layout: ChannelLayout) -> Tensor:
    """``(B, S, D)`` slot keypoints -> ``(B, C, D)`` of the centre layer (NaN for layer -1)."""
    b, _, d = keypoints.shape
    grid = keypoints.reshape(b, layout.num_layers, layout.num_channels, d)
    layer = centre_layer.clamp_min(0).to(grid.device)
    out = grid[torch.arange(b, device=grid.device), layer]
    unknown = (centre_layer < 0).to(grid.device)
    return torch.where(unknown[:, None, None], torch.full_like(out, float("nan")), out)


def render_centre_targets(keypoints: Tensor, keypoints_inside: Tensor, centre_layer: Tensor, layout: ChannelLayout,
                          shape: Sequence[int], sigma_voxels: Sequence[float], amplitude: float) -> CoarseRefineTargets:
    """Heatmaps of the centre structure's POIs and the masks (see the module docstring)."""
    points = centre_points(keypoints, centre_layer, layout)
    b, c, d = points.shape
    inside = centre_points(keypoints_inside.to(torch.float32)[..., None], centre_layer, layout)[..., 0]
    usable = torch.isfinite(points).all(-1)
    heatmaps = render_gaussian_heatmaps(torch.nan_to_num(points), usable, tuple(shape), sigma_voxels, amplitude)
    points_valid = usable & (torch.nan_to_num(inside) > 0.5)
    return CoarseRefineTargets(heatmaps, usable, points, points_valid, centre_layer.to(points.device).long())


class CoarseRefineLoss(SegmentationAndHeatmapLoss):
    """:class:`SegmentationAndHeatmapLoss` plus Wing losses on the coarse and refined points in mm.

    The points are read from ``points_source()`` (the network's :attr:`last_points`, set by the forward
    nnU-Net's train step just ran), the targets from ``.targets`` (a :class:`CoarseRefineTargets`).
    """

    def __init__(self, segmentation: Optional[nn.Module], heatmap: nn.Module, num_segmentation_outputs: int,
                 heatmap_weight: float, spacing: Sequence[float], coarse_weight: float, refine_weight: float,
                 wing: Optional[WingLoss] = None):
        super().__init__(segmentation, heatmap, num_segmentation_outputs, heatmap_weight)
        self.register_buffer("spacing", torch.as_tensor([float(s) for s in spacing]), persistent=False)
        self.coarse_weight = float(coarse_weight)
        self.refine_weight = float(refine_weight)
        self.wing = wing if wing is not None else WingLoss(w=10.0, epsilon=2.0, reduction="none")
        self.points_source: Optional[Callable[[], Optional[PointPrediction]]] = None

    def forward(self, output, target) -> Tensor:
        total = super().forward(output, target)
        points = self.points_source() if self.points_source is not None else None
        if points is None or not isinstance(self.targets, CoarseRefineTargets):
            raise RuntimeError("coarse_refine loss: run the network inside points_for() and set CoarseRefineTargets")
        coarse, refined = self.point_terms(points, self.targets)
        total = total + self.coarse_weight * coarse + self.refine_weight * refined
        self.last_terms.update(self.error_terms(points, self.targets))
        self.last_terms.update(coarse_loss=float(coarse.detach()), refine_loss=float(refined.detach()))
        return total

    def point_terms(self, points: PointPrediction, targets: CoarseRefineTargets):
        spacing = self.spacing.to(points.coarse.device)
        truth = torch.nan_to_num(targets.points.to(points.coarse.device)) * spacing
        valid = targets.points_valid.to(points.coarse.device)
        coarse = masked_point_loss(points.coarse * spacing, truth, valid, "wing", self.wing)
        refined = masked_point_loss(points.refined * spacing, truth, valid, "wing", self.wing)
        return coarse, refined

    @torch.no_grad()
    def error_terms(self, points: PointPrediction, targets: CoarseRefineTargets) -> dict:
        """Mean Euclidean error (mm) of the valid points, coarse and refined (for the log)."""
        spacing = self.spacing.to(points.coarse.device)
        valid = targets.points_valid.to(points.coarse.device)
        if not bool(valid.any()):
            return {"coarse_mm": float("nan"), "refined_mm": float("nan")}
        truth = targets.points.to(points.coarse.device)
        out = {}
        for name, pred in (("coarse_mm", points.coarse), ("refined_mm", points.refined)):
            err = ((pred - truth) * spacing).norm(dim=-1)
            out[name] = float(err[valid].mean())
        return out

"""The heatmap trainer's loss: nnU-Net's segmentation loss plus heatmap regression on rendered Gaussians.

Targets are rendered here, on the training device, from the batch's points
(moved by the augmentation): each channel is the maximum over slot layers of
that layer's Gaussian, ``amplitude * exp(-d^2 / 2 sigma^2)``, with sigma,
amplitude and the peak support from the plan. Whole-image mode has one layer;
in structure mode a layer is one structure's POIs, and only layers with a point
within the peak support of the patch are rendered, so cost follows the
structures in view, not the dataset's label count.
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from poi_nnunet.batch import LossOutput, PoiBatch
from poi_nnunet.channels import ChannelLayout
from poi_nnunet.heatmaps import render_gaussian_heatmaps
from poi_nnunet.losses import MaskedHeatmapLoss
from poi_nnunet.plan import PoiPlan


def render_point_targets(keypoints: Tensor, layout: ChannelLayout, shape: Tuple[int, ...], plan: PoiPlan,
                         sigma_voxels: Optional[Sequence[float]] = None) -> Tensor:
    """``(B, C, *shape)`` heatmaps from ``(B, S, D)`` slot keypoints (NaN: nothing rendered), with the
    plan's sigma unless ``sigma_voxels`` (per axis) is given; the rendered reach follows the sigma used."""
    b, d = keypoints.shape[0], keypoints.shape[-1]
    sigma = tuple(plan.heatmap_sigma_voxels if sigma_voxels is None else sigma_voxels)
    points = keypoints.reshape(b, layout.num_layers, layout.num_channels, d)
    usable = torch.isfinite(points).all(-1)
    reach = plan.peak_support_sigmas * torch.as_tensor(sigma[-d:], dtype=points.dtype, device=points.device)
    size = torch.as_tensor(shape, dtype=points.dtype, device=points.device)
    near = usable & ((points > -reach) & (points < size - 1 + reach)).all(-1)
    heatmaps = torch.zeros((b, layout.num_channels, *shape), dtype=points.dtype, device=points.device)
    for layer in torch.nonzero(near.any(dim=2).any(dim=0)).flatten().tolist():
        rendered = render_gaussian_heatmaps(torch.nan_to_num(points[:, layer]), near[:, layer], shape,
                                            sigma[-d:], plan.heatmap_amplitude)
        heatmaps = torch.maximum(heatmaps, rendered)
    return heatmaps


class SegmentationAndHeatmapLoss(nn.Module):
    """nnU-Net's segmentation loss on the first channels plus ``heatmap_weight`` x heatmap loss on the rest.

    ``loss(output, target, batch)``: ``output`` and ``target`` as nnU-Net passes them (lists under deep
    supervision; the heatmaps are the extra channels of the full-resolution output), ``batch`` the
    :class:`PoiBatch`. ``segmentation`` is None for a landmark-only dataset. The heatmap loss is
    :class:`MaskedHeatmapLoss` counted in peaks, masked by ``batch.channel_valid``.
    """

    def __init__(self, segmentation: Optional[nn.Module], layout: ChannelLayout, plan: PoiPlan,
                 num_segmentation_outputs: int, heatmap_weight: float):
        super().__init__()
        self.segmentation = segmentation
        self.layout = layout
        self.plan = plan
        self.n = int(num_segmentation_outputs)
        self.heatmap_weight = float(heatmap_weight)
        self.heatmap = MaskedHeatmapLoss(amplitude=plan.heatmap_amplitude, sigma_voxels=plan.heatmap_sigma_voxels)

    def heatmap_targets(self, batch: PoiBatch, shape: Sequence[int]) -> Tuple[Tensor, Tensor]:
        """``(B, C, *shape)`` target heatmaps and the ``(B, C)`` channel mask."""
        return render_point_targets(batch.keypoints, self.layout, tuple(shape), self.plan), batch.channel_valid

    def forward(self, output, target, batch: PoiBatch) -> LossOutput:
        outputs = list(output) if isinstance(output, (list, tuple)) else [output]
        full = outputs[0]
        heatmaps, valid = self.heatmap_targets(batch, full.shape[2:])
        total, terms = self.heatmap_terms(full[:, self.n:].float(), heatmaps.float(), valid, batch)
        if self.segmentation is not None:
            seg_out = [o[:, : self.n] for o in outputs]
            seg = self.segmentation(seg_out if isinstance(output, (list, tuple)) else seg_out[0], target)
            total = total + seg
            terms["seg_loss"] = float(seg.detach())
        return LossOutput(total, terms)

    def heatmap_terms(self, pred: Tensor, heatmaps: Tensor, valid: Tensor,
                      batch: PoiBatch) -> Tuple[Tensor, Dict[str, float]]:
        """The weighted heatmap loss of the ``(B, C, *spatial)`` full-resolution heatmaps against their targets
        (``valid`` ``(B, C)``), and its terms for the log: what a variant extends with further terms."""
        heat = self.heatmap(pred, heatmaps, valid)
        return self.heatmap_weight * heat, {"poi_loss": float(heat.detach())}

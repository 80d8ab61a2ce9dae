"""Heatmap targets from a batch's keypoints, and the loss that joins them to nnU-Net's segmentation loss."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from poi_nnunet.channels import ChannelLayout
from poi_nnunet.heatmaps import render_gaussian_heatmaps

RENDER_SIGMAS = 4.0  # a layer farther than this from the patch contributes below exp(-8) of a peak


@dataclass
class PointTargets:
    heatmaps: Tensor  # (B, C, *shape)
    valid: Tensor  # (B, C) bool


def render_point_targets(keypoints: Tensor, channel_valid: Tensor, layout: ChannelLayout, shape: Tuple[int, ...],
                         sigma_voxels: Sequence[float], amplitude: float) -> PointTargets:
    """Render each channel as the maximum over slot layers of that layer's Gaussian.

    Whole-image mode has one layer. In structure mode a layer is one structure's POIs; only layers
    with a point near the patch are rendered, so cost follows the structures in view (a vertebra and
    its neighbours), not the dataset's label count.
    """
    b, d = keypoints.shape[0], keypoints.shape[-1]
    points = keypoints.reshape(b, layout.num_layers, layout.num_channels, d)
    usable = torch.isfinite(points).all(-1)
    sigma = torch.as_tensor(sigma_voxels, dtype=points.dtype, device=points.device)
    size = torch.as_tensor(shape, dtype=points.dtype, device=points.device)
    near = usable & ((points > -RENDER_SIGMAS * sigma) & (points < size - 1 + RENDER_SIGMAS * sigma)).all(-1)
    heatmaps = torch.zeros((b, layout.num_channels, *shape), dtype=points.dtype, device=points.device)
    for layer in torch.nonzero(near.any(dim=2).any(dim=0)).flatten().tolist():
        rendered = render_gaussian_heatmaps(torch.nan_to_num(points[:, layer]), near[:, layer], shape,
                                            sigma_voxels, amplitude)
        heatmaps = torch.maximum(heatmaps, rendered)
    return PointTargets(heatmaps, channel_valid.bool())


class SegmentationAndHeatmapLoss(nn.Module):
    """nnU-Net's segmentation loss on the first channels plus a weighted heatmap loss on the rest.

    Called as nnU-Net calls its loss, ``loss(output, target)``; the batch's heatmap targets are set
    beforehand on ``.targets`` (nnU-Net's train step only passes the segmentation target).
    ``segmentation`` is None for a landmark-only dataset, which has nothing to segment.
    """

    def __init__(self, segmentation: Optional[nn.Module], heatmap: nn.Module, num_segmentation_outputs: int,
                 heatmap_weight: float):
        super().__init__()
        self.segmentation = segmentation
        self.heatmap = heatmap
        self.n = num_segmentation_outputs
        self.heatmap_weight = heatmap_weight
        self.targets: Optional[PointTargets] = None
        self.last_terms: Dict[str, float] = {}

    def forward(self, output, target) -> Tensor:
        if self.targets is None:
            raise RuntimeError("set .targets (the batch's heatmap targets) before calling the loss")
        outputs = list(output) if isinstance(output, (list, tuple)) else [output]
        full = outputs[0]
        heat = self.heatmap(full[:, self.n:].float(), self.targets.heatmaps.to(full.dtype).float(), self.targets.valid)
        total = self.heatmap_weight * heat
        seg_value = 0.0
        if self.segmentation is not None:
            seg_out = [o[:, : self.n] for o in outputs]
            seg = self.segmentation(seg_out if isinstance(output, (list, tuple)) else seg_out[0], target)
            total = total + seg
            seg_value = float(seg.detach())
        self.last_terms = {"seg_loss": seg_value, "poi_loss": float(heat.detach())}
        return total

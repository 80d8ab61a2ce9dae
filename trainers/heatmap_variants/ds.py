"""``heatmap_ds``: the heatmaps are supervised at the decoder's lower resolutions too.

nnU-Net supervises the segmentation at every decoder stage, so the deep stages learn "which
structure" early; the heatmap trainer only supervises the full-resolution output, and its deep
stages learn landmarks only through the one head at the end. Here each decoder stage's output layer
gets its own heatmap head (so each deep-supervision output ends in heatmap channels as the full
resolution one does), and each is trained against targets rendered at its resolution:

* points mapped by the patch-size ratio ``s = size_level / size_full`` per axis, voxel centres
  aligned as area downsampling aligns them (``x_level = (x_full + 0.5) * s - 0.5``, the voxel
  correspondence of nnU-Net's downsampled segmentation targets);
* sigma scaled alike and floored at ``min_sigma_voxels`` (1), below which a peak is no longer a
  Gaussian on the grid and its sub-voxel position is lost;
* the same peak-counted MSE (its normaliser following that level's sigma), weighted in nnU-Net's
  deep-supervision ratios, halving per level with the lowest at zero; the full resolution keeps
  weight 1, so the term that decoding reads weighs exactly as in ``heatmap``.

Only the full-resolution heads are used at inference (nnU-Net switches deep supervision off).
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from poi_nnunet.batch import LossOutput, PoiBatch
from poi_nnunet.heads import HeatmapHead, SegmentationAndHeatmaps
from poi_nnunet.losses import MaskedHeatmapLoss
from poi_nnunet.plan import PoiPlan

from ..heatmap import PoiHeatmapTrainer
from ..heatmap_loss import SegmentationAndHeatmapLoss, render_point_targets


def deep_supervision_ratios(levels: int) -> List[float]:
    """Weights of levels ``0..levels-1`` (full resolution first) relative to the full resolution:
    nnU-Net's ``1 / 2^i`` with the lowest level at 0 (where there is more than one level)."""
    ratios = [0.5 ** i for i in range(levels)]
    if levels > 1:
        ratios[-1] = 0.0
    return ratios


class DeepSupervisedHeatmapLoss(SegmentationAndHeatmapLoss):
    """:class:`SegmentationAndHeatmapLoss` plus the heatmap loss of every lower deep-supervision output
    (a list, full resolution first, each ``(B, n_seg + C, *S_level)``), weighted by
    :func:`deep_supervision_ratios` times ``heatmap_weight``."""

    def __init__(self, *args, min_sigma_voxels: float = 1.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.min_sigma_voxels = float(min_sigma_voxels)

    def level_targets(self, batch: PoiBatch, full_shape: Sequence[int],
                      shape: Sequence[int]) -> Tuple[Tensor, Tuple[float, ...]]:
        """``(B, C, *shape)`` targets of a lower level and the sigma (voxels of that level) they use."""
        d = len(shape)
        ratio = torch.tensor([s / f for s, f in zip(shape, full_shape)], dtype=batch.keypoints.dtype,
                             device=batch.keypoints.device)
        points = (batch.keypoints + 0.5) * ratio - 0.5  # NaN stays NaN
        sigma = tuple(max(float(s) * float(r), self.min_sigma_voxels)
                      for s, r in zip(self.plan.heatmap_sigma_voxels[-d:], ratio.tolist()))
        return render_point_targets(points, self.layout, tuple(shape), self.plan, sigma), sigma

    def forward(self, output, target, batch: PoiBatch) -> LossOutput:
        result = super().forward(output, target, batch)
        if not isinstance(output, (list, tuple)) or len(output) < 2:
            return result
        full_shape = output[0].shape[2:]
        ratios = deep_supervision_ratios(len(output))
        lower = torch.zeros((), dtype=torch.float32, device=output[0].device)
        for level, ratio in zip(output[1:], ratios[1:]):
            heatmaps, sigma = self.level_targets(batch, full_shape, level.shape[2:])
            mse = MaskedHeatmapLoss(amplitude=self.plan.heatmap_amplitude, sigma_voxels=sigma)
            lower = lower + ratio * mse(level[:, self.n:].float(), heatmaps.float(), batch.channel_valid)
        result.total = result.total + self.heatmap_weight * lower
        result.terms["poi_loss_ds"] = float(lower.detach())
        return result


class PoiHeatmapDsTrainer(PoiHeatmapTrainer):
    """``heatmap`` with a heatmap head on every deep-supervision output, trained at its resolution."""

    min_sigma_voxels: float = 1.0

    @classmethod
    def add_poi_heads(cls, network: nn.Module, plan: PoiPlan, configuration_manager, num_input_channels: int,
                      num_segmentation_outputs: int) -> nn.Module:
        """Every decoder stage's output layer becomes segmentation + :class:`HeatmapHead`."""
        network = super().add_poi_heads(network, plan, configuration_manager, num_input_channels,
                                        num_segmentation_outputs)
        layers = network.decoder.seg_layers
        for i in range(len(layers) - 1):
            conv = layers[i]
            layers[i] = SegmentationAndHeatmaps(conv, HeatmapHead(type(conv), conv.in_channels, plan.num_channels))
        return network

    def build_poi_loss(self, segmentation_loss: Optional[nn.Module]) -> DeepSupervisedHeatmapLoss:
        return DeepSupervisedHeatmapLoss(segmentation_loss, self.poi_layout, self.poi_plan,
                                         self.num_segmentation_outputs, self.heatmap_weight,
                                         min_sigma_voxels=self.min_sigma_voxels)

"""The heatmap trainer's loss: nnU-Net's segmentation loss plus heatmap regression on rendered Gaussians.

Targets are rendered here, on the training device, from the batch's points
(moved by the augmentation): each channel is the maximum over slot layers of
that layer's Gaussian, ``amplitude * exp(-d^2 / 2 sigma^2)``, with sigma,
amplitude and the peak support from the plan. Whole-image mode has one layer;
in structure mode a layer is one structure's POIs, and only layers with a point
within the peak support of the patch are rendered, so cost follows the
structures in view, not the dataset's label count.

Where the plan (or a variant) supervises the heatmaps deeply, every lower deep-supervision output
ends in heatmap channels too (:func:`~poi_nnunet.heads.add_lower_heatmap_heads`), trained against
targets rendered at its resolution (:class:`DeepSupervisedHeatmapLoss`):

* points mapped by the patch-size ratio ``s = size_level / size_full`` per axis, voxel centres
  aligned as area downsampling aligns them (``x_level = (x_full + 0.5) * s - 0.5``, the voxel
  correspondence of nnU-Net's downsampled segmentation targets);
* sigma scaled alike and floored at ``min_sigma_voxels`` (1), below which a peak is no longer a
  Gaussian on the grid and its sub-voxel position is lost;
* the same peak-counted MSE (its normaliser following that level's sigma), weighted in nnU-Net's
  deep-supervision ratios, halving per level with the lowest at zero; the full resolution keeps
  weight 1, so the term that decoding reads weighs as without.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

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

"""``heatmap_coord``: the heatmap trainer plus DSNT-style terms that see the whole heatmap at once.

The peak-counted MSE judges each voxel on its own: a channel holding the right peak and an equally
high wrong one (a corner of another polygon, the next vertebra) costs only the wrong peak's energy,
and the decoder then takes whichever is higher. Here each valid channel's predicted heatmap is also
turned into a distribution over the patch, ``P = spatial_softmax(beta * heatmap)``, and

* its expected coordinate is pulled to the target point (L1 in mm, summed over axes): a second peak
  moves the expectation towards itself, so it costs in proportion to how far away it is. The point
  is taken as the same softmax sees it, the expectation under ``Q`` below: that is the point itself
  up to the flat background's pull towards the patch centre (at most ``1 - 0.95`` of the distance,
  see :func:`peak_holding_beta`), and measured against the bare point that pull would make a perfect
  heatmap cost (0.6 mm in a 32 x 36 patch) and ask for a background below zero;
* its Jensen-Shannon divergence to ``Q = spatial_softmax(beta * target)`` (the DSNT regulariser of
  Nibali et al. 2018) is penalised: mass wherever the target has none costs, whatever the distance,
  and it stays meaningful where a channel's target holds several peaks.

``Q`` is the target normalised exactly as the prediction is, so MSE, JS and the coordinate term all
have the rendered target as their optimum and do not pull against each other (DSNT's own target, a
Gaussian of the planned sigma for P itself, would ask for a log-parabola where the MSE asks a Gaussian).
In structure mode a channel's target may hold several structures' peaks, whose mean position is no
point at all: only the JS term is used there; in whole-image mode both.
"""
from __future__ import annotations

import math
from typing import Dict, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from poi_nnunet.batch import PoiBatch
from poi_nnunet.channels import ChannelLayout
from poi_nnunet.heatmaps import expected_coordinates
from poi_nnunet.plan import PoiPlan

from ..heatmap import PoiHeatmapTrainer
from ..heatmap_loss import SegmentationAndHeatmapLoss


def peak_holding_beta(amplitude: float, spatial_shape: Sequence[int], mass: float = 0.95) -> float:
    """Inverse temperature under which a target-shaped peak holds at least ``mass`` of the softmax.

    A peak of height ``A`` has at its top voxel the weight ``exp(beta A)``; voxels away from any peak
    have a weight of about ``exp(0) = 1``, and there are fewer than ``N`` (the patch's voxel count)
    of them. The top voxel alone holds ``mass`` when ``exp(beta A) = mass / (1 - mass) * N``, so

        ``beta = ln(mass / (1 - mass) * N) / A``

    and the peak's other voxels only add to it (for ``A = 10`` and a 112 x 128 patch: beta = 1.25).
    Any larger beta would sharpen P further and starve the coordinate term's gradient away from
    the peak; a smaller one lets the flat background outweigh a correct peak.
    """
    n = math.prod(int(s) for s in spatial_shape)
    return math.log(mass / (1.0 - mass) * max(n, 2)) / float(amplitude)


def js_divergence(log_p: Tensor, log_q: Tensor) -> Tensor:
    """Jensen-Shannon divergence (nats, in ``[0, ln 2]``) between distributions given as logs, ``(B, C, N)``
    -> ``(B, C)``; computed in logs so that vanishing probabilities give no NaN."""
    log_m = torch.logaddexp(log_p, log_q) - math.log(2.0)
    kl_pm = (log_p.exp() * (log_p - log_m)).sum(-1)
    kl_qm = (log_q.exp() * (log_q - log_m)).sum(-1)
    return 0.5 * (kl_pm + kl_qm)


class HeatmapCoordinateLoss(SegmentationAndHeatmapLoss):
    """:class:`SegmentationAndHeatmapLoss` + ``divergence_weight`` x JS + ``coordinate_weight`` x L1 (mm).

    Both new terms are counted like the peak-counted MSE: summed over a sample's valid channels and
    averaged over the batch. The coordinate term takes only whole-image channels whose point is inside
    the patch (``batch.inside``), with mm from ``batch.patch_spacing_mm`` ``(B, D)``.
    """

    def __init__(self, segmentation: Optional[nn.Module], layout: ChannelLayout, plan: PoiPlan,
                 num_segmentation_outputs: int, heatmap_weight: float, coordinate_weight: float,
                 divergence_weight: float):
        super().__init__(segmentation, layout, plan, num_segmentation_outputs, heatmap_weight)
        self.coordinate_weight = float(coordinate_weight)
        self.divergence_weight = float(divergence_weight)

    def heatmap_terms(self, pred: Tensor, heatmaps: Tensor, valid: Tensor,
                      batch: PoiBatch) -> Tuple[Tensor, Dict[str, float]]:
        total, terms = super().heatmap_terms(pred, heatmaps, valid, batch)
        b, c, *spatial = pred.shape
        beta = peak_holding_beta(self.plan.heatmap_amplitude, spatial)
        log_p = torch.log_softmax(beta * pred.reshape(b, c, -1), dim=-1)
        log_q = torch.log_softmax(beta * heatmaps.reshape(b, c, -1), dim=-1)
        js = js_divergence(log_p, log_q)
        js = torch.where(valid, js, torch.zeros_like(js)).sum() / max(b, 1)
        total = total + self.divergence_weight * js
        terms["js_loss"] = float(js.detach())
        if self.plan.structure_mode or self.layout.num_layers != 1:
            return total, terms
        points = batch.keypoints.reshape(b, c, -1)  # whole-image mode: one slot per channel
        inside = valid & batch.inside.reshape(b, c) & torch.isfinite(points).all(-1)
        expected = expected_coordinates(log_p.exp().reshape(pred.shape))
        truth = expected_coordinates(log_q.exp().reshape(pred.shape))  # the point as the softmax sees it
        spacing = batch.patch_spacing_mm[:, None, :].to(expected.dtype)
        # Mask the difference, not the loss: a channel without a point must not reach the gradient.
        diff = torch.where(inside[..., None], (expected - truth) * spacing, torch.zeros_like(expected))
        coord = diff.abs().sum(-1).sum() / max(b, 1)
        total = total + self.coordinate_weight * coord
        terms["coord_loss"] = float(coord.detach())
        if bool(inside.any()):
            terms["coord_mm"] = float(diff.detach().norm(dim=-1)[inside].mean())
        return total, terms


class PoiHeatmapCoordTrainer(PoiHeatmapTrainer):
    """``heatmap`` + JS divergence of the softmaxed heatmaps + L1 of their expected coordinates (mm).

    Weights, against the peak-counted MSE (1 per channel for a missing peak) and Dice+CE (order 1):
    ``coordinate_weight`` 0.02 per mm: an untrained heatmap's softmax is flat, its expectation sits
    near the patch centre, and the term starts at about 30 mm per channel and axis; at 0.2 per mm
    (a 5 mm error costing one missing peak) it started at 80 against Dice+CE's 1 and the MSE's 12 on
    the polygon phantom, took the whole clipped gradient, and after 400 iterations the expected
    points were still 27 mm off with the MSE no lower than at the start. ``divergence_weight`` 1: a
    channel whose softmax mass sits wholly off the target (e.g. on a wrong peak) costs ln 2 = 0.69,
    about one missing peak.
    """

    deep_supervised_heatmaps = False  # the change alone, as compared (benchmarks/learning_speed.py)

    coordinate_weight: float = 0.02
    divergence_weight: float = 1.0

    def build_poi_loss(self, segmentation_loss: Optional[nn.Module]) -> HeatmapCoordinateLoss:
        return HeatmapCoordinateLoss(segmentation_loss, self.poi_layout, self.poi_plan, self.num_segmentation_outputs,
                                     self.heatmap_weight, self.coordinate_weight, self.divergence_weight)

"""What a point's confidence means, for every trainer: how peak-like the channel's evidence is at the point.

One threshold (``poi_predict --min_confidence``, default
:data:`~poi_nnunet.inference.decoding.MIN_CONFIDENCE` = 0.1) must mean the same whatever trained
the model, so every trainer maps its own evidence to [0, 1] with the same three anchors:

* **1**: the channel shows one clear, fully formed peak at the point (what a well-trained model
  draws for a landmark it found);
* **0**: the channel shows no peak (flat, or noise), or two equally good places (a tie: the
  network does not know which one it is, and the point is a coin flip);
* in between: a weaker or wider peak, or a second place almost as good.

Per trainer:

* ``heatmap`` (:mod:`.decoding`, :mod:`.peak_assignment`): the fitted Gaussian's height above the
  channel's background divided by the training amplitude (the targets' peak height, so a fully
  trained peak gives 1 and a flat channel 0), times the ambiguity factor (1 for a single clear
  peak, 0 for a tie between candidates or channels). The heatmap loss trains the heights
  directly, so the height itself is calibrated by training.
* ``coarse_refine`` (:mod:`.coarse_refine`): :func:`soft_argmax_confidence`, the share of the
  coarse stage's spatial softmax within :data:`SOFT_ARGMAX_RADIUS_SIGMAS` heatmap sigmas of its
  expected coordinate. Its heatmap logits cannot serve: their loss is weighted ``1 / C`` beside
  the coordinate losses, so after a short run the logits' peak is about 1 % of the amplitude
  (every point fell below 0.1 and ``poi_predict`` wrote empty files). The softmax is what the
  coordinate losses train (a coordinate is only accurate once the mass is near it, because mass
  elsewhere pulls the expectation away), and it has the same anchors: a sharp unimodal softmax
  keeps nearly all its mass near its expectation (1); a flat one spreads it over the crop (the
  ball's share of the crop's voxels, about 0); a tie between two places puts the expectation
  between them, where there is no mass (about 0). Two sigmas: a softmax exactly as wide as the
  training Gaussian keeps 74 % (3D) or 86 % (2D) inside; the trained softmax, ``beta`` times
  logits of that Gaussian, is narrower, so a well-trained channel gives nearly 1.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

SOFT_ARGMAX_RADIUS_SIGMAS = 2.0


def soft_argmax_confidence(probs: Tensor, coords: Tensor, sigma_voxels: Sequence[float],
                           radius_sigmas: float = SOFT_ARGMAX_RADIUS_SIGMAS) -> Tensor:
    """Share of each channel's probability mass within ``radius_sigmas`` sigmas of ``coords``: ``(B, C)``.

    ``probs`` ``(B, C, *spatial)``: a spatial distribution per channel (summing to 1, e.g.
    :func:`~poi_nnunet.heatmaps.spatial_softmax`); ``coords`` ``(B, C, D)``: where to measure, in
    voxel indices (the expected coordinate); ``sigma_voxels``: the heatmap width per spatial axis
    (D values), so the region is an ellipsoid on an anisotropic grid.
    """
    b, c, *spatial = probs.shape
    dim = len(spatial)
    if coords.shape != (b, c, dim) or len(sigma_voxels) != dim:
        raise ValueError(f"coords must be (B={b}, C={c}, {dim}) and sigma {dim} values, got "
                         f"{tuple(coords.shape)} and {tuple(sigma_voxels)}")
    probs = probs.float()
    distance = torch.zeros((b, c, *([1] * dim)), dtype=probs.dtype, device=probs.device)
    for axis, (n, sigma) in enumerate(zip(spatial, sigma_voxels)):
        grid = torch.arange(n, dtype=probs.dtype, device=probs.device)
        along = ((grid - coords[..., axis, None].to(probs.dtype)) / float(sigma)) ** 2  # (B, C, n)
        shape = [b, c] + [n if k == axis else 1 for k in range(dim)]
        distance = distance + along.reshape(shape)
    inside = distance <= radius_sigmas**2
    return (probs * inside).flatten(2).sum(-1).clamp(0.0, 1.0)

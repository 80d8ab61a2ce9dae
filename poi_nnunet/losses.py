"""Losses for landmark heads: heatmap regression and coordinate regression.

Annotations are sparse (a case may lack some POIs), so every loss here takes a
``valid`` mask ``(B, C)`` and ignores absent points completely: their prediction
gets exactly zero gradient, their target may be NaN, and a batch with nothing
valid gives a loss of 0 that still back-propagates (zeros, not NaN), so a
training step never has to special-case it.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch import Tensor, nn


def _masked_mean(per_item: Tensor, valid: Tensor) -> Tensor:
    """Mean of ``per_item`` over valid entries; 0 (still in the graph) when none is valid."""
    total = torch.where(valid, per_item, torch.zeros_like(per_item)).sum()
    return total / valid.sum().clamp_min(1).to(per_item.dtype)


def _check_valid(pred: Tensor, valid: Tensor) -> None:
    if valid.shape != pred.shape[:2] or valid.dtype != torch.bool:
        raise ValueError(
            f"valid must be a bool tensor of shape {tuple(pred.shape[:2])}, got {valid.dtype} {tuple(valid.shape)}"
        )


class MaskedHeatmapLoss(nn.Module):
    """Mean squared error between predicted and target heatmaps over valid channels.

    This is the heatmap-regression objective (squared L2 to a rendered Gaussian).
    Amplitude matters more than it looks: with ``amplitude = 1`` and a small sigma
    the Gaussian covers a tiny fraction of the patch, so predicting zero
    everywhere already gives a loss near zero and the peak contributes almost
    no gradient, least of all beside a segmentation loss of order one. Rendering
    targets as ``amplitude * Gaussian`` scales this loss by ``amplitude**2``
    without moving its optimum, which restores the balance (the DenseSeg
    authors' HeatReg baseline tuned it to alpha = 44 with sigma = 8 px).
    The trainer therefore picks the amplitude; this loss is amplitude-agnostic
    except for ``foreground_threshold``, which is relative to ``amplitude``.

    Amplitude alone is not enough. With ``sigma_voxels`` given the loss is
    counted in *peaks*: each channel's summed squared error is divided by the
    energy of its target in the patch, but never by less than one whole
    rendered peak, ``amplitude^2 * prod_d(sqrt(pi) * sigma_d)``, and summed over
    a sample's valid channels (then averaged over the batch). So predicting all
    zeros costs exactly 1 per channel that holds at least one whole peak in the
    patch (in any patch, 2D or 3D, also where several structures put a peak in
    one channel), less for a channel whose peak is cut by the patch border (a
    peak half outside costs about 0.5), and nothing for an empty channel. Why:
    as a mean over voxels and channels, the zero prediction's loss shrinks with
    the patch size, sigma and the POI count (0.077 for 160 one-voxel peaks in a
    64^2 patch), and under nnU-Net's SGD the 160 heads of the demo's X-ray sat
    on that plateau for 1500 steps; one batch overfit for 200 steps went to
    0.79 of the zero loss counted in peaks, against 0.99 as a mean over
    channels. The floor of one peak keeps the tail of a point just outside the
    patch from being blown up to the weight of a whole peak. Without
    ``sigma_voxels`` it is the plain MSE over voxels and valid channels.

    ``foreground_weight > 1`` up-weights voxels where the target exceeds
    ``foreground_threshold * amplitude``, another way to stop the background
    dominating.
    """

    def __init__(self, amplitude: float = 1.0, foreground_weight: float = 1.0, foreground_threshold: float = 0.1,
                 sigma_voxels: Optional[Sequence[float]] = None):
        super().__init__()
        if foreground_weight <= 0:
            raise ValueError("foreground_weight must be positive")
        if sigma_voxels is not None and (len(sigma_voxels) == 0 or min(sigma_voxels) <= 0):
            raise ValueError(f"sigma_voxels must be positive, got {sigma_voxels}")
        self.sigma_voxels = None if sigma_voxels is None else [float(s) for s in sigma_voxels]
        self.amplitude = float(amplitude)
        self.foreground_weight = float(foreground_weight)
        self.foreground_threshold = float(foreground_threshold)

    def forward(self, pred: Tensor, target: Tensor, valid: Tensor) -> Tensor:
        if pred.shape != target.shape:
            raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
        _check_valid(pred, valid)
        mask = valid.reshape(*valid.shape, *([1] * (pred.ndim - 2)))
        # Mask the difference, not the squared error: a NaN target must not reach the gradient.
        diff = torch.where(mask, pred - target, torch.zeros_like(pred))
        err = diff * diff
        if self.foreground_weight != 1.0:
            foreground = target > self.foreground_threshold * self.amplitude
            err = torch.where(foreground, err * self.foreground_weight, err)
        normaliser = self._normaliser(pred.shape[2:])
        if self.sigma_voxels is None:
            return _masked_mean(err.flatten(2).sum(-1) / normaliser, valid)
        energy = torch.where(mask, target, torch.zeros_like(target)).pow(2).flatten(2).sum(-1).detach()
        per_channel = err.flatten(2).sum(-1) / energy.clamp_min(normaliser)
        return torch.where(valid, per_channel, torch.zeros_like(per_channel)).sum() / max(pred.shape[0], 1)

    def _normaliser(self, spatial_shape: Sequence[int]) -> float:
        """Voxel count (MSE), or one peak's energy when ``sigma_voxels`` is set (see the class docstring)."""
        if self.sigma_voxels is None:
            return float(math.prod(spatial_shape))
        spatial_dims = len(spatial_shape)
        sigma = self.sigma_voxels[-spatial_dims:]
        if len(sigma) != spatial_dims:
            raise ValueError(f"sigma_voxels {self.sigma_voxels} has fewer than {spatial_dims} axes")
        return self.amplitude ** 2 * math.prod(math.sqrt(math.pi) * s for s in sigma)


class WingLoss(nn.Module):
    """Wing loss of Feng et al. (CVPR 2018), elementwise on coordinate differences.

    ``w * ln(1 + |x| / epsilon)`` for ``|x| < w``, else ``|x| - C`` with
    ``C = w - w ln(1 + w / epsilon)`` so both pieces meet. The log part gives small
    and medium errors a larger gradient than L1 (which matters once coarse errors
    are fixed), the linear part keeps outliers from dominating as L2 would.
    ``w`` and ``epsilon`` are in the units of the input (mm in this project);
    the defaults are the values commonly used with the paper's pixel units.
    """

    def __init__(self, w: float = 10.0, epsilon: float = 2.0, reduction: str = "mean"):
        super().__init__()
        if w <= 0 or epsilon <= 0:
            raise ValueError("w and epsilon must be positive")
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
        self.w, self.epsilon, self.reduction = float(w), float(epsilon), reduction
        self.c = self.w - self.w * math.log1p(self.w / self.epsilon)

    def forward(self, diff: Tensor) -> Tensor:
        """``diff`` = prediction minus target, any shape."""
        a = diff.abs()
        loss = torch.where(a < self.w, self.w * torch.log1p(a / self.epsilon), a - self.c)
        if self.reduction == "mean":
            return loss.mean()
        if self.reduction == "sum":
            return loss.sum()
        return loss


def masked_point_loss(
    pred_mm: Tensor, target_mm: Tensor, valid: Tensor, kind: str = "wing", wing: Optional[WingLoss] = None
) -> Tensor:
    """Coordinate regression loss ``(B, C, D)`` in mm, averaged over valid points.

    Per point the elementwise loss is summed over axes: ``"l1"`` is the L1
    (Manhattan) distance, ``"l2"`` the squared Euclidean distance, ``"wing"``
    the :class:`WingLoss` of each coordinate (pass ``wing`` to change w and
    epsilon). Summing, not averaging, over axes keeps 2D and 3D losses in the
    same per-point units.
    """
    if pred_mm.shape != target_mm.shape or pred_mm.ndim != 3:
        raise ValueError(f"pred {tuple(pred_mm.shape)} and target {tuple(target_mm.shape)} must both be (B, C, D)")
    _check_valid(pred_mm, valid)
    diff = torch.where(valid[..., None], pred_mm - target_mm, torch.zeros_like(pred_mm))
    if kind == "l1":
        per_axis = diff.abs()
    elif kind == "l2":
        per_axis = diff * diff
    elif kind == "wing":
        wing = wing if wing is not None else WingLoss(reduction="none")
        if wing.reduction != "none":
            raise ValueError("the WingLoss passed to masked_point_loss must use reduction='none'")
        per_axis = wing(diff)
    else:
        raise ValueError(f"kind must be 'wing', 'l1' or 'l2', got {kind!r}")
    return _masked_mean(per_axis.sum(-1), valid)

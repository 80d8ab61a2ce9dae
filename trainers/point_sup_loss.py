"""The loss of point-supervised segmentation (seed 002, section 3.1.1): four terms, each weighted.

Shapes: logits and probabilities ``(B, C, *spatial)`` over nnU-Net's ``C`` segmentation classes
(labels ``0..C-1``; the ignore label ``C`` marks every voxel nobody clicked); targets ``(B, 1, *spatial)``
as nnU-Net's loaders give them.

* **Point loss** ``L_P``: cross-entropy on the clicked voxels only (``ignore_index`` = the ignore
  label). Classes are weighted by the inverse of their clicked-voxel count in the batch, so each class
  present counts equally (a background click and a small structure's click weigh what the seed's
  class-weighted cross-entropy gives them); ``balance_click_classes=False`` counts each clicked voxel once. Summed over nnU-Net's deep-supervision outputs with its
  weights (the sparse target is downsampled by nnU-Net's own transform).
* **Rotation consistency** ``L_C`` (Eq. 1): the softmax output of the transformed input equals the
  transformed softmax output. Measured as half the L1 distance summed over classes (the total-variation
  distance, in [0, 1] per voxel), averaged over voxels; both passes get gradients, as in Laradji et
  al. The transform is a right-angle rotation with a flip (:mod:`poi_nnunet.augmentation.right_angles`).
* **Separation** ``L_S`` (Eq. 2): pushes the class channels apart at every voxel. The seed takes the
  sigmoids of the logits; nnU-Net's head is a softmax, whose logits are free up to a shared shift, so
  the softmax probabilities are used: ``1 - sum_{m<n} |p_m - p_n| / (C - 1)``, which is 0 for a one-hot
  voxel and 1 for a uniform one (on the simplex the pair sum is largest, ``C - 1``, exactly at the
  one-hot corners): a push toward a decided class, never toward two half-decided ones.
* **Prior extent** ``L_E`` (Eq. 3-4): where a class is impossible (farther than its planned extent from
  one of its clicks, :mod:`poi_nnunet.click_extent`), ``-log(1 - p_k)`` pushes its probability to 0;
  summed over classes, averaged over voxels. As above, ``p_k`` is the softmax probability; the log is
  taken from the logits, so a confidently wrong class keeps its gradient.

Data reaches the loss as arguments: ``loss(output, target, batch)`` with the network output a
:class:`PointSupOutput` in training (the transformed pass rides along) or nnU-Net's plain output.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Mapping, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from poi_nnunet.augmentation.right_angles import RightAngleTransform
from poi_nnunet.batch import LossOutput, PoiBatch
from poi_nnunet.click_extent import outside_extent

Outputs = Union[Tensor, List[Tensor]]


@dataclass(frozen=True)
class PointSupWeights:
    """Weights of the four terms. The seed gives no values; these keep each term's typical size below the
    point loss's (the consistency and extent terms are averages over every voxel, mostly near 0 once
    learnt), and a weight of 0 switches a term off (for the ablation) and saves its cost."""

    point: float = 1.0
    consistency: float = 1.0
    separation: float = 0.1
    extent: float = 1.0
    # the point loss weighs each clicked class equally (the seed's class weighting); False: each clicked
    # voxel once, as nnU-Net's cross-entropy on sparse labels does (background clicks then weigh more)
    balance_click_classes: bool = True


@dataclass
class PointSupOutput:
    """A training pass of the point_sup network: nnU-Net's outputs (a list under deep supervision) and,
    where the consistency term is on, the full-resolution logits of the transformed input."""

    outputs: Outputs
    transformed_logits: Optional[Tensor] = None  # (B, C, *spatial): f(t(x))
    transform: Optional[RightAngleTransform] = None


def full_resolution(outputs: Outputs) -> Tensor:
    return outputs[0] if isinstance(outputs, (list, tuple)) else outputs


def click_class_weights(target: Tensor, num_classes: int, ignore_label: int) -> Tensor:
    """(C,) inverse clicked-voxel counts per class in ``target``, scaled so present classes average 1
    (classes without clicks get 0: they are not in the loss anyway)."""
    flat = target.reshape(-1).long()
    counts = torch.bincount(flat[flat != ignore_label], minlength=num_classes)[:num_classes].float()
    present = counts > 0
    weights = torch.zeros(num_classes, device=target.device)
    if present.any():
        weights[present] = counts[present].sum() / (present.sum() * counts[present])
    return weights


def point_cross_entropy(logits: Tensor, target: Tensor, ignore_label: int,
                        class_weights: Optional[Tensor]) -> Tensor:
    """Cross-entropy over the clicked voxels of ``target`` ((B, 1, *spatial) or (B, *spatial)), weighted per
    class by ``class_weights`` (None: unweighted); 0 (with a gradient path) where nothing is clicked."""
    labels = target[:, 0] if target.ndim == logits.ndim else target
    labels = labels.long()
    if not bool((labels != ignore_label).any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits.float(), labels, weight=class_weights, ignore_index=ignore_label)


def rotation_consistency(probabilities: Tensor, transformed_probabilities: Tensor,
                         transform: RightAngleTransform) -> Tensor:
    """Mean over voxels of the total-variation distance between ``t(p(x))`` and ``p(t(x))``."""
    return 0.5 * (transform.apply(probabilities) - transformed_probabilities).abs().sum(1).mean()


def separation(probabilities: Tensor) -> Tensor:
    """``1 - sum_{m<n} |p_m - p_n| / (C - 1)`` averaged over voxels (0 one-hot, 1 uniform).

    The pair sum of sorted values ``p_(0) <= ... <= p_(C-1)`` is ``sum_i p_(i) (2i - C + 1)``.
    """
    classes = probabilities.shape[1]
    if classes < 2:
        return probabilities.sum() * 0.0
    ordered, _ = torch.sort(probabilities, dim=1)
    shape = [1, classes] + [1] * (probabilities.ndim - 2)
    factor = (2 * torch.arange(classes, device=probabilities.device, dtype=probabilities.dtype) - classes + 1)
    pair_sum = (ordered * factor.reshape(shape)).sum(1)
    return 1.0 - pair_sum.mean() / (classes - 1)


def log_one_minus_softmax(logits: Tensor) -> Tensor:
    """``log(1 - softmax(logits))`` per class, (B, C, *spatial), stable where a class is nearly certain.

    ``log1p(-p)`` loses everything once ``p`` rounds to 1 (a logit lead of about 17 in float32), and a
    clamp there cuts the gradient exactly where a confidently wrong class must be pushed down. For the
    voxel's top class the value is computed from the logits instead, ``logsumexp_{j != k} z_j -
    logsumexp_j z_j``; every other class has ``p <= 1/2``, where ``log1p(-p)`` is accurate. Needs C >= 2.
    """
    z = logits.float()
    total = torch.logsumexp(z, 1, keepdim=True)
    is_top = torch.zeros_like(z, dtype=torch.bool).scatter_(1, z.argmax(1, keepdim=True), True)
    without_top = torch.logsumexp(z.masked_fill(is_top, float("-inf")), 1, keepdim=True)
    rest = torch.where(is_top, torch.zeros_like(z), torch.exp(z - total))  # p of the non-top classes
    return torch.where(is_top, without_top - total, torch.log1p(-rest))


def extent_penalty(logits: Tensor, outside: Tensor, classes: Sequence[int]) -> Tensor:
    """Mean over voxels of ``sum_k outside_k * -log(1 - p_{classes[k]})`` with ``p = softmax(logits)``;
    ``logits`` (B, C, *spatial), ``outside`` (B, K, *spatial) bool. Taken from the logits so that its
    gradient survives a class the network is sure of (:func:`log_one_minus_softmax`)."""
    if not len(classes) or not bool(outside.any()):
        return logits.sum() * 0.0
    penalty = -log_one_minus_softmax(logits)[:, list(classes)]
    return (penalty * outside.to(penalty.dtype)).sum(1).mean()


class PointSupervisionLoss(nn.Module):
    """``w_P L_P + w_C L_C + w_S L_S + w_E L_E`` (module docstring); ``forward(output, target, batch)``."""

    def __init__(self, num_classes: int, ignore_label: int, extent_mm: Mapping[int, float],
                 weights: PointSupWeights = PointSupWeights(), deep_supervision_weights: Optional[Sequence[float]] = None):
        super().__init__()
        self.num_classes = int(num_classes)
        self.ignore_label = int(ignore_label)
        self.extent_mm = {int(k): float(v) for k, v in extent_mm.items()}
        self.extent_classes = tuple(sorted(c for c in self.extent_mm if 0 < c < self.num_classes))
        self.weights = weights
        self.deep_supervision_weights = None if deep_supervision_weights is None else \
            [float(w) for w in deep_supervision_weights]

    def forward(self, output: Union[PointSupOutput, Outputs], target: Union[Tensor, List[Tensor]],
                batch: PoiBatch) -> LossOutput:
        if not isinstance(output, PointSupOutput):
            output = PointSupOutput(output)
        outputs = output.outputs if isinstance(output.outputs, (list, tuple)) else [output.outputs]
        targets = target if isinstance(target, (list, tuple)) else [target]
        full_target = targets[0]
        class_weights = click_class_weights(full_target, self.num_classes, self.ignore_label) \
            if self.weights.balance_click_classes else None
        ds = self.deep_supervision_weights or [1.0] + [0.0] * (len(outputs) - 1)
        point = sum(w * point_cross_entropy(o, t, self.ignore_label, class_weights)
                    for w, o, t in zip(ds, outputs, targets) if w)
        w = self.weights
        total = w.point * point
        terms = {"point": float(point.detach())}
        probabilities = torch.softmax(outputs[0].float(), 1)
        if w.consistency and output.transformed_logits is not None:
            consistency = rotation_consistency(probabilities, torch.softmax(output.transformed_logits.float(), 1),
                                               output.transform)
            total = total + w.consistency * consistency
            terms["consistency"] = float(consistency.detach())
        if w.separation:
            sep = separation(probabilities)
            total = total + w.separation * sep
            terms["separation"] = float(sep.detach())
        if w.extent and self.extent_classes:
            labels = full_target[:, 0] if full_target.ndim == outputs[0].ndim else full_target
            outside = outside_extent(labels, self.extent_classes, self.extent_mm, batch.patch_spacing_mm)
            ext = extent_penalty(outputs[0], outside, self.extent_classes)
            total = total + w.extent * ext
            terms["extent"] = float(ext.detach())
        return LossOutput(total, terms)

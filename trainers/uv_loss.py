"""The ``uv`` trainer's loss: nnU-Net's segmentation loss plus DenseSeg's uv terms (seed 001, Eq. 4).

``L = L_seg + uv_weight / 2 * (L1 + L_LM) + tv_weight * TV``, each uv term computed on the full-resolution
output's ``D`` template-coordinate channels:

* ``L1``: mean absolute error against the target map over the voxels where it is defined (inside a
  structure and its POIs' hull; the map rode through the augmentation with the image).
* ``L_LM``: the predicted map sampled at each ground-truth POI of the patch (sub-voxel, linear, as
  ``grid_sample`` with aligned corners reads voxel centres) against that POI's template coordinate;
  the mean absolute error of a structure's POIs, averaged over the structures in view, so that a
  structure with many POIs weighs as much as one with few. It supervises the border of a structure,
  outside its POIs' hull, where ``L1`` has no target.
* ``TV``: total variation of the predicted map inside the ground-truth structures: the mean absolute
  difference between neighbouring voxels of one structure, along every axis.
"""
from __future__ import annotations

from typing import Dict, Tuple

import torch
from torch import Tensor, nn
from torch.nn.functional import grid_sample

from poi_nnunet.batch import LossOutput, PoiBatch


def masked_l1(pred: Tensor, target: Tensor) -> Tensor:
    """Mean ``|pred - target|`` over voxels where ``target`` ``(B, D, *S)`` is finite (0 where none is)."""
    defined = torch.isfinite(target).all(1, keepdim=True).expand_as(target)
    if not defined.any():
        return pred.sum() * 0.0
    return (pred[defined] - target[defined]).abs().mean()


def sample_at_points(values: Tensor, points: Tensor) -> Tensor:
    """``values`` ``(B, D, *S)`` read at ``points`` ``(B, P, n)`` (voxel coordinates in array order,
    NaN allowed: read as 0) by linear interpolation; returns ``(B, P, D)``."""
    size = torch.as_tensor(values.shape[2:], dtype=points.dtype, device=points.device)
    normalised = 2 * torch.nan_to_num(points) / torch.clamp(size - 1, min=1) - 1
    grid = normalised.flip(-1).reshape(points.shape[0], points.shape[1], *([1] * (values.ndim - 3)), points.shape[-1])
    sampled = grid_sample(values, grid.to(values.dtype), mode="bilinear", padding_mode="border", align_corners=True)
    return sampled.reshape(values.shape[0], values.shape[1], points.shape[1]).transpose(1, 2)


def landmark_l1(pred: Tensor, points: Tensor, usable: Tensor, slot_uv: Tensor, slot_structure: Tensor) -> Tensor:
    """``L_LM``: ``pred`` ``(B, D, *S)`` read at ``points`` ``(B, P, n)`` where ``usable`` ``(B, P)``, against
    ``slot_uv`` ``(P, D)``; a structure's (``slot_structure`` ``(P,)``) POIs averaged first, then the
    structures of every sample (0 where none is usable)."""
    usable = usable & torch.isfinite(slot_uv).all(-1)[None]
    if not usable.any():
        return pred.sum() * 0.0
    error = (sample_at_points(pred, points) - torch.nan_to_num(slot_uv)[None]).abs().mean(-1)  # (B, P)
    structures = torch.unique(slot_structure)
    member = (slot_structure[None, :] == structures[:, None]).to(error.dtype)  # (T, P)
    weight = usable.to(error.dtype)
    per_structure_sum = torch.einsum("bp,tp->bt", error * weight, member)
    per_structure_count = torch.einsum("bp,tp->bt", weight, member)
    present = per_structure_count > 0
    return (per_structure_sum[present] / per_structure_count[present]).mean()


def total_variation(pred: Tensor, labels: Tensor) -> Tensor:
    """Mean ``|pred[i+1] - pred[i]|`` over neighbouring voxels that share a non-zero label of ``labels``
    ``(B, 1, *S)``, along every spatial axis of ``pred`` ``(B, D, *S)`` (0 where there are none)."""
    total = pred.sum() * 0.0
    count = 0
    for axis in range(2, pred.ndim):
        n = pred.shape[axis]
        a, b = pred.narrow(axis, 0, n - 1), pred.narrow(axis, 1, n - 1)
        la, lb = labels.narrow(axis, 0, n - 1), labels.narrow(axis, 1, n - 1)
        same = ((la == lb) & (la > 0)).expand_as(a)
        if same.any():
            total = total + (a - b).abs()[same].sum()
            count += int(same.sum())
    return total / max(count, 1)


class SegmentationAndUvLoss(nn.Module):
    """nnU-Net's segmentation loss on the first ``n`` channels, plus the uv terms (module docstring).

    ``loss(output, target, batch)``: ``output`` / ``target`` as nnU-Net passes them (lists under deep
    supervision; the uv channels are the last ``D`` of the full-resolution output), ``batch`` a
    :class:`PoiBatch` whose ``structure_map`` holds the target map. ``slot_uv`` ``(S, D)``: each POI slot's
    template coordinate (NaN: no template); ``slot_structure`` ``(S,)``: the structure label of its slot.
    """

    def __init__(self, segmentation: nn.Module, num_segmentation_outputs: int, slot_uv: Tensor,
                 slot_structure: Tensor, uv_weight: float, tv_weight: float):
        super().__init__()
        self.segmentation = segmentation
        self.n = int(num_segmentation_outputs)
        self.register_buffer("slot_uv", slot_uv.float(), persistent=False)
        self.register_buffer("slot_structure", slot_structure.long(), persistent=False)
        self.uv_weight = float(uv_weight)
        self.tv_weight = float(tv_weight)

    def forward(self, output, target, batch: PoiBatch) -> LossOutput:
        deep = isinstance(output, (list, tuple))
        full = output[0] if deep else output
        labels = target[0] if isinstance(target, (list, tuple)) else target
        seg = self.segmentation([o[:, : self.n] for o in output] if deep else full[:, : self.n], target)
        uv, terms = self.uv_terms(full[:, self.n:].float(), labels, batch)
        return LossOutput(seg + uv, {"seg_loss": float(seg.detach()), **terms})

    def uv_terms(self, pred: Tensor, labels: Tensor, batch: PoiBatch) -> Tuple[Tensor, Dict[str, float]]:
        """The weighted uv loss of ``pred`` ``(B, D, *S)`` and its terms for the log."""
        if batch.structure_map is None:
            raise ValueError("the uv loss needs the batch's structure_map (the uv targets); the loader gave none")
        l1 = masked_l1(pred, batch.structure_map)
        usable = batch.inside & torch.isfinite(batch.keypoints).all(-1)
        lm = landmark_l1(pred, batch.keypoints, usable, self.slot_uv, self.slot_structure)
        tv = total_variation(pred, labels)
        total = self.uv_weight / 2 * (l1 + lm) + self.tv_weight * tv
        return total, {"uv_l1": float(l1.detach()), "uv_lm": float(lm.detach()), "uv_tv": float(tv.detach())}


def slot_templates(slot_keys, templates, dim: int) -> Tuple[Tensor, Tensor]:
    """``(S, D)`` template coordinates of the layout's slots (``(structure, poi)`` each; NaN where the
    structure has no template or the template lacks the POI) and ``(S,)`` their structure labels."""
    uv = torch.full((len(slot_keys), dim), float("nan"))
    structures = torch.zeros(len(slot_keys), dtype=torch.long)
    for i, (structure, poi) in enumerate(slot_keys):
        structures[i] = int(structure)
        template = templates.for_structure(int(structure)) if templates is not None else None
        if template is not None and int(poi) in template.pois:
            uv[i] = torch.as_tensor(template.uv_of([int(poi)])[0], dtype=torch.float32)
    return uv, structures

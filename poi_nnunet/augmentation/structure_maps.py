"""Dense values that belong to a structure's anatomy (uv(w) template coordinates), moved with the image.

A uv map says, for every voxel of a structure, which point of the structure's template it is. It is
a property of the anatomy, like intensity, so it is resampled with the very grid the image is
resampled with, never re-derived from moved points. Two things differ from the image:

* **No mixing across structures.** Linear interpolation at the border of two touching structures
  would blend one structure's template coordinates into the other's, values that belong to neither.
  Each structure ``s`` present is resampled on its own by normalised interpolation,
  ``grid_sample(v * m_s) / grid_sample(m_s)`` with ``m_s`` the voxels of ``s`` whose value is
  defined, and the result is kept where the resampled segmentation says ``s``. Inside a structure,
  away from its border, this is exactly linear interpolation.
* **Undefined stays undefined.** Voxels without a target (NaN: background, outside the POIs' convex
  hull) stay NaN, as do voxels whose interpolation weight comes mostly (``< MIN_SUPPORT``) from
  undefined neighbours, and patch voxels outside the sample.

The values themselves never change: a voxel keeps its template coordinate wherever it moves. A mirror
flips the map with the image and keeps the values as well (the ``uv`` trainer does not mirror: see
:mod:`trainers.uv`).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.nn.functional import grid_sample

# Minimum interpolation weight from defined voxels of the structure for a resampled value to be kept.
MIN_SUPPORT = 0.5


def resample_structure_map(values: Tensor, labels: Tensor, resampled_labels: Tensor, grid: Tensor,
                           align_corners: bool = False) -> Tensor:
    """``values`` ``(K, *in)`` (NaN: undefined) on the sample's ``labels`` ``(*in)``, resampled at ``grid``
    ``(*out, n)`` (``grid_sample``'s normalised ``x, y[, z]``, as ``SpatialTransform`` makes it) onto the
    patch whose labels are ``resampled_labels`` ``(*out)``; returns ``(K, *out)`` float32, NaN where undefined.
    """
    values = values.float()
    out = torch.full((values.shape[0], *resampled_labels.shape), float("nan"), dtype=torch.float32)
    defined = torch.isfinite(values).all(0)
    zeroed = torch.nan_to_num(values, nan=0.0)
    for label in torch.unique(labels[defined]).tolist():
        if label == 0:
            continue
        own = (labels == label) & defined
        weight = own.float()
        stacked = torch.cat([zeroed * weight, weight[None]], dim=0)[None]
        sampled = grid_sample(stacked, grid[None].float(), mode="bilinear", padding_mode="zeros",
                              align_corners=align_corners)[0]
        support = sampled[-1]
        keep = (resampled_labels == label) & (support >= MIN_SUPPORT)
        out[:, keep] = sampled[:-1, keep] / support[keep]
    return out


def crop_structure_map(values: Tensor, center: Sequence[float], patch_size: Sequence[int]) -> Tensor:
    """The crop ``SpatialTransform`` takes when it samples no grid (centre ``floor``-ed, as it does), NaN
    outside the sample: ``values`` ``(K, *in)`` -> ``(K, *patch_size)``."""
    start = [math.floor(c) - int(p) // 2 for c, p in zip(center, patch_size)]
    out = torch.full((values.shape[0], *patch_size), float("nan"), dtype=torch.float32)
    src, dst = [slice(None)], [slice(None)]
    for s, p, n in zip(start, patch_size, values.shape[1:]):
        lo, hi = max(s, 0), min(s + int(p), int(n))
        if hi <= lo:
            return out
        src.append(slice(lo, hi))
        dst.append(slice(lo - s, hi - s))
    out[tuple(dst)] = values[tuple(src)].float()
    return out


def move_structure_map(values: Tensor, segmentation: Tensor, resampled_segmentation: Tensor, params: dict,
                       patch_size: Sequence[int], align_corners: bool) -> Tensor:
    """``values`` through one ``SpatialTransform`` draw (``params`` from its ``get_parameters``).

    ``values`` ``(K, *in)`` with ``segmentation`` ``(1, *in)`` before and ``(1, *patch)`` after the draw;
    or, under nnU-Net's dummy-2D augmentation (the first axis folded into channels), ``(K, X, *in)``
    with ``(X, *in)`` slices of labels: each slice is then resampled with its own labels.
    """
    grid: Optional[Tensor] = params["grid"]
    if values.ndim == len(patch_size) + 2:  # a stack of folded slices
        slices = [move_structure_map(values[:, x], segmentation[x:x + 1], resampled_segmentation[x:x + 1], params,
                                     patch_size, align_corners) for x in range(values.shape[1])]
        return torch.stack(slices, dim=1)
    if grid is None:
        return crop_structure_map(values, params["center_location_in_pixels"], patch_size)
    return resample_structure_map(values, segmentation[0], resampled_segmentation[0], grid, align_corners)


def flip_structure_map(values: Tensor, axes: Sequence[int]) -> Tensor:
    """Mirror ``(K, *spatial)`` along spatial ``axes`` (0-based), values unchanged."""
    return torch.flip(values, [a + 1 for a in axes]) if len(axes) else values


def as_map_tensor(values: np.ndarray) -> Tensor:
    """A loader's ``(K, *spatial)`` float16/32 crop as the float32 tensor the transforms expect."""
    return torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32))

"""Where a clicked structure cannot be: the prior-extent mask of point supervision (seed 002, Eq. 3).

A structure is at most ``r`` mm across. Every voxel of it then lies within ``r`` of *every* click on
it, so a voxel farther than ``r`` from at least one of the structure's clicks (the seed's maximum over
its clicks) is certainly not that structure. Elsewhere the class is unknown.

Distances are direct distances to the clicked voxels in millimetres (the few clicks of a patch; no
distance transform), with the batch's per-axis patch spacing: exact on an unrotated patch, anisotropic
grids and the scaling augmentation included. A patch that the augmentation rotated away from the axes of
an anisotropic grid has no single per-axis spacing; there the distances are an approximation (the radii
are planned with a margin, ``EXTENT_PER_CLICK_SPREAD``). Only clicks inside the patch count: a click
outside it is not in the batch.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch

# at most this many clicked voxels per class and sample enter the distance (a click with a radius labels
# many voxels); a subset can only underestimate the farthest distance, which makes the mask smaller
# (more voxels "unknown"), never wrong
MAX_CLICK_VOXELS = 64
# clicks per distance block: keeps the (voxels, clicks) distance matrix small (a 128^3 patch: 64 MB)
CLICK_BLOCK = 8


def voxel_grid_mm(shape: Sequence[int], spacing_mm: torch.Tensor) -> torch.Tensor:
    """(prod(shape), D) voxel centres in mm (index times spacing), array order."""
    axes = [torch.arange(n, device=spacing_mm.device, dtype=torch.float32) * spacing_mm[i].float()
            for i, n in enumerate(shape)]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, len(shape))


def _subset(points: torch.Tensor, most: int) -> torch.Tensor:
    if len(points) <= most:
        return points
    index = torch.linspace(0, len(points) - 1, most, device=points.device).round().long()
    return points[index]


@torch.no_grad()
def outside_extent(labels: torch.Tensor, classes: Sequence[int], radius_mm: Mapping[int, float],
                   spacing_mm: torch.Tensor) -> torch.Tensor:
    """Voxels where class ``classes[k]`` is impossible: farther than its radius from one of its clicks.

    ``labels``: (B, *spatial) sparse labels (clicked voxels hold their class; every other voxel the
    ignore label or anything not in ``classes``). ``spacing_mm``: (B, D) mm per voxel step. Returns
    (B, K, *spatial) bool; all False for a class without clicks in a sample or without a radius.
    """
    batch, spatial = labels.shape[0], tuple(labels.shape[1:])
    out = torch.zeros((batch, len(classes)) + spatial, dtype=torch.bool, device=labels.device)
    for b in range(batch):
        grid = None
        for k, c in enumerate(classes):
            r = radius_mm.get(int(c))
            if r is None or not torch.isfinite(torch.tensor(float(r))):
                continue
            clicks = torch.nonzero(labels[b] == c)
            if len(clicks) == 0:
                continue
            if grid is None:
                grid = voxel_grid_mm(spatial, spacing_mm[b])
            clicks_mm = _subset(clicks.float(), MAX_CLICK_VOXELS) * spacing_mm[b].float()
            farthest = torch.zeros(len(grid), device=grid.device)
            for start in range(0, len(clicks_mm), CLICK_BLOCK):
                block = torch.cdist(grid, clicks_mm[start:start + CLICK_BLOCK]).amax(dim=1)
                farthest = torch.maximum(farthest, block)
            out[b, k] = (farthest > float(r)).reshape(spatial)
    return out

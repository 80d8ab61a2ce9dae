"""Rotations by multiples of 90 degrees combined with a flip: the transforms of point supervision's
consistency loss (seed 002, after Laradji et al.), applied to whole network inputs and outputs.

They are exact (a permutation of voxels, no interpolation), so ``t(f(x))`` and ``f(t(x))`` can be
compared voxel for voxel. A rotation turns one plane of the patch: in 2D the image plane; in 3D the
plane of the two axes whose spacings are closest (a rotation mixes the axes, so it must not turn a
1 mm axis into a 5 mm one). A quarter turn also swaps the two axes' lengths, so it is only used where
the patch is square in that plane; elsewhere the turns are 0 and 180 degrees.

Lateralised labels (a left and a right kidney) break the equivariance the loss asks for: reversed along
the left-right axis, a left kidney is on the right. Such an axis is kept out of the plane (``fixed_axes``);
where only one free axis is left, the transform is a flip of that axis alone.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Collection, Optional, Sequence, Tuple

import numpy as np
import torch

# spacings within this ratio count as "isotropic enough" for a quarter turn of the plane
MAX_SPACING_RATIO = 1.5


@dataclass(frozen=True)
class RotationPlane:
    """The patch plane (two spatial axes, 0-based) that rotations turn, and which turns keep the shape."""

    axes: Tuple[int, int]
    quarter_turns: bool  # 90 and 270 degrees allowed (square in-plane patch, similar spacings)
    half_turns: bool = True  # 180 degrees allowed (it reverses both axes: not where the second one is fixed)

    @property
    def turns(self) -> Tuple[int, ...]:
        if self.quarter_turns:
            return (0, 1, 2, 3)
        return (0, 2) if self.half_turns else (0,)


def rotation_plane(spacing: Sequence[float], patch_size: Sequence[int],
                   fixed_axes: Collection[int] = ()) -> Optional[RotationPlane]:
    """The plane to rotate in: of all axis pairs without a ``fixed_axes`` member, the one with the most
    similar spacings (ties: the pair with equal patch lengths, then the last axes, which are nnU-Net's
    in-plane axes). With one free axis left, a flip-only plane (that axis first); with none, None."""
    spacing = [float(s) for s in spacing]
    patch_size = [int(p) for p in patch_size]
    if len(spacing) < 2:
        raise ValueError(f"a rotation needs two spatial axes, got spacing {spacing}")
    free = [a for a in range(len(spacing)) if a not in set(fixed_axes)]
    if len(free) < 2:
        if not free:
            return None
        other = next(a for a in range(len(spacing)) if a != free[0])
        return RotationPlane((free[0], other), quarter_turns=False, half_turns=False)

    def key(pair: Tuple[int, int]):
        a, b = pair
        ratio = max(spacing[a], spacing[b]) / min(spacing[a], spacing[b])
        return (round(ratio, 6), patch_size[a] != patch_size[b], -a, -b)

    a, b = min(itertools.combinations(free, 2), key=key)
    ratio = max(spacing[a], spacing[b]) / min(spacing[a], spacing[b])
    return RotationPlane((a, b), patch_size[a] == patch_size[b] and ratio <= MAX_SPACING_RATIO)


@dataclass(frozen=True)
class RightAngleTransform:
    """``x -> rot90(flip(x), turns)`` on the spatial axes of ``(B, C, *spatial)`` tensors."""

    plane: RotationPlane
    turns: int  # quarter turns, 0..3
    flip: bool  # flip the plane's first axis before turning

    def _dims(self) -> Tuple[int, int]:
        return self.plane.axes[0] + 2, self.plane.axes[1] + 2

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        first, second = self._dims()
        if self.flip:
            x = torch.flip(x, (first,))
        return torch.rot90(x, self.turns, dims=(first, second)) if self.turns % 4 else x

    def invert(self, x: torch.Tensor) -> torch.Tensor:
        first, second = self._dims()
        if self.turns % 4:
            x = torch.rot90(x, -self.turns, dims=(first, second))
        return torch.flip(x, (first,)) if self.flip else x

    @property
    def is_identity(self) -> bool:
        return self.turns % 4 == 0 and not self.flip

    @classmethod
    def random(cls, plane: RotationPlane, rng: np.random.Generator, allow_identity: bool = False) -> "RightAngleTransform":
        """One of the plane's turns with or without a flip, uniformly; never the identity unless allowed
        (it would make the consistency term zero for that step)."""
        options = [(t, f) for t in plane.turns for f in (False, True) if allow_identity or t or f]
        turns, flip = options[int(rng.integers(len(options)))]
        return cls(plane, int(turns), bool(flip))

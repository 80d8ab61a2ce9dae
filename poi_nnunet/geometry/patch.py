"""Patch space: where an augmented patch's voxels were read from in their sample.

A training *sample* is the crop of a preprocessed case that the data loader
hands to augmentation (array order, voxel centres on integers, the crop's
first voxel at 0). Spatial augmentation fills each *patch* voxel ``y`` with
the sample at

    x = linear @ (y + displacement(y)) + offset

so the image travels patch -> sample, while a point must travel the other
way. With a displacement field that inverse has no closed form; it is solved
on the very field the image was sampled with, so the two cannot disagree.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, Sequence, Tuple

import numpy as np

from ._points import ArrayLike, _as_points


def inside_extent(points: ArrayLike, size: Sequence[int]) -> np.ndarray:
    """True where a continuous array index lies in ``[-0.5, size - 0.5]`` on every axis.

    That interval is what the voxels physically cover. A point outside it is not
    in the image: callers mark it absent, never clamp it onto the border (which
    would teach a network to put landmarks on patch edges). NaN is outside.
    """
    pts, single = _as_points(points, len(size))
    upper = np.asarray(size, dtype=np.float64) - 0.5
    inside = np.all((pts >= -0.5) & (pts <= upper), axis=1)
    return inside[0] if single else inside


def flip_points(points: Any, axes: Sequence[int], size: Sequence[int]) -> Any:
    """Mirror array indices ``(..., D)`` along ``axes`` of an image of ``size``: index ``i`` goes to ``size - 1 - i``.

    This is exactly what ``flip`` does to the voxels, so a point keeps its voxel: augmentation flips a
    sample's points with it, and test-time mirroring un-flips the points predicted on a flipped crop.
    A torch tensor comes back as a new tensor of its dtype and device (the un-flip stays on the
    accelerator); anything else as a new float64 array.
    """
    torch = sys.modules.get("torch")  # a tensor implies torch is loaded; numpy callers need not load it
    is_tensor = torch is not None and isinstance(points, torch.Tensor)
    out = points.clone() if is_tensor else np.array(points, dtype=np.float64)
    if out.shape[-1] != len(size):
        raise ValueError(f"expected points with {len(size)} coordinates, got shape {tuple(out.shape)}")
    for axis in axes:
        out[..., axis] = size[axis] - 1 - out[..., axis]
    return out


def interpolate_field(field: np.ndarray, points: ArrayLike) -> np.ndarray:
    """Linearly interpolate a vector field ``(*shape, C)`` at continuous array indices ``(N, D)``.

    Beyond the outermost voxel centres the field is held constant at its border
    value, so it stays defined and bounded for every finite point (a point being
    tested for having left the patch still needs a position). Returns ``(N, C)``
    float64 whatever the field's dtype, without copying the field.
    """
    dim = field.ndim - 1
    pts, _ = _as_points(points, dim)
    shape = np.asarray(field.shape[:dim])
    pts = np.clip(pts, 0, shape - 1)
    base = np.minimum(np.floor(pts).astype(np.int64), np.maximum(shape - 2, 0))
    frac = pts - base
    out = np.zeros((len(pts), field.shape[-1]), dtype=np.float64)
    for corner in range(2 ** dim):
        step = np.array([(corner >> d) & 1 for d in range(dim)])
        weight = np.prod(np.where(step == 1, frac, 1 - frac), axis=1)
        index = np.minimum(base + step, shape - 1)
        out += weight[:, None] * field[tuple(index.T)]
    return out


@dataclass(frozen=True)
class PatchSampling:
    """Where each voxel of an augmented patch was read from in its sample.

    ``x = linear @ (y + displacement(y)) + offset`` for patch voxel ``y`` and
    sample position ``x``, both array order. ``displacement`` (``None``, or
    ``(*patch_size, D)`` in patch voxels) is given at voxel centres and linearly
    interpolated between them, which is the continuous map the sampled image
    approximates.
    """

    patch_size: Tuple[int, ...]
    linear: np.ndarray
    offset: np.ndarray
    displacement: "np.ndarray | None" = None

    def __post_init__(self) -> None:
        dim = len(self.patch_size)
        object.__setattr__(self, "patch_size", tuple(int(s) for s in self.patch_size))
        object.__setattr__(self, "linear", np.asarray(self.linear, dtype=np.float64).reshape(dim, dim))
        object.__setattr__(self, "offset", np.asarray(self.offset, dtype=np.float64).reshape(dim))
        if self.displacement is not None and tuple(self.displacement.shape) != (*self.patch_size, dim):
            raise ValueError(f"displacement must have shape {(*self.patch_size, dim)}, got {self.displacement.shape}")

    @classmethod
    def crop(cls, start: Sequence[float], patch_size: Sequence[int]) -> "PatchSampling":
        """A plain crop whose first voxel is sample voxel ``start``."""
        return cls(tuple(patch_size), np.eye(len(patch_size)), np.asarray(start, dtype=np.float64))

    @property
    def dim(self) -> int:
        return len(self.patch_size)

    def _displace(self, pts: np.ndarray) -> np.ndarray:
        if self.displacement is None:
            return np.zeros_like(pts)
        return interpolate_field(self.displacement, pts)

    def patch_to_sample(self, points: ArrayLike) -> np.ndarray:
        """Patch position -> the sample position its voxel value came from."""
        pts, single = _as_points(points, self.dim)
        out = (pts + self._displace(pts)) @ self.linear.T + self.offset
        return out[0] if single else out

    def sample_to_patch(
        self, points: ArrayLike, tolerance: float = 1e-8, max_iterations: int = 50
    ) -> Tuple[np.ndarray, np.ndarray]:
        """Sample position -> patch position, and whether it was solved.

        Without displacement this is the exact affine inverse. With it, Newton's
        method solves ``y + displacement(y) = z``. A point is unsolved where it is
        not finite, where Newton fails, or where the map reverses orientation at
        the solution: the field is bounded, so that means the point lies in a
        fold and shows up in the patch more than once (treat it as absent).
        Points outside the patch are solved too: whether a point is inside is
        the caller's question.
        """
        pts, single = _as_points(points, self.dim)
        target = np.linalg.solve(self.linear, (pts - self.offset).T).T
        solved = np.all(np.isfinite(target), axis=1)
        if self.displacement is not None and solved.any():
            y, ok = self._solve_displaced(target[solved], tolerance, max_iterations)
            target[solved] = y
            solved[solved] = ok
        return (target[0], solved[0]) if single else (target, solved)

    def _solve_displaced(self, target: np.ndarray, tolerance: float, max_iterations: int) -> Tuple[np.ndarray, np.ndarray]:
        eye = np.eye(self.dim)
        y = target - self._displace(target)
        for _ in range(max_iterations):
            residual = y + self._displace(y) - target
            todo = np.abs(residual).max(axis=1) > tolerance
            if not todo.any():
                break
            jac = eye + self._displacement_jacobian(y[todo])
            folded = np.abs(np.linalg.det(jac)) < 1e-6
            jac[folded] = eye  # plain fixed-point step where Newton's is undefined
            y[todo] -= np.linalg.solve(jac, residual[todo][..., None])[..., 0]
        residual = y + self._displace(y) - target
        unfolded = np.linalg.det(eye + self._displacement_jacobian(y)) > 0
        return y, (np.abs(residual).max(axis=1) <= tolerance) & unfolded

    def _displacement_jacobian(self, pts: np.ndarray, h: float = 0.5) -> np.ndarray:
        """Central differences of the interpolated field: ``(N, D, D)``, ``[n, i, j] = d disp_i / d y_j``."""
        jac = np.empty((len(pts), self.dim, self.dim))
        for j in range(self.dim):
            step = np.zeros(self.dim)
            step[j] = h
            jac[:, :, j] = (self._displace(pts + step) - self._displace(pts - step)) / (2 * h)
        return jac

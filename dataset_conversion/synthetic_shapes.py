"""Signed-distance primitives for the synthetic phantoms, and finding their surface along rays.

A phantom is a union of simple implicit shapes, each given by a signed
distance function (negative inside, zero on the surface). The zero level set
is exact for every primitive, so a point found on it lies on the surface to
float precision; that is what lets the phantoms place points of interest with
sub-voxel truth instead of picking voxels. Away from the surface the values
are exact distances except for the elliptic cylinder, whose value outside is a
lower bound of the true distance (safe for "is this point far from bone").

Every ``sdf`` takes three broadcastable coordinate arrays ``(x, y, z)`` in the
shape's own frame, so a whole block of voxels is evaluated at once.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence, Tuple

import numpy as np

Bounds = Tuple[np.ndarray, np.ndarray]


def _combine(radial: np.ndarray, axial: np.ndarray) -> np.ndarray:
    """Distance to the intersection of two slabs whose own distances are ``radial`` and ``axial``."""
    outside = np.sqrt(np.maximum(radial, 0) ** 2 + np.maximum(axial, 0) ** 2)
    return outside + np.minimum(np.maximum(radial, axial), 0)


@dataclass(frozen=True)
class EllipticCylinder:
    """Cylinder along z with an elliptic cross-section (vertebral body, disc)."""

    centre: Tuple[float, float, float]
    radii: Tuple[float, float]
    half_height: float

    def sdf(self, x, y, z):
        cx, cy, cz = map(float, self.centre)
        rx, ry = map(float, self.radii)
        k = np.sqrt(((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2)
        return _combine((k - 1.0) * min(rx, ry), np.abs(z - cz) - float(self.half_height))

    def bounds(self) -> Bounds:
        half = np.array([self.radii[0], self.radii[1], self.half_height])
        return np.asarray(self.centre) - half, np.asarray(self.centre) + half


@dataclass(frozen=True)
class Capsule:
    """Segment ``a``-``b`` thickened by ``radius`` (pedicles, processes)."""

    a: Tuple[float, float, float]
    b: Tuple[float, float, float]
    radius: float

    def sdf(self, x, y, z):
        # Python floats, not numpy scalars, so float32 coordinate blocks stay float32 (NumPy 2 promotion).
        ax, ay, az = map(float, self.a)
        bx, by, bz = (float(v) - w for v, w in zip(self.b, (ax, ay, az)))
        px, py, pz = x - ax, y - ay, z - az
        t = np.clip((px * bx + py * by + pz * bz) / (bx * bx + by * by + bz * bz), 0.0, 1.0)
        return np.sqrt((px - t * bx) ** 2 + (py - t * by) ** 2 + (pz - t * bz) ** 2) - float(self.radius)

    def bounds(self) -> Bounds:
        pts = np.array([self.a, self.b], dtype=np.float64)
        return pts.min(0) - self.radius, pts.max(0) + self.radius


@dataclass(frozen=True)
class ExtrudedCapsule:
    """A 2D capsule in the xy plane, extruded between two z values (a lamina: straight top and bottom edges)."""

    a: Tuple[float, float]
    b: Tuple[float, float]
    radius: float
    z_range: Tuple[float, float]

    def sdf(self, x, y, z):
        ax, ay = map(float, self.a)
        bx, by = map(float, self.b)
        dx, dy = bx - ax, by - ay
        px, py = x - ax, y - ay
        t = np.clip((px * dx + py * dy) / (dx * dx + dy * dy), 0.0, 1.0)
        radial = np.sqrt((px - t * dx) ** 2 + (py - t * dy) ** 2) - float(self.radius)
        z0, z1 = map(float, self.z_range)
        return _combine(radial, np.abs(z - 0.5 * (z0 + z1)) - 0.5 * (z1 - z0))

    def bounds(self) -> Bounds:
        xy = np.array([self.a, self.b], dtype=np.float64)
        lo = np.append(xy.min(0) - self.radius, self.z_range[0])
        hi = np.append(xy.max(0) + self.radius, self.z_range[1])
        return lo, hi


@dataclass(frozen=True)
class RoundedBox:
    """Box with rounded edges, oriented by ``axes`` (columns: the box's own axes in the parent frame).

    The centre of each face is on the surface exactly, which makes a face
    centre a well-defined tip (the spinous process ends in one).
    """

    centre: Tuple[float, float, float]
    axes: np.ndarray
    half_size: Tuple[float, float, float]
    rounding: float

    def sdf(self, x, y, z):
        cx, cy, cz = map(float, self.centre)
        dx, dy, dz = x - cx, y - cy, z - cz
        ax = np.asarray(self.axes, dtype=np.float64).tolist()
        r = float(self.rounding)
        inner = [float(h) - r for h in self.half_size]
        q = [np.abs(dx * ax[0][j] + dy * ax[1][j] + dz * ax[2][j]) - inner[j] for j in range(3)]
        outside = np.sqrt(sum(np.maximum(qj, 0) ** 2 for qj in q))
        return outside + np.minimum(np.maximum(np.maximum(q[0], q[1]), q[2]), 0) - r

    def bounds(self) -> Bounds:
        extent = np.abs(np.asarray(self.axes, dtype=np.float64)) @ np.asarray(self.half_size, dtype=np.float64)
        return np.asarray(self.centre) - extent, np.asarray(self.centre) + extent


Shape = EllipticCylinder | Capsule | ExtrudedCapsule | RoundedBox
SdfFunction = Callable[[np.ndarray], np.ndarray]  # (N, 3) points -> (N,) signed distances


def union_bounds(shapes: Sequence[Shape]) -> Bounds:
    lows, highs = zip(*(s.bounds() for s in shapes))
    return np.min(lows, axis=0), np.max(highs, axis=0)


def surface_along_rays(sdf: SdfFunction, starts: np.ndarray, directions: np.ndarray,
                       max_distance: float, step: float) -> np.ndarray:
    """First point where each ray leaves the shape: ``start + t * direction`` with ``sdf == 0``.

    Rays are marched in steps of ``step`` (which must be smaller than the
    thinnest wall a ray may cross) and the crossing is then bisected to float
    precision. Every start must lie inside the shape; a ray that never leaves
    it within ``max_distance`` is a modelling bug, reported as ``ValueError``.
    """
    starts = np.asarray(starts, dtype=np.float64)
    dirs = np.asarray(directions, dtype=np.float64)
    dirs = dirs / np.linalg.norm(dirs, axis=1, keepdims=True)
    n = len(starts)
    if np.any(sdf(starts) >= 0):
        raise ValueError("a ray starts outside the shape")
    ts = np.arange(1, int(np.ceil(max_distance / step)) + 1) * step
    pts = starts[:, None, :] + ts[None, :, None] * dirs[:, None, :]
    outside = sdf(pts.reshape(-1, 3)).reshape(n, len(ts)) >= 0
    if not outside.any(axis=1).all():
        raise ValueError("a ray does not leave the shape within max_distance")
    first = outside.argmax(axis=1)
    lo = np.where(first > 0, ts[np.maximum(first - 1, 0)], 0.0)
    hi = ts[first]
    for _ in range(48):
        mid = 0.5 * (lo + hi)
        out = sdf(starts + mid[:, None] * dirs) >= 0
        hi = np.where(out, mid, hi)
        lo = np.where(out, lo, mid)
    return starts + lo[:, None] * dirs

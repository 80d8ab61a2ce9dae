"""Smooth closed 2D contours: drawing them from control points, perturbing them, spacing landmarks along them.

A structure of the 2D phantom is a closed periodic cubic spline through a
handful of control points. Its landmarks are equally spaced by arc length,
starting at control point 0, so landmark ``k`` sits at the same fraction of
the outline in every case: that is what makes them correspond across cases.
The same dense polyline is used for the landmarks and for rasterising, so a
landmark lies on the drawn outline exactly.
"""
from __future__ import annotations

import numpy as np
from scipy.interpolate import CubicSpline


def closed_spline(control: np.ndarray, samples_per_segment: int = 48) -> np.ndarray:
    """Dense polyline ``(M, 2)`` of the periodic cubic spline through ``control``, starting at ``control[0]``."""
    control = np.asarray(control, dtype=np.float64)
    n = len(control)
    spline = CubicSpline(np.arange(n + 1), np.vstack([control, control[:1]]), bc_type="periodic")
    return spline(np.linspace(0, n, n * samples_per_segment, endpoint=False))


def fourier_perturbation(num_points: int, rng: np.random.Generator, amplitude: float, orders: int = 3) -> np.ndarray:
    """A smooth periodic 2D displacement ``(num_points, 2)`` for points spread evenly around a contour.

    Order ``k`` has standard deviation ``amplitude / k``, so the outline
    bulges and dents gently instead of becoming jagged.
    """
    theta = 2 * np.pi * np.arange(num_points) / num_points
    out = np.zeros((num_points, 2))
    for k in range(1, orders + 1):
        a, b = rng.normal(0, amplitude / k, size=(2, 2))
        out += np.outer(np.cos(k * theta), a) + np.outer(np.sin(k * theta), b)
    return out


def equally_spaced(curve: np.ndarray, count: int) -> np.ndarray:
    """``count`` points along the closed polyline at equal arc-length steps, the first at ``curve[0]``."""
    closed = np.vstack([curve, curve[:1]])
    seg = np.linalg.norm(np.diff(closed, axis=0), axis=1)
    arc = np.concatenate([[0.0], np.cumsum(seg)])
    targets = arc[-1] * np.arange(count) / count
    return np.stack([np.interp(targets, arc, closed[:, i]) for i in range(2)], axis=1)


def polygon_inside(rows_cols: np.ndarray, shape: tuple) -> np.ndarray:
    """Pixels whose centre is inside the closed polygon (even-odd rule); vertices as (row, column) indices.

    A scanline fill: every edge toggles the pixels to the right of where it
    crosses a pixel row, and a running sum along the row counts crossings. It
    costs the number of edge-row crossings, not vertices times pixels, which
    matters for outlines of hundreds of vertices.
    """
    r0, c0 = np.asarray(rows_cols, dtype=np.float64).T
    r1, c1 = np.roll(r0, -1), np.roll(c0, -1)
    first = np.ceil(np.minimum(r0, r1)).astype(np.int64)
    stop = np.ceil(np.maximum(r0, r1)).astype(np.int64)   # rows r with min <= r < max cross the edge
    counts = np.maximum(stop - first, 0)
    edge = np.repeat(np.arange(len(r0)), counts)
    rows = np.repeat(first, counts) + np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    cols = c0[edge] + (rows - r0[edge]) * (c1[edge] - c0[edge]) / (r1[edge] - r0[edge])
    keep = (rows >= 0) & (rows < shape[0])
    toggles = np.zeros((shape[0], shape[1] + 1), dtype=np.uint8)  # only the parity matters, so uint8 may wrap
    np.add.at(toggles, (rows[keep], np.clip(np.ceil(cols[keep]), 0, shape[1]).astype(np.int64)), 1)
    return (np.cumsum(toggles, axis=1, dtype=np.uint8)[:, : shape[1]] & 1).astype(bool)


def polygon_occupancy(curve_xy: np.ndarray, shape: tuple, supersample: int = 4) -> np.ndarray:
    """Fraction of each pixel covered by the polygon; ``curve_xy`` in continuous pixel index (x, y).

    Pixel centres sit on integers (ITK's convention). Sub-samples are the
    centres of an ``supersample``-fold finer grid, so partial coverage carries
    the outline's sub-pixel position into the image.
    """
    f = supersample
    fine_rc = (np.asarray(curve_xy, dtype=np.float64)[:, ::-1] + 0.5) * f - 0.5
    fine = polygon_inside(fine_rc, (shape[0] * f, shape[1] * f)).astype(np.float32)
    return fine.reshape(shape[0], f, shape[1], f).mean(axis=(1, 3))

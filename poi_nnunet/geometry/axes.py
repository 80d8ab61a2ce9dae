"""A configuration's D axes among the three axes of nnU-Net's preprocessed arrays.

nnU-Net lays every case out with three spatial axes: a 3D image as ``(z, y, x)``, a 2D image as
``(1, y, x)``; a 2d configuration's network sees ``(y, x)`` slices of such an array. A point, shape or
per-axis value of a D-axis configuration (or image) is always the *last* D of the three; the leading
ones are the slice axis. These helpers are the only place that convention is written down, so a 2D
point is padded, and a 3-axis one cut, the same way in training, decoding and prediction.
"""
from __future__ import annotations

from typing import Union

import numpy as np

from ._points import ArrayLike


def pad_axes(values: ArrayLike, length: int, fill: Union[float, np.floating] = 0.0) -> np.ndarray:
    """``values`` ``(..., D)`` with ``length - D`` leading entries of ``fill``: ``(..., length)`` float64, a new array.

    The leading axes a D-axis value lacks get ``fill``: coordinate 0 for a 2D point in nnU-Net's
    ``(1, y, x)`` layout (see :func:`pad_to_3d`), scale 1 or shift 0 for the slice axis of a 2d
    configuration's per-axis vector.
    """
    arr = np.asarray(values, dtype=np.float64)
    missing = length - arr.shape[-1]
    if missing < 0:
        raise ValueError(f"cannot pad {arr.shape[-1]} axes to {length}")
    return np.concatenate([np.full((*arr.shape[:-1], missing), fill, dtype=np.float64), arr], axis=-1)


def pad_to_3d(points: ArrayLike) -> np.ndarray:
    """Points ``(..., D)``, ``D <= 3``, of a D-axis image or configuration as preprocessed ``(..., 3)``: z = 0 in front.

    A 2D image is the single slice ``z = 0`` of nnU-Net's ``(1, y, x)`` array, so its points are
    ``(0, y, x)`` there; 3-axis points come back unchanged (as a new float64 array).
    """
    return pad_axes(points, 3, 0.0)


def last_axes(values: ArrayLike, n: int) -> np.ndarray:
    """The last ``n`` entries of ``values`` ``(..., D)`` (a view): what an n-axis configuration or image sees of a
    3-axis point, shape or per-axis vector (``(z, y, x)`` -> ``(y, x)`` for ``n = 2``)."""
    arr = np.asarray(values)
    if not 0 <= n <= arr.shape[-1]:
        raise ValueError(f"cannot take {n} axes of values with {arr.shape[-1]}")
    return arr[..., arr.shape[-1] - n:]


def drop_slice_axis(points: ArrayLike) -> np.ndarray:
    """Crop points ``(N, 3)`` of a one-slice sample -> in-plane points ``(N, 2)``, NaN where off that slice.

    A 2d configuration's sample is the single slice at crop z = 0, which covers z in ``[-0.5, 0.5]``.
    A point farther away is on another slice: nothing is known about it in this sample, so it becomes
    NaN (unknown), never a 2D point projected onto the slice.
    """
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 3:
        raise ValueError(f"expected (N, 3) points, got shape {pts.shape}")
    off_slice = np.abs(pts[:, 0]) > 0.5
    out = pts[:, 1:].copy()
    out[off_slice] = np.nan
    return out

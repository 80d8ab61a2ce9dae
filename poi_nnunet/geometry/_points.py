"""Point-array conventions shared by every space: ``(N, D)`` float64, or a single ``(D,)`` point."""
from __future__ import annotations

from typing import Sequence, Tuple, Union

import numpy as np

ArrayLike = Union[np.ndarray, Sequence[float], Sequence[Sequence[float]]]


def _as_points(points: ArrayLike, dim: int) -> Tuple[np.ndarray, bool]:
    """Return points as (N, dim) float64 and whether the input was a single point."""
    arr = np.asarray(points, dtype=np.float64)
    single = arr.ndim == 1
    arr = np.atleast_2d(arr)
    if arr.shape[-1] != dim:
        raise ValueError(f"expected points with {dim} coordinates, got shape {np.shape(points)}")
    return arr, single

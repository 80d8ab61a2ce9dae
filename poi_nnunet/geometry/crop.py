"""Crop boxes: which window of an array a patch is, and how points follow it in and out.

The data loader cuts training samples, and the coarse_refine predictor and the structure decoder
cut inference crops, with the same :class:`CropBox`: a crop centred on a structure at inference is
exactly the box training took for that centre (same rounding), and a point moves in and out of a
crop by the same offset its voxel did.

Positions are continuous array indices, voxel centres on integers; a box's D axes are the last D
axes of the array it cuts (leading ones, such as channels, are kept whole).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, List, Optional, Sequence, Tuple, Union

import numpy as np

from ._points import ArrayLike

Shift = Union[float, Sequence[float], np.ndarray]


@dataclass(frozen=True)
class CropBox:
    """The window ``[start, start + size)`` on each axis: crop voxel ``i`` is array voxel ``start + i``.

    ``start`` may be negative and ``start + size`` beyond the array; :meth:`cut` pads there, as
    training and inference crops near a border are padded.
    """

    start: Tuple[int, ...]
    size: Tuple[int, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "start", tuple(int(s) for s in self.start))
        object.__setattr__(self, "size", tuple(int(s) for s in self.size))
        if len(self.start) != len(self.size) or any(s < 0 for s in self.size):
            raise ValueError(f"a crop needs one non-negative size per start, got {self.start}, {self.size}")

    # ------------------------------------------------------------------ choosing a crop
    @classmethod
    def centred_on(cls, centre: ArrayLike, size: Sequence[int], shift: Shift = 0.0) -> "CropBox":
        """The ``size`` crop around ``centre + shift`` (``(D,)``): ``start = round(centre + shift - size / 2)``.

        Rounding is numpy's, half to even (``-0.5 -> 0``, ``1.5 -> 2``, ``2.5 -> 2``). An integer centre
        lands on crop voxel ``size // 2`` of an even size, half a voxel past the middle ``(size - 1) / 2``:
        the models were trained on that, so inference keeps it. ``shift`` (voxels, scalar or per axis) is
        training's random displacement of the centre; inference passes none.
        """
        centre = np.asarray(centre, dtype=np.float64)
        if centre.shape != (len(size),) or not np.all(np.isfinite(centre)):
            raise ValueError(f"a crop of size {tuple(size)} needs a finite centre with {len(size)} axes, got {centre}")
        start = np.round(centre + shift - np.asarray(size, dtype=np.float64) / 2)
        return cls(tuple(start.astype(int)), tuple(size))

    @classmethod
    def centred_in(cls, shape: Sequence[int], size: Sequence[int]) -> "CropBox":
        """The ``size`` crop whose middle is nearest the middle of an array of ``shape``:
        ``start = round((shape - 1) / 2 - (size - 1) / 2)``, half to even.

        Along an axis shorter than the crop the start is negative: the padding is split between both
        ends (an odd excess puts the extra voxel where rounding half to even sends it).
        """
        shape_arr, size_arr = np.asarray(shape, dtype=np.float64), np.asarray(size, dtype=np.float64)
        start = np.round((shape_arr - 1) / 2 - (size_arr - 1) / 2)
        return cls(tuple(start.astype(int)), tuple(size_arr.astype(int)))

    @classmethod
    def from_bounds(cls, lower: Sequence[int], upper: Sequence[int]) -> "CropBox":
        """The box ``[lower, upper)`` per axis, e.g. the ``(lbs, ubs)`` that nnU-Net's ``get_bbox`` returns."""
        return cls(tuple(lower), tuple(int(u) - int(l) for l, u in zip(lower, upper)))

    @classmethod
    def enclosing(cls, indices: Sequence[np.ndarray]) -> "CropBox":
        """The smallest box holding voxels ``indices`` (one integer array per axis, as ``np.nonzero`` gives; not empty)."""
        return cls.from_bounds([int(i.min()) for i in indices], [int(i.max()) + 1 for i in indices])

    def grown(self, margin: Sequence[int]) -> "CropBox":
        """This box with ``margin`` more voxels on both ends of each axis."""
        return CropBox(tuple(s - int(m) for s, m in zip(self.start, margin)),
                       tuple(n + 2 * int(m) for n, m in zip(self.size, margin)))

    def clipped(self, shape: Sequence[int]) -> "CropBox":
        """The part of this box inside an array of ``shape`` (empty along an axis it misses)."""
        lower = [max(s, 0) for s in self.start]
        upper = [max(min(e, int(n)), lo) for e, n, lo in zip(self.stop, shape, lower)]
        return CropBox.from_bounds(lower, upper)

    # ------------------------------------------------------------------ describing it
    @property
    def dim(self) -> int:
        return len(self.start)

    @property
    def stop(self) -> Tuple[int, ...]:
        """First voxel past the box on each axis (``start + size``)."""
        return tuple(s + n for s, n in zip(self.start, self.size))

    @property
    def bbox(self) -> List[List[int]]:
        """``[[start, stop], ...]``: the half-open bounding box of nnU-Net's / acvl_utils' ``crop_and_pad_nd``."""
        return [[s, e] for s, e in zip(self.start, self.stop)]

    @property
    def slices(self) -> Tuple[slice, ...]:
        """Index of the box in an array it lies inside (use :meth:`cut` where it may not)."""
        if any(s < 0 for s in self.start):
            raise ValueError(f"{self} starts before the array: numpy would read it from the end; use cut()")
        return tuple(slice(s, e) for s, e in zip(self.start, self.stop))

    # ------------------------------------------------------------------ using it
    def cut(self, array: Any, pad_value: float = 0, cast_to: Optional[Any] = None) -> Any:
        """The crop of ``array``'s last :attr:`dim` axes, ``pad_value`` where the box leaves the array.

        nnU-Net's ``crop_and_pad_nd`` (numpy or torch in, the same out), which nnU-Net's own loader
        uses, so the loader's and the predictor's crops are padded alike. ``cast_to``: its
        ``cast_cropped_to``.
        """
        from acvl_utils.cropping_and_padding.bounding_boxes import crop_and_pad_nd  # imports torch: only here

        return crop_and_pad_nd(array, self.bbox, pad_value, cast_cropped_to=cast_to)

    def to_crop(self, points: ArrayLike) -> np.ndarray:
        """Array positions ``(..., D)`` -> the same positions in the crop (``points - start``), float64."""
        return self._check(points) - np.asarray(self.start, dtype=np.float64)

    def from_crop(self, points: ArrayLike) -> np.ndarray:
        """Positions in the crop ``(..., D)`` -> array positions (``points + start``), float64."""
        return self._check(points) + np.asarray(self.start, dtype=np.float64)

    def _check(self, points: ArrayLike) -> np.ndarray:
        pts = np.asarray(points, dtype=np.float64)
        if pts.shape[-1:] != (self.dim,):
            raise ValueError(f"a {self.dim}-axis crop moves points with {self.dim} coordinates, got shape {pts.shape}")
        return pts

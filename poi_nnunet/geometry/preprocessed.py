"""Preprocessed space: where nnU-Net's transpose, crop and resampling put a case.

nnU-Net's preprocessing (DefaultPreprocessor.run_case_npy) moves a case's voxel grid in three steps,
in this order: transpose the array axes (``transpose_forward``), crop to the non-zero bounding box,
and resample to a new shape. Its readers lay a 3D image out as the numpy array ``(z, y, x)`` and a
2D image as ``(1, y, x)``, so a preprocessed point always has three coordinates. The resampling
(skimage ``resize`` / ``resize_segmentation`` and the separate-z ``map_coordinates`` path) aligns
voxel *edges*, not centres: new index ``j`` samples old index ``(j + 0.5) * old / new - 0.5``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Tuple

import numpy as np

from ._points import ArrayLike, _as_points
from .axes import last_axes, pad_axes, pad_to_3d
from .image import ImageGeometry


@dataclass(frozen=True)
class PreprocessedSpace:
    """Where nnU-Net's crop, transpose and resampling put a case: world mm <-> preprocessed voxel.

    ``bbox`` is the crop box ``[[lo, hi), ...]`` in transposed axes (nnU-Net's
    ``bbox_used_for_cropping``); ``shape_after_crop`` and ``shape_after_resampling`` are the
    transposed array shapes before and after resampling. Preprocessed coordinates are continuous
    indices of the preprocessed array's three spatial axes, voxel centres on integers.
    """

    raw: ImageGeometry
    transpose_forward: Tuple[int, int, int]
    bbox: Tuple[Tuple[int, int], ...]
    shape_after_crop: Tuple[int, int, int]
    shape_after_resampling: Tuple[int, int, int]

    def __post_init__(self) -> None:
        object.__setattr__(self, "transpose_forward", tuple(int(a) for a in self.transpose_forward))
        object.__setattr__(self, "bbox", tuple((int(lo), int(hi)) for lo, hi in self.bbox))
        object.__setattr__(self, "shape_after_crop", tuple(int(s) for s in self.shape_after_crop))
        object.__setattr__(self, "shape_after_resampling", tuple(int(s) for s in self.shape_after_resampling))
        if sorted(self.transpose_forward) != [0, 1, 2] or len(self.bbox) != 3:
            raise ValueError(f"need a permutation of 3 axes and a 3-axis bbox, got {self.transpose_forward}, {self.bbox}")

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_nnunet_properties(cls, properties: dict, transpose_forward: Sequence[int],
                               shape_after_resampling: Sequence[int],
                               raw: "ImageGeometry | None" = None) -> "PreprocessedSpace":
        """Build from the properties dict nnU-Net's reader and preprocessor record for a case.

        ``raw`` is the raw ``_0000`` image's geometry; without it, the ``sitk_stuff`` that nnU-Net's
        SimpleITK reader records is used.
        """
        inverse = np.argsort(transpose_forward)
        raw_shape = [int(properties["shape_before_cropping"][i]) for i in inverse]  # nnU-Net's 3-axis layout
        if raw is None:
            sitk_stuff = properties["sitk_stuff"]
            dim = len(sitk_stuff["spacing"])
            size = tuple(raw_shape[::-1][:dim])  # ITK order; a 2D image's leading axis of 1 is dropped
            raw = ImageGeometry(sitk_stuff["origin"], sitk_stuff["spacing"],
                                np.array(sitk_stuff["direction"]).reshape(dim, dim), size)
        if tuple(raw_shape[::-1][:raw.dim]) != raw.size:
            raise ValueError(f"nnU-Net's array {raw_shape} does not match the raw image size {raw.size}")
        return cls(raw, tuple(transpose_forward), tuple(properties["bbox_used_for_cropping"]),
                   tuple(properties["shape_after_cropping_and_before_resampling"]), tuple(shape_after_resampling))

    def to_json(self) -> dict:
        return {
            "raw": {"origin": self.raw.origin.tolist(), "spacing": self.raw.spacing.tolist(),
                    "direction": self.raw.direction.ravel().tolist(), "size": list(self.raw.size)},
            "transpose_forward": list(self.transpose_forward),
            "bbox": [list(b) for b in self.bbox],
            "shape_after_crop": list(self.shape_after_crop),
            "shape_after_resampling": list(self.shape_after_resampling),
        }

    @classmethod
    def from_json(cls, data: dict) -> "PreprocessedSpace":
        r = data["raw"]
        dim = len(r["size"])
        raw = ImageGeometry(r["origin"], r["spacing"], np.array(r["direction"]).reshape(dim, dim), r["size"])
        return cls(raw, data["transpose_forward"], data["bbox"], data["shape_after_crop"],
                   data["shape_after_resampling"])

    # ------------------------------------------------------------------ properties
    @property
    def scale(self) -> np.ndarray:
        """Preprocessed voxels per cropped raw voxel, per transposed axis (``new / old`` shape)."""
        return np.asarray(self.shape_after_resampling, float) / np.asarray(self.shape_after_crop, float)

    @property
    def spacing(self) -> np.ndarray:
        """Actual mm per preprocessed voxel along each axis (the target spacing up to shape rounding)."""
        raw_spacing = pad_axes(self.raw.spacing[::-1], 3, 1.0)  # a 2D image's leading axis: 1 mm, as nnU-Net's reader
        return raw_spacing[list(self.transpose_forward)] / self.scale

    # ------------------------------------------------------------------ transforms
    def world_to_nnunet_array(self, world: ArrayLike) -> np.ndarray:
        """World mm -> continuous index of nnU-Net's raw array ``(z, y, x)`` or ``(0, y, x)`` for 2D."""
        pts, single = _as_points(world, self.raw.dim)
        arr = pad_to_3d(self.raw.world_to_array(pts))
        return arr[0] if single else arr

    def nnunet_array_to_world(self, array_index: ArrayLike) -> np.ndarray:
        pts, single = _as_points(array_index, 3)
        out = self.raw.array_to_world(last_axes(pts, self.raw.dim))
        return out[0] if single else out

    def nnunet_array_to_preprocessed(self, array_index: ArrayLike) -> np.ndarray:
        """Raw array index -> transpose -> minus crop start -> resampling (edge-aligned)."""
        pts, single = _as_points(array_index, 3)
        lo = np.array([b[0] for b in self.bbox], float)
        out = (pts[:, list(self.transpose_forward)] - lo + 0.5) * self.scale - 0.5
        return out[0] if single else out

    def preprocessed_to_nnunet_array(self, preprocessed: ArrayLike) -> np.ndarray:
        pts, single = _as_points(preprocessed, 3)
        lo = np.array([b[0] for b in self.bbox], float)
        transposed = (pts + 0.5) / self.scale - 0.5 + lo
        out = transposed[:, np.argsort(self.transpose_forward)]
        return out[0] if single else out

    def world_to_preprocessed(self, world: ArrayLike) -> np.ndarray:
        """World mm (LPS) -> continuous preprocessed voxel index (3 axes)."""
        pts, single = _as_points(world, self.raw.dim)
        out = self.nnunet_array_to_preprocessed(self.world_to_nnunet_array(pts))
        return out[0] if single else out

    def preprocessed_to_world(self, preprocessed: ArrayLike) -> np.ndarray:
        """Continuous preprocessed voxel index (3 axes) -> world mm (LPS)."""
        pts, single = _as_points(preprocessed, 3)
        out = self.nnunet_array_to_world(self.preprocessed_to_nnunet_array(pts))
        return out[0] if single else out

    def contains_preprocessed(self, preprocessed: ArrayLike, tolerance: float = 1e-6) -> np.ndarray:
        """True where a preprocessed point lies inside the preprocessed array (edges at -0.5 and n - 0.5)."""
        pts, single = _as_points(preprocessed, 3)
        upper = np.asarray(self.shape_after_resampling, float) - 0.5
        inside = np.all((pts >= -0.5 - tolerance) & (pts <= upper + tolerance), axis=1)
        return inside[0] if single else inside

    def left_right_axis(self) -> int:
        """Preprocessed array axis that runs closest to the patient's left-right (LPS x) direction.

        Mirroring along this axis turns a left structure into a right one, so POI and label pairs
        must swap; a flip of any other axis keeps names.
        """
        index_axis = int(np.argmax(np.abs(self.raw.direction[0, :])))  # ITK index axis along world x
        nnunet_axis = 2 - index_axis  # nnU-Net's 3-axis array is ([z,] y, x), a 2D image (1, y, x)
        return list(self.transpose_forward).index(nnunet_axis)

    def left_right_patch_axis(self, n_patch_axes: int) -> int:
        """:meth:`left_right_axis` among a configuration's ``n_patch_axes`` patch axes (the last ones of
        the array), or -1 where it is not one of them (a 2d configuration's slice axis: never flipped)."""
        axis = self.left_right_axis() - (3 - int(n_patch_axes))
        return axis if axis >= 0 else -1

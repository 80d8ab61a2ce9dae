"""The one place where points change coordinate space.

Spaces, and the names used for them throughout the project:

* **world**: millimetres in ITK's physical (LPS) space, what
  ``TransformContinuousIndexToPhysicalPoint`` returns. The unified raw format
  stores points in this space.
* **index**: continuous ITK index of a raw image, axis order ``(x, y[, z])``.
  Voxel centres sit on integers; the image covers ``[-0.5, size - 0.5]``.
* **array**: the same continuous index in numpy axis order ``([z,] y, x)``,
  i.e. ``index[::-1]``; this is how ``sitk.GetArrayFromImage`` lays out data.

Later stages (preprocessed and patch spaces) are added here too, so that every
transform a point goes through is defined beside its inverse.

All functions take ``(N, D)`` arrays (or a single ``(D,)`` point) and keep
float64 precision; nothing here rounds.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Tuple, Union

import numpy as np
import SimpleITK as sitk

from .errors import PathLike, PoiNnunetError

ArrayLike = Union[np.ndarray, Sequence[float], Sequence[Sequence[float]]]


def _as_points(points: ArrayLike, dim: int) -> Tuple[np.ndarray, bool]:
    """Return points as (N, dim) float64 and whether the input was a single point."""
    arr = np.asarray(points, dtype=np.float64)
    single = arr.ndim == 1
    arr = np.atleast_2d(arr)
    if arr.shape[-1] != dim:
        raise ValueError(f"expected points with {dim} coordinates, got shape {np.shape(points)}")
    return arr, single


@dataclass(frozen=True)
class ImageGeometry:
    """Origin, spacing, direction and size of an image: everything a point needs.

    ``direction`` is the ITK direction matrix (its columns are the world
    directions of the index axes), so ``world = origin + direction @ (spacing * index)``.
    """

    origin: np.ndarray
    spacing: np.ndarray
    direction: np.ndarray
    size: Tuple[int, ...]

    def __post_init__(self) -> None:
        dim = len(self.size)
        object.__setattr__(self, "origin", np.asarray(self.origin, dtype=np.float64).reshape(dim))
        object.__setattr__(self, "spacing", np.asarray(self.spacing, dtype=np.float64).reshape(dim))
        object.__setattr__(self, "direction", np.asarray(self.direction, dtype=np.float64).reshape(dim, dim))
        object.__setattr__(self, "size", tuple(int(s) for s in self.size))

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_image(cls, image: sitk.Image) -> "ImageGeometry":
        dim = image.GetDimension()
        return cls(
            origin=image.GetOrigin(),
            spacing=image.GetSpacing(),
            direction=np.array(image.GetDirection()).reshape(dim, dim),
            size=image.GetSize(),
        )

    @classmethod
    def from_file(cls, path: PathLike) -> "ImageGeometry":
        """Read only the header of an image file (fast: no voxel data is loaded)."""
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        try:
            reader.ReadImageInformation()
        except RuntimeError as exc:
            raise PoiNnunetError(f"{path}: cannot read as an image ({_first_line(exc)})") from None
        dim = reader.GetDimension()
        return cls(
            origin=reader.GetOrigin(),
            spacing=reader.GetSpacing(),
            direction=np.array(reader.GetDirection()).reshape(dim, dim),
            size=reader.GetSize(),
        )

    def apply_to(self, image: sitk.Image) -> sitk.Image:
        """Stamp this geometry's origin, spacing and direction on ``image`` (sizes must agree)."""
        if tuple(image.GetSize()) != self.size:
            raise ValueError(f"image size {image.GetSize()} does not match geometry size {self.size}")
        image.SetOrigin(tuple(self.origin))
        image.SetSpacing(tuple(self.spacing))
        image.SetDirection(tuple(self.direction.ravel()))
        return image

    # ------------------------------------------------------------------ properties
    @property
    def dim(self) -> int:
        return len(self.size)

    @property
    def index_to_world_matrix(self) -> np.ndarray:
        """``direction @ diag(spacing)``: the linear part of index -> world."""
        return self.direction * self.spacing[None, :]

    # ------------------------------------------------------------------ transforms
    def index_to_world(self, index: ArrayLike) -> np.ndarray:
        """Continuous ITK index (x, y[, z]) -> world mm (LPS)."""
        pts, single = _as_points(index, self.dim)
        out = pts @ self.index_to_world_matrix.T + self.origin
        return out[0] if single else out

    def world_to_index(self, world: ArrayLike) -> np.ndarray:
        """World mm (LPS) -> continuous ITK index (x, y[, z])."""
        pts, single = _as_points(world, self.dim)
        out = np.linalg.solve(self.index_to_world_matrix, (pts - self.origin).T).T
        return out[0] if single else out

    def array_to_world(self, array_index: ArrayLike) -> np.ndarray:
        """Continuous numpy-order index ([z,] y, x) -> world mm."""
        pts, single = _as_points(array_index, self.dim)
        out = self.index_to_world(pts[:, ::-1])
        return out[0] if single else out

    def world_to_array(self, world: ArrayLike) -> np.ndarray:
        """World mm -> continuous numpy-order index ([z,] y, x)."""
        pts, single = _as_points(world, self.dim)
        out = self.world_to_index(pts)[:, ::-1]
        return out[0] if single else out

    def contains_index(self, index: ArrayLike, tolerance: float = 1e-6) -> np.ndarray:
        """True where a continuous index lies inside the image's physical extent.

        The extent of voxel ``i`` is ``[i - 0.5, i + 0.5]``, so the image covers
        ``[-0.5, size - 0.5]`` along each axis.
        """
        pts, single = _as_points(index, self.dim)
        upper = np.asarray(self.size, dtype=np.float64) - 0.5
        inside = np.all((pts >= -0.5 - tolerance) & (pts <= upper + tolerance), axis=1)
        return inside[0] if single else inside

    def contains_world(self, world: ArrayLike, tolerance: float = 1e-6) -> np.ndarray:
        return self.contains_index(self.world_to_index(world), tolerance)

    def same_grid(self, other: "ImageGeometry", tol: float = 1e-4) -> bool:
        """True when two images share size, spacing, origin and direction (nnU-Net's requirement)."""
        return (
            self.size == other.size
            and np.allclose(self.spacing, other.spacing, rtol=0, atol=tol)
            and np.allclose(self.origin, other.origin, rtol=0, atol=tol)
            and np.allclose(self.direction, other.direction, rtol=0, atol=tol)
        )

    def describe_difference(self, other: "ImageGeometry") -> str:
        """Human-readable account of how two grids differ (empty when they agree)."""
        parts = []
        if self.size != other.size:
            parts.append(f"size {self.size} vs {other.size}")
        for name in ("spacing", "origin", "direction"):
            a, b = getattr(self, name), getattr(other, name)
            if a.shape != b.shape or not np.allclose(a, b, rtol=0, atol=1e-4):
                parts.append(f"{name} {np.round(a, 4).ravel().tolist()} vs {np.round(b, 4).ravel().tolist()}")
        return "; ".join(parts)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    # ITK messages start with a file:line banner; the last non-empty line says what went wrong.
    return text[-1].strip() if text else type(exc).__name__


# =============================================================================
# Patch space
# =============================================================================
# A training *sample* is the crop of a preprocessed case that the data loader
# hands to augmentation (array order, voxel centres on integers, the crop's
# first voxel at 0). Spatial augmentation fills each *patch* voxel ``y`` with
# the sample at
#
#     x = linear @ (y + displacement(y)) + offset
#
# so the image travels patch -> sample, while a point must travel the other
# way. With a displacement field that inverse has no closed form; it is solved
# on the very field the image was sampled with, so the two cannot disagree.


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


def flip_points(points: ArrayLike, axes: Sequence[int], size: Sequence[int]) -> np.ndarray:
    """Mirror array indices along ``axes`` of an image of ``size``: index ``i`` goes to ``size - 1 - i``.

    This is exactly what ``flip`` does to the voxels, so a point keeps its voxel.
    """
    pts, single = _as_points(points, len(size))
    out = pts.copy()
    for axis in axes:
        out[:, axis] = size[axis] - 1 - out[:, axis]
    return out[0] if single else out


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


# =============================================================================== preprocessed space
# nnU-Net's preprocessing (DefaultPreprocessor.run_case_npy) moves a case's voxel grid in three steps,
# in this order: transpose the array axes (``transpose_forward``), crop to the non-zero bounding box,
# and resample to a new shape. Its readers lay a 3D image out as the numpy array ``(z, y, x)`` and a
# 2D image as ``(1, y, x)``, so a preprocessed point always has three coordinates. The resampling
# (skimage ``resize`` / ``resize_segmentation`` and the separate-z ``map_coordinates`` path) aligns
# voxel *edges*, not centres: new index ``j`` samples old index ``(j + 0.5) * old / new - 0.5``.


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
        raw_spacing = np.ones(3)
        raw_spacing[3 - self.raw.dim:] = self.raw.spacing[::-1]
        return raw_spacing[list(self.transpose_forward)] / self.scale

    # ------------------------------------------------------------------ transforms
    def world_to_nnunet_array(self, world: ArrayLike) -> np.ndarray:
        """World mm -> continuous index of nnU-Net's raw array ``(z, y, x)`` or ``(0, y, x)`` for 2D."""
        pts, single = _as_points(world, self.raw.dim)
        arr = self.raw.world_to_array(pts)
        if self.raw.dim == 2:
            arr = np.concatenate([np.zeros((len(arr), 1)), arr], axis=1)
        return arr[0] if single else arr

    def nnunet_array_to_world(self, array_index: ArrayLike) -> np.ndarray:
        pts, single = _as_points(array_index, 3)
        out = self.raw.array_to_world(pts[:, 3 - self.raw.dim:])
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

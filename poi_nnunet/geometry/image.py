"""Raw image space: world mm (LPS) <-> continuous ITK index <-> numpy array index."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

import numpy as np
import SimpleITK as sitk

from ..errors import PathLike, PoiNnunetError
from ._points import ArrayLike, _as_points


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

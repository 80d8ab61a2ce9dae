"""Axis codes ("P", "I", "R", ...) of an image grid, and voxel coordinates given along them.

Spine tools (TPTBox, VerSe) name a voxel grid by where each array axis points,
in nibabel's convention: ``("P", "I", "R")`` means the first axis runs toward
Posterior, the second toward Inferior, the third toward Right. A point file
that stores voxel coordinates "in PIR" means the coordinates of the image's
own grid after it is permuted and flipped to that orientation, whatever the
file's real orientation on disk.

Flipping an axis of ``n`` voxels sends voxel centre ``i`` to ``n - 1 - i`` (what
nibabel's ``apply_orientation`` and TPTBox's ``POI.reorient`` do), so
continuous coordinates keep their sub-voxel part.

nibabel's affines are RAS; ITK's world is LPS. The two differ by the sign of
the first two world axes, which :func:`ras_affine` applies once.
"""
from __future__ import annotations

from typing import Sequence, Tuple

import nibabel.orientations as nio
import numpy as np

from poi_nnunet.errors import InvalidInputError, PathLike, Problem
from poi_nnunet.geometry import ImageGeometry

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])
# letter -> (world axis in RAS, +1 if the letter is the positive end of that axis)
_LETTERS = {"R": (0, 1), "L": (0, -1), "A": (1, 1), "P": (1, -1), "S": (2, 1), "I": (2, -1)}


def ras_affine(geometry: ImageGeometry) -> np.ndarray:
    """The 4x4 voxel -> RAS mm affine nibabel (and TPTBox) use for this ITK geometry."""
    if geometry.dim != 3:
        raise ValueError(f"axis codes need a 3D image, got {geometry.dim}D")
    affine = np.eye(4)
    affine[:3, :3] = LPS_TO_RAS @ geometry.index_to_world_matrix
    affine[:3, 3] = LPS_TO_RAS @ geometry.origin
    return affine


def axis_codes(geometry: ImageGeometry) -> Tuple[str, str, str]:
    """Where each voxel axis of the image points, e.g. ``("P", "I", "R")`` (nibabel's choice for oblique grids)."""
    return tuple(nio.aff2axcodes(ras_affine(geometry)))  # type: ignore[return-value]


def parse_axis_codes(codes: object, source: PathLike) -> Tuple[str, str, str]:
    """Three letters naming three different world axes, upper-cased; anything else names the file."""
    if not isinstance(codes, (list, tuple)) or len(codes) != 3 or not all(isinstance(c, str) for c in codes):
        raise _fail(source, f"axis codes must be three letters such as [\"P\", \"I\", \"R\"], got {codes!r}")
    upper = tuple(c.strip().upper() for c in codes)
    unknown = [c for c in upper if c not in _LETTERS]
    if unknown:
        raise _fail(source, f"unknown axis letter(s) {unknown} in {list(codes)}: each must be one of R, L, A, P, S, I")
    if len({_LETTERS[c][0] for c in upper}) != 3:
        raise _fail(source, f"axis codes {list(codes)} name one world axis twice; they must name R/L, A/P and S/I once each")
    return upper  # type: ignore[return-value]


def oriented_voxels_to_index(coords: np.ndarray, codes: Sequence[str], geometry: ImageGeometry) -> np.ndarray:
    """Voxel coordinates along ``codes`` (N, 3) -> continuous ITK index (x, y, z) of ``geometry``.

    ``codes`` must already be checked by :func:`parse_axis_codes`.
    """
    coords = np.atleast_2d(np.asarray(coords, dtype=np.float64))
    image_codes = axis_codes(geometry)
    image_axis_of_world = {_LETTERS[c][0]: j for j, c in enumerate(image_codes)}
    index = np.empty_like(coords)
    for k, letter in enumerate(codes):
        world_axis, sign = _LETTERS[letter]
        j = image_axis_of_world[world_axis]
        same_way = _LETTERS[image_codes[j]][1] == sign
        index[:, j] = coords[:, k] if same_way else (geometry.size[j] - 1) - coords[:, k]
    return index


def permuted(values: Sequence[float], codes: Sequence[str], geometry: ImageGeometry) -> Tuple[float, ...]:
    """A per-axis property of the image (spacing, size) listed in the order of ``codes``."""
    image_codes = axis_codes(geometry)
    image_axis_of_world = {_LETTERS[c][0]: j for j, c in enumerate(image_codes)}
    return tuple(values[image_axis_of_world[_LETTERS[c][0]]] for c in codes)


def _fail(source: PathLike, message: str) -> InvalidInputError:
    return InvalidInputError([Problem(str(source), message)], headline=f"cannot read {source}")

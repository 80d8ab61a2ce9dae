"""Reading a label mask that must lie on its image's grid (nnU-Net wants identical geometry).

A mask on another grid is an error rather than a silent resampling: the user
should know their mask and image disagree, and nearest-neighbour resampling
would move label borders (and so which vertebra a point belongs to).
"""
from __future__ import annotations

from pathlib import Path
from typing import Set, Tuple

import numpy as np
import SimpleITK as sitk

from poi_nnunet.errors import InvalidInputError, PathLike, Problem
from poi_nnunet.geometry import ImageGeometry

from ._images import read_image


def read_mask(path: PathLike, reference: ImageGeometry, what: str) -> Tuple[sitk.Image, Set[int]]:
    """The mask as an unsigned integer image on ``reference``'s grid, and the label values it holds."""
    path = Path(path)
    image = read_image(path, None)
    geometry = ImageGeometry.from_image(image)
    if not reference.same_grid(geometry):
        raise _fail(path, f"{what} is not on the image's grid: {reference.describe_difference(geometry)}")
    array = sitk.GetArrayViewFromImage(image)
    values = np.unique(array)
    if np.issubdtype(values.dtype, np.floating) and not np.all(np.mod(values, 1) == 0):
        raise _fail(path, f"{what} holds non-integer values; expected integer labels")
    if values.size and values.min() < 0:
        raise _fail(path, f"{what} holds negative label values {values[values < 0][:5].tolist()}")
    labels = {int(v) for v in values}
    pixel_type = sitk.sitkUInt8 if max(labels, default=0) < 256 else sitk.sitkUInt16
    if max(labels, default=0) >= 65536:
        raise _fail(path, f"{what} holds label values up to {max(labels)}; at most 65535 are supported")
    return sitk.Cast(image, pixel_type), labels


def _fail(source: PathLike, message: str) -> InvalidInputError:
    return InvalidInputError([Problem(str(source), message)], headline=f"cannot use mask {source}")

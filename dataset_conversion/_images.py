"""Reading a converter's input image as the one channel nnU-Net gets.

Medical formats (NIfTI, NRRD, MetaImage) are read with SimpleITK and keep the
geometry they carry. Bitmaps (PNG, JPEG, BMP, TIFF) carry no usable geometry,
so they get origin 0, identity direction and the pixel spacing the user
passes (``--spacing``): a silent 1 mm would make every error in mm wrong.

nnU-Net needs one file per channel, so a colour image becomes one grey
channel: its luminance ``0.299 R + 0.587 G + 0.114 B`` (ITU-R BT.601, what
most tools mean by "convert to grey") as float32. An image whose colour
channels are all equal (a grey X-ray saved as RGB) keeps its values and type
exactly. Alpha is ignored. Bitmaps are turned as their EXIF orientation says,
which is how viewers and LabelMe show them and so where people clicked.
"""
from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk
from PIL import Image, ImageOps, UnidentifiedImageError

from poi_nnunet.errors import InvalidInputError, PathLike, Problem

VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
BITMAP_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
IMAGE_SUFFIXES = VOLUME_SUFFIXES + BITMAP_SUFFIXES
LUMA_BT601 = np.array([0.299, 0.587, 0.114], dtype=np.float64)

Spacing = Optional[Tuple[float, float]]


def image_suffix(path: PathLike) -> Optional[str]:
    """The image extension of a file name (``.nii.gz`` counts as one), or None."""
    name = Path(path).name.lower()
    return next((s for s in IMAGE_SUFFIXES if name.endswith(s)), None)


def strip_image_suffix(path: PathLike) -> Optional[str]:
    suffix = image_suffix(path)
    return Path(path).name[: -len(suffix)] if suffix else None


def parse_spacing(values: Optional[Sequence[float]]) -> Spacing:
    """``--spacing S`` (square pixels) or ``--spacing SX SY`` (column, row) in mm."""
    if not values:
        return None
    if len(values) not in (1, 2) or not all(math.isfinite(v) and v > 0 for v in values):
        raise InvalidInputError([Problem("--spacing", f"expected 1 or 2 positive numbers (mm per pixel), got {list(values)}")],
                                headline="invalid option")
    return (float(values[0]), float(values[-1]))


def read_image(path: PathLike, spacing: Spacing) -> sitk.Image:
    """One grey channel from any supported file; raises naming the file when it cannot."""
    path = Path(path)
    if not path.is_file():
        raise _fail(path, "image not found")
    if image_suffix(path) in BITMAP_SUFFIXES:
        return read_bitmap(path.read_bytes(), str(path), spacing)
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise _fail(path, f"cannot read as an image ({_last_line(exc)})") from None
    if image.GetNumberOfComponentsPerPixel() == 1:
        return image
    grey = _grey(sitk.GetArrayFromImage(image), str(path))
    out = sitk.GetImageFromArray(grey)
    out.CopyInformation(image)
    return out


def read_bitmap(data: bytes, source: str, spacing: Spacing) -> sitk.Image:
    """A 2D image from encoded bitmap bytes (a file's or LabelMe's embedded ``imageData``)."""
    if spacing is None:
        raise _fail(source, "a bitmap carries no pixel spacing: pass --spacing (mm per pixel, e.g. --spacing 0.1)")
    try:
        with Image.open(io.BytesIO(data)) as opened:
            if getattr(opened, "n_frames", 1) > 1:
                raise _fail(source, f"holds {opened.n_frames} frames; expected one 2D image")
            bitmap = ImageOps.exif_transpose(opened)
            bitmap.load()
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise _fail(source, f"cannot read as an image ({exc})") from None
    image = sitk.GetImageFromArray(_bitmap_array(bitmap, source))
    image.SetSpacing(spacing)
    return image


def _bitmap_array(bitmap: Image.Image, source: str) -> np.ndarray:
    mode = bitmap.mode
    if mode == "1":
        return np.asarray(bitmap, dtype=np.uint8)
    if mode in ("L", "I", "F") or mode.startswith("I;"):
        return np.asarray(bitmap)
    if mode == "LA":
        return np.asarray(bitmap)[..., 0]
    return _grey(np.asarray(bitmap.convert("RGB")), source)


def _grey(pixels: np.ndarray, source: str) -> np.ndarray:
    """(..., C) colour pixels to one channel: exact when the colour channels agree, else BT.601 luminance."""
    if pixels.shape[-1] not in (3, 4):
        raise _fail(source, f"has {pixels.shape[-1]} components per pixel; expected grey, RGB or RGBA")
    rgb = pixels[..., :3]
    if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2]):
        return np.ascontiguousarray(rgb[..., 0])
    return (rgb.astype(np.float64) @ LUMA_BT601).astype(np.float32)


def _fail(source: PathLike, message: str) -> InvalidInputError:
    return InvalidInputError([Problem(str(source), message)], headline=f"cannot use image {source}")


def _last_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__

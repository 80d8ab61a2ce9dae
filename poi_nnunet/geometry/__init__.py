"""The one place where points change coordinate space.

Spaces, and the names used for them throughout the project:

* **world**: millimetres in ITK's physical (LPS) space, what
  ``TransformContinuousIndexToPhysicalPoint`` returns. The unified raw format
  stores points in this space.
* **index**: continuous ITK index of a raw image, axis order ``(x, y[, z])``.
  Voxel centres sit on integers; the image covers ``[-0.5, size - 0.5]``.
* **array**: the same continuous index in numpy axis order ``([z,] y, x)``,
  i.e. ``index[::-1]``; this is how ``sitk.GetArrayFromImage`` lays out data.

Later stages, each in its own module so that every transform a point goes
through is defined beside its inverse:

* :mod:`.image`: world <-> index <-> array of a raw image (:class:`ImageGeometry`).
* :mod:`.preprocessed`: world <-> nnU-Net's preprocessed voxels (:class:`PreprocessedSpace`).
* :mod:`.crop`: preprocessed array <-> a crop of it (:class:`CropBox`), the one rule by
  which training and inference choose and cut their crops.
* :mod:`.patch`: a crop (sample) <-> its augmented patch (:class:`PatchSampling`,
  :func:`flip_points`, :func:`inside_extent`).
* :mod:`.axes`: a configuration's D axes among the three preprocessed axes
  (2D points get z = 0 in front; :func:`pad_to_3d`, :func:`drop_slice_axis`).

The point transforms take ``(N, D)`` arrays (or a single ``(D,)`` point) and keep
float64 precision; only :class:`CropBox` rounds, when it chooses a crop.
"""
from .axes import drop_slice_axis, last_axes, pad_axes, pad_to_3d
from .crop import CropBox
from .image import ImageGeometry
from .patch import PatchSampling, flip_points, inside_extent, interpolate_field
from .preprocessed import PreprocessedSpace

__all__ = [
    "CropBox", "ImageGeometry", "PatchSampling", "PreprocessedSpace", "drop_slice_axis", "flip_points",
    "inside_extent", "interpolate_field", "last_axes", "pad_axes", "pad_to_3d",
]

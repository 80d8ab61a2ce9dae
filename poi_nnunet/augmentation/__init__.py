"""Data augmentation that moves points of interest with the image, on nnU-Net's own transforms.

A data loader puts into each sample's ``data_dict``, next to ``image`` and
``segmentation``:

* ``keypoints``: ``Tensor[N, D]`` float, voxel positions (array order, voxel
  centres on integers) in the sample it crops; one row per POI slot, fixed
  across cases.
* ``keypoints_valid``: ``bool[N]`` (optional; default: every finite row).

and gets back the same keys in patch voxels: moved by the sampled rotation,
scaling, elastic deformation and mirroring, mirror pairs swapped, and rows that
left the patch (or were never there) marked invalid.
"""
from .keys import KEYPOINTS, KEYPOINTS_VALID
from .mirror import PointMirrorTransform, mirror_slot_permutation
from .pipeline import get_point_aware_training_transforms, make_point_aware
from .pseudo2d import PointConvert2DTo3DTransform, PointConvert3DTo2DTransform
from .spatial import PointSpatialTransform, sampling_from_parameters

__all__ = [
    "KEYPOINTS",
    "KEYPOINTS_VALID",
    "PointConvert2DTo3DTransform",
    "PointConvert3DTo2DTransform",
    "PointMirrorTransform",
    "PointSpatialTransform",
    "get_point_aware_training_transforms",
    "make_point_aware",
    "mirror_slot_permutation",
    "sampling_from_parameters",
]

"""nnU-Net's training augmentation, with the transforms that move voxels replaced by point-aware ones.

Rather than rebuild nnU-Net's pipeline (and drift from it on every release),
this takes the ``ComposeTransforms`` nnU-Net builds and swaps the spatial,
mirror and dummy-2D transforms for subclasses that also move keypoints, keeping
every setting nnU-Net chose. Anything left that would move voxels but not
points is refused, so a new nnU-Net transform cannot silently desynchronise
image and landmarks.
"""
from __future__ import annotations

import inspect
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
from batchgeneratorsv2.helpers.scalar_type import RandomScalar
from batchgeneratorsv2.transforms.base.basic_transform import BasicTransform, ImageOnlyTransform, SegOnlyTransform
from batchgeneratorsv2.transforms.nnunet.seg_to_onehot import MoveSegAsOneHotToDataTransform
from batchgeneratorsv2.transforms.spatial.mirroring import MirrorTransform
from batchgeneratorsv2.transforms.spatial.spatial import SpatialTransform
from batchgeneratorsv2.transforms.utils.compose import ComposeTransforms
from batchgeneratorsv2.transforms.utils.nnunet_masking import MaskImageTransform
from batchgeneratorsv2.transforms.utils.pseudo2d import Convert2DTo3DTransform, Convert3DTo2DTransform
from batchgeneratorsv2.transforms.utils.random import RandomTransform

from .mirror import PointMirrorTransform
from .pseudo2d import PointConvert2DTo3DTransform, PointConvert3DTo2DTransform
from .spatial import PointSpatialTransform

# Transforms whose apply() touches only image/segmentation channels, never positions.
_POSITION_FREE = (ImageOnlyTransform, SegOnlyTransform, MaskImageTransform, MoveSegAsOneHotToDataTransform)
_POINT_AWARE = (PointSpatialTransform, PointMirrorTransform, PointConvert3DTo2DTransform, PointConvert2DTo3DTransform)


def get_point_aware_training_transforms(
    patch_size: Union[np.ndarray, Tuple[int]],
    rotation_for_DA: RandomScalar,
    deep_supervision_scales: Union[List, Tuple, None],
    mirror_axes: Tuple[int, ...],
    do_dummy_2d_data_aug: bool,
    use_mask_for_norm: List[bool] = None,
    is_cascaded: bool = False,
    foreground_labels: Union[Tuple[int, ...], List[int]] = None,
    regions: List[Union[List[int], Tuple[int, ...], int]] = None,
    ignore_label: int = None,
    *,
    swap_axes: Sequence[int] = (),
    slot_permutation: Optional[Sequence[int]] = None,
    label_swaps: Sequence[Tuple[int, int]] = (),
    layer_permutation: Optional[Sequence[int]] = None,
    p_elastic_deform: float = 0.0,
    elastic_deform_scale: RandomScalar = (0, 0.2),
    elastic_deform_magnitude: RandomScalar = (0, 0.2),
) -> ComposeTransforms:
    """``nnUNetTrainer.get_training_transforms`` (same positional arguments), moving keypoints too.

    Extra keyword arguments: ``swap_axes`` / ``slot_permutation`` as in
    :class:`PointMirrorTransform` (``label_swaps``: the dataset's ``structure_mirror_pairs``,
    exchanged in the segmentation on a left-right flip; ``layer_permutation``: the same pairs as
    slot layers, for the sample's centre layer); ``p_elastic_deform`` and the elastic ranges as in
    ``SpatialTransform`` (scale: fraction of the patch edge, magnitude: voxels).
    nnU-Net itself never deforms elastically; the coarse-to-fine trainer does.
    """
    # Imported here: nnUNetTrainer drags in the whole training stack, which users of the
    # transform classes alone should not pay for.
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    pipeline = nnUNetTrainer.get_training_transforms(
        patch_size, rotation_for_DA, deep_supervision_scales, mirror_axes, do_dummy_2d_data_aug,
        use_mask_for_norm, is_cascaded, foreground_labels, regions, ignore_label,
    )
    return make_point_aware(
        pipeline,
        swap_axes=swap_axes,
        slot_permutation=slot_permutation,
        label_swaps=label_swaps,
        layer_permutation=layer_permutation,
        p_elastic_deform=p_elastic_deform,
        elastic_deform_scale=elastic_deform_scale,
        elastic_deform_magnitude=elastic_deform_magnitude,
    )


def make_point_aware(
    pipeline: ComposeTransforms,
    *,
    swap_axes: Sequence[int] = (),
    slot_permutation: Optional[Sequence[int]] = None,
    label_swaps: Sequence[Tuple[int, int]] = (),
    layer_permutation: Optional[Sequence[int]] = None,
    **spatial_overrides,
) -> ComposeTransforms:
    """Return ``pipeline`` with its voxel-moving transforms replaced by point-aware equivalents.

    Works on any pipeline a trainer subclass builds from nnU-Net's transforms.
    ``spatial_overrides`` are ``SpatialTransform`` arguments to change (the
    elastic settings, say). Raises ``TypeError`` for a transform that would move
    voxels without moving points.
    """
    out = []
    for t in pipeline.transforms:
        if type(t) is SpatialTransform:
            t = _rebuild(PointSpatialTransform, t, **spatial_overrides)
        elif type(t) is MirrorTransform:
            t = PointMirrorTransform(t.allowed_axes, swap_axes=swap_axes, slot_permutation=slot_permutation,
                                     label_swaps=label_swaps, layer_permutation=layer_permutation)
        elif type(t) is Convert3DTo2DTransform:
            t = PointConvert3DTo2DTransform()
        elif type(t) is Convert2DTo3DTransform:
            t = PointConvert2DTo3DTransform()
        _require_point_safe(t)
        out.append(t)
    return ComposeTransforms(out)


def _rebuild(cls: type, transform: BasicTransform, **overrides) -> BasicTransform:
    """Construct ``cls`` with every constructor argument read back from ``transform``.

    Goes through the constructor (not a ``__dict__`` copy) so that derived state is
    rebuilt and a renamed argument in a future release fails loudly here.
    """
    names = [n for n in inspect.signature(type(transform).__init__).parameters if n != "self"]
    kwargs = {n: getattr(transform, n) for n in names}
    unknown = set(overrides) - set(names)
    if unknown:
        raise TypeError(f"{type(transform).__name__} has no argument(s) {sorted(unknown)}")
    kwargs.update(overrides)
    return cls(**kwargs)


def _require_point_safe(t: BasicTransform) -> None:
    if isinstance(t, RandomTransform):
        _require_point_safe(t.transform)
    elif isinstance(t, ComposeTransforms):
        for inner in t.transforms:
            _require_point_safe(inner)
    elif not isinstance(t, _POSITION_FREE + _POINT_AWARE):
        raise TypeError(f"{type(t).__name__} may move voxels but not keypoints; it has no point-aware version")

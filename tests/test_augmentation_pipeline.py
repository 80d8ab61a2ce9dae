"""nnU-Net's full training augmentation, made point-aware: labels drawn at the POIs stay on their points."""
from __future__ import annotations

from typing import Tuple

import numpy as np
import pytest
import torch
from batchgeneratorsv2.transforms.spatial.rot90 import Rot90Transform
from batchgeneratorsv2.transforms.utils.compose import ComposeTransforms
from batchgeneratorsv2.transforms.utils.random import RandomTransform

from poi_nnunet.augmentation import (
    PointConvert2DTo3DTransform,
    PointConvert3DTo2DTransform,
    PointMirrorTransform,
    PointSpatialTransform,
    get_point_aware_training_transforms,
    make_point_aware,
)

ELASTIC = dict(p_elastic_deform=1.0, elastic_deform_scale=(0.25, 0.3), elastic_deform_magnitude=(1.5, 2.0))
# name: (patch, sample, dummy 2D); the sample is the loader's larger crop (its first axis is not
# enlarged for dummy 2D, as in nnU-Net)
# offsets from the sample centre that keep the balls apart
SEPARATED = np.array([[-1.0, -6.0, 0.0], [0.0, 3.0, 5.0], [1.0, 3.0, -5.0]])
SETUPS = {
    "2d": ((64, 64), (80, 80), False),
    "3d": ((32, 32, 32), (40, 40, 40), False),
    "3d_dummy_2d": ((12, 32, 32), (12, 40, 40), True),
}


def build(patch: Tuple[int, ...], dummy_2d: bool, **extra) -> ComposeTransforms:
    dim = len(patch)
    return get_point_aware_training_transforms(
        patch,
        (-np.pi / 6, np.pi / 6),
        [[1.0] * dim, [0.5] * dim],
        tuple(range(dim)),
        dummy_2d,
        use_mask_for_norm=[False],
        **extra,
    )


def label_balls(shape: Tuple[int, ...], points: np.ndarray, radius: float = 2.5) -> torch.Tensor:
    """Segmentation with label k + 1 as a ball around point k."""
    grids = np.meshgrid(*[np.arange(s, dtype=np.float64) for s in shape], indexing="ij")
    seg = np.zeros(shape, dtype=np.int16)
    for k, p in enumerate(points):
        seg[sum((g - c) ** 2 for g, c in zip(grids, p)) <= radius**2] = k + 1
    return torch.from_numpy(seg[None])


def test_voxel_moving_transforms_are_replaced_and_keep_nnunet_settings() -> None:
    pipeline = build((12, 32, 32), True, **ELASTIC)
    kinds = [type(t) for t in pipeline.transforms]
    for cls in (PointConvert3DTo2DTransform, PointSpatialTransform, PointConvert2DTo3DTransform, PointMirrorTransform):
        assert cls in kinds
    spatial = next(t for t in pipeline.transforms if isinstance(t, PointSpatialTransform))
    assert tuple(spatial.patch_size) == (32, 32)
    assert (spatial.border_mode_seg, spatial.padding_value_seg, spatial.scaling) == ("constant", -1, (0.7, 1.4))
    assert (spatial.p_elastic_deform, spatial.elastic_deform_magnitude) == (1.0, (1.5, 2.0))
    assert build((32, 32, 32), False).transforms[0].p_elastic_deform == 0


@pytest.mark.parametrize("setup", sorted(SETUPS))
def test_labels_drawn_at_points_end_up_on_the_moved_points(setup: str) -> None:
    patch, sample, dummy_2d = SETUPS[setup]
    pipeline = build(patch, dummy_2d, **ELASTIC)
    checked = 0
    for seed in range(3):
        np.random.seed(seed)
        torch.manual_seed(seed)
        rng = np.random.default_rng(seed)
        centre = np.asarray(sample, dtype=float) / 2
        points = centre + SEPARATED[:, -len(patch):] + rng.uniform(-0.5, 0.5, size=(3, len(patch)))
        out = pipeline(
            image=torch.rand((1, *sample)),
            segmentation=label_balls(sample, points),
            keypoints=torch.tensor(points, dtype=torch.float32),
        )
        seg = out["segmentation"][0][0].numpy()  # full-resolution deep-supervision target
        assert seg.shape == patch and out["image"].shape[1:] == patch
        assert out["keypoints"].dtype == torch.float32 and out["keypoints"].shape == (3, len(patch))
        for k, (point, valid) in enumerate(zip(out["keypoints"].numpy(), out["keypoints_valid"].numpy())):
            where = np.argwhere(seg == k + 1)
            if not valid:
                continue
            assert len(where) > 0, f"seed {seed}: valid point {k} has no label around it"
            assert np.abs(where.mean(0) - point).max() < 0.75, f"seed {seed}: label {k + 1} is off its point"
            checked += 1
    assert checked >= 6


def test_intensity_transforms_pass_keypoints_through_untouched() -> None:
    pipeline = build((32, 32, 32), False)
    points = torch.tensor([[3.5, 4.0, 5.25]])
    valid = torch.tensor([True])
    for t in pipeline.transforms:
        if isinstance(t, (PointSpatialTransform, PointMirrorTransform)):
            continue
        inner = t.transform if isinstance(t, RandomTransform) else t  # force it to run
        out = inner(
            image=torch.rand((1, 32, 32, 32)),
            segmentation=torch.zeros((1, 32, 32, 32), dtype=torch.int16),
            keypoints=points,
            keypoints_valid=valid,
        )
        assert out["keypoints"] is points and out["keypoints_valid"] is valid, type(inner).__name__


def test_transform_that_cannot_move_points_is_refused() -> None:
    with pytest.raises(TypeError, match="Rot90Transform"):
        make_point_aware(ComposeTransforms([RandomTransform(Rot90Transform(1), 0.5)]))


def test_dummy_2d_keeps_the_folded_coordinate_and_checks_its_extent() -> None:
    points = torch.tensor([[5.5, 3.0, 4.0], [-1.0, 3.0, 4.0]])
    folded = PointConvert3DTo2DTransform()(image=torch.zeros((2, 6, 8, 8)), keypoints=points)
    assert folded["image"].shape == (12, 8, 8) and folded["keypoints"].shape == (2, 2)
    out = PointConvert2DTo3DTransform()(**folded)
    assert out["image"].shape == (2, 6, 8, 8)
    assert out["keypoints_valid"].tolist() == [True, False]
    assert torch.equal(out["keypoints"], points)
    assert not any(key.startswith("keypoints_folded") for key in out)

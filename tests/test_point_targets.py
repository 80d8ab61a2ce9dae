"""What the POI trainers learn from: defects found from outside, each pinned by a test that failed before its fix.

* a left-right flip that exchanges paired structures exchanges the crop's centre structure too;
* the planned elastic deformation moves points by voxels, and they stay on the anatomy;
* a point caught in a fold of the elastic field gets no target;
* the in-peaks heatmap loss counts each channel once, however many structures put a peak in it;
* coordinate losses are in the sample's millimetres after scaling;
* whole-image coarse_refine prediction searches the whole image, not only its central crop.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pytest
import torch

from poi_nnunet.augmentation import PointMirrorTransform, PointSpatialTransform
from poi_nnunet.augmentation.keys import CENTRE_LAYER, KEYPOINTS, KEYPOINTS_VALID, PATCH_TO_SAMPLE
from poi_nnunet.channels import ChannelLayout
from poi_nnunet.geometry import PatchSampling, interpolate_field
from poi_nnunet.losses import MaskedHeatmapLoss
from poi_nnunet.plan import PoiPlan
from trainers.coarse_refine_loss import centre_points
from trainers.heatmap_loss import render_point_targets


def coordinate_image(shape: Sequence[int]) -> torch.Tensor:
    """One channel per axis holding each voxel's own index along that axis."""
    grids = np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij")
    return torch.from_numpy(np.stack(grids))


def read_coordinates(image: torch.Tensor, points: np.ndarray) -> np.ndarray:
    """The coordinate channels read (linearly) at patch positions: where each point came from."""
    field = np.moveaxis(image.numpy().astype(np.float64), 0, -1)
    return interpolate_field(field, points)


def structure_layout(layers=(1, 2), pois=(10,)) -> ChannelLayout:
    return ChannelLayout.from_channels("structure_with_neighbours",
                                       [{"structure": None, "poi": p, "name": str(p)} for p in pois],
                                       {"labels": {"background": 0, **{f"s{v}": v for v in layers}}})


# ----------------------------------------------------------------------------------------------- mirroring
def test_flip_of_paired_structures_moves_the_centre_to_the_partner_whose_slots_hold_its_points() -> None:
    layout = structure_layout()
    slots = layout.mirror_permutation([], [[1, 2]])
    transform = PointMirrorTransform((2,), swap_axes=(2,), slot_permutation=slots, label_swaps=((1, 2),),
                                     layer_permutation=layout.layer_permutation([[1, 2]]))
    shape = (8, 10, 12)
    seg = torch.zeros((1, *shape), dtype=torch.int16)
    seg[0, 1:4, 2:5, 3:6] = 1  # the centre structure (layer 0) around its POI (2, 3, 4)
    seg[0, 1:4, 2:5, 8:11] = 2
    points = torch.tensor([[2.0, 3.0, 4.0], [2.0, 3.0, 9.0]], dtype=torch.float64)
    out = transform.apply({"image": torch.zeros((1, *shape)), "segmentation": seg, KEYPOINTS: points,
                           KEYPOINTS_VALID: torch.ones(2, dtype=torch.bool), CENTRE_LAYER: 0}, axes=[2])
    # the crop's centre structure sat at x = 3..5; flipped it sits at x = 6..8 and now carries label 2
    assert int(out["segmentation"][0, 2, 3, 7]) == 2
    assert out[CENTRE_LAYER] == 1
    centre = centre_points(out[KEYPOINTS][None].float(), torch.tensor([out[CENTRE_LAYER]]), layout)[0, 0]
    np.testing.assert_allclose(centre.numpy(), [2.0, 3.0, 11 - 4.0])  # its own POI, moved with it


def test_flip_off_the_left_right_axis_keeps_the_centre() -> None:
    layout = structure_layout()
    transform = PointMirrorTransform((1, 2), swap_axes=(2,), slot_permutation=layout.mirror_permutation([], [[1, 2]]),
                                     label_swaps=((1, 2),), layer_permutation=layout.layer_permutation([[1, 2]]))
    out = transform.apply({"image": torch.zeros((1, 8, 10, 12)), KEYPOINTS: torch.zeros((2, 3)),
                           KEYPOINTS_VALID: torch.ones(2, dtype=torch.bool), CENTRE_LAYER: 0}, axes=[1])
    assert out[CENTRE_LAYER] == 0


# ----------------------------------------------------------------------------------------------- spatial
def _spatial(patch: int, dim: int, **kwargs) -> PointSpatialTransform:
    return PointSpatialTransform((patch,) * dim, patch_center_dist_from_border=patch // 2, random_crop=False,
                                 **kwargs)


@pytest.mark.parametrize("dim", [2, 3])
def test_planned_elastic_deformation_moves_points_by_voxels_and_keeps_them_on_the_anatomy(dim: int) -> None:
    """batchgeneratorsv2's default range (0, 0.2) moved points by at most 0.2 voxel; the planned range
    (here the planner's floor, up to 3 voxels) must move them by voxels, exactly with the image."""
    from planners.poi_plan import ELASTIC_SCALE, elastic_magnitude_voxels

    patch, sample = (32, 40) if dim == 3 else (48, 56)
    magnitude = elastic_magnitude_voxels(np.full(dim, 40.0), np.ones(dim), np.full(dim, patch))
    assert magnitude[1] >= 3.0
    rng = np.random.default_rng(0)
    shifts = []
    for seed in range(6):
        torch.manual_seed(seed)
        np.random.seed(seed)
        transform = _spatial(patch, dim, p_elastic_deform=1, elastic_deform_scale=ELASTIC_SCALE,
                             elastic_deform_magnitude=tuple(magnitude), p_rotation=0, p_scaling=0)
        points = sample / 2 + rng.uniform(-0.3 * patch, 0.3 * patch, size=(20, dim))
        out = transform(image=coordinate_image((sample,) * dim), **{KEYPOINTS: torch.from_numpy(points)})
        moved = out[KEYPOINTS].numpy()
        ok = out[KEYPOINTS_VALID].numpy() & np.all((moved >= 0) & (moved <= patch - 1), axis=1)
        np.testing.assert_allclose(read_coordinates(out["image"], moved[ok]), points[ok], atol=1e-3)
        crop_start = sample // 2 - patch // 2  # where the undeformed crop would put them
        shifts.append(np.linalg.norm(moved[ok] - (points[ok] - crop_start), axis=1))
    shifts = np.concatenate(shifts)
    assert np.median(shifts) > 0.75 and shifts.max() > 1.5  # default ranges: median 0.16, max 0.20


def test_a_point_caught_in_a_fold_has_no_position_and_renders_no_target(monkeypatch: pytest.MonkeyPatch) -> None:
    original = PatchSampling.sample_to_patch

    def fold_the_first(self, points, *args, **kwargs):
        moved, solved = original(self, points, *args, **kwargs)
        solved = solved.copy()
        solved[0] = False  # as Newton's method reports a point inside a fold
        return moved, solved

    monkeypatch.setattr(PatchSampling, "sample_to_patch", fold_the_first)
    torch.manual_seed(0)
    transform = _spatial(16, 3, p_elastic_deform=1, elastic_deform_magnitude=(2.0, 2.0))
    points = torch.tensor([[10.0, 10.0, 10.0], [11.0, 9.0, 10.0]], dtype=torch.float64)
    out = transform(image=torch.zeros((1, 20, 20, 20)), **{KEYPOINTS: points})
    assert torch.isnan(out[KEYPOINTS][0]).all() and not bool(out[KEYPOINTS_VALID][0])
    assert torch.isfinite(out[KEYPOINTS][1]).all()
    plan = PoiPlan("whole_image", (20.0,) * 3, (2.0,) * 3, 10.0, 3.0, (8,) * 3, (1.0, 2.0), (0.1, 0.2),
                   ({"structure": 0, "poi": 1, "name": "a"}, {"structure": 0, "poi": 2, "name": "b"}))
    layout = ChannelLayout.from_plan(plan, {"labels": {"background": 0}})
    heatmaps = render_point_targets(out[KEYPOINTS][None].float(), layout, (16, 16, 16), plan)
    assert float(heatmaps[0, 0].abs().max()) == 0 and float(heatmaps[0, 1].max()) > 5


@pytest.mark.parametrize("dim", [2, 3])
def test_patch_spacing_is_the_millimetres_of_a_patch_step_after_rotation_and_scaling(dim: int) -> None:
    """Read from the image itself: the coordinate channels at neighbouring patch voxels say how many
    sample voxels one patch step spans along each sample axis; times an anisotropic spacing, its length
    is the step in mm (a rotation mixes axes of different spacing, so the scale alone would be wrong)."""
    from poi_nnunet.data_loader import patch_spacing_mm

    torch.manual_seed(1)
    np.random.seed(1)
    transform = _spatial(24, dim, p_scaling=1, scaling=(1.3, 1.3), p_rotation=1, rotation=(0.5, 0.5))
    out = transform(image=coordinate_image((40,) * dim), **{KEYPOINTS: torch.zeros((1, dim), dtype=torch.float64)})
    field = np.moveaxis(out["image"].numpy().astype(np.float64), 0, -1)
    spacing = np.array([3.0, 0.8, 0.5][-dim:])
    got = patch_spacing_mm(spacing, out[PATCH_TO_SAMPLE])
    centre = (12,) * dim
    for axis in range(dim):
        step = list(centre)
        step[axis] += 1
        in_sample_voxels = field[tuple(step)] - field[centre]
        assert got[axis] == pytest.approx(np.linalg.norm(spacing * in_sample_voxels), rel=1e-3)
    assert not np.allclose(got, 1.3 * spacing, rtol=1e-2)  # the rotation mixed the spacings
    np.testing.assert_allclose(patch_spacing_mm(spacing, None), spacing)


# ----------------------------------------------------------------------------------------------- loss
def test_in_peaks_loss_counts_a_channel_once_however_many_structures_peak_in_it() -> None:
    """Structure mode: three vertebrae in view put three peaks in one channel. An all-zero prediction
    cost 3.0 per channel before (one peak's energy as the unit); it costs 1, as documented."""
    sigma = [2.0, 2.0, 2.0]
    layout = structure_layout(layers=(1, 2, 3))
    plan = PoiPlan("structure_with_neighbours", (40.0,) * 3, tuple(sigma), 10.0, 3.0, (8,) * 3, (1.0, 2.0),
                   (0.1, 0.2), ({"structure": None, "poi": 10, "name": "a"},))
    keypoints = torch.tensor([[[8.0, 16.0, 16.0], [16.0, 16.0, 16.0], [24.0, 16.0, 16.0]]])
    target = render_point_targets(keypoints, layout, (32, 32, 32), plan)
    loss = MaskedHeatmapLoss(amplitude=10.0, sigma_voxels=sigma)
    valid = torch.ones(1, 1, dtype=torch.bool)
    assert float(loss(torch.zeros_like(target), target, valid)) == pytest.approx(1.0, abs=1e-3)
    one = render_point_targets(keypoints[:, :1], structure_layout(layers=(1,)), (32, 32, 32), plan)
    assert float(loss(torch.zeros_like(one), one, valid)) == pytest.approx(1.0, abs=1e-3)
    # a peak cut in half by the patch border costs about half, as documented
    half = render_point_targets(torch.tensor([[[-0.5, 16.0, 16.0]]]), structure_layout(layers=(1,)), (32, 32, 32),
                                plan)
    assert float(loss(torch.zeros_like(half), half, valid)) == pytest.approx(0.5, abs=0.02)


# ----------------------------------------------------------------------------------------------- inference
def test_whole_image_coarse_refine_finds_a_landmark_outside_the_central_crop(monkeypatch: pytest.MonkeyPatch) -> None:
    """An image twice the patch: the landmark in a corner, far outside the central crop, is found there."""
    from poi_nnunet.inference.coarse_refine import CoarseRefinePredictor

    predictor = CoarseRefinePredictor.__new__(CoarseRefinePredictor)  # only the tiling and selection logic
    predictor.tile_step_size = 0.5
    predictor.crop_batch_size = 4
    predictor.min_confidence = 0.1
    predictor.layout = ChannelLayout.from_channels("whole_image", [{"structure": 3, "poi": 7, "name": "a"}],
                                                   {"labels": {"background": 0}})
    image = np.zeros((1, 1, 64, 64), dtype=np.float32)
    landmark = np.array([55.25, 6.5])
    image[0, 0, 55, 6] = 1.0

    def crop_points(x, layers):
        """A perfect network: the bright voxel's position in each crop, confident only where it is seen."""
        coords, confidence = [], []
        for crop in x.numpy():
            where = np.argwhere(crop[0] > 0)
            seen = len(where) > 0
            coords.append(where[0] + (landmark - landmark.astype(int)) if seen else np.array([20.0, 20.0]))
            confidence.append([0.9 if seen else 0.05])
        return torch.tensor(np.array(coords))[:, None, :], np.array(confidence)

    monkeypatch.setattr(predictor, "crop_points", crop_points)
    monkeypatch.setattr(type(predictor), "configuration_manager", property(lambda self: type("C", (), {
        "patch_size": [32, 32]})()), raising=False)
    tiles = predictor.whole_image_tiles(np.array([64.0, 64.0]), np.array([32.0, 32.0]))
    covered = np.zeros((64, 64), dtype=bool)
    for box in tiles:
        assert box.size == (32, 32)
        covered[box.slices] = True
    assert covered.all()
    points = predictor.predict_points(torch.from_numpy(image), None)
    assert points.structures.tolist() == [3] and points.pois.tolist() == [7]
    np.testing.assert_allclose(points.positions[0], [0.0, *landmark])

"""Long scans: fields of view planned from hand-made fingerprints, crops centred on them, placed by the coarse
pass in a new scan, and merged into one output (a field of view the coarse pass misses is reported, not fatal)."""
from __future__ import annotations

from typing import List

import numpy as np
import pytest

from planners.fields_of_view import next_coarse_spacing, plan_coarse_configuration, plan_fields_of_view
from planners.poi_fingerprint import summarize
from planners.poi_plan import poi_block
from poi_nnunet.channels import ChannelLayout
from poi_nnunet.data_loader import CaseSlots, PoiDataLoader
from poi_nnunet.geometry import ImageGeometry, PreprocessedSpace
from poi_nnunet.inference.decoding import FIELD_OF_VIEW_NOT_FOUND, DecodedPoints
from poi_nnunet.inference.fields_of_view import LongScanModels, field_of_view_centre, merged_points
from poi_nnunet.plan import COARSE_CONFIGURATION, FieldOfView, PoiPlan
from tests.test_data_loader import InMemoryDataset, label_manager
from tests.test_plan_rules import _case, _config

HIP, KNEE, ANKLE = 100.0, 450.0, 820.0  # mm along the 900 mm scan


def _leg(i: int, knee: bool = True) -> dict:
    """Three POIs at each of hip, knee and ankle (structure 1, ids 1-9), 4 + i mm apart along z; the knee's
    left out where ``knee`` is False (a case whose annotator skipped it)."""
    points = []
    for group, z in enumerate((HIP, KNEE, ANKLE)):
        if group == 1 and not knee:
            continue
        for j in range(3):
            points.append((1, 3 * group + j + 1, [z + (4 + i) * j, 60.0 + 5 * j, 70.0], None))
    return _case(f"leg_{i}", [900, 150, 150], [1.5, 1.5, 1.5], points, {1: ([0, 40, 40], [900, 110, 110])})


def _fingerprint(cases: List[dict]) -> dict:
    return {"version": 1, "source_stamp": "x", "summary": summarize(cases, {}), "cases": cases}


def test_groups_follow_the_scan_and_leave_the_shafts_out() -> None:
    channels = [{"structure": 1, "poi": p} for p in range(1, 10)]
    shapes = np.full((3, 9, 3), np.nan)
    for n in range(3):
        for k in range(9):
            shapes[n, k] = [(HIP, KNEE, ANKLE)[k // 3] + 5.0 * (k % 3) + n, 60.0, 70.0]
    fovs = plan_fields_of_view(shapes, channels, np.array([900.0, 150, 150]), np.array([192.0, 144, 144]),
                               np.array([20.0, 20, 20]))
    assert [[c["poi"] for c in f["channels"]] for f in fovs] == [[1, 2, 3], [4, 5, 6], [7, 8, 9]]
    assert [f["name"] for f in fovs] == ["fov1", "fov2", "fov3"]
    # extent: the 95th percentile box (10 mm along z, 0 across) plus the 20 mm margin on both sides
    np.testing.assert_allclose(fovs[0]["extent_mm"], [50.0, 40.0, 40.0])
    # a patch of 400 mm holds hip and knee (350 + 10 mm apart, + 2 x 20 mm margin), not the ankle as well
    fovs = plan_fields_of_view(shapes, channels, np.array([900.0, 150, 150]), np.array([400.0, 144, 144]),
                               np.array([20.0, 20, 20]))
    assert [[c["poi"] for c in f["channels"]] for f in fovs] == [[1, 2, 3, 4, 5, 6], [7, 8, 9]]
    # a scan that fits the patch has no fields of view
    assert plan_fields_of_view(shapes, channels, np.array([900.0, 150, 150]), np.array([960.0, 160, 160]),
                               np.array([20.0, 20, 20])) == []


def test_long_scan_block_has_fields_of_view_and_a_coarse_pass_and_each_field_its_own_block() -> None:
    fp = _fingerprint([_leg(i) for i in range(4)] + [_leg(4, knee=False)])
    config = _config([1.5, 1.5, 1.5], [128, 96, 96])  # 192 mm of a 900 mm scan
    assert "fields_of_view" not in poi_block(fp, config, (0, 1, 2), {}, [], {})  # not asked for (3d_lowres)
    block = poi_block(fp, config, (0, 1, 2), {}, [], {}, coarse_pass_spacing=[7.5, 7.5, 7.5])
    assert block["coarse_configuration"] == COARSE_CONFIGURATION
    assert block["coarse_spacing"] == [7.5, 7.5, 7.5]
    # each field of view: its POIs' 95th-percentile box plus, on both sides, the heatmap's 3 sigma and one voxel
    # of the coarse pass; the hip's three POIs lie 2 x (4 + i) mm apart along z (at most 16 mm over these cases)
    sigma = block["heatmap_sigma_mm"]
    hip_z = np.percentile([2 * (4 + i) for i in range(5)], 95)
    assert block["fields_of_view"][0]["extent_mm"][0] == pytest.approx(hip_z + 2 * (3 * sigma + 7.5), abs=1e-3)
    plan = PoiPlan.from_block(block)
    assert [f.channels for f in plan.fields_of_view] == [((1, 1), (1, 2), (1, 3)), ((1, 4), (1, 5), (1, 6)),
                                                        ((1, 7), (1, 8), (1, 9))]
    assert plan.fields_of_view[1].plans_name("poiPlans") == "poiPlans_fov2"
    knee = block["fields_of_view"][1]
    fov_block = poi_block(fp, config, (0, 1, 2), {}, [], {}, field_of_view=knee)
    fov_plan = PoiPlan.from_block(fov_block)
    assert [(c["structure"], c["poi"]) for c in fov_block["poi_channels"]] == [(1, 4), (1, 5), (1, 6)]
    assert fov_plan.field_of_view == plan.fields_of_view[1] and fov_plan.centred_crops
    assert fov_block["crop_size_mm"] == knee["extent_mm"] and "fields_of_view" not in fov_block
    # a configuration whose patch shows the whole scan plans none
    assert "fields_of_view" not in poi_block(fp, _config([8.0, 1.5, 1.5], [128, 112, 112]), (0, 1, 2), {}, [], {},
                                             coarse_pass_spacing=[8.0, 8.0, 8.0])


def test_coarse_spacing_grows_as_nnunet_grows_3d_lowres() -> None:
    # axes more than twice as fine as the coarsest grow alone, 3% a step; otherwise every axis does
    np.testing.assert_allclose(next_coarse_spacing(np.array([6.0, 1.0, 1.5])), [6.0, 1.03, 1.545])
    np.testing.assert_allclose(next_coarse_spacing(np.array([2.0, 1.0, 1.0])), [2.06, 1.03, 1.03])


def test_the_coarse_pass_is_the_finest_spacing_whose_planned_patch_shows_the_whole_scan() -> None:
    asked = []

    def plan_at(spacing: np.ndarray, shape: tuple) -> dict:
        """A planner whose memory allows 128 voxels along z and 32 across."""
        asked.append((spacing.copy(), shape))
        return {"spacing": list(spacing), "patch_size": [min(shape[0], 128), min(shape[1], 32), min(shape[2], 32)]}

    config = plan_coarse_configuration(plan_at, [1.5, 1.5, 1.5], np.array([900.0, 150.0, 150.0]))
    # 900 mm in 128 voxels needs 7.03 mm, 150 mm in 32 needs 4.69: isotropic growth from 1.5 mm, 3% a step,
    # first passes 7.03 after k = 53 steps (1.5 * 1.03^52 = 6.98, 1.5 * 1.03^53 = 7.19), where the scan is
    # ceil(900 / 7.19) = 126 by ceil(150 / 7.19) = 21 voxels
    expected = 1.5 * 1.03 ** 53
    np.testing.assert_allclose(config["spacing"], [expected] * 3, rtol=1e-9)
    assert config["patch_size"] == [126, 21, 21] and config["batch_dice"] is False
    assert len(asked) == 54 and asked[0][1] == (600, 100, 100)


def test_a_field_of_view_crop_is_centred_on_its_pois() -> None:
    block = {"crop_mode": "whole_image",
             "poi_channels": [{"structure": 1, "poi": 4, "name": "a"}, {"structure": 1, "poi": 5, "name": "b"},
                              {"structure": 1, "poi": 6, "name": "c"}]}
    layout = ChannelLayout.from_channels(block["crop_mode"], block["poi_channels"], {"labels": {"background": 0,
                                                                                               "left": 1, "right": 2}})
    # three POIs, two close together: the crop is centred on the middle of their box (54, 12, 16), which the
    # field of view was planned around, not on their mean (the first two weigh twice)
    slots = CaseSlots(np.array([[50.0, 10.0, 12.0], [50.0, 10.0, 12.0], [58.0, 14.0, 20.0]]))
    ds = InMemoryDataset({"c": slots}, (120, 32, 32))
    loader = PoiDataLoader(ds, 1, (16, 16, 16), (16, 16, 16), label_manager(), layout, {"c": slots}, True,
                           spacing=(1.0, 1.0, 1.0), centre_shift=(0.0, 0.0, 0.0))
    batch = loader.generate_train_batch()
    # channel 0 of the image holds each voxel's own z: the crop's centre voxel (8 of 16) is at the POIs' mean z 54
    centre = batch["data"][0, :3, 8, 8, 8].numpy()
    np.testing.assert_allclose(centre, [54.0, 12.0, 16.0])
    np.testing.assert_allclose(batch["keypoints"][0].numpy(), [[4.0, 6.0, 4.0], [4.0, 6.0, 4.0], [12.0, 10.0, 12.0]])
    assert batch["channel_valid"][0].tolist() == [True, True, True]


def _space(origin_z: float, bbox_z: int, size_z: int) -> PreprocessedSpace:
    """A raw 1 x 2 x 3 mm image (identity direction) cropped along z from ``bbox_z``, not resampled."""
    raw = ImageGeometry(origin=(-5.0, 10.0, origin_z), spacing=(3.0, 2.0, 1.0), direction=np.eye(3), size=(20, 16, 100))
    shape = (size_z, 16, 20)
    return PreprocessedSpace(raw, (0, 1, 2), ((bbox_z, bbox_z + size_z), (0, 16), (0, 20)), shape, shape)


FOVS = [FieldOfView("fov1", ((1, 1), (1, 2)), (40.0, 20.0, 20.0)), FieldOfView("fov2", ((1, 3),), (20.0, 20, 20))]


def test_the_coarse_pass_places_a_field_of_view_in_the_fine_grid() -> None:
    coarse_space, fine_space = _space(0.0, 30, 60), _space(0.0, 10, 90)  # the two crops start 20 voxels apart
    coarse = DecodedPoints(np.array([1, 1, 1, 2]), np.array([1, 2, 1, 7]),
                           np.array([[5.0, 3.0, 4.0], [9.0, 5.0, 8.0], [5.0, 3.0, 4.0], [0.0, 0.0, 0.0]]), np.ones(4))
    centre = field_of_view_centre(coarse, coarse_space, FOVS[0], fine_space)
    np.testing.assert_allclose(centre, [27.0, 4.0, 6.0])  # the box's middle (7, 4, 6), 20 voxels further along z
    assert field_of_view_centre(coarse, coarse_space, FOVS[1], fine_space) is None


class _FieldModel:
    def __init__(self, points: DecodedPoints):
        self.points, self.centres = points, []

    def predict_field_of_view(self, data, space, centre):
        self.centres.append(np.asarray(centre))
        return self.points


def test_fields_of_view_merge_and_a_missed_one_is_reported() -> None:
    space = _space(0.0, 0, 100)
    first = _FieldModel(DecodedPoints(np.array([1, 1]), np.array([1, 2]), np.array([[1.0, 2, 3], [4, 5, 6]]),
                                      np.array([0.9, 0.8])))
    second = _FieldModel(DecodedPoints(np.array([1]), np.array([3]), np.array([[7.0, 8, 9]]), np.array([0.7])))
    models = LongScanModels(coarse=None, fields=[(FOVS[0], first), (FOVS[1], second)])
    coarse = DecodedPoints(np.array([1]), np.array([2]), np.array([[50.0, 6.0, 7.0]]), np.array([0.5]))
    points, missing = merged_points(models, coarse, space, np.zeros((1, 100, 16, 20)), space)
    assert missing == ["fov2"] and not second.centres
    np.testing.assert_allclose(first.centres[0], [50.0, 6.0, 7.0])
    assert list(zip(points.structures, points.pois)) == [(1, 1), (1, 2)]
    assert [(d.structure, d.poi, d.reason) for d in points.dropped] == [(1, 3, FIELD_OF_VIEW_NOT_FOUND)]
    assert "field of view not found" in points.report()


def test_fov_option_names_what_there_is(monkeypatch: pytest.MonkeyPatch) -> None:
    from poi_nnunet.cli import train
    from poi_nnunet.distributed import FoldRequest
    from poi_nnunet.errors import PoiNnunetError

    fp = _fingerprint([_leg(i) for i in range(4)])
    block = poi_block(fp, _config([1.5, 1.5, 1.5], [128, 96, 96]), (0, 1, 2), {}, [], {},
                      coarse_pass_spacing=[7.5, 7.5, 7.5])
    plans = {"configurations": {"3d_fullres": {"poi": block}}}
    monkeypatch.setattr("poi_nnunet.trainer_factory.read_plans", lambda *a: (plans, {}))
    request = FoldRequest("600", "3d_fullres", "coarse_refine", 0, "poiPlans", "cpu")
    every = train.field_of_view_requests(request, "all")
    assert [(r.configuration, r.plans, r.trainer) for r in every] == [
        (COARSE_CONFIGURATION, "poiPlans", "heatmap"), ("3d_fullres", "poiPlans_fov1", "coarse_refine"),
        ("3d_fullres", "poiPlans_fov2", "coarse_refine"), ("3d_fullres", "poiPlans_fov3", "coarse_refine")]
    with pytest.raises(PoiNnunetError, match="there are: fov1, fov2, fov3"):
        train.field_of_view_requests(request, "knee")
    with pytest.raises(PoiNnunetError, match="does not predict per field of view"):
        train.field_of_view_requests(FoldRequest("600", "3d_fullres", "heatmap", 0, "poiPlans", "cpu"), "all")
    del block["fields_of_view"]
    with pytest.raises(PoiNnunetError, match="has no fields of view"):
        train.field_of_view_requests(request, "all")

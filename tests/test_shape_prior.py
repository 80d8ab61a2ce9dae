"""The shape prior (issue 10): the Procrustes mean and spread of the training POIs, planned per structure
group into the plans and read back through the typed plan. The mean keeps the cases' mean orientation and
the spread is measured after translation and scale alone. References: the generating shapes, scipy's
Procrustes disparity, and spreads worked out by hand."""
from __future__ import annotations

from typing import List

import numpy as np
import pytest
from scipy.spatial import procrustes
from scipy.spatial.transform import Rotation

from planners.poi_plan import POI_BLOCK_VERSION, poi_block
from poi_nnunet.plan import STRUCTURE_MODE, WHOLE_IMAGE, PoiPlan
from poi_nnunet.shape_prior import procrustes_mean, scale_shift_fit
from tests.test_plan_rules import _case, _config, _fingerprint

BASE = np.array([[0.0, 0.0, 0.0], [40.0, 5.0, -3.0], [12.0, 35.0, 4.0], [-8.0, 20.0, 30.0],
                 [25.0, -15.0, 18.0], [5.0, 10.0, -22.0]])


def _moved(shape: np.ndarray, seed: int, turned: bool = False) -> np.ndarray:
    """``shape`` scaled (0.7-1.4) and moved at random (and, ``turned``, turned at random)."""
    rng = np.random.default_rng(seed)
    rotation = Rotation.random(random_state=seed).as_matrix() if turned else np.eye(3)
    return rng.uniform(0.7, 1.4) * shape @ rotation.T + rng.normal(scale=50.0, size=3)


def _scale_shift_residual(source: np.ndarray, target: np.ndarray) -> float:
    """Largest residual (mm) of ``source`` fitted onto ``target`` by translation and scale: 0 where they
    are one shape in one orientation."""
    return float(np.abs(scale_shift_fit(source, target).apply(source) - target).max())


def test_procrustes_mean_of_scaled_and_moved_shapes_is_the_shape_with_no_spread() -> None:
    shapes = np.stack([_moved(BASE, seed) for seed in range(8)])
    shapes[2, 1] = np.nan  # cases missing a POI are aligned on the others
    shapes[5, 4] = np.nan
    mean, spread, count = procrustes_mean(shapes)
    assert _scale_shift_residual(BASE, mean) < 1e-9  # the shape, in its orientation
    np.testing.assert_allclose(spread, 0.0, atol=1e-9)
    assert count.tolist() == [8, 7, 8, 8, 7, 8]
    np.testing.assert_allclose(mean.mean(0), 0.0, atol=1e-9)  # centred


def test_procrustes_mean_of_freely_turned_shapes_is_still_the_shape() -> None:
    """Turned at random in 3D: the similarity analysis still finds the shape (scipy's disparity), and the
    rotations, kept out of the fit, are spread."""
    shapes = np.stack([_moved(BASE, seed, turned=True) for seed in range(8)])
    mean, spread, _ = procrustes_mean(shapes)
    assert procrustes(BASE, mean)[2] < 1e-20  # scipy: standardised squared distance after the best similarity
    assert spread.min() > 1.0


def _turned_2d(shape: np.ndarray, degrees: float) -> np.ndarray:
    angle = np.deg2rad(degrees)
    return shape @ np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]).T


PENTAGON_2D = np.array([[-20.0, -10.0], [15.0, -12.0], [18.0, 14.0], [-16.0, 11.0], [2.0, 25.0]])


@pytest.mark.parametrize("angles", [(0.0, 10.0, 20.0, 30.0, 40.0), (-25.0, -12.5, 0.0, 12.5, 25.0)])
def test_procrustes_mean_is_in_the_mean_orientation_and_the_spread_holds_the_turns(angles) -> None:
    """Rigid 2D cases turned by ``angles``: the mean is the shape turned by the angles' mean (20 and 0
    degrees). Fitting a case turned by ``t`` from it by translation and scale gives scale ``cos t`` and the
    residual ``|x| |sin t|`` for a POI ``x`` from the centroid, so the spread is ``|x| * sqrt(mean sin^2 t)``."""
    centred = PENTAGON_2D - PENTAGON_2D.mean(0)
    shapes = np.stack([_turned_2d(centred, a) + (40.0 + 3 * i, -7.0 * i) for i, a in enumerate(angles)])
    mean, spread, _ = procrustes_mean(shapes)
    turn = float(np.mean(angles))
    np.testing.assert_allclose(mean, _turned_2d(centred, turn), atol=1e-9)  # the first case's scale
    relative = np.deg2rad(np.asarray(angles) - turn)
    np.testing.assert_allclose(spread, np.linalg.norm(centred, axis=1) * np.sqrt(np.mean(np.sin(relative) ** 2)),
                               rtol=1e-9)


def test_procrustes_spread_of_one_wobbling_point_matches_the_hand_computed_residuals() -> None:
    """A 100 mm square with a centre POI that sits 1 mm left in one case and 1 mm right in the other. By
    symmetry the mean is the square with its centre; fitting a case onto it moves the case by 1/5 mm (the
    centroid's shift; rotation 0, scale 1 - O(1e-5)), so the centre's residual is 4/5 mm and each corner's
    1/5 mm in both cases."""
    square = np.array([[-50.0, -50.0], [-50.0, 50.0], [50.0, 50.0], [50.0, -50.0], [0.0, 0.0]])
    left, right = square.copy(), square.copy()
    left[4, 0], right[4, 0] = -1.0, 1.0
    mean, spread, _ = procrustes_mean(np.stack([left, right + (7.0, -3.0)]))
    np.testing.assert_allclose(spread, [0.2, 0.2, 0.2, 0.2, 0.8], rtol=1e-3)
    _, _, disparity = procrustes(square, mean)
    assert disparity < 1e-12


def _whole_image_cases(n: int) -> List[dict]:
    """Six POIs of structure 0, each case a similarity transform of BASE inside a 300 mm field of view."""
    cases = []
    for i in range(n):
        points = _moved(BASE, i) * 0.5 + 150.0 - _moved(BASE, i).mean(0) * 0.5
        cases.append(_case(f"c{i}", [300, 300, 300], [1.0, 1.0, 1.0],
                           [(0, k + 1, p.tolist(), None) for k, p in enumerate(points)],
                           {0: ([0, 0, 0], [300, 300, 300])}))
    return cases


def test_whole_image_plan_of_one_structure_has_one_group_with_the_shape_and_the_sigma_floor_as_spread() -> None:
    block = poi_block(_fingerprint(_whole_image_cases(6)), _config([1.0, 1.0, 1.0], [64, 64, 64]), (0, 1, 2), {}, [], {})
    assert block["crop_mode"] == WHOLE_IMAGE and block["version"] == POI_BLOCK_VERSION
    prior = PoiPlan.from_block(block).shape_prior
    assert prior is not None and len(prior.groups) == 1
    group = prior.group_for(0)  # the structure label of a landmark-only dataset
    assert group.channels == (0, 1, 2, 3, 4, 5) and group.spacing_mm == (1.0, 1.0, 1.0)
    _, _, disparity = procrustes(BASE, group.mean)
    assert disparity < 1e-6  # up to the 0.01 mm rounding of the block (about 1e-7 on this ~20 mm shape)
    assert _scale_shift_residual(BASE, group.mean) < 0.01  # and in BASE's orientation
    assert group.spread_mm == pytest.approx([block["heatmap_sigma_mm"]] * 6, abs=0.01)  # a rigid shape: the floor
    assert all(round(v, 2) == v for row in block["shape_prior"]["groups"][0]["mean_mm"] for v in row)


def _vertebra_cases(n: int, offset_of_21_2: float = 0.0) -> List[dict]:
    """Three vertebrae along z with POIs 1-4 each; case ``i`` shifts POI 3 by ``(-1)^i`` mm along x."""
    local = np.array([[0.0, 10.0, 0.0], [0.0, -10.0, 0.0], [6.0, 0.0, 12.0], [-6.0, 0.0, -12.0]])
    cases = []
    for i in range(n):
        points, structures = [], {}
        for k, label in enumerate((20, 21, 22)):
            centre = np.array([30.0 + 30 * k, 40.0, 40.0])
            structures[label] = ((centre - 12).tolist(), (centre + 12).tolist())
            for poi, p in enumerate(local, start=1):
                p = p + centre + (np.array([0.0, 0.0, (-1.0) ** i]) if poi == 3 else 0.0)
                if label == 21 and poi == 2:
                    p = p + (offset_of_21_2 if i == 0 else 0.0)
                points.append((label, poi, p.tolist(), 0.5))
        cases.append(_case(f"spine_{i}", [120, 80, 80], [1.0, 1.0, 1.0], points, structures))
    return cases


def test_structure_mode_plans_one_group_per_structure_without_flagged_points() -> None:
    """POI 3 wobbles +-1 mm: its residuals are at most 1 mm, below the sigma floor (about 4 mm), so every
    spread is the floor. Case 0's POI (21, 2) lies 52 mm off; flagged by the cleaning, it must not widen the
    prior (unflagged, the fit spreads it over every POI of the structure: all above the floor)."""
    cases = _vertebra_cases(4, offset_of_21_2=30.0)
    flagged = [{"case": "spine_0", "structure": 21, "poi": 2}]
    block = poi_block(_fingerprint(cases), _config([1.0, 1.0, 1.0], [64, 64, 64]), (0, 1, 2), {}, flagged, {})
    assert block["crop_mode"] == STRUCTURE_MODE
    prior = PoiPlan.from_block(block).shape_prior
    assert [g.structure for g in prior.groups] == [20, 21, 22]
    sigma = block["heatmap_sigma_mm"]
    for label in (20, 21, 22):
        group = prior.group_for(label)
        assert group.channels == (0, 1, 2, 3)
        assert group.spread_mm == pytest.approx([sigma] * 4, abs=0.01)
    unflagged = PoiPlan.from_block(poi_block(_fingerprint(cases), _config([1.0, 1.0, 1.0], [64, 64, 64]),
                                             (0, 1, 2), {}, [], {})).shape_prior
    assert min(unflagged.group_for(21).spread_mm) > sigma + 1.0  # what the cleaning keeps out


def test_plans_without_a_shape_prior_still_load_and_have_none() -> None:
    """A version-2 block (planned before the prior) loads; decoding then goes by the heatmaps alone (the
    decoding tests without ``shape_prior`` are that behaviour). A version-3 block's prior (planned for the
    rotating fit, no ``fit`` mark) loads as none too, so those plans decode as they did."""
    block = poi_block(_fingerprint(_whole_image_cases(3)), _config([1.0, 1.0, 1.0], [64, 64, 64]), (0, 1, 2), {}, [], {})
    old = {k: v for k, v in block.items() if k != "shape_prior"}
    old["version"] = 2
    assert PoiPlan.from_block(old).shape_prior is None
    assert block["shape_prior"]["fit"] == "translation_scale"
    assert PoiPlan.from_block(block).shape_prior is not None
    rotating = {**block, "version": 3, "shape_prior": {k: v for k, v in block["shape_prior"].items() if k != "fit"}}
    assert PoiPlan.from_block(rotating).shape_prior is None


def test_whole_image_plan_has_a_group_per_structure_that_holds_its_shape_however_the_structures_lie() -> None:
    """Two structures (labels 1 and 2) with BASE's first and last four POIs, each moved on its own: per
    structure the shape is rigid (spread at the floor), while one group of all eight would not be."""
    cases = []
    for i in range(6):
        first = _moved(BASE[:4], i) * 0.5 + 80.0
        second = _moved(BASE[2:], i + 7) * 0.5 + 200.0 + 10.0 * i  # placed independently of the first
        cases.append(_case(f"c{i}", [300, 300, 300], [1.0, 1.0, 1.0],
                           [(1, k + 1, p.tolist(), None) for k, p in enumerate(first)]
                           + [(2, k + 5, p.tolist(), None) for k, p in enumerate(second)],
                           {1: ([0, 0, 0], [150, 150, 150]), 2: ([150, 150, 150], [300, 300, 300])}))
    block = poi_block(_fingerprint(cases), _config([1.0, 1.0, 1.0], [64, 64, 64]), (0, 1, 2), {}, [], {})
    assert block["crop_mode"] == WHOLE_IMAGE
    prior = PoiPlan.from_block(block).shape_prior
    assert [g.structure for g in prior.groups] == [1, 2]
    assert prior.group_for(1).channels == (0, 1, 2, 3) and prior.group_for(2).channels == (4, 5, 6, 7)
    for group, shape in ((prior.group_for(1), BASE[:4]), (prior.group_for(2), BASE[2:])):
        assert procrustes(shape, group.mean)[2] < 1e-6
        assert group.spread_mm == pytest.approx([block["heatmap_sigma_mm"]] * 4, abs=0.01)


def _turned_cases(angles) -> List[dict]:
    """BASE turned about the z axis by each of ``angles`` (degrees), one landmark-only case each."""
    cases = []
    for i, degrees in enumerate(angles):
        points = BASE @ Rotation.from_euler("z", degrees, degrees=True).as_matrix().T + 150.0
        cases.append(_case(f"t{i}", [300, 300, 300], [1.0, 1.0, 1.0],
                           [(0, k + 1, p.tolist(), None) for k, p in enumerate(points)],
                           {0: ([0, 0, 0], [300, 300, 300])}))
    return cases


def test_planned_prior_is_in_the_mean_orientation_and_spreads_with_the_rotation_range() -> None:
    """Training cases turned about z within +-25 degrees (mean 0) and within 5-25 degrees (mean 15): the planned
    mean is BASE turned by the mean angle (nothing left after translation and scale), and the spread grows
    with the range of the turns (+-5 degrees: the sigma floor everywhere; +-25: above it for the POIs far
    from the axis)."""
    config = _config([1.0, 1.0, 1.0], [64, 64, 64])

    def planned(angles):
        block = poi_block(_fingerprint(_turned_cases(angles)), config, (0, 1, 2), {}, [], {})
        return PoiPlan.from_block(block).shape_prior.group_for(0), block["heatmap_sigma_mm"]

    for angles, mean_angle in (((-25.0, -10.0, 0.0, 10.0, 25.0), 0.0), ((5.0, 10.0, 15.0, 20.0, 25.0), 15.0)):
        group, _ = planned(angles)
        expected = BASE @ Rotation.from_euler("z", mean_angle, degrees=True).as_matrix().T
        assert _scale_shift_residual(expected, group.mean) < 0.02  # the block's 0.01 mm rounding
        assert _scale_shift_residual(BASE, group.mean) > 1.0 or mean_angle == 0.0
    narrow, sigma = planned((-5.0, -2.5, 0.0, 2.5, 5.0))
    wide, _ = planned((-25.0, -12.5, 0.0, 12.5, 25.0))
    assert narrow.spread_mm == pytest.approx([sigma] * 6, abs=0.01)
    assert max(wide.spread_mm) > sigma + 1.0
    assert all(w >= n for w, n in zip(wide.spread_mm, narrow.spread_mm))


def test_no_prior_is_planned_where_the_pois_keep_no_configuration() -> None:
    """Landmark-only (structure 0): two rigid triples placed independently of each other over a 300 mm
    field of view, so the six POIs together have no shape to speak of (spread near the shape's size)."""
    rng = np.random.default_rng(3)
    cases = []
    for i in range(8):
        first = BASE[:3] * 0.5 + rng.uniform(20.0, 280.0, size=3)
        second = BASE[3:] * 0.5 + rng.uniform(20.0, 280.0, size=3)
        cases.append(_case(f"c{i}", [300, 300, 300], [1.0, 1.0, 1.0],
                           [(0, k + 1, p.tolist(), None) for k, p in enumerate(np.concatenate([first, second]))],
                           {0: ([0, 0, 0], [300, 300, 300])}))
    block = poi_block(_fingerprint(cases), _config([1.0, 1.0, 1.0], [64, 64, 64]), (0, 1, 2), {}, [], {})
    assert PoiPlan.from_block(block).shape_prior is None
    # the same POIs moved together (one rigid shape of six) do get a prior
    together = [_case(f"c{i}", [300, 300, 300], [1.0, 1.0, 1.0],
                      [(0, k + 1, (p * 0.5 + 150.0).tolist(), None) for k, p in enumerate(_moved(BASE, i) - _moved(BASE, i).mean(0))],
                      {0: ([0, 0, 0], [300, 300, 300])}) for i in range(8)]
    block = poi_block(_fingerprint(together), _config([1.0, 1.0, 1.0], [64, 64, 64]), (0, 1, 2), {}, [], {})
    assert PoiPlan.from_block(block).shape_prior is not None


def _landmark_case(name: str, points: np.ndarray) -> dict:
    """One landmark-only case (structure 0, POI k + 1 at ``points[k]``) in a 300 mm field of view."""
    return _case(name, [300, 300, 300], [1.0, 1.0, 1.0], [(0, k + 1, p.tolist(), None) for k, p in enumerate(points)],
                 {0: ([0, 0, 0], [300, 300, 300])})


def test_landmark_only_plan_discovers_the_rigid_groups_and_plans_a_prior_for_each() -> None:
    """Structure 0 throughout: BASE's first four POIs and its last four (a second rigid shape) each moved
    on its own to a random place of the field of view. The whole configuration holds no shape, each quadruple
    does (pairwise distances within one: CV 0; across: far above the cut): two groups, channels 0-3 and
    4-7, each its shape with the sigma floor as spread. The same eight POIs moved together: one group."""
    rng = np.random.default_rng(5)
    cases = [_landmark_case(f"c{i}", np.concatenate([BASE[:4] * 0.5 + rng.uniform(30.0, 270.0, size=3),
                                                     BASE[2:] * 0.5 + rng.uniform(30.0, 270.0, size=3)]))
             for i in range(8)]
    block = poi_block(_fingerprint(cases), _config([1.0, 1.0, 1.0], [64, 64, 64]), (0, 1, 2), {}, [], {})
    assert block["crop_mode"] == WHOLE_IMAGE
    prior = PoiPlan.from_block(block).shape_prior
    assert [g.channels for g in prior.groups] == [(0, 1, 2, 3), (4, 5, 6, 7)]
    assert [g.structure for g in prior.groups] == [0, 0]
    for group, shape in zip(prior.groups, (BASE[:4], BASE[2:])):
        assert _scale_shift_residual(shape, group.mean) < 0.02  # the block's 0.01 mm rounding
        assert group.spread_mm == pytest.approx([block["heatmap_sigma_mm"]] * 4, abs=0.01)
    together = [_landmark_case(f"c{i}", np.concatenate([BASE[:4], BASE[2:] + (60.0, 0.0, 0.0)]) * 0.5
                               + rng.uniform(60.0, 240.0, size=3)) for i in range(8)]
    block = poi_block(_fingerprint(together), _config([1.0, 1.0, 1.0], [64, 64, 64]), (0, 1, 2), {}, [], {})
    assert [g.channels for g in PoiPlan.from_block(block).shape_prior.groups] == [tuple(range(8))]


def test_rigid_groups_of_a_scaled_shape_and_of_shapes_placed_freely() -> None:
    """By hand: a shape scaled by 0.8, 1.0 and 1.2 has distance CV 0.163 for every pair (std/mean of 0.8,
    1, 1.2), below the cut: one group. Two rigid triangles (2D) whose offset alternates between (0, 0) and
    (0, 60) mm: every cross pair's distance varies far more: two groups; a lone POI is left out."""
    from poi_nnunet.shape_groups import distance_variation, rigid_groups

    triangle = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 8.0]])
    scaled = np.stack([s * triangle + 5.0 for s in (0.8, 1.0, 1.2)])
    np.testing.assert_allclose(distance_variation(scaled)[~np.eye(3, dtype=bool)], np.sqrt(2 / 3) * 0.2, atol=1e-12)
    assert rigid_groups(scaled, min_size=3) == [[0, 1, 2]]
    offsets = [(0.0, 0.0), (0.0, 60.0), (0.0, 0.0), (0.0, 60.0)]
    pairs = np.stack([np.concatenate([triangle, triangle + (40.0, 0.0) + o, [[60.0, 20.0 + 150.0 * k]]])
                      for k, o in enumerate(offsets)])
    assert rigid_groups(pairs, min_size=3) == [[0, 1, 2], [3, 4, 5]]

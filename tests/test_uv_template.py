"""uv templates (issue 11, section 1): the per-structure mean shape planned into the ``poi`` block, its uv
frame, and its block round trip. References: the generating shape and similarities (compared through
skimage's own similarity estimate), and box coordinates worked out by hand."""
from __future__ import annotations

import json
from typing import List

import numpy as np
import pytest
from scipy.spatial.transform import Rotation
from skimage.transform import SimilarityTransform

from planners.poi_plan import POI_BLOCK_VERSION, poi_block
from poi_nnunet.plan import PoiPlan
from poi_nnunet.uv import UvTemplate, UvTemplates
from tests.test_plan_rules import _case, _config, _fingerprint

SHAPE_2D = np.array([[-20.0, -10.0], [15.0, -12.0], [18.0, 14.0], [-16.0, 11.0], [2.0, 25.0], [30.0, 2.0],
                     [-5.0, -22.0]])
SHAPE_3D = np.array([[0.0, 0.0, 0.0], [40.0, 5.0, -3.0], [12.0, 35.0, 4.0], [-8.0, 20.0, 30.0],
                     [25.0, -15.0, 18.0], [5.0, 10.0, -22.0], [-20.0, -12.0, 6.0]])
NOISE_MM = 0.05


def _turn_2d(degrees: float) -> np.ndarray:
    a = np.deg2rad(degrees)
    return np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])


def _copies(shape: np.ndarray, n: int, seed: int) -> List[np.ndarray]:
    """``n`` copies of ``shape``, each turned about a mean turn (2D: 30 degrees +- 20, angles symmetric so
    their mean is 30; 3D: small turns about 30 degrees about z), scaled 0.7-1.4, shifted, with noise."""
    rng = np.random.default_rng(seed)
    dim = shape.shape[1]
    out = []
    offsets = np.linspace(-20.0, 20.0, n)
    for i in range(n):
        if dim == 2:
            rotation = _turn_2d(30.0 + offsets[i])
        else:
            wobble = Rotation.from_rotvec(np.deg2rad(offsets[i]) * np.array([1.0, -0.5, 0.3]) / 1.18)
            rotation = (Rotation.from_euler("z", 30.0, degrees=True) * wobble).as_matrix()
        moved = rng.uniform(0.7, 1.4) * shape @ rotation.T + rng.uniform(50, 150, size=dim)
        out.append(moved + rng.normal(scale=NOISE_MM, size=shape.shape))
    return out


def _structure_cases(copies: List[np.ndarray], label: int = 3, extra_structure_0: bool = False) -> List[dict]:
    """Cases carrying ``copies`` as POIs 1.. of structure ``label`` (grid mm in raw axes)."""
    dim = copies[0].shape[1]
    cases = []
    for i, points in enumerate(copies):
        pts = [(label, k + 1, p.tolist(), 0.1) for k, p in enumerate(points)]
        structures = {label: (points.min(0) - 2, points.max(0) + 2)}
        if extra_structure_0:
            pts += [(0, 100 + k, (points[k] + 5.0).tolist(), None) for k in range(dim + 2)]
            structures[0] = ([0.0] * dim, [300.0] * dim)
        cases.append(_case(f"c{i}", [300.0] * dim, [1.0] * dim, pts, structures))
    return cases


def _block(cases: List[dict], dim: int, flagged=(), patch_axes: int = None) -> dict:
    n = patch_axes or dim
    return poi_block(_fingerprint(cases), _config([1.0] * n, [64] * n), (0, 1, 2), {}, list(flagged), {})


@pytest.mark.parametrize("shape", [SHAPE_2D, SHAPE_3D], ids=["2d", "3d"])
def test_template_of_similar_noisy_copies_is_the_shape_in_the_mean_orientation(shape: np.ndarray) -> None:
    """12 copies, each a known similarity of the shape plus 0.05 mm noise: the planned template is the
    shape up to a similarity (skimage's estimate fits it to within the noise), and that similarity turns
    by the copies' mean turn (30 degrees in the plane of the first two axes)."""
    dim = shape.shape[1]
    block = _block(_structure_cases(_copies(shape, 12, seed=dim)), dim)
    assert block["version"] == POI_BLOCK_VERSION
    templates = PoiPlan.from_block(block).uv_templates
    assert templates is not None and templates.structures == (3,)
    template = templates.for_structure(3)
    assert template.pois == tuple(range(1, len(shape) + 1)) and template.dim == dim
    fit = SimilarityTransform.from_estimate(shape, template.points_mm)
    assert fit
    residual = np.linalg.norm(fit(shape) - template.points_mm, axis=1)
    assert residual.max() < 3 * NOISE_MM
    rotation = fit.params[:dim, :dim] / fit.scale
    reference = _turn_2d(30.0) if dim == 2 else Rotation.from_euler("z", 30.0, degrees=True).as_matrix()
    angle = np.rad2deg(np.arccos(np.clip((np.trace(rotation @ reference.T) - (dim - 2)) / 2, -1, 1)))
    assert angle < 1.0


def test_no_template_for_landmark_only_structures_too_few_pois_or_cases() -> None:
    copies = _copies(SHAPE_2D, 6, seed=1)
    # structure 0 (landmark-only POIs) never gets a template, structure 3 does
    block = _block(_structure_cases(copies, extra_structure_0=True), 2)
    assert PoiPlan.from_block(block).uv_templates.structures == (3,)
    landmark_only = [_case(f"c{i}", [300.0, 300.0], [1.0, 1.0], [(0, k + 1, p.tolist(), None) for k, p in enumerate(c)],
                           {0: ([0.0, 0.0], [300.0, 300.0])}) for i, c in enumerate(copies)]
    block = _block(landmark_only, 2)
    assert "uv_templates" not in block and PoiPlan.from_block(block).uv_templates is None
    # D POIs (2 in 2D) are too few for a similarity plus a displacement field
    assert "uv_templates" not in _block(_structure_cases([c[:2] for c in copies]), 2)
    # a single case is no mean
    assert "uv_templates" not in _block(_structure_cases(copies[:1]), 2)


def test_a_2d_configuration_of_3d_data_gets_no_templates() -> None:
    cases = _structure_cases(_copies(SHAPE_3D, 6, seed=2))
    assert "uv_templates" in _block(cases, 3)
    assert "uv_templates" not in _block(cases, 3, patch_axes=2)


def test_cleaned_points_are_left_out_of_the_template() -> None:
    """One case's POI 1 is 40 mm off and flagged: the template equals the one planned without that case's
    POI at all (the flagged point is treated as missing)."""
    copies = _copies(SHAPE_2D, 8, seed=3)
    displaced = [c.copy() for c in copies]
    displaced[2][0] += 40.0
    flagged = [{"case": "c2", "structure": 3, "poi": 1}]
    planned = PoiPlan.from_block(_block(_structure_cases(displaced), 2, flagged)).uv_templates.for_structure(3)
    cases = _structure_cases(copies)
    cases[2]["points"] = [p for p in cases[2]["points"] if p["poi"] != 1]
    reference = PoiPlan.from_block(_block(cases, 2)).uv_templates.for_structure(3)
    np.testing.assert_allclose(planned.points_mm, reference.points_mm, atol=1e-6)


def test_uv_frame_maps_the_box_to_minus_one_one_and_back() -> None:
    """Points spanning 10..30 on axis 0 and -4..16 on axis 1: the box's corners are -1 and 1, its centre 0,
    and from_uv inverts to_uv."""
    template = UvTemplate(5, (7, 8, 9), np.array([[10.0, -4.0], [30.0, 6.0], [20.0, 16.0]]))
    np.testing.assert_allclose(template.to_uv([[10.0, -4.0], [30.0, 16.0], [20.0, 6.0], [25.0, 1.0]]),
                               [[-1, -1], [1, 1], [0, 0], [0.5, -0.5]], atol=1e-12)
    np.testing.assert_allclose(template.uv_of([9, 7, 42]), [[0, 1], [-1, -1], [np.nan, np.nan]], atol=1e-12)
    uv = np.random.default_rng(0).uniform(-1, 1, size=(20, 2))
    np.testing.assert_allclose(template.to_uv(template.from_uv(uv)), uv, atol=1e-12)


def test_a_flat_template_gets_a_box_of_five_percent_of_its_largest_side() -> None:
    """A 3D template whose points all have z = 2 (a flat structure) spans 0 mm in z: its box there is
    5% of the 40 mm largest side, centred, so z = 2 maps to 0 and z = 3 to 1."""
    points = np.array([[2.0, 0.0, 0.0], [2.0, 40.0, 0.0], [2.0, 0.0, 20.0], [2.0, 40.0, 20.0]])
    template = UvTemplate(1, (1, 2, 3, 4), points)
    np.testing.assert_allclose(template.half_extent, [1.0, 20.0, 10.0])
    np.testing.assert_allclose(template.to_uv([[3.0, 20.0, 10.0]]), [[1.0, 0.0, 0.0]], atol=1e-12)


def test_templates_round_trip_through_the_plans_json() -> None:
    rng = np.random.default_rng(4)
    templates = UvTemplates((UvTemplate(21, (1, 2, 3, 4), rng.normal(scale=30, size=(4, 3))),
                             UvTemplate(20, (5, 6, 7, 8), rng.normal(scale=30, size=(4, 3)))))
    back = UvTemplates.from_block(json.loads(json.dumps(templates.to_block())))
    assert back.structures == (20, 21) and back.dim == 3
    for label in (20, 21):
        assert back.for_structure(label).pois == templates.for_structure(label).pois
        np.testing.assert_allclose(back.for_structure(label).points_mm, templates.for_structure(label).points_mm,
                                   atol=5e-5)
    assert back.for_structure(22) is None
    assert UvTemplates.from_block(None) is None and UvTemplates.from_block({"templates": []}) is None

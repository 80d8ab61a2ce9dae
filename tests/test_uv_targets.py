"""uv(w) target maps (issue 11, section 1): each voxel of a structure gets the normalised template coordinate
of its correspondent, in 2D and 3D, and ``poi_plan_and_preprocess`` writes them. References: template uvs
and inverse affine maps worked out by hand in the tests, and scipy's Delaunay hull for where the map is
defined."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, Tuple

import numpy as np
import pytest
import SimpleITK as sitk
from scipy.spatial import ConvexHull, Delaunay

from poi_nnunet.cli.plan_and_preprocess import main
from poi_nnunet.geometry import ImageGeometry, PreprocessedSpace
from poi_nnunet.plan import PoiPlan
from poi_nnunet.pois import Poi, PoiSet
from poi_nnunet.preprocessing import PreprocessedPois, load_preprocessed_pois
from poi_nnunet.preprocessing.preprocessor import preprocessed_uv_map
from poi_nnunet.preprocessing.uv_files import load_uv_map, preprocessed_uv_file
from poi_nnunet.raw_dataset_writer import CaseData, DatasetWriter
from poi_nnunet.uv import UvTemplate, UvTemplates, uv_target_map
from poi_nnunet.uv.targets import structure_uv

TEMPLATE_2D = np.array([[0.0, 0.0], [30.0, -4.0], [34.0, 22.0], [6.0, 28.0], [16.0, 12.0], [24.0, 5.0]])
TEMPLATE_3D = np.array([[0.0, 0.0, 0.0], [22.0, -3.0, 2.0], [4.0, 20.0, -2.0], [2.0, 3.0, 18.0],
                        [20.0, 18.0, 16.0], [10.0, 8.0, 6.0], [14.0, 4.0, 12.0]])


def _by_hand_uv(template_points: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Normalised coordinate over the template's bounding box: -1 at its minimum, 1 at its maximum."""
    lo, hi = template_points.min(0), template_points.max(0)
    return 2 * (np.asarray(points) - lo) / (hi - lo) - 1


def _templates(points: np.ndarray, label: int = 1) -> UvTemplates:
    return UvTemplates((UvTemplate(label, tuple(range(1, len(points) + 1)), points),))


def _case_points(voxels: np.ndarray, label: int = 1) -> Dict[Tuple[int, int], np.ndarray]:
    return {(label, i + 1): v for i, v in enumerate(voxels)}


@pytest.mark.parametrize("template_points", [TEMPLATE_2D, TEMPLATE_3D], ids=["2d", "3d"])
def test_the_map_at_each_poi_is_that_pois_template_uv(template_points: np.ndarray) -> None:
    """A case that is the template turned, scaled, shifted and deformed non-rigidly, its POIs rounded to
    voxel centres (anisotropic spacing): the map read at each POI's voxel is the POI's template uv."""
    dim = template_points.shape[1]
    rng = np.random.default_rng(dim)
    spacing = np.array([0.8, 1.3, 1.1][:dim])
    turn, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
    turn *= np.sign(np.linalg.det(turn))
    case_mm = 1.2 * template_points @ turn.T + 40.0 + rng.normal(scale=2.0, size=template_points.shape)
    voxels = np.round(case_mm / spacing).astype(int)
    voxels += 5 - voxels.min(0)  # a shift by whole voxels: a translation of the case
    labels = np.zeros(tuple(voxels.max(0) + 5), dtype=np.int16)
    labels[tuple(slice(int(a) - 2, int(b) + 3) for a, b in zip(voxels.min(0), voxels.max(0)))] = 1
    uv = uv_target_map(labels, _case_points(voxels), spacing, _templates(template_points))
    assert uv.shape == (dim,) + labels.shape and uv.dtype == np.float32
    at_pois = uv[(slice(None),) + tuple(voxels.T)].T
    np.testing.assert_allclose(at_pois, _by_hand_uv(template_points, template_points), atol=1e-3)


def _affine(dim: int) -> Tuple[np.ndarray, np.ndarray]:
    """A sheared, anisotropically scaled and turned affine map (mm -> mm): ``x = A t + b``."""
    if dim == 2:
        return np.array([[1.3, 0.4], [-0.2, 0.9]]), np.array([30.0, 25.0])
    return np.array([[1.2, 0.3, 0.0], [-0.1, 0.8, 0.25], [0.2, 0.0, 1.1]]), np.array([12.0, 14.0, 10.0])


@pytest.mark.parametrize("template_points", [TEMPLATE_2D, TEMPLATE_3D], ids=["2d", "3d"])
def test_an_affine_warped_case_maps_to_the_inverse_affine_inside_the_hull_and_nan_elsewhere(template_points) -> None:
    """The case's POIs are an affine image ``A t + b`` of the template's (not a similarity: shear and
    anisotropic scale), at continuous voxel positions. Inside the POIs' hull the map is the template uv of
    ``A^-1 (x - b)``, exactly (linear interpolation of an affine displacement); outside the hull, on a
    second label without a template and on the background it is NaN."""
    dim = template_points.shape[1]
    a, b = _affine(dim)
    spacing = np.array([0.9, 1.1, 1.0][:dim])
    case_mm = template_points @ a.T + b
    shape = tuple(int(n) for n in np.ceil(case_mm.max(0) / spacing) + 6)
    labels = np.ones(shape, dtype=np.int16)  # the structure reaches beyond the hull everywhere
    labels[(0,) * dim] = 0  # background
    hole = tuple(np.round(case_mm[-1] / spacing).astype(int))  # inside the hull, but another structure
    labels[hole] = 2
    uv = uv_target_map(labels, _case_points(case_mm / spacing), spacing, _templates(template_points))

    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).reshape(-1, dim)
    x_mm = grid * spacing
    expected = _by_hand_uv(template_points, np.linalg.solve(a, (x_mm - b).T).T)
    got = uv.reshape(dim, -1).T
    centre = case_mm.mean(0)
    hull = Delaunay(case_mm)
    inside = hull.find_simplex(centre + (x_mm - centre) / 0.98) >= 0  # clearly inside (2% margin)
    outside = hull.find_simplex(centre + (x_mm - centre) / 1.02) < 0  # clearly outside
    structure = labels.reshape(-1) == 1
    assert (inside & structure).sum() > 100 and (outside & structure).sum() > 100
    np.testing.assert_allclose(got[inside & structure], expected[inside & structure], atol=1e-5)
    assert np.isnan(got[outside]).all()
    assert np.isnan(uv[(slice(None),) + hole]).all() and np.isnan(uv[(slice(None),) + (0,) * dim]).all()


def _outside_facets(case_mm: np.ndarray, distance: float) -> np.ndarray:
    """``(F, D)``: the centroid of each hull facet of ``case_mm`` pushed ``distance`` mm out along its normal
    (scipy's ConvexHull: ``normal . x + offset <= 0`` inside, normals outward)."""
    hull = ConvexHull(case_mm)
    centres = case_mm[hull.simplices].mean(1)
    return centres + distance * hull.equations[:, :-1]


@pytest.mark.parametrize("template_points", [TEMPLATE_2D, TEMPLATE_3D], ids=["2d", "3d"])
def test_hull_margin_extends_the_map_just_outside_the_pois_and_no_further(template_points) -> None:
    """``--add-points`` reads a point's uv with a margin around the POIs' hull. (a) The case is the template
    turned, scaled by 1.3 and shifted: no residual displacement, so a position 0.3 mm outside any hull
    facet has the template uv of the inverse similarity, by hand, with a 1 mm margin; without a margin it
    is NaN, and 3 mm out it stays NaN. (b) An affine case: just outside the hull (1e-4 mm) the value
    continues the inside one, the inverse affine."""
    dim = template_points.shape[1]
    rng = np.random.default_rng(4)
    turn, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
    turn[:, 0] *= np.sign(np.linalg.det(turn))  # a rotation, no reflection, in 2D as in 3D
    case_mm = 1.3 * template_points @ turn.T + 20.0
    template = _templates(template_points).templates[0]
    near, far = _outside_facets(case_mm, 0.3), _outside_facets(case_mm, 3.0)
    by_hand = _by_hand_uv(template_points, ((near - 20.0) / 1.3) @ turn)
    np.testing.assert_allclose(structure_uv(near, case_mm, template_points, template, hull_margin_mm=1.0),
                               by_hand, atol=1e-6)
    assert np.isnan(structure_uv(near, case_mm, template_points, template)).all()
    assert np.isnan(structure_uv(far, case_mm, template_points, template, hull_margin_mm=1.0)).all()

    a, b = _affine(dim)
    affine_mm = template_points @ a.T + b
    edge = _outside_facets(affine_mm, 1e-4)
    expected = _by_hand_uv(template_points, np.linalg.solve(a, (edge - b).T).T)
    np.testing.assert_allclose(structure_uv(edge, affine_mm, template_points, template, hull_margin_mm=1.0),
                               expected, atol=1e-4)


def test_two_structures_share_one_map_each_with_its_own_template() -> None:
    """Structure 1 is its template, structure 2 its own template shifted by 50 voxels (spacing 1): each
    region holds its own template's uv, in one 2-channel map."""
    other = TEMPLATE_2D[::-1] * 0.5 + 3.0
    templates = UvTemplates((UvTemplate(1, tuple(range(1, 7)), TEMPLATE_2D),
                             UvTemplate(2, tuple(range(11, 17)), other)))
    labels = np.zeros((100, 45), dtype=np.int16)
    labels[:45] = 1
    labels[50:] = 2
    points = {**_case_points(TEMPLATE_2D), **{(2, 11 + i): p + (50.0, 0.0) for i, p in enumerate(other)}}
    uv = uv_target_map(labels, points, (1.0, 1.0), templates)
    assert uv.shape == (2, 100, 45)
    np.testing.assert_allclose(uv[:, 16, 12], _by_hand_uv(TEMPLATE_2D, [[16.0, 12.0]])[0], atol=1e-6)
    np.testing.assert_allclose(uv[:, 50 + 12, 6], _by_hand_uv(other, [[12.0, 6.0]])[0], atol=1e-6)


def test_too_few_or_flat_pois_leave_the_structure_undefined() -> None:
    """Structure 1 with only D POIs in the case, structure 2 with four collinear ones, structure 3 fine:
    only structure 3's voxels get values."""
    line = np.array([[0.0, 0.0], [10.0, 10.0], [20.0, 20.0], [30.0, 30.0]])
    templates = UvTemplates((UvTemplate(1, (1, 2, 3), TEMPLATE_2D[:3]), UvTemplate(2, (4, 5, 6, 7), line),
                             UvTemplate(3, tuple(range(1, 7)), TEMPLATE_2D)))
    labels = np.zeros((120, 40), dtype=np.int16)
    labels[:40], labels[40:80], labels[80:] = 1, 2, 3
    points = {(1, 1): (1.0, 1.0), (1, 2): (20.0, 3.0),  # POI 3 missing in this case
              **{(2, 4 + i): p + (40.0, 0.0) for i, p in enumerate(line)},
              **{(3, i + 1): p + (80.0, 4.0) for i, p in enumerate(TEMPLATE_2D)}}
    uv = uv_target_map(labels, points, (1.0, 1.0), templates)
    assert np.isnan(uv[:, :80]).all()
    assert np.isfinite(uv[:, 80:]).any(axis=0).sum() > 300


# ------------------------------------------------------------------------------------- preprocessed cases
def _preprocessed_case(dim: int, template_points: np.ndarray) -> Tuple[np.ndarray, PreprocessedPois, np.ndarray]:
    """A preprocessed case (nnU-Net's 3-axis layout; 2D: ``(1, Y, X)``) downsampled 2x from 0.5 mm raw voxels
    (1 mm preprocessed), whose POIs are the template's under :func:`_affine`; its POI 5 is 3 mm off and
    invalid (cleaned). Returns the label array, the POIs and the preprocessed mm of each voxel ``(n, D)``
    of the map's axes."""
    a, b = _affine(dim)
    case_mm = template_points @ a.T + b
    shape = tuple(int(n) for n in np.ceil(case_mm.max(0)) + 4)
    full = (1,) * (3 - dim) + shape
    raw = ImageGeometry(np.zeros(dim), np.full(dim, 0.5), np.eye(dim), tuple(2 * n for n in shape[::-1]))
    space = PreprocessedSpace(raw, (0, 1, 2), [(0, 2 * n if k >= 3 - dim else 1) for k, n in enumerate(full)],
                              tuple(2 * n if k >= 3 - dim else 1 for k, n in enumerate(full)), full)
    assert np.allclose(space.spacing[3 - dim:], 1.0)
    positions = np.zeros((len(case_mm), 3))
    positions[:, 3 - dim:] = case_mm
    positions[4, 3 - dim:] += 3.0
    valid = np.ones(len(case_mm), bool)
    valid[4] = False
    n = len(case_mm)
    pois = PreprocessedPois("c", space, np.ones(n, int), np.arange(1, n + 1), positions, np.zeros((n, dim)), valid,
                            [[] if v else ["far_from_surface"] for v in valid])
    seg = np.ones(full, dtype=np.int16)
    grid = np.stack(np.meshgrid(*[np.arange(k) for k in shape], indexing="ij"), -1).reshape(-1, dim)
    return seg, pois, grid.astype(float)


@pytest.mark.parametrize("template_points", [TEMPLATE_2D, TEMPLATE_3D], ids=["2d", "3d"])
def test_preprocessed_map_keeps_the_leading_axis_and_ignores_cleaned_points(template_points) -> None:
    """The preprocessor's map of a case: shape ``(D, *seg.shape)`` (a 2D case's leading axis of 1 kept), and
    inside the valid POIs' hull the inverse affine of those POIs, so the cleaned POI, 3 mm off, pulled nothing."""
    dim = template_points.shape[1]
    seg, pois, x_mm = _preprocessed_case(dim, template_points)
    uv = preprocessed_uv_map(seg, pois, _templates(template_points))
    assert uv.shape == (dim,) + seg.shape
    a, b = _affine(dim)
    case_mm = (template_points @ a.T + b)[pois.valid]
    centre = case_mm.mean(0)
    inside = Delaunay(case_mm).find_simplex(centre + (x_mm - centre) / 0.98) >= 0
    expected = _by_hand_uv(template_points, np.linalg.solve(a, (x_mm - b).T).T)
    np.testing.assert_allclose(uv.reshape(dim, -1).T[inside], expected[inside], atol=1e-5)


# ---------------------------------------------------------------------------------------------- end to end
CORNERS = {2: [(2, 2), (2, 13), (11, 13), (11, 2), (6, 8)],
           3: [(2, 2, 2), (2, 2, 9), (2, 9, 2), (7, 2, 2), (7, 9, 9), (4, 5, 6)]}


def _box_case(case: str, dim: int, seed: int, labelled: bool) -> CaseData:
    """A small image (spacing 1, nothing to crop or resample) with one box structure whose POIs sit at its
    corners (jittered by whole voxels per case), so every POI is on a voxel centre after preprocessing."""
    rng = np.random.default_rng(seed)
    shape = (14, 16) if dim == 2 else (10, 12, 12)
    image = sitk.GetImageFromArray(rng.uniform(1, 2, size=shape).astype(np.float32))
    corners = np.array(CORNERS[dim]) + rng.integers(-1, 2, size=(len(CORNERS[dim]), dim))
    label = None
    if labelled:
        arr = np.zeros(shape, dtype=np.uint8)
        arr[tuple(slice(1, n - 1) for n in shape)] = 1
        label = sitk.GetImageFromArray(arr)
        label.CopyInformation(image)
    structure = 1 if labelled else 0
    pois = [Poi(structure, i + 1, tuple(image.TransformContinuousIndexToPhysicalPoint(
        [float(v) for v in c[::-1]]))) for i, c in enumerate(corners)]
    return CaseData(case, [image], label, PoiSet(pois))


def _write_box_dataset(root: Path, name: str, dim: int, labelled: bool) -> None:
    labels = {"background": 0, "box": 1} if labelled else {"background": 0}
    names = {i + 1: f"p{i + 1}" for i in range(len(CORNERS[dim]))}
    with DatasetWriter(root / name, {"0": "CT"}, labels, pois=names) as writer:
        for i in range(3):
            writer.add_case(_box_case(f"box_{i:03d}", dim, i, labelled))


def test_plan_and_preprocess_writes_uv_maps_beside_the_data_and_none_for_landmark_only(nnunet_folders) -> None:
    """A 2D dataset (nnU-Net's array ``(1, Y, X)``) and the same without masks: the first gets a template and
    ``(2, 1, Y, X)`` float16 maps holding each POI's template uv at its (voxel-centre) position; the
    landmark-only one gets neither."""
    raw, pre = nnunet_folders["raw"], nnunet_folders["preprocessed"]
    _write_box_dataset(raw, "Dataset981_UvBoxes", 2, labelled=True)
    _write_box_dataset(raw, "Dataset982_UvLandmarks", 2, labelled=False)
    for dataset in ("981", "982"):
        assert main(["-d", dataset, "-c", "2d", "-np", "1", "-npfp", "1", "--no_pbar"]) == 0

    configuration = json.loads((pre / "Dataset981_UvBoxes" / "poiPlans.json").read_text())["configurations"]["2d"]
    templates = PoiPlan.from_block(configuration["poi"]).uv_templates
    assert templates is not None and templates.structures == (1,) and templates.dim == 2
    template = templates.for_structure(1)
    data_folder = pre / "Dataset981_UvBoxes" / configuration["data_identifier"]
    for i in range(3):
        case = f"box_{i:03d}"
        uv = load_uv_map(preprocessed_uv_file(data_folder, case))
        pois = load_preprocessed_pois(data_folder, case)
        assert uv.dtype == np.float16 and uv.shape == (2,) + tuple(pois.space.shape_after_resampling)
        assert uv.shape[1] == 1
        voxels = np.round(pois.positions).astype(int)
        np.testing.assert_allclose(pois.positions, voxels, atol=1e-4)  # spacing 1: POIs stay on voxel centres
        at_pois = uv[(slice(None),) + tuple(voxels.T)].T.astype(np.float64)
        reference = _by_hand_uv(template.points_mm, template.points_mm[template.index(pois.pois)])
        np.testing.assert_allclose(at_pois, reference, atol=1e-3)

    configuration = json.loads((pre / "Dataset982_UvLandmarks" / "poiPlans.json").read_text())["configurations"]["2d"]
    assert "uv_templates" not in configuration["poi"]
    assert not (pre / "Dataset982_UvLandmarks" / (configuration["data_identifier"] + "_uv")).exists()

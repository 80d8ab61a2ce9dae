"""The synthetic polygons phantom: POIs are the vertices of what is drawn, layout rules, both variants, CLI."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage
from scipy.spatial import ConvexHull
from skimage.draw import polygon

from dataset_conversion.synthetic_polygons import DEFAULT_SHAPE, make_polygon_case, write_polygon_dataset
from poi_nnunet.cli.convert import main as poi_convert
from poi_nnunet.pois import read_poi_file
from poi_nnunet.raw_dataset import RawDataset
from poi_nnunet.raw_format_checks import validate_raw_dataset

VERTICES = {1: 3, 2: 4, 3: 5}          # label -> vertex count
POI_IDS = {1: [1, 2, 3], 2: [4, 5, 6, 7], 3: [8, 9, 10, 11, 12]}
PIXEL = 0.8


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> RawDataset:
    target = tmp_path_factory.mktemp("polygons") / "Dataset503_SyntheticPolygons"
    write_polygon_dataset(target, num_cases=6, num_test=1, seed=7)
    return RawDataset.open(target)


def _read_case(ds: RawDataset, case: str, split: str = "Tr"):
    """Image, label array and {label: (n, 2) continuous ITK index (x, y)} of one written case."""
    image = sitk.ReadImage(str(ds.image_files(case, split)[0]))
    label = sitk.GetArrayFromImage(sitk.ReadImage(str(ds.path / f"labels{split}" / f"{case}.nii.gz")))
    by_label: dict = {}
    for p in sorted(read_poi_file(ds.poi_file(case, split)), key=lambda p: p.poi):
        index = image.TransformPhysicalPointToContinuousIndex([float(c) for c in p.position])
        by_label.setdefault(p.structure, []).append((p.poi, index))
    assert {s: [i for i, _ in v] for s, v in by_label.items()} == POI_IDS
    return image, label, {s: np.array([x for _, x in v]) for s, v in by_label.items()}


def _pixel_corner_hull(mask: np.ndarray) -> np.ndarray:
    """Convex hull (counter-clockwise in (x, y)) of the corners of the foreground pixels, in ITK index (x, y)."""
    rc = np.argwhere(mask).astype(np.float64)
    pts = (rc[:, None] + np.array([[-0.5, -0.5], [-0.5, 0.5], [0.5, -0.5], [0.5, 0.5]])[None]).reshape(-1, 2)[:, ::-1]
    return pts[ConvexHull(pts).vertices]


def _hull_corners(hull: np.ndarray, window: float = 4.0, min_turn: float = 25.0) -> np.ndarray:
    """Where the hull turns: hull vertices grouped along the outline (gaps > ``window`` px split groups),
    a group turning by more than ``min_turn`` degrees being a corner; its mean position is returned.
    A rasterised straight side only wobbles by a few degrees, a polygon corner turns by 50 degrees or more."""
    edges = np.roll(hull, -1, axis=0) - hull
    angle = np.degrees(np.arctan2(edges[:, 1], edges[:, 0]))
    turn = (angle - np.roll(angle, 1) + 180) % 360 - 180      # turning at each hull vertex
    start = (np.linalg.norm(edges, axis=1).argmax() + 1) % len(hull)  # after the longest edge: not inside a corner
    groups = [[]]
    for j in range(len(hull)):
        i = (start + j) % len(hull)
        if groups[-1] and np.linalg.norm(hull[i] - hull[groups[-1][-1]]) > window:
            groups.append([])
        groups[-1].append(i)
    return np.array([hull[g].mean(axis=0) for g in groups if abs(turn[g].sum()) > min_turn])


def _distance_to_outline(points: np.ndarray, closed: np.ndarray) -> np.ndarray:
    a, b = closed, np.roll(closed, -1, axis=0)
    ab = b - a
    t = np.clip(((points[:, None] - a[None]) * ab[None]).sum(-1) / (ab ** 2).sum(-1)[None], 0, 1)
    return np.linalg.norm(points[:, None] - (a[None] + t[..., None] * ab[None]), axis=2).min(axis=1)


def test_pois_are_the_vertices_of_the_drawn_polygons(written: RawDataset):
    """An independent fill of the polygon through the written POIs (pixel centres inside, skimage) is the
    written label everywhere except pixels the outline passes within 0.3 px of and the vertices' own pixels:
    for a straight edge, 'covers >= 50 %' and 'centre inside' agree, so the POIs are the drawn vertices."""
    for case in written.case_ids("Tr"):
        _, label, points = _read_case(written, case)
        centres = np.argwhere(np.ones(label.shape, dtype=bool))[:, ::-1].astype(np.float64)   # (x, y)
        for s, xy in points.items():
            expected = np.zeros(label.shape, dtype=bool)
            expected[polygon(xy[:, 1], xy[:, 0], label.shape)] = True
            near_edge = _distance_to_outline(centres, xy).reshape(label.shape) < 0.3
            near_vertex = np.linalg.norm(centres[:, None] - xy[None], axis=2).min(axis=1).reshape(label.shape) < 1.5
            away = ~(near_edge | near_vertex)
            np.testing.assert_array_equal((label == s)[away], expected[away], err_msg=f"{case} label {s}")


def test_each_poi_is_a_corner_of_its_label_region(written: RawDataset):
    """From the label mask alone: its convex hull has 3/4/5 corners, each matched by exactly one POI of
    the polygon, and every POI lies on the hull's outline (the pixel-corner hull is the polygon grown by
    up to ~0.7 px; at a sharp tip the pixels covered >= 50 % stop short of the vertex, hence 1.3 px)."""
    for case in written.case_ids("Tr"):
        _, label, points = _read_case(written, case)
        for s, xy in points.items():
            hull = _pixel_corner_hull(label == s)
            corners = _hull_corners(hull)
            assert len(corners) == VERTICES[s] == len(xy), f"{case} label {s}: {len(corners)} hull corners"
            distance = np.linalg.norm(xy[:, None] - corners[None], axis=2)
            assert sorted(distance.argmin(axis=1)) == list(range(len(corners)))   # one POI per corner
            assert distance.min(axis=1).max() < 4.0
            assert _distance_to_outline(xy, hull).max() < 1.3


def test_vertex_zero_is_on_top_and_the_numbering_is_clockwise_as_displayed(written: RawDataset):
    for case in written.case_ids("Tr"):
        _, _, points = _read_case(written, case)
        for xy in points.values():
            assert xy[:, 1].argmin() == 0                                   # smallest row
            x, y = xy.T
            assert (x * np.roll(y, -1) - np.roll(x, -1) * y).sum() > 0     # clockwise with rows pointing down


def test_polygons_keep_their_distance_from_each_other_and_the_border(written: RawDataset):
    gap_px, border_px = 3.0 / PIXEL, 4.0 / PIXEL
    for case in written.case_ids("Tr"):
        image, label, points = _read_case(written, case)
        size = np.array(image.GetSize(), dtype=np.float64)
        for xy in points.values():   # a convex polygon is inside when its vertices are
            assert (xy >= -0.5 + border_px - 1e-6).all() and (xy <= size - 0.5 - border_px + 1e-6).all()
        for s in points:
            away = ndimage.distance_transform_edt(label != s)
            others = (label > 0) & (label != s)
            assert away[others].min() >= gap_px - 1.5, case   # pixel centres: up to ~0.75 px lost on each side


def test_the_layout_is_not_fixed_and_the_brightness_says_nothing_about_identity():
    xs, brightest = {1: [], 2: [], 3: []}, []
    for seed in range(12):
        case = make_polygon_case("p", seed)
        label, image = sitk.GetArrayFromImage(case.label), sitk.GetArrayFromImage(case.images[0])
        for s in xs:
            xs[s].append(np.argwhere(label == s)[:, 1].mean())
        brightest.append(max(xs, key=lambda s: image[label == s].mean()))
    order = {tuple(np.argsort([xs[s][i] for s in xs])) for i in range(12)}
    assert len(order) >= 3                      # left-to-right order of the three polygons varies
    assert len(set(brightest)) >= 2             # no polygon is always the brightest


def test_dataset_is_valid_with_names_and_a_test_split(written: RawDataset):
    assert validate_raw_dataset(written.path, progress=False) == []
    assert written.labels == {"background": 0, "triangle": 1, "quad": 2, "pentagon": 3}
    assert written.meta["channel_names"] == {"0": "image"}
    assert written.poi_names[1] == "triangle_0" and written.poi_names[7] == "quad_3"
    assert written.poi_names[12] == "pentagon_4" and len(written.poi_names) == 12
    assert "poi_mirror_pairs" not in written.meta and "structure_mirror_pairs" not in written.meta
    assert written.meta["poi_source"]
    assert written.case_ids("Ts") == ["polygons_006"] and written.poi_file("polygons_006", "Ts").is_file()
    assert (written.path / "labelsTs" / "polygons_006.nii.gz").is_file()
    image = sitk.ReadImage(str(written.image_files("polygons_000")[0]))
    assert image.GetSize() == DEFAULT_SHAPE[::-1] and image.GetPixelID() == sitk.sitkFloat32
    np.testing.assert_allclose(image.GetSpacing(), (PIXEL, PIXEL), rtol=1e-6)


def test_landmark_only_variant_has_no_labels_and_structure_zero(tmp_path: Path):
    target = write_polygon_dataset(tmp_path / "Dataset504_PolygonsLandmarks", num_cases=2, num_test=1, seed=7,
                                   masks=False)
    assert validate_raw_dataset(target, progress=False) == []
    ds = RawDataset.open(target)
    assert ds.labels == {"background": 0}
    assert not (target / "labelsTr").exists() and not (target / "labelsTs").exists()
    for case, split in (("polygons_000", "Tr"), ("polygons_002", "Ts")):
        points = read_poi_file(ds.poi_file(case, split))
        assert len(points) == 12 and set(points.structures()) == {0}
    masked, bare = make_polygon_case("p", 11), make_polygon_case("p", 11, masks=False)
    assert bare.label is None
    np.testing.assert_array_equal(sitk.GetArrayFromImage(masked.images[0]), sitk.GetArrayFromImage(bare.images[0]))
    assert {p.poi: p.position for p in masked.pois} == {p.poi: p.position for p in bare.pois}


def test_same_seed_gives_the_same_case_and_another_seed_a_different_one():
    a, b, c = make_polygon_case("p", 3), make_polygon_case("p", 3), make_polygon_case("p", 4)
    for x, y in ((a.images[0], b.images[0]), (a.label, b.label)):
        np.testing.assert_array_equal(sitk.GetArrayFromImage(x), sitk.GetArrayFromImage(y))
        assert x.GetOrigin() == y.GetOrigin() and x.GetSpacing() == y.GetSpacing()
    assert a.pois.by_key() == b.pois.by_key()
    assert not np.array_equal(sitk.GetArrayFromImage(a.images[0]), sitk.GetArrayFromImage(c.images[0]))
    assert a.pois.by_key() != c.pois.by_key()


def test_poi_convert_synthetic_polygons_help(capsys: pytest.CaptureFixture):
    with pytest.raises(SystemExit) as exit_info:
        poi_convert(["synthetic-polygons", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--landmarks_only" in out and "--cases" in out


@pytest.mark.parametrize("landmarks_only", [False, True])
def test_poi_convert_synthetic_polygons_writes_a_valid_dataset(nnunet_folders: dict, landmarks_only: bool):
    argv = ["synthetic-polygons", "-d", "503", "-n", "SyntheticPolygons", "--cases", "2", "--seed", "1"]
    code = poi_convert(argv + (["--landmarks_only"] if landmarks_only else []))
    target = nnunet_folders["raw"] / "Dataset503_SyntheticPolygons"
    assert code == 0 and validate_raw_dataset(target, progress=False) == []
    ds = RawDataset.open(target)
    assert ds.case_ids() == ["polygons_000", "polygons_001"]
    assert (target / "labelsTr").is_dir() != landmarks_only

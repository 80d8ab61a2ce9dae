"""The synthetic chest X-ray phantom: reproducible, valid, with corresponding landmarks on the outlines."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage
from skimage.draw import polygon

from dataset_conversion.synthetic_xray import STRUCTURES, make_xray_case, write_xray_dataset, xray_model
from poi_nnunet.cli.convert import main as poi_convert
from poi_nnunet.geometry import ImageGeometry
from poi_nnunet.raw_dataset import RawDataset
from poi_nnunet.raw_format_checks import validate_raw_dataset

TINY = (64, 64)


def _by_structure(case) -> dict:
    out: dict = {}
    for p in sorted(case.pois, key=lambda p: p.poi):
        out.setdefault(p.structure, []).append(p.position)
    return {s: np.array(v) for s, v in out.items()}


def test_same_seed_gives_the_same_case_and_another_seed_a_different_one():
    a, b, c = make_xray_case("x", 3, shape=TINY), make_xray_case("x", 3, shape=TINY), make_xray_case("x", 4, shape=TINY)
    for x, y in ((a.images[0], b.images[0]), (a.label, b.label)):
        np.testing.assert_array_equal(sitk.GetArrayFromImage(x), sitk.GetArrayFromImage(y))
    assert a.pois.by_key() == b.pois.by_key()
    assert not np.array_equal(sitk.GetArrayFromImage(a.images[0]), sitk.GetArrayFromImage(c.images[0]))
    assert a.pois.by_key() != c.pois.by_key()


def test_at_least_100_landmarks_with_the_same_keys_in_every_case():
    cases = [make_xray_case("x", seed, shape=TINY) for seed in range(4)]
    keys = [sorted(c.pois.keys()) for c in cases]
    assert len(keys[0]) >= 100
    assert all(k == keys[0] for k in keys)
    assert {s for s, _ in keys[0]} == {1, 2, 3, 4, 5}


def test_landmark_k_is_the_same_place_on_the_outline_in_every_case():
    """Correspondence: with each structure's position and size removed, a landmark's nearest counterpart in
    another case is the landmark with its id (or, where points are dense, its neighbour on the outline)."""
    a, b = _by_structure(make_xray_case("x", 1, shape=TINY)), _by_structure(make_xray_case("x", 2, shape=TINY))
    exact = close = total = 0
    for s in a:
        pa, pb = a[s] - a[s].mean(0), b[s] - b[s].mean(0)
        pa, pb = pa / np.sqrt((pa ** 2).sum(1).mean()), pb / np.sqrt((pb ** 2).sum(1).mean())
        nearest = np.linalg.norm(pa[:, None] - pb[None], axis=2).argmin(axis=1)
        k = np.arange(len(pa))
        steps = np.minimum((nearest - k) % len(k), (k - nearest) % len(k))
        exact, close, total = exact + int((steps == 0).sum()), close + int((steps <= 1).sum()), total + len(k)
    assert exact / total > 0.6 and close / total > 0.95


def test_landmarks_are_equally_spaced_along_each_outline():
    for points in _by_structure(make_xray_case("x", 5, shape=(128, 128))).values():
        steps = np.linalg.norm(np.diff(np.vstack([points, points[:1]]), axis=0), axis=1)
        assert steps.std() / steps.mean() < 0.1


def test_landmarks_lie_on_the_outline_of_their_own_label():
    case = make_xray_case("x", 6, shape=TINY)
    labels = sitk.GetArrayFromImage(case.label)
    geo = ImageGeometry.from_image(case.label)
    assert geo.contains_world(case.pois.positions()).all()
    pixel = float(geo.spacing[0])
    distances = []
    for s, points in _by_structure(case).items():
        mask = labels == s
        boundary = geo.array_to_world(np.argwhere(mask & ~ndimage.binary_erosion(mask)))
        under = labels[tuple(np.rint(geo.world_to_array(points)).astype(int).T)]
        visible = points[under <= s]  # a higher-priority organ may cover part of this outline
        assert len(visible) > 0.8 * len(points)
        distances += list(np.linalg.norm(visible[:, None] - boundary[None], axis=2).min(axis=1) / pixel)
    assert max(distances) <= 2.0
    assert np.median(distances) <= 0.75


def _distance_to_polyline(points: np.ndarray, closed: np.ndarray) -> np.ndarray:
    a, b = closed, np.roll(closed, -1, axis=0)
    ab = b - a
    t = np.clip(((points[:, None] - a[None]) * ab[None]).sum(-1) / (ab ** 2).sum(-1)[None], 0, 1)
    return np.linalg.norm(points[:, None] - (a[None] + t[..., None] * ab[None]), axis=2).min(axis=1)


def test_landmarks_are_on_the_true_outlines_and_the_label_is_their_priority_raster():
    case, model = make_xray_case("x", 9, shape=TINY), xray_model(9, shape=TINY)
    geo = ImageGeometry.from_image(case.label)
    assert geo.same_grid(model.geometry)
    outlines = {s.label: model.outlines[s.name] for s in STRUCTURES}
    for label, points in _by_structure(case).items():
        assert _distance_to_polyline(points, outlines[label]).max() < 1e-6
    expected = np.zeros(TINY, dtype=np.uint8)
    for s in STRUCTURES:  # painted in priority order with an independent polygon fill
        rows, cols = geo.world_to_array(outlines[s.label]).T
        expected[polygon(rows, cols, TINY)] = s.label
    centres = geo.array_to_world(np.argwhere(np.ones(TINY, dtype=bool)))
    near = np.min([_distance_to_polyline(centres, o) for o in outlines.values()], axis=0).reshape(TINY)
    away = near > geo.spacing[0]  # pixels cut by an outline may go either way
    np.testing.assert_array_equal(sitk.GetArrayFromImage(case.label)[away], expected[away])


def test_written_dataset_is_valid_with_mirror_pairs_and_test_split(tmp_path: Path):
    target = write_xray_dataset(tmp_path / "Dataset502_SyntheticXray", num_cases=2, num_test=1, seed=1, shape=TINY)
    assert validate_raw_dataset(target, progress=False) == []
    ds = RawDataset.open(target)
    assert ds.labels == {"background": 0, "lung_right": 1, "lung_left": 2, "heart": 3, "clavicle_right": 4,
                         "clavicle_left": 5}
    assert ds.meta["structure_mirror_pairs"] == [[1, 2], [4, 5]]
    names = ds.poi_names
    for a, b in ds.poi_mirror_pairs:
        assert names[a].replace("right", "left") == names[b]
    assert len(ds.poi_mirror_pairs) == 44 + 23
    assert ds.case_ids("Ts") == ["xray_002"] and ds.poi_file("xray_002", "Ts").is_file()
    image = sitk.ReadImage(str(ds.image_files("xray_000")[0]))
    assert image.GetDimension() == 2 and image.GetSize() == TINY[::-1]


def test_poi_convert_synthetic_xray_writes_a_valid_dataset(nnunet_folders: dict):
    code = poi_convert(["synthetic-xray", "-d", "502", "-n", "SyntheticXray", "--cases", "2", "--shape", "64", "64"])
    target = nnunet_folders["raw"] / "Dataset502_SyntheticXray"
    assert code == 0 and validate_raw_dataset(target, progress=False) == []
    assert RawDataset.open(target).case_ids() == ["xray_000", "xray_001"]


def test_given_spacing_is_kept_and_the_anatomy_scaled_to_fit():
    case = make_xray_case("x", 2, shape=TINY, spacing=3.0)
    geo = ImageGeometry.from_image(case.images[0])
    np.testing.assert_allclose(geo.spacing, (3.0, 3.0))
    labels = sitk.GetArrayFromImage(case.label)
    assert not labels[[0, -1]].any() and not labels[:, [0, -1]].any()
    assert geo.contains_world(case.pois.positions()).all()

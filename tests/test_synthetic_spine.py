"""The synthetic spine phantom: reproducible, valid, and with POIs where the truth says they are."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage
from TPTBox.core.vert_constants import Location

from dataset_conversion.synthetic_spine import DISPLACED_FILE, make_spine_case, spine_model, write_spine_dataset
from poi_nnunet.cli.convert import main as poi_convert
from poi_nnunet.errors import PoiNnunetError
from poi_nnunet.geometry import ImageGeometry
from poi_nnunet.pois import read_poi_file
from poi_nnunet.raw_dataset import RawDataset
from poi_nnunet.raw_format_checks import validate_raw_dataset

TINY = (32, 32, 32)


def _arrays(case):
    return [sitk.GetArrayFromImage(im) for im in case.images] + [sitk.GetArrayFromImage(case.label)]


def _boundary_world(labels: np.ndarray, value: int, geo: ImageGeometry) -> np.ndarray:
    mask = labels == value
    return geo.array_to_world(np.argwhere(mask & ~ndimage.binary_erosion(mask)))


def _bone_world(labels: np.ndarray, geo: ImageGeometry) -> np.ndarray:
    return geo.array_to_world(np.argwhere(labels > 0))


def test_same_seed_gives_the_same_case_and_another_seed_a_different_one():
    (a, moved_a), (b, moved_b) = (make_spine_case("c", 7, shape=TINY, displaced_pois=2) for _ in range(2))
    for x, y in zip(_arrays(a), _arrays(b)):
        np.testing.assert_array_equal(x, y)
    assert a.pois.by_key() == b.pois.by_key() and moved_a == moved_b
    assert ImageGeometry.from_image(a.images[0]).same_grid(ImageGeometry.from_image(b.images[0]), tol=0)

    c, _ = make_spine_case("c", 8, shape=TINY)
    assert not np.array_equal(_arrays(a)[0], _arrays(c)[0])
    assert a.pois.by_key() != c.pois.by_key()


def test_subjects_vary_in_levels_spacing_and_pose_on_a_rotated_grid():
    cases = [make_spine_case("c", seed, shape=TINY)[0] for seed in range(6)]
    geos = [ImageGeometry.from_image(c.images[0]) for c in cases]
    levels = {tuple(np.unique(sitk.GetArrayFromImage(c.label))[1:]) for c in cases}
    assert len(levels) > 1, "the run of vertebrae should start at different levels"
    assert len({tuple(np.round(g.spacing, 3)) for g in geos}) == len(geos)
    assert all(np.ptp(g.spacing) > 0.01 for g in geos), "spacing should be anisotropic"
    for g in geos:
        assert not np.allclose(g.direction, np.eye(3), atol=1e-3)
        np.testing.assert_allclose(g.direction @ g.direction.T, np.eye(3), atol=1e-6)


def test_every_vertebra_carries_at_least_20_pois_inside_the_image_with_tptbox_ids():
    case, _ = make_spine_case("c", 3, shape=TINY)
    labels = sitk.GetArrayFromImage(case.label)
    geo = ImageGeometry.from_image(case.images[0])
    vertebrae = set(np.unique(labels)) - {0}
    assert vertebrae and vertebrae <= set(range(17, 25))
    for v in vertebrae:
        pois = [p for p in case.pois if p.structure == v]
        assert len(pois) >= 20
        for p in pois:
            Location(p.poi)  # raises for an id TPTBox does not know
    assert {p.structure for p in case.pois} == vertebrae
    assert geo.contains_world(case.pois.positions()).all()
    # every POI-bearing vertebra is whole: no bone on the image border
    assert not labels[[0, -1]].any() and not labels[:, [0, -1]].any() and not labels[:, :, [0, -1]].any()
    # sub-voxel positions: the points are not snapped to voxel centres
    frac = np.abs(geo.world_to_index(case.pois.positions()) % 1 - 0.5)
    assert np.mean(frac < 0.45) > 0.5


def test_subregion_channel_marks_exactly_the_bone_with_tptbox_subregions():
    case, _ = make_spine_case("c", 4, shape=TINY)
    sub, labels = sitk.GetArrayFromImage(case.images[1]), sitk.GetArrayFromImage(case.label)
    np.testing.assert_array_equal(sub > 0, labels > 0)
    assert set(np.unique(sub)) - {0} <= set(range(41, 51))
    assert {Location.Vertebra_Corpus.value, Location.Spinosus_Process.value} <= set(np.unique(sub))
    ct = sitk.GetArrayFromImage(case.images[0])
    assert ct.dtype == np.int16
    assert np.median(ct[labels > 0]) > np.median(ct[labels == 0]) + 100, "bone must be brighter than soft tissue"


def test_pois_are_on_the_analytic_surface_and_the_label_is_its_raster():
    case, _ = make_spine_case("c", 11, shape=TINY, num_vertebrae=2)
    model = spine_model(11, shape=TINY, num_vertebrae=2)
    geo = ImageGeometry.from_image(case.label)
    assert geo.same_grid(model.geometry)
    own = {v.label: v for v in model.vertebrae}
    on_surface = [abs(own[p.structure].sdf_world(np.array(p.position))[0]) < 1e-6 for p in case.pois]
    assert np.mean(on_surface) > 0.9, "only points the raster cannot reach may be moved off the analytic surface"
    labels = sitk.GetArrayFromImage(case.label)
    sdf = model.bone_sdf(geo.array_to_world(np.argwhere(np.ones(labels.shape, dtype=bool)))).reshape(labels.shape)
    clear = np.abs(sdf) > 1e-3  # float32 rasterising may flip voxels whose centre is on the surface
    np.testing.assert_array_equal((sdf < 0)[clear], (labels > 0)[clear])


def test_pois_lie_on_the_bone_surface_and_displaced_ones_well_off_it():
    clean, none_moved = make_spine_case("c", 11, shape=TINY, num_vertebrae=2)
    case, moved = make_spine_case("c", 11, shape=TINY, num_vertebrae=2, displaced_pois=4)
    assert none_moved == [] and len(moved) == 4 and len(set(moved)) == 4
    # displacing changes exactly the reported points and nothing else
    changed = {k for k, p in case.pois.by_key().items() if p.position != clean.pois.by_key()[k].position}
    assert changed == set(moved)

    labels = sitk.GetArrayFromImage(case.label)
    geo = ImageGeometry.from_image(case.images[0])
    diagonal = float(np.linalg.norm(geo.spacing))
    distances = []
    for p in case.pois:
        if p.key in moved:
            continue
        boundary = _boundary_world(labels, p.structure, geo)
        distances.append(np.linalg.norm(boundary - p.position, axis=1).min())
    assert max(distances) <= diagonal
    assert np.median(distances) <= 0.5 * diagonal
    bone = _bone_world(labels, geo)
    for key in moved:
        off = np.linalg.norm(bone - case.pois.by_key()[key].position, axis=1).min()
        assert off > max(3.0, 2 * geo.spacing.max())
    assert geo.contains_world(case.pois.positions()).all()


def test_written_dataset_is_valid_with_tptbox_names_mirror_pairs_and_test_split(tmp_path: Path):
    target = write_spine_dataset(tmp_path / "Dataset501_SyntheticSpine", num_cases=2, num_test=1, seed=5,
                                 displaced_pois=2, shape=TINY)
    assert validate_raw_dataset(target, progress=False) == []
    ds = RawDataset.open(target)
    assert ds.channel_names == {"0": "CT", "1": "noNorm"}
    assert ds.labels["L1"] == 20 and ds.labels["T12"] == 19 and ds.labels["C1"] == 1
    assert ds.label_values() == list(range(25)), "nnU-Net wants consecutive labels"
    assert all(name == Location(i).name for i, name in ds.poi_names.items())
    pairs = {tuple(p) for p in ds.poi_mirror_pairs}
    assert (Location.Muscle_Inserts_Transverse_Process_Left.value,
            Location.Muscle_Inserts_Transverse_Process_Right.value) in pairs
    assert all(Location(a).name.replace("Left", "Right") == Location(b).name for a, b in pairs)
    assert ds.meta["structure_mirror_pairs"] == []
    assert ds.case_ids("Tr") == ["spine_000", "spine_001"] and ds.case_ids("Ts") == ["spine_002"]
    assert ds.poi_file("spine_002", "Ts").is_file() and ds.label_file("spine_002", "Ts").is_file()

    truth = json.loads((target / DISPLACED_FILE).read_text())
    assert sorted(truth) == ["spine_000", "spine_001"], "test cases are never displaced"
    for case_id, keys in truth.items():
        on_disk = read_poi_file(ds.poi_file(case_id)).by_key()
        assert len(keys) == 2 and all(tuple(k) in on_disk for k in keys)


def test_dataset_cases_do_not_depend_on_how_many_are_written(tmp_path: Path):
    small = write_spine_dataset(tmp_path / "Dataset601_A", num_cases=1, seed=2, shape=TINY)
    large = write_spine_dataset(tmp_path / "Dataset602_B", num_cases=2, seed=2, shape=TINY)
    a = read_poi_file(small / "poisTr" / "spine_000.json")
    b = read_poi_file(large / "poisTr" / "spine_000.json")
    assert a.by_key() == b.by_key()


def test_poi_convert_synthetic_spine_writes_a_valid_dataset(nnunet_folders: dict):
    code = poi_convert(["synthetic-spine", "-d", "501", "-n", "SyntheticSpine", "--cases", "1", "--test-cases", "1",
                        "--shape", "32", "32", "32", "--displaced-pois", "2", "--seed", "3"])
    target = nnunet_folders["raw"] / "Dataset501_SyntheticSpine"
    assert code == 0 and validate_raw_dataset(target, progress=False) == []
    assert len(json.loads((target / DISPLACED_FILE).read_text())["spine_000"]) == 2


@pytest.mark.parametrize("options, message", [
    ({"displaced_pois": 10_000}, "displaced_pois"),
    ({"num_vertebrae": 9}, "num_vertebrae"),
    ({"vertebra_range": (20, 30)}, "vertebra_range"),
    ({"shape": (8, 8, 8)}, "shape"),
    ({"spacing": (1.0, -1.0, 1.0)}, "spacing"),
])
def test_impossible_options_are_user_errors_that_say_which(options: dict, message: str):
    with pytest.raises(PoiNnunetError, match=message):
        make_spine_case("c", 0, **{"shape": TINY, **options})


def test_cli_reports_a_bad_shape_without_a_traceback(capsys: pytest.CaptureFixture):
    code = poi_convert(["synthetic-spine", "-d", "503", "-n", "Bad", "--shape", "4", "4", "4"])
    assert code == 2 and "shape" in capsys.readouterr().err


def test_given_spacing_is_kept_and_the_anatomy_scaled_to_fit():
    case, _ = make_spine_case("c", 1, shape=TINY, spacing=(2.0, 2.0, 3.0))
    geo = ImageGeometry.from_image(case.images[0])
    np.testing.assert_allclose(geo.spacing, (2.0, 2.0, 3.0))
    labels = sitk.GetArrayFromImage(case.label)
    assert labels.any() and geo.contains_world(case.pois.positions()).all()
    # the bone stays off the image border: every vertebra is whole
    assert not labels[[0, -1]].any() and not labels[:, [0, -1]].any() and not labels[:, :, [0, -1]].any()

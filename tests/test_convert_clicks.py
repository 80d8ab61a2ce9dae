"""poi_convert clicks: point-annotated (sparse) datasets, simulated from dense labels or from clicked points.

Distances are checked against a brute-force nearest-neighbour search over voxel
centres in mm (scipy's KD-tree), or against hand-counted voxels, never against
the converter's own distance transform.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import pytest
import SimpleITK as sitk
from scipy.spatial import cKDTree

from dataset_conversion import clicks
from poi_nnunet.errors import InvalidInputError
from poi_nnunet.pois import Poi, PoiSet, read_poi_file, write_poi_file
from poi_nnunet.raw_dataset import RawDataset
from poi_nnunet.raw_dataset_writer import CaseData, DatasetWriter
from poi_nnunet.raw_format_checks import validate_raw_dataset

SHAPE = (24, 24, 24)                    # numpy order z, y, x
SPACING = (1.0, 1.5, 2.0)               # ITK order x, y, z (mm)
SPACING_ZYX = np.array(SPACING[::-1])
LABELS = {"background": 0, "box": 1, "ball": 2, "speck": 3}
FLIPPED = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)


def convert(root: Path, *argv: str) -> Path:
    """Run ``poi_convert clicks ARGV -o root`` as the command line would."""
    parser = argparse.ArgumentParser()
    clicks.add_arguments(parser)
    return clicks.run(parser.parse_args([*argv, "-o", str(root)]))


def _image(array: np.ndarray, spacing: Sequence[float] = SPACING, origin=(-10.0, 5.0, 30.0),
           direction: Optional[Sequence[float]] = None) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(tuple(spacing))
    image.SetOrigin(tuple(origin))
    if direction is not None:
        image.SetDirection(tuple(direction))
    return image


def _dense(variant: int) -> np.ndarray:
    """A box (1), a ball of radius 6 mm (2) and a two-voxel speck (3), shifted a little per case."""
    dense = np.zeros(SHAPE, dtype=np.uint8)
    dense[3:11, 3 + variant:13 + variant, 3:15] = 1
    zz, yy, xx = np.meshgrid(*[np.arange(s) for s in SHAPE], indexing="ij")
    centre = (15, 16 - variant, 15)
    mm = (np.stack([zz - centre[0], yy - centre[1], xx - centre[2]], -1) * SPACING_ZYX)
    dense[np.sqrt((mm ** 2).sum(-1)) <= 6.0] = 2
    dense[21, 3, 20:22] = 3
    return dense


def _case(case_id: str, dense: np.ndarray, split: str = "Tr", direction=None,
          spacing: Sequence[float] = SPACING) -> CaseData:
    rng = np.random.default_rng(len(case_id) + int(dense.sum()))
    image = _image((rng.normal(size=dense.shape) + 100 * dense).astype(np.float32), spacing, direction=direction)
    label = _image(dense, spacing, direction=direction)
    points = []
    for value in (1, 2):
        if (dense == value).any():
            centre = np.argwhere(dense == value).mean(0)[::-1]
            points.append(Poi(value, value, image.TransformContinuousIndexToPhysicalPoint(tuple(centre))))
    return CaseData(case_id, [image], label, PoiSet(points), split)


def _write_source(target: Path, cases: List[CaseData], labels: Dict[str, int] = LABELS) -> Path:
    with DatasetWriter(target, {"0": "CT"}, labels, pois={1: "box centre", 2: "ball centre"}) as writer:
        for case in cases:
            writer.add_case(case)
    return target


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("raw")


@pytest.fixture(scope="module")
def source(root) -> Path:
    return _write_source(root / "Dataset700_Dense", [
        _case("c0", _dense(0)), _case("c1", _dense(1), direction=FLIPPED), _case("t0", _dense(2), split="Ts")])


@pytest.fixture(scope="module")
def simulated(root, source) -> Path:
    return convert(root, "--from-dataset", str(source), "-d", "701", "-n", "Clicks")


def _array(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def _clicked_voxels(dataset: Path, case: str) -> List[Tuple[int, Tuple[int, int, int]]]:
    """(class, numpy voxel index) of every click in clicksTr/, mapped by SimpleITK from world mm."""
    image = sitk.ReadImage(str(dataset / "imagesTr" / f"{case}_0000.nii.gz"))
    return [(p.structure, tuple(image.TransformPhysicalPointToIndex(p.position))[::-1])
            for p in read_poi_file(dataset / "clicksTr" / f"{case}.json")]


def _distances_mm(inside: np.ndarray, outside: np.ndarray, spacing_zyx: np.ndarray) -> np.ndarray:
    """Per voxel of ``inside`` (K, 3), the distance in mm to the nearest voxel of ``outside``."""
    return cKDTree(outside * spacing_zyx).query(inside * spacing_zyx)[0]


def _border_distance(mask: np.ndarray, spacing_zyx: np.ndarray) -> Dict[Tuple[int, ...], float]:
    """Distance of every mask voxel to the nearest voxel centre outside it, beyond the image edge included."""
    padded = np.pad(mask, 1)
    inside = np.argwhere(padded)
    d = _distances_mm(inside, np.argwhere(~padded), spacing_zyx)
    return {tuple(int(c) - 1 for c in v): float(x) for v, x in zip(inside, d)}


# ---------------------------------------------------------------------------- simulation: where clicks go
def test_structure_clicks_lie_deep_inside_their_structure(simulated):
    for case in ("c0", "c1"):
        dense = _array(simulated / "labelsTr_reference" / f"{case}.nii.gz")
        by_class: Dict[int, List[Tuple[int, ...]]] = {}
        for value, voxel in _clicked_voxels(simulated, case):
            by_class.setdefault(value, []).append(voxel)
        for value in (1, 2, 3):
            depth = _border_distance(dense == value, SPACING_ZYX)
            required = 0.5 * max(depth.values())
            for voxel in by_class[value]:
                assert dense[voxel] == value, (case, value, voxel)
                assert depth[voxel] >= required - 1e-9, (case, value, voxel, depth[voxel], required)
        assert len(by_class[1]) == len(by_class[2]) == 5  # the default, for structures with room
        assert len(set(by_class[1])) == 5
        assert len(by_class[3]) == 2  # a two-voxel structure has two interior voxels only


def test_background_clicks_stay_away_from_every_structure(simulated):
    for case in ("c0", "c1"):
        dense = _array(simulated / "labelsTr_reference" / f"{case}.nii.gz")
        background = np.array([v for value, v in _clicked_voxels(simulated, case) if value == 0])
        assert len(background) == 10
        assert np.all(dense[tuple(background.T)] == 0)
        assert _distances_mm(background, np.argwhere(dense > 0), SPACING_ZYX).min() >= 5.0 - 1e-9


def test_sparse_labels_are_exactly_the_clicks(simulated):
    for case in ("c0", "c1"):
        sparse = _array(simulated / "labelsTr" / f"{case}.nii.gz")
        expected = np.full(SHAPE, 4)
        for value, voxel in _clicked_voxels(simulated, case):
            expected[voxel] = value
        np.testing.assert_array_equal(sparse, expected)


def test_interior_is_half_the_deepest_distance_on_an_anisotropic_grid(root):
    """A 9x9x9-voxel box at 1 x 1 x 2 mm: the deepest voxel is 5 mm from outside (in-plane), so clicks may go
    where the distance is >= 2.5 mm: 5 voxels per in-plane axis (3 mm and more) and 7 along z (4 mm and more)."""
    dense = np.zeros((13, 13, 13), dtype=np.uint8)
    dense[2:11, 2:11, 2:11] = 1
    src = _write_source(root / "Dataset710_Box", [_case("box", dense, spacing=(1.0, 1.0, 2.0))],
                        {"background": 0, "box": 1})
    out = convert(root, "--from-dataset", str(src), "-d", "711", "-n", "BoxClicks", "--clicks-per-structure", "1000",
                  "--background-clicks", "0")
    clicked = {v for _, v in _clicked_voxels(out, "box")}
    expected = {(z, y, x) for z in range(3, 10) for y in range(4, 9) for x in range(4, 9)}
    assert len(expected) == 175 and clicked == expected


def test_the_same_seed_gives_the_same_files_another_seed_others(root, source, simulated):
    again = convert(root, "--from-dataset", str(source), "-d", "702", "-n", "Again", "--seed", "0")
    other = convert(root, "--from-dataset", str(source), "-d", "703", "-n", "Other", "--seed", "1")
    for case in ("c0", "c1"):
        first = _array(simulated / "labelsTr" / f"{case}.nii.gz")
        np.testing.assert_array_equal(first, _array(again / "labelsTr" / f"{case}.nii.gz"))
        clicks_file = Path("clicksTr") / f"{case}.json"
        assert (simulated / clicks_file).read_text() == (again / clicks_file).read_text()
        assert not np.array_equal(first, _array(other / "labelsTr" / f"{case}.nii.gz"))


def test_a_case_s_clicks_do_not_depend_on_the_other_cases(root, simulated):
    alone = _write_source(root / "Dataset706_Alone", [_case("c1", _dense(1), direction=FLIPPED)])
    out = convert(root, "--from-dataset", str(alone), "-d", "707", "-n", "AloneClicks")
    assert (out / "clicksTr" / "c1.json").read_text() == (simulated / "clicksTr" / "c1.json").read_text()


def test_click_radius_labels_the_voxels_within_r_mm(root):
    """1 x 1.5 x 3 mm voxels, R = 3 mm, hand-counted: in the click's slice 7 voxels along x, 5 on each
    neighbouring row (1.5 mm: x up to 2 voxels), 1 two rows away (3 mm); one voxel in each neighbouring
    slice (3 mm). 21 voxels; the box is deep enough that none is clipped."""
    spacing = (1.0, 1.5, 3.0)
    dense = np.zeros((14, 22, 24), dtype=np.uint8)
    dense[2:12, 3:19, 4:20] = 1
    src = _write_source(root / "Dataset720_Aniso", [_case("a", dense, spacing=spacing)], {"background": 0, "box": 1})
    out = convert(root, "--from-dataset", str(src), "-d", "721", "-n", "Radius", "--clicks-per-structure", "1",
                  "--background-clicks", "0", "--click-radius-mm", "3")
    [(value, centre)] = _clicked_voxels(out, "a")
    offsets = [(0, 0, dx) for dx in range(-3, 4)] + [(0, dy, dx) for dy in (-1, 1) for dx in range(-2, 3)]
    offsets += [(0, -2, 0), (0, 2, 0), (-1, 0, 0), (1, 0, 0)]
    expected = {tuple(int(c + o) for c, o in zip(centre, off)) for off in offsets}
    labelled = {tuple(int(c) for c in v) for v in np.argwhere(_array(out / "labelsTr" / "a.nii.gz") == 1)}
    assert value == 1 and len(expected) == 21 and labelled == expected
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["click_annotation"]["annotated_fraction"] == pytest.approx(21 / dense.size)


def test_a_radius_never_labels_across_a_structure_border(root, source):
    out = convert(root, "--from-dataset", str(source), "-d", "704", "-n", "Brush", "--click-radius-mm", "4")
    for case in ("c0", "c1"):
        sparse = _array(out / "labelsTr" / f"{case}.nii.gz")
        dense = _array(out / "labelsTr_reference" / f"{case}.nii.gz")
        annotated = sparse != 4
        assert annotated.sum() > 2 * 17  # balls, not single voxels
        np.testing.assert_array_equal(sparse[annotated], dense[annotated])


# ---------------------------------------------------------------------------- simulation: the dataset
def test_simulated_dataset_is_valid_for_us_and_for_nnunet(simulated):
    assert validate_raw_dataset(simulated, progress=False) == []
    ds = RawDataset.open(simulated)
    assert ds.labels == {**LABELS, "ignore": 4} and ds.ignore_label == max(ds.label_values())
    assert ds.case_ids("Tr") == ["c0", "c1"] and ds.case_ids("Ts") == ["t0"]
    meta = ds.meta
    assert meta["pois"] == {"1": "box centre", "2": "ball centre"} and meta["numTraining"] == 2

    from nnunetv2.experiment_planning.verify_dataset_integrity import check_cases, verify_labels
    from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_dataset_json
    from nnunetv2.utilities.label_handling.label_handling import LabelManager
    from nnunetv2.utilities.utils import get_filenames_of_train_images_and_targets

    manager = LabelManager(meta["labels"], regions_class_order=None)
    assert manager.has_ignore_label and manager.ignore_label == 4 and manager.all_labels == [0, 1, 2, 3]
    files = get_filenames_of_train_images_and_targets(str(simulated), meta)
    assert sorted(files) == ["c0", "c1"]
    reader = determine_reader_writer_from_dataset_json(meta, files["c0"]["images"][0])
    for case, entry in files.items():
        assert Path(entry["label"]) == simulated / "labelsTr" / f"{case}.nii.gz"
        assert verify_labels(entry["label"], reader, [0, 1, 2, 3, 4])
        assert check_cases(entry["images"], entry["label"], 1, reader)


def test_dense_references_images_and_pois_are_copied_unchanged(simulated, source):
    for case in ("c0", "c1"):
        for copied, original in ((f"labelsTr_reference/{case}.nii.gz", f"labelsTr/{case}.nii.gz"),
                                 (f"imagesTr/{case}_0000.nii.gz", None), (f"poisTr/{case}.json", None)):
            assert (simulated / copied).read_bytes() == (source / (original or copied)).read_bytes()
    for held_out in ("imagesTs/t0_0000.nii.gz", "labelsTs/t0.nii.gz", "poisTs/t0.json"):
        assert (simulated / held_out).read_bytes() == (source / held_out).read_bytes()
    assert not (simulated / "labelsTr_reference" / "t0.nii.gz").exists()

    record = json.loads((simulated / "dataset.json").read_text())["click_annotation"]
    assert record["clicks_per_structure"] == 5 and record["background_clicks"] == 10 and record["seed"] == 0
    assert record["radius_mm"] == 0 and record["dense_references"] == "labelsTr_reference/"
    annotated = sum(int((_array(simulated / "labelsTr" / f"{c}.nii.gz") != 4).sum()) for c in ("c0", "c1"))
    assert record["annotated_fraction"] == pytest.approx(annotated / (2 * np.prod(SHAPE)))


def test_a_sparse_source_is_refused(root, simulated):
    with pytest.raises(InvalidInputError, match="ignore"):
        convert(root, "--from-dataset", str(simulated), "-d", "705", "-n", "Twice")


@pytest.mark.parametrize("ignore_voxels, rejected", [(False, True), (True, False)])
def test_validator_lets_ignore_hide_a_poi_s_structure_only_in_a_sparse_mask(root, ignore_voxels, rejected):
    """A POI on structure 2 where the mask shows no 2: wrong for a dense mask, fine where 'ignore' covers voxels."""
    dense = np.zeros(SHAPE, dtype=np.uint8)
    dense[3:11, 3:13, 3:15] = 1
    if ignore_voxels:
        dense[12:, :, :] = 3
    case = _case("v", dense)
    case.pois = PoiSet([*case.pois.points, Poi(2, 2, case.pois.points[0].position)])
    target = root / f"Dataset74{int(ignore_voxels)}_Ignore"
    with DatasetWriter(target, {"0": "CT"}, {"background": 0, "box": 1, "ball": 2, "ignore": 3},
                       pois={1: "box centre", 2: "ball centre"}, validate=False) as writer:
        writer.add_case(case)
    messages = [p.message for p in validate_raw_dataset(target, progress=False)]
    assert messages == (["structure 2 does not occur in this case's segmentation"] if rejected else [])


# ---------------------------------------------------------------------------- clicked points
def _points_file(path: Path, image: sitk.Image, clicks: Sequence[Tuple[int, Tuple[float, float, float]]]) -> Path:
    """Clicks given as (class, continuous ITK index), written in world mm."""
    counts: Dict[int, int] = {}
    points = []
    for value, index in clicks:
        counts[value] = counts.get(value, 0) + 1
        points.append(Poi(value, counts[value], image.TransformContinuousIndexToPhysicalPoint(index)))
    write_poi_file(path, PoiSet(points))
    return path


@pytest.fixture(scope="module")
def image_folder(root) -> Path:
    folder = root / "plain_images"
    folder.mkdir()
    for case in ("p0", "p1"):
        image = _image(np.zeros((10, 12, 14), dtype=np.int16), direction=FLIPPED)
        sitk.WriteImage(image, str(folder / f"{case}.nii.gz"))
    return folder


def test_clicked_points_become_sparse_labels(root, image_folder):
    points = root / "clicks_a"
    points.mkdir()
    image = sitk.ReadImage(str(image_folder / "p0.nii.gz"))
    _points_file(points / "p0.json", image, [(1, (2.2, 3.0, 4.0)), (3, (10.0, 11.4, 8.6)), (0, (0.0, 0.0, 0.0))])
    _points_file(points / "p1.json", image, [(3, (13.0, 11.0, 9.0))])
    out = convert(root, "--points", str(points), "--images", str(image_folder), "--labels", "liver=1", "kidney=3",
                  "-d", "730", "-n", "Clicked")
    assert validate_raw_dataset(out, progress=False) == []
    ds = RawDataset.open(out)
    assert ds.labels == {"background": 0, "liver": 1, "label_2": 2, "kidney": 3, "ignore": 4}
    expected = np.full((10, 12, 14), 4)
    expected[4, 3, 2], expected[9, 11, 10], expected[0, 0, 0] = 1, 3, 0  # numpy order z, y, x; x rounds to 2, ...
    np.testing.assert_array_equal(_array(out / "labelsTr" / "p0.nii.gz"), expected)
    assert (out / "imagesTr" / "p1_0000.nii.gz").read_bytes() == (image_folder / "p1.nii.gz").read_bytes()
    assert (out / "clicksTr" / "p0.json").read_bytes() == (points / "p0.json").read_bytes()


def test_clicks_on_a_raw_dataset_keep_its_labels_and_pois(root, source):
    """Only background and box are clicked, so the ball POIs name a structure absent from the sparse mask:
    valid, because the ignore label may hide it."""
    points = root / "clicks_b"
    points.mkdir()
    image = sitk.ReadImage(str(source / "imagesTr" / "c0_0000.nii.gz"))
    _points_file(points / "c0.json", image, [(1, (8.0, 8.0, 6.0)), (0, (1.0, 20.0, 20.0))])
    out = convert(root, "--points", str(points), "--images", str(source), "-d", "731", "-n", "OnDataset")
    assert validate_raw_dataset(out, progress=False) == []
    ds = RawDataset.open(out)
    assert ds.labels == {**LABELS, "ignore": 4} and ds.case_ids("Tr") == ["c0"]
    assert (out / "poisTr" / "c0.json").read_bytes() == (source / "poisTr" / "c0.json").read_bytes()
    assert 2 not in np.unique(_array(out / "labelsTr" / "c0.nii.gz"))


def test_unknown_class_and_point_outside_the_image_name_the_file_and_point(root, image_folder):
    points = root / "clicks_bad"
    points.mkdir()
    image = sitk.ReadImage(str(image_folder / "p0.nii.gz"))
    bad = _points_file(points / "p0.json", image, [(1, (2.0, 3.0, 4.0)), (5, (3.0, 3.0, 3.0)), (1, (2.0, 40.0, 4.0))])
    with pytest.raises(InvalidInputError) as err:
        convert(root, "--points", str(points), "--images", str(image_folder), "--labels", "liver=1",
                "-d", "732", "-n", "Bad")
    problems = {(p.file, p.point): p.message for p in err.value.problems}
    assert set(problems) == {(str(bad), "structure 5, poi 1"), (str(bad), "structure 1, poi 2")}
    assert "not a class" in problems[(str(bad), "structure 5, poi 1")]
    assert "outside the image" in problems[(str(bad), "structure 1, poi 2")]
    assert not list(root.glob("Dataset732_*"))

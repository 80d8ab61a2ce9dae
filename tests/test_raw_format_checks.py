"""Bad input gives one clear message per problem, naming the file and point, via `poi_convert validate`."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import List

import numpy as np
import pytest
import SimpleITK as sitk

from poi_nnunet.cli.convert import main as convert_main
from poi_nnunet.errors import InvalidInputError
from poi_nnunet.raw_dataset_writer import DatasetWriter
from poi_nnunet.raw_format_checks import validate_raw_dataset
from tests.factories import tiny_case, write_tiny_dataset, write_verse_ids_dataset


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    return write_tiny_dataset(tmp_path, cases=2, channels=2)


def _messages(path: Path) -> List[str]:
    return [str(p) for p in validate_raw_dataset(path, progress=False)]


def _edit_pois(dataset: Path, case: str, edit) -> Path:
    path = dataset / "poisTr" / f"{case}.json"
    data = json.loads(path.read_text())
    edit(data["points"])
    path.write_text(json.dumps(data))
    return path


def test_valid_dataset_passes_cli(dataset: Path, capsys: pytest.CaptureFixture) -> None:
    assert _messages(dataset) == []
    assert convert_main(["validate", str(dataset)]) == 0
    assert "valid" in capsys.readouterr().out


def test_landmark_only_dataset_is_valid(tmp_path: Path) -> None:
    target = write_tiny_dataset(tmp_path, dim=2, with_label=False)
    assert not (target / "labelsTr").exists()
    assert _messages(target) == []


def test_missing_labels_folder_with_declared_labels(dataset: Path) -> None:
    shutil.rmtree(dataset / "labelsTr")
    msgs = _messages(dataset)
    assert any("labelsTr" in m and "landmark-only" in m for m in msgs)


def test_missing_channel_file(dataset: Path) -> None:
    (dataset / "imagesTr" / "case_001_0001.nii.gz").unlink()
    msgs = _messages(dataset)
    assert any("case_001_0001.nii.gz: missing" in m for m in msgs)


def test_unreadable_image(dataset: Path) -> None:
    (dataset / "imagesTr" / "case_000_0000.nii.gz").write_bytes(b"\x00not a nifti")
    msgs = _messages(dataset)
    assert any("case_000_0000.nii.gz: cannot read as an image" in m for m in msgs)


def test_non_image_file_among_images(dataset: Path) -> None:
    (dataset / "imagesTr" / "notes.txt").write_text("hello")
    assert any("notes.txt: unexpected file" in m for m in _messages(dataset))


def test_mismatched_geometry_between_channels(dataset: Path) -> None:
    path = dataset / "imagesTr" / "case_000_0001.nii.gz"
    img = sitk.ReadImage(str(path))
    img.SetSpacing((0.8, 1.0, 2.5))
    sitk.WriteImage(img, str(path))
    msgs = _messages(dataset)
    assert any("case_000_0001.nii.gz: geometry differs from channel 0000: spacing" in m for m in msgs)


def test_mismatched_label_geometry(dataset: Path) -> None:
    path = dataset / "labelsTr" / "case_001.nii.gz"
    img = sitk.ReadImage(str(path))
    img.SetOrigin((0.0, 0.0, 0.0))
    sitk.WriteImage(img, str(path))
    assert any("labelsTr/case_001.nii.gz: geometry differs from the image: origin" in m for m in _messages(dataset))


def test_undeclared_label_value(dataset: Path) -> None:
    path = dataset / "labelsTr" / "case_000.nii.gz"
    img = sitk.ReadImage(str(path))
    arr = sitk.GetArrayFromImage(img)
    arr[0, 0, 0] = 5
    out = sitk.GetImageFromArray(arr)
    out.CopyInformation(img)
    sitk.WriteImage(out, str(path))
    assert any("case_000.nii.gz: label value(s) [5] not declared" in m for m in _messages(dataset))


def test_label_values_with_gaps_are_one_problem_naming_the_fix(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """VerSe ids used as-is (L1 = 20, L2 = 21): nnU-Net plans them, then training fails inside the Dice loss."""
    folder = write_verse_ids_dataset(tmp_path)
    msgs = _messages(folder)
    assert len(msgs) == 1, msgs
    assert msgs[0].startswith(str(folder / "dataset.json") + ":")
    assert "1-19 are missing" in msgs[0] and "consecutive" in msgs[0]
    assert "Declare every value from 0 to the highest" in msgs[0] and "as poi_convert's converters do" in msgs[0]
    assert convert_main(["validate", str(folder)]) == 1
    assert "dataset.json" in capsys.readouterr().err


def test_writer_does_not_publish_label_values_with_gaps(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="1-19 are missing"):
        with DatasetWriter(tmp_path / "Dataset997_Gaps", {"0": "CT"}, {"background": 0, "L1": 20, "L2": 21},
                           pois={1: "tip", 2: "corner"}) as w:
            w.add_case(tiny_case("case_000", seed=0, with_label=False))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("labels, missing", [
    ({"background": 0, "box": 1, "ignore": 2}, None),
    ({"background": 0, "box": 1, "other": 2, "both": [1, 2]}, None),  # a region: its members count
    ({"background": 0, "box": 1, "ignore": 4}, "2-3 are missing"),
    ({"background": 0, "box": 1, "far": [1, 5]}, "2-4 are missing"),
    ({"background": 0, "box": 1, "b": 3, "c": 5}, "2, 4 are missing"),
])
def test_consecutive_labels_count_regions_and_ignore(dataset: Path, labels: dict, missing) -> None:
    meta = json.loads((dataset / "dataset.json").read_text())
    meta["labels"] = labels
    (dataset / "dataset.json").write_text(json.dumps(meta))
    gaps = [m for m in _messages(dataset) if "consecutive" in m]
    if missing is None:
        assert gaps == []
    else:
        assert len(gaps) == 1 and missing in gaps[0] and "dataset.json" in gaps[0]


def test_label_value_that_is_not_an_integer(dataset: Path) -> None:
    meta = json.loads((dataset / "dataset.json").read_text())
    meta["labels"]["box"] = "one"
    (dataset / "dataset.json").write_text(json.dumps(meta))
    msgs = _messages(dataset)
    assert len(msgs) == 1 and "dataset.json" in msgs[0] and "must be integers >= 0" in msgs[0]


def test_poi_outside_image(dataset: Path) -> None:
    _edit_pois(dataset, "case_000", lambda pts: pts[0].update(position=[500.0, 0.0, 0.0]))
    msgs = _messages(dataset)
    assert any("case_000.json [structure 1, poi 1]" in m and "outside the image" in m for m in msgs)


def test_unknown_poi_id(dataset: Path) -> None:
    _edit_pois(dataset, "case_001", lambda pts: pts[1].update(poi=42))
    assert any("case_001.json [structure 1, poi 42]: poi id 42 is not in dataset.json" in m for m in _messages(dataset))


def test_structure_that_is_not_a_label(dataset: Path) -> None:
    _edit_pois(dataset, "case_001", lambda pts: pts[1].update(structure=9))
    assert any("[structure 9, poi 2]: structure 9 is not a label" in m for m in _messages(dataset))


def test_nan_coordinate(dataset: Path) -> None:
    path = dataset / "poisTr" / "case_000.json"
    text = path.read_text()
    data = json.loads(text)
    data["points"][1]["position"][2] = float("nan")
    path.write_text(json.dumps(data))  # json writes NaN, which is not valid JSON for others but must be caught
    msgs = _messages(dataset)
    assert any("case_000.json [point #1 (structure 1, poi 2)]: non-finite coordinate" in m for m in msgs)


def test_duplicate_point(dataset: Path) -> None:
    _edit_pois(dataset, "case_000", lambda pts: pts.append(dict(pts[0])))
    assert any("case_000.json [point #2 (structure 1, poi 1)]: duplicate" in m for m in _messages(dataset))


def test_wrong_coordinate_count(dataset: Path) -> None:
    def drop_z(points: list) -> None:
        for p in points:
            p["position"] = p["position"][:2]
    _edit_pois(dataset, "case_000", drop_z)
    assert any("2 coordinates for a 3D image" in m for m in _messages(dataset))


def test_wrong_num_training(dataset: Path) -> None:
    meta = json.loads((dataset / "dataset.json").read_text())
    meta["numTraining"] = 7
    (dataset / "dataset.json").write_text(json.dumps(meta))
    assert any("'numTraining' is 7, but imagesTr holds 2" in m for m in _messages(dataset))


def test_orphan_poi_file(dataset: Path) -> None:
    shutil.copy(dataset / "poisTr" / "case_000.json", dataset / "poisTr" / "case_999.json")
    assert any("case_999.json: POI file without a matching image" in m for m in _messages(dataset))


def test_all_problems_are_reported_at_once(dataset: Path, capsys: pytest.CaptureFixture) -> None:
    (dataset / "imagesTr" / "case_001_0001.nii.gz").unlink()
    _edit_pois(dataset, "case_000", lambda pts: pts[0].update(poi=42))
    assert convert_main(["validate", str(dataset)]) == 1
    err = capsys.readouterr().err
    assert "2 problem(s)" in err
    assert "case_001_0001.nii.gz" in err and "poi id 42" in err


def test_unknown_dataset_id_is_one_clear_line(nnunet_folders: dict) -> None:
    """Run as a user would: a separate process, non-zero exit, no traceback."""
    result = subprocess.run([sys.executable, "-m", "poi_nnunet.cli.convert", "validate", "777"],
                            capture_output=True, text=True)
    assert result.returncode != 0
    assert "unknown dataset '777'" in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.count("777") == 1  # said once, not as a header and again in the problem


def test_missing_dataset_json(tmp_path: Path) -> None:
    folder = tmp_path / "Dataset993_Empty"
    folder.mkdir()
    msgs = _messages(folder)
    assert len(msgs) == 1 and "dataset.json: missing" in msgs[0]


def test_broken_dataset_json(dataset: Path) -> None:
    (dataset / "dataset.json").write_text("{ not json")
    msgs = _messages(dataset)
    assert len(msgs) == 1 and "dataset.json: not valid JSON" in msgs[0]

"""POI files and the dataset writer: round trips, and nothing half-written on failure."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from poi_nnunet.errors import InvalidInputError, PoiNnunetError
from poi_nnunet.pois import Poi, PoiSet, read_poi_file, write_poi_file
from poi_nnunet.raw_dataset import RawDataset, resolve_raw_dataset
from poi_nnunet.raw_dataset_writer import DatasetWriter
from tests.factories import tiny_case, write_tiny_dataset


def test_poi_file_round_trips_exactly(tmp_path: Path) -> None:
    pois = PoiSet([
        Poi(20, 101, (-12.5, 40.25, 118.0)),
        Poi(20, 109, (-30.000000123456, 41.0, 117.5), confidence=0.75),
    ])
    path = tmp_path / "case.json"
    write_poi_file(path, pois)
    again = read_poi_file(path)
    assert again.points == pois.points
    data = json.loads(path.read_text())
    assert data["coordinate_system"] == "LPS"
    assert "confidence" not in data["points"][0]


def test_reader_ignores_unknown_keys(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"coordinate_system": "LPS", "note": "x",
                                "points": [{"structure": 0, "poi": 3, "position": [1, 2], "by": "human"}]}))
    assert read_poi_file(path).points == [Poi(0, 3, (1.0, 2.0))]


def test_writer_refuses_nan_and_duplicates(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="non-finite"):
        write_poi_file(tmp_path / "a.json", PoiSet([Poi(1, 1, (0.0, math.nan, 1.0))]))
    with pytest.raises(InvalidInputError, match="duplicate"):
        write_poi_file(tmp_path / "b.json", PoiSet([Poi(1, 1, (0.0, 0.0)), Poi(1, 1, (1.0, 1.0))]))
    assert not list(tmp_path.iterdir()), "a refused write must leave no file"


def test_reader_reports_every_bad_point_with_file_and_point(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text('{"coordinate_system": "RAS", "points": ['
                    '{"structure": 1, "poi": 1, "position": [0, NaN, 0]},'
                    '{"structure": 1, "poi": 2, "position": [0, 0]},'
                    '{"structure": 1, "poi": 2, "position": [1, 1, 1]},'
                    '{"structure": -1, "poi": 0, "position": [1, 1, 1]}]}')
    with pytest.raises(InvalidInputError) as err:
        read_poi_file(path)
    text = str(err.value)
    assert "bad.json" in text
    assert "coordinate_system" in text
    assert "structure 1, poi 1" in text and "non-finite" in text
    assert "duplicate" in text
    assert "mix 2 and 3" in text
    assert "'poi' must be a positive integer" in text


def test_written_dataset_reads_back(tmp_path: Path) -> None:
    target = write_tiny_dataset(tmp_path, cases=3)
    ds = RawDataset.open(target)
    assert ds.case_ids() == ["case_000", "case_001", "case_002"]
    assert ds.meta["numTraining"] == 3
    assert ds.poi_names == {1: "tip", 2: "corner"}
    assert read_poi_file(ds.poi_file("case_001")).points == tiny_case("case_001", seed=1).pois.points


def test_failed_conversion_leaves_nothing_that_looks_complete(tmp_path: Path) -> None:
    target = tmp_path / "Dataset991_Broken"
    with pytest.raises(RuntimeError, match="converter crashed"):
        with DatasetWriter(target, {"0": "CT"}, {"background": 0, "box": 1}, pois={1: "tip", 2: "corner"}) as w:
            w.add_case(tiny_case("case_000", seed=0))
            raise RuntimeError("converter crashed")
    assert list(tmp_path.iterdir()) == []


def test_invalid_result_is_not_published(tmp_path: Path) -> None:
    target = tmp_path / "Dataset992_Invalid"
    case = tiny_case("case_000", seed=0)
    case.pois.points.append(Poi(1, 7, case.pois.points[0].position))  # poi 7 is not declared
    with pytest.raises(InvalidInputError, match="poi id 7"):
        with DatasetWriter(target, {"0": "CT"}, {"background": 0, "box": 1}, pois={1: "tip", 2: "corner"}) as w:
            w.add_case(case)
    assert list(tmp_path.iterdir()) == []


def test_existing_dataset_is_kept_unless_overwrite(tmp_path: Path) -> None:
    target = write_tiny_dataset(tmp_path, cases=1)
    with pytest.raises(PoiNnunetError, match="already exists"):
        write_tiny_dataset(tmp_path, cases=2)
    assert RawDataset.open(target).meta["numTraining"] == 1
    # a failing overwrite keeps the old dataset
    with pytest.raises(RuntimeError):
        with DatasetWriter(target, {"0": "CT"}, {"background": 0}, overwrite=True) as w:
            raise RuntimeError("boom")
    assert RawDataset.open(target).meta["numTraining"] == 1
    with DatasetWriter(target, {"0": "CT"}, {"background": 0, "box": 1}, pois={1: "tip", 2: "corner"},
                       overwrite=True) as w:
        for i in range(2):
            w.add_case(tiny_case(f"case_{i:03d}", seed=i))
    assert RawDataset.open(target).meta["numTraining"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == [target.name]


def test_dataset_resolves_by_id_name_and_path(tmp_path: Path, nnunet_folders: dict) -> None:
    target = write_tiny_dataset(nnunet_folders["raw"], name="Dataset501_Spine", cases=1)
    assert resolve_raw_dataset("501") == target
    assert resolve_raw_dataset("Dataset501_Spine") == target
    assert resolve_raw_dataset(str(target)) == target
    with pytest.raises(PoiNnunetError, match=r"unknown dataset '777'.*Dataset501_Spine"):
        resolve_raw_dataset("777")


def test_written_files_get_ordinary_permissions(tmp_path: Path) -> None:
    """Atomic writes go through temporary files; the result must still be readable by others."""
    import os
    import stat

    path = tmp_path / "c.json"
    write_poi_file(path, PoiSet([Poi(0, 1, (1.0, 2.0))]))
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask

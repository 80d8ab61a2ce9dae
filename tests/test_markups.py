"""Slicer markups files: what poi_predict writes must read back as the same points, and files
written by Slicer (LPS or RAS, old or new) must read as LPS millimetres."""
from __future__ import annotations

import json

import numpy as np
import pytest

from poi_nnunet.errors import PoiNnunetError
from poi_nnunet.markups import (decode_description, markup_points_to_poi_set, read_fcsv, read_markups,
                                read_markups_json, write_fcsv, write_markups, write_markups_json)
from poi_nnunet.pois import Poi, PoiSet

PREDICTED = PoiSet([
    Poi(20, 101, (-12.123456789, 40.25, 118.000001), 0.93),
    Poi(20, 109, (-30.0, 41.0, 117.5), 0.125),
    Poi(21, 101, (1e-7, -2.5, 3.75)),
])
NAMES = {101: "spinous process, tip", 109: "left pedicle"}


def _same(a: PoiSet, b: PoiSet) -> None:
    assert sorted(a.keys()) == sorted(b.keys())
    got = b.by_key()
    for p in a:
        q = got[p.key]
        np.testing.assert_allclose(q.position, p.position, rtol=0, atol=1e-6)
        assert q.confidence == p.confidence


@pytest.mark.parametrize("suffix", [".mrk.json", ".fcsv"])
def test_predictions_round_trip(tmp_path, suffix):
    path = tmp_path / f"case{suffix}"
    write_markups(path, PREDICTED, NAMES)
    points = read_markups(path)
    assert [p.label for p in points] == ["spinous process, tip", "left pedicle", "spinous process, tip"]
    _same(PREDICTED, markup_points_to_poi_set(points, path))


def test_written_json_is_slicer_markups_in_lps(tmp_path):
    path = tmp_path / "case.mrk.json"
    write_markups_json(path, PREDICTED, NAMES)
    data = json.loads(path.read_text())
    markup = data["markups"][0]
    assert "markups-schema-v1" in data["@schema"]
    assert (markup["type"], markup["coordinateSystem"], markup["coordinateUnits"]) == ("Fiducial", "LPS", "mm")
    first = markup["controlPoints"][0]
    assert first["position"] == [-12.123456789, 40.25, 118.000001]
    assert first["description"] == "structure 20, poi 101, confidence 0.93"
    assert not list(tmp_path.glob(".*part"))  # atomic: no temporary file left behind


def test_written_fcsv_header_and_quoted_label(tmp_path):
    path = tmp_path / "case.fcsv"
    write_fcsv(path, PREDICTED, NAMES)
    lines = path.read_text().splitlines()
    assert lines[1] == "# CoordinateSystem = LPS"
    assert lines[2].startswith("# columns = id,x,y,z,")
    assert '"spinous process, tip"' in lines[3]


def test_ras_json_is_read_as_lps_and_micrometres_as_mm(tmp_path):
    path = tmp_path / "ras.mrk.json"
    path.write_text(json.dumps({"markups": [
        {"type": "Fiducial", "coordinateSystem": "RAS", "controlPoints": [
            {"label": "a", "position": [10.5, -20.25, 30.0]},
            {"label": "unplaced", "position": [0, 0, 0], "positionStatus": "undefined"},
        ]},
        {"type": "Fiducial", "coordinateSystem": "LPS", "coordinateUnits": "um",
         "controlPoints": [{"label": "b", "position": [1500.0, 2000.0, -500.0]}]},
    ]}))
    points = read_markups_json(path)
    assert [p.label for p in points] == ["a", "b"]
    np.testing.assert_allclose(points[0].position, (-10.5, 20.25, 30.0))
    np.testing.assert_allclose(points[1].position, (1.5, 2.0, -0.5))
    assert "poi" not in points[0].extra  # a Slicer user's point carries no encoding


@pytest.mark.parametrize("system, sign", [("RAS", -1), ("0", -1), ("LPS", 1), ("1", 1), (None, -1)])
def test_fcsv_coordinate_systems(tmp_path, system, sign):
    header = "# Markups fiducial file version = 4.10\n"
    if system is not None:
        header += f"# CoordinateSystem = {system}\n"
    header += "# columns = id,x,y,z,ow,ox,oy,oz,vis,sel,lock,label,desc,associatedNodeID\n"
    path = tmp_path / "old.fcsv"
    path.write_text(header + "vtkMRMLMarkupsFiducialNode_0,1.25,-2.5,3,0,0,0,1,1,1,0,F-1,,vtkMRMLScalarVolumeNode1\n"
                    "vtkMRMLMarkupsFiducialNode_1,,,,0,0,0,1,1,1,0,F-2,,\n")
    points = read_fcsv(path)
    assert [p.label for p in points] == ["F-1"]  # the row without coordinates is an absent point
    np.testing.assert_allclose(points[0].position, (sign * 1.25, sign * -2.5, 3.0))


def test_two_d_points_are_written_at_z_zero_and_read_back(tmp_path):
    path = tmp_path / "xray.mrk.json"
    pois = PoiSet([Poi(0, 1, (3.25, 7.5)), Poi(0, 2, (0.1, 0.2), 0.5)])
    write_markups_json(path, pois, {1: "tip", 2: "base"})
    points = read_markups_json(path)
    assert [p.position[2] for p in points] == [0.0, 0.0]
    _same(pois, markup_points_to_poi_set(points, path, dim=2))


def test_description_encoding_is_strict():
    assert decode_description("structure 3, poi 7") == {"structure": 3, "poi": 7}
    assert decode_description("structure 3, poi 7, confidence 0.25") == {"structure": 3, "poi": 7, "confidence": 0.25}
    assert decode_description("tip of the dens") is None
    assert decode_description("") is None


def test_malformed_json_names_the_file(tmp_path):
    path = tmp_path / "broken.mrk.json"
    path.write_text('{"markups": [')
    with pytest.raises(PoiNnunetError, match="broken.mrk.json.*not valid JSON"):
        read_markups_json(path)


def test_bad_position_names_file_and_point(tmp_path):
    path = tmp_path / "bad.mrk.json"
    path.write_text(json.dumps({"markups": [{"type": "Fiducial", "controlPoints": [
        {"label": "ok", "position": [1, 2, 3]}, {"label": "short", "position": [1, 2]}]}]}))
    with pytest.raises(PoiNnunetError, match=r"bad.mrk.json \[.*'short'.*\]: 'position' must be 3 finite numbers"):
        read_markups_json(path)


def test_unknown_fcsv_coordinate_system_is_an_error(tmp_path):
    path = tmp_path / "ijk.fcsv"
    path.write_text("# CoordinateSystem = 2\n1,1,2,3,0,0,0,1,1,1,0,F-1,,\n")
    with pytest.raises(PoiNnunetError, match="ijk.fcsv.*unsupported CoordinateSystem '2'"):
        read_fcsv(path)


def test_points_without_encoding_cannot_become_a_poi_set(tmp_path):
    path = tmp_path / "manual.fcsv"
    path.write_text("# CoordinateSystem = LPS\n1,1,2,3,0,0,0,1,1,1,0,F-1,my note,\n")
    with pytest.raises(PoiNnunetError, match=r"manual.fcsv \[point #0 \('F-1'\)\]: description lacks"):
        markup_points_to_poi_set(read_fcsv(path), path)


def test_non_finite_points_are_not_written(tmp_path):
    path = tmp_path / "nan.mrk.json"
    with pytest.raises(PoiNnunetError, match="nan.mrk.json.*structure 0, poi 1"):
        write_markups_json(path, PoiSet([Poi(0, 1, (float("nan"), 0.0, 0.0))]))
    assert not path.exists()

"""No point is dropped silently: a run counts what it did not write by reason, says that
--min_confidence 0 writes what the threshold left out, and lists the points in dropped_points.json,
which poi_evaluate does not take for a case."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from poi_nnunet.evaluation.folders import open_folder
from poi_nnunet.geometry import ImageGeometry, PreprocessedSpace
from poi_nnunet.inference.decoding import DecodedPoints, DroppedPoint
from poi_nnunet.inference.drop_report import DROPPED_POINTS_FILE, DropSummary
from poi_nnunet.pois import PoiSet, write_poi_file

SHAPE = (1, 80, 70)
SPACE = PreprocessedSpace(ImageGeometry((0.0, 0.0), (1.0, 1.0), np.eye(2), (70, 80)), (0, 1, 2),
                          ((0, 1), (0, 80), (0, 70)), SHAPE, SHAPE)


def _points(positions, dropped=()) -> DecodedPoints:
    n = len(positions)
    return DecodedPoints(np.ones(n, int), np.arange(1, n + 1), np.array(positions, float), np.full(n, 0.9),
                         list(dropped))


def test_summary_counts_by_reason_and_hints_at_the_threshold(tmp_path: Path) -> None:
    summary = DropSummary(0.1)
    # three points inside the 80 x 70 image, one 500 voxels outside it
    summary.add("a", _points([(0, 10, 10), (0, 20, 20), (0, 30, 30), (0, 500, 10)],
                             [DroppedPoint(1, 7, "below_min_confidence"), DroppedPoint(1, 8, "ambiguous"),
                              DroppedPoint(2, 1, "structure_not_segmented")]), SPACE)
    summary.add("b", _points([(0, 40, 40)]), SPACE)
    line = summary.line(tmp_path)
    assert line.startswith("wrote 4 point(s) in 2 case(s); 4 not written (1 ambiguous, 1 below min confidence, "
                           "1 outside image, 1 structure not segmented)")
    assert "2 were under --min_confidence 0.1: --min_confidence 0 writes them all" in line

    assert summary.write(tmp_path) == tmp_path / DROPPED_POINTS_FILE
    listed = json.loads((tmp_path / DROPPED_POINTS_FILE).read_text())
    assert listed["min_confidence"] == 0.1
    assert listed["cases"] == {"a": [{"structure": 1, "poi": 7, "reason": "below_min_confidence"},
                                     {"structure": 1, "poi": 8, "reason": "ambiguous"},
                                     {"structure": 2, "poi": 1, "reason": "structure_not_segmented"},
                                     {"structure": 1, "poi": 4, "reason": "outside_image"}]}


def test_no_threshold_hint_without_threshold_drops_and_a_clean_run_says_so() -> None:
    summary = DropSummary(0.1)
    summary.add("a", _points([(0, 10, 10)], [DroppedPoint(3, 1, "structure_not_segmented")]), SPACE)
    assert "min_confidence" not in summary.line()
    clean = DropSummary(0.1)
    clean.add("a", _points([(0, 10, 10)]), SPACE)
    assert clean.line() == "wrote 1 point(s) in 1 case(s); none left out"


def test_a_rerun_keeps_skipped_cases_and_replaces_its_own(tmp_path: Path) -> None:
    first = DropSummary(0.1)
    first.add("a", _points([], [DroppedPoint(1, 1, "below_min_confidence")]), SPACE)
    first.add("b", _points([], [DroppedPoint(1, 2, "below_min_confidence")]), SPACE)
    first.write(tmp_path)
    again = DropSummary(0.0)
    again.add("a", _points([(0, 10, 10)]), SPACE)  # a predicted again, nothing dropped; b skipped
    again.write(tmp_path)
    assert sorted(json.loads((tmp_path / DROPPED_POINTS_FILE).read_text())["cases"]) == ["b"]
    last = DropSummary(0.0)
    last.add("b", _points([(0, 10, 10)]), SPACE)
    assert last.write(tmp_path) is None and not (tmp_path / DROPPED_POINTS_FILE).exists()


def test_poi_evaluate_does_not_take_the_list_for_a_case(tmp_path: Path) -> None:
    write_poi_file(tmp_path / "case_1.json", PoiSet.from_arrays([1], [1], np.array([[1.0, 2.0]])))
    summary = DropSummary(0.1)
    summary.add("case_1", _points([], [DroppedPoint(1, 2, "below_min_confidence")]), SPACE)
    summary.write(tmp_path)
    assert sorted(open_folder(tmp_path, "prediction").poi_files) == ["case_1"]

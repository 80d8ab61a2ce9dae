"""benchmarks/confidence_calibration.py: errors, ROC AUC, thresholds and reliability against values
worked out by hand for a folder of four predicted points and one missing."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from benchmarks.confidence_calibration import calibration_summary, main, roc_auc
from poi_nnunet.pois import PoiSet, write_poi_file


def _folders(tmp_path: Path, min_confidence: float = 0.0):
    ref, pred = tmp_path / "ref", tmp_path / "pred"
    ref.mkdir()
    pred.mkdir()
    truth = np.array([[0.0, 0.0], [10.0, 0.0], [20.0, 0.0], [30.0, 0.0], [40.0, 0.0]])
    write_poi_file(ref / "c.json", PoiSet.from_arrays([1] * 5, [1, 2, 3, 4, 5], truth))
    # errors 0.5, 1.0, 3.0, 10.0 mm along y; poi 5 not predicted
    guess = truth[:4] + np.array([[0.0, 0.5], [0.0, 1.0], [0.0, 3.0], [0.0, 10.0]])
    write_poi_file(pred / "c.json", PoiSet.from_arrays([1] * 4, [1, 2, 3, 4], guess, [0.9, 0.3, 0.4, 0.05]))
    (pred / "predict_from_raw_data_args.json").write_text(json.dumps({"min_confidence": min_confidence}))
    return pred, ref


def test_summary_matches_hand_computed_values(tmp_path: Path) -> None:
    pred, ref = _folders(tmp_path)
    s = calibration_summary(pred, ref)
    assert (s["n_reference"], s["n_matched"], s["n_missing"], s["n_right"]) == (5, 4, 1, 2)
    # right {0.9, 0.3} vs wrong {0.4, 0.05}: 3 of the 4 pairs ordered right
    assert s["auc"] == pytest.approx(0.75)
    by_t = {r["threshold"]: r for r in s["thresholds"]}
    assert (by_t[0.1]["kept"], by_t[0.1]["mean_mm"], by_t[0.1]["wrong_kept"]) == (3, pytest.approx(1.5), 1)
    assert (by_t[0.5]["kept"], by_t[0.5]["mean_mm"], by_t[0.5]["right_dropped"]) == (1, pytest.approx(0.5), 1)
    assert by_t[0.05]["kept"] == 4
    bins = {(r["low"], r["high"]): r for r in s["reliability"]}
    assert bins[(0.3, 0.5)]["n"] == 2 and bins[(0.3, 0.5)]["right_fraction"] == pytest.approx(0.5)
    assert bins[(0.9, 1.0)]["n"] == 1 and bins[(0.9, 1.0)]["mean_mm"] == pytest.approx(0.5)
    assert s["warning"] is None
    assert calibration_summary(pred, ref, right_mm=5.0)["n_right"] == 3


def test_a_thresholded_prediction_is_flagged_and_the_script_runs(tmp_path: Path, capsys) -> None:
    pred, ref = _folders(tmp_path, min_confidence=0.1)
    assert "--min_confidence 0" in calibration_summary(pred, ref)["warning"]
    assert main(["-pred", str(pred), "-ref", str(ref), "--json", str(tmp_path / "s.json")]) == 0
    assert "ROC AUC of confidence, right vs wrong: 0.750" in capsys.readouterr().out
    assert json.loads((tmp_path / "s.json").read_text())["auc"] == pytest.approx(0.75)


def test_auc_ties_count_half() -> None:
    assert roc_auc(np.array([0.5, 0.5]), np.array([True, False])) == pytest.approx(0.5)
    assert roc_auc(np.array([0.9, 0.1]), np.array([True, False])) == pytest.approx(1.0)
    assert np.isnan(roc_auc(np.array([0.9]), np.array([True])))

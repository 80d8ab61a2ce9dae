"""``evaluate_folders`` and ``poi_evaluate`` on small folders with known answers."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from poi_nnunet.cli.evaluate import main
from poi_nnunet.errors import PoiNnunetError
from poi_nnunet.evaluation import evaluate_folders
from poi_nnunet.evaluation.report import format_table
from poi_nnunet.pois import Poi, PoiSet, write_poi_file

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _mask(path: Path, shift: int, spacing=(2.0, 1.0, 1.0)) -> None:
    """A 3x3x3 cube of label 1 (shifted by ``shift`` voxels along x) in an 8^3 image."""
    arr = np.zeros((8, 8, 8), np.uint8)
    arr[2:5, 2:5, 2 + shift:5 + shift] = 1
    image = sitk.GetImageFromArray(arr)
    image.SetSpacing(spacing)
    image.SetOrigin((5.0, -3.0, 1.0))
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))


def _raw_reference(root: Path) -> Path:
    """Dataset999_Eval with poisTs (case a: 4 points, b: 2, c: 2) and labelsTs for a and b."""
    ds = root / "Dataset999_Eval"
    (ds / "poisTs").mkdir(parents=True)
    (ds / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "CT"}, "labels": {"background": 0, "bone": 1}, "numTraining": 1,
        "file_ending": ".nii.gz", "pois": {"1": "tip", "2": "base"},
    }))
    write_poi_file(ds / "poisTs" / "a.json", PoiSet([
        Poi(1, 1, (0.0, 0.0, 0.0)), Poi(1, 2, (100.0, 0.0, 0.0)),
        Poi(2, 1, (0.0, 100.0, 0.0)), Poi(2, 2, (0.0, 0.0, 100.0))]))
    write_poi_file(ds / "poisTs" / "b.json", PoiSet([Poi(1, 1, (0.0, 0.0, 0.0)), Poi(1, 2, (50.0, 0.0, 0.0))]))
    write_poi_file(ds / "poisTs" / "c.json", PoiSet([Poi(1, 1, (0.0, 0.0, 0.0)), Poi(1, 2, (50.0, 0.0, 0.0))]))
    _mask(ds / "labelsTs" / "a.nii.gz", 0)
    _mask(ds / "labelsTs" / "b.nii.gz", 0)
    return ds / "poisTs"


def _prediction(root: Path) -> Path:
    """Case a: errors 1, 2, 3, 5 mm; b: one point missing, one extra; c: absent; d: no reference."""
    pred = root / "pred"
    write_poi_file(pred / "a.json", PoiSet([
        Poi(1, 1, (1.0, 0.0, 0.0)), Poi(1, 2, (100.0, 2.0, 0.0)),
        Poi(2, 1, (0.0, 100.0, -3.0)), Poi(2, 2, (3.0, 4.0, 100.0))]))
    write_poi_file(pred / "b.json", PoiSet([Poi(1, 1, (0.0, 0.0, 0.0)), Poi(1, 3, (9.0, 9.0, 9.0))]))
    write_poi_file(pred / "d.json", PoiSet([Poi(1, 1, (0.0, 0.0, 0.0))]))
    (pred / "a.mrk.json").write_text("{}")  # Slicer markups beside the points are not point files
    _mask(pred / "a.nii.gz", 1)
    return pred


def test_raw_split_reference_against_flat_prediction(tmp_path: Path) -> None:
    ref, pred = _raw_reference(tmp_path), _prediction(tmp_path)
    summary = evaluate_folders(ref, pred)
    out = pred / "evaluation"

    assert summary["cases"] == {"n_ref": 3, "n_pred": 3, "n_scored": 3, "missing": ["c"], "extra": ["d"]}
    overall = summary["points"]["overall"]
    # 8 reference points: 5 matched (errors 1, 2, 3, 5, 0), 3 missing (1 in b, 2 in c); 1 extra in b
    assert (overall["n_ref"], overall["n_matched"], overall["n_missing"], overall["n_extra"]) == (8, 5, 3, 1)
    assert overall["tre_mm"]["mean"] == pytest.approx(11 / 5)
    assert overall["tre_mm"]["median"] == pytest.approx(2.0)
    assert overall["tre_mm"]["max"] == pytest.approx(5.0)
    assert overall["success_rate"] == pytest.approx({"2": 3 / 8, "2.5": 3 / 8, "3": 4 / 8, "4": 4 / 8})
    assert overall["identification_rate"] == pytest.approx(5 / 8)
    # in voxels of the reference masks (spacing 2, 1, 1 mm): a's errors are 0.5, 2, 3 and |(1.5, 4)| = 4.27
    # voxels, b's 0; of 8 reference points 2 lie within one voxel, 3 within two
    assert overall["success_rate_voxels"] == pytest.approx({"1": 2 / 8, "2": 3 / 8})

    per_poi = summary["points"]["per_poi"]
    assert per_poi["1"]["name"] == "tip" and per_poi["3"]["name"] is None
    assert (per_poi["1"]["n_ref"], per_poi["1"]["n_matched"]) == (4, 3)  # a/1, a/2-structure, b; c missing
    assert per_poi["1"]["tre_mm"]["mean"] == pytest.approx(4 / 3)
    assert summary["points"]["per_structure"]["2"]["tre_mm"]["mean"] == pytest.approx(4.0)
    # structures are named by dataset.json's labels; structure 2 has no label name there
    assert summary["points"]["per_structure"]["1"]["name"] == "bone"
    assert summary["points"]["per_structure"]["2"]["name"] is None
    per_structure_table = format_table(summary, max_poi_rows=1)
    assert any(line.split()[:2] == ["1", "bone"] for line in per_structure_table.splitlines())
    assert summary["points"]["per_case"]["c"]["n_missing"] == 2
    assert math.isnan(summary["points"]["per_case"]["c"]["tre_mm"]["mean"])

    seg = summary["segmentation"]
    assert seg["n_cases"] == 1 and seg["cases_without_pred_mask"] == ["b"]
    assert seg["per_label"]["1"]["name"] == "bone"
    assert seg["per_label"]["1"]["dice"] == {"mean": pytest.approx(2 / 3), "n": 1}
    # spacing 2 mm along x, the shift axis (see the cube case in test_evaluation_segmentation)
    assert seg["per_label"]["1"]["asd_mm"]["mean"] == pytest.approx(38 / 52)
    assert seg["inverse_frequency_weighted_dice"]["mean"] == pytest.approx(2 / 3)

    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["points"]["per_case"]["c"]["tre_mm"]["mean"] is None  # NaN is written as null
    assert on_disk["points"]["overall"]["n_missing"] == 3

    with open(out / "points.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    # one row per reference point (8) and per predicted point without reference (1 in b, 1 in case d)
    assert len(rows) == 10
    assert sorted(r["status"] for r in rows).count("missing") == 3
    assert [r["status"] for r in rows if r["case"] == "d"] == ["extra_case"]
    first = rows[0]
    assert (first["case"], first["poi_name"], float(first["error_mm"]), first["status"]) == ("a", "tip", 1.0, "matched")
    assert float(first["pred_x"]) == 1.0 and first["identified"] == "1"
    for name in ("error_per_poi.png", "error_distribution.png"):
        assert (out / name).read_bytes()[:8] == PNG_SIGNATURE


def _flat_2d(folder: Path, offsets) -> None:
    for case, dy in offsets.items():
        write_poi_file(folder / f"{case}.json", PoiSet([Poi(0, 1, (10.0, 10.0 + dy)), Poi(0, 2, (40.0, 10.0 + dy))]))


def test_cli_on_2d_landmark_only_folders(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    _flat_2d(tmp_path / "ref", {"x1": 0.0, "x2": 0.0})
    _flat_2d(tmp_path / "pred", {"x1": 2.5, "x2": 4.5})
    out = tmp_path / "report"
    assert main(["-ref", str(tmp_path / "ref"), "-pred", str(tmp_path / "pred"), "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "all" in printed and str(out) in printed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["points"]["overall"]["tre_mm"]["mean"] == pytest.approx(3.5)
    assert summary["points"]["overall"]["success_rate"] == pytest.approx({"2": 0, "2.5": 0.5, "3": 0.5, "4": 0.5})
    assert summary["points"]["overall"]["success_rate_voxels"] is None  # no reference image to measure voxels in
    assert summary["segmentation"]["n_cases"] == 0 and summary["segmentation"]["mean_dice"]["mean"] is None
    rows = list(csv.DictReader(open(out / "points.csv", newline="")))
    assert len(rows) == 4 and all(r["ref_z"] == "" and r["pred_z"] == "" for r in rows)


def test_cli_reports_user_errors_with_exit_code_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    _flat_2d(tmp_path / "ref", {"x1": 0.0})
    _flat_2d(tmp_path / "other", {"y1": 0.0})
    ref, other = str(tmp_path / "ref"), str(tmp_path / "other")

    assert main(["-ref", ref, "-pred", str(tmp_path / "nowhere")]) == 2
    assert "prediction folder" in capsys.readouterr().err

    assert main(["-ref", ref, "-pred", other]) == 2
    assert "no matching cases" in capsys.readouterr().err

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x1.json").write_text("{not json")
    assert main(["-ref", ref, "-pred", str(bad)]) == 2
    assert str(bad / "x1.json") in capsys.readouterr().err
    assert not (bad / "evaluation").exists()  # nothing written when the input is wrong

    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0


def test_evaluation_can_be_restricted_to_some_cases(tmp_path: Path) -> None:
    """A fold's validation scores only its own cases out of the whole poisTr."""
    from poi_nnunet.evaluation import evaluate_folders
    from poi_nnunet.pois import Poi, PoiSet, write_poi_file

    ref, pred = tmp_path / "ref", tmp_path / "pred"
    for case in ("a", "b", "c"):
        write_poi_file(ref / f"{case}.json", PoiSet([Poi(0, 1, (0.0, 0.0))]))
    write_poi_file(pred / "b.json", PoiSet([Poi(0, 1, (3.0, 4.0))]))
    summary = evaluate_folders(ref, pred, tmp_path / "out", cases=["b"])
    assert summary["cases"]["n_ref"] == 1 and summary["cases"]["missing"] == []
    assert summary["points"]["overall"]["tre_mm"]["mean"] == pytest.approx(5.0)
    with pytest.raises(PoiNnunetError, match="zzz"):
        evaluate_folders(ref, pred, tmp_path / "out2", cases=["zzz"])

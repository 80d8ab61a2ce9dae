"""``evaluate_folders`` and ``poi_evaluate`` where one side has masks and no point files.

Segmentation-only models (``-tr point_sup``, ``-tr nnunet``) write ``<case>.nii.gz`` and no
``<case>.json``; point-annotated datasets keep their dense references in ``labelsTr_reference/``
and ``labelsTs/``. The label maps here are two boxes in an 8^3 image, so every Dice is counted by hand.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Dict, Tuple

import numpy as np
import pytest
import SimpleITK as sitk

from poi_nnunet.cli.evaluate import main
from poi_nnunet.errors import PoiNnunetError
from poi_nnunet.evaluation import evaluate_folders
from poi_nnunet.evaluation.report import format_table
from poi_nnunet.pois import Poi, PoiSet, write_poi_file

Box = Tuple[slice, slice, slice]
LABELS = {"background": 0, "disc": 1, "body": 2, "ignore": 3}

# case a: label 1 is 2x2x2 = 8 voxels, label 2 is 4x4x4 = 64 voxels
REF_A: Dict[int, Box] = {1: np.s_[1:3, 1:3, 1:3], 2: np.s_[4:8, 4:8, 4:8]}
# label 1 shifted by one voxel along x: overlap 4 of 8 + 8; label 2 one x-slice short: 48 of 64 + 48;
# and a few voxels of the ignore label, which a dataset.json declares and which must never be scored
PRED_A: Dict[int, Box] = {1: np.s_[1:3, 1:3, 2:4], 2: np.s_[4:8, 4:8, 5:8], 3: np.s_[0:1, 6:8, 0:2]}
DICE_A = {1: 2 * 4 / (8 + 8), 2: 2 * 48 / (64 + 48)}
# seed 002's class-weighted Dice: sum(dice_m / A_m) / sum(1 / A_m), A_m = reference voxels of label m
WEIGHTED_A = (DICE_A[1] / 8 + DICE_A[2] / 64) / (1 / 8 + 1 / 64)


def _label_map(path: Path, boxes: Dict[int, Box], spacing=(1.0, 1.0, 1.0)) -> None:
    """An 8^3 uint8 label map holding ``label`` in each box (numpy axis order z, y, x)."""
    arr = np.zeros((8, 8, 8), np.uint8)
    for label, box in boxes.items():
        arr[box] = label
    image = sitk.GetImageFromArray(arr)
    image.SetSpacing(spacing)
    image.SetOrigin((-4.0, 2.0, 10.0))
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))


def _dataset_json(folder: Path, **extra) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "CT"}, "labels": LABELS, "numTraining": 3, "file_ending": ".nii.gz", **extra}))


def _clicks_dataset(root: Path) -> Path:
    """A point-annotated dataset as ``poi_convert clicks`` leaves it: dense references of a, b and c in
    ``labelsTr_reference`` (no dataset.json there; the dataset's own one level up names the labels)."""
    ds = root / "Dataset777_Clicks"
    _dataset_json(ds)
    _label_map(ds / "labelsTr_reference" / "a.nii.gz", REF_A)
    _label_map(ds / "labelsTr_reference" / "b.nii.gz", REF_A)
    _label_map(ds / "labelsTr_reference" / "c.nii.gz", REF_A)
    return ds / "labelsTr_reference"


def _masks_only_prediction(folder: Path, cases=("a", "b"), with_dataset_json: bool = True) -> Path:
    """What a segmentation-only model writes: masks (a off by the hand-counted amounts, b exact), no points."""
    if with_dataset_json:
        _dataset_json(folder)
        (folder / "plans.json").write_text("{}")
    for case in cases:
        _label_map(folder / f"{case}.nii.gz", PRED_A if case == "a" else REF_A)
    return folder


def test_dense_reference_folder_against_a_masks_only_prediction(tmp_path: Path) -> None:
    ref = _clicks_dataset(tmp_path)
    pred = _masks_only_prediction(tmp_path / "pred", with_dataset_json=False)  # names must come from the dataset
    summary = evaluate_folders(ref, pred, tmp_path / "out")

    assert summary["points"] is None
    assert "masks only" in summary["points_not_scored"] and str(ref) in summary["points_not_scored"]
    assert summary["cases"] == {"n_ref": 3, "n_pred": 2, "n_scored": 2, "missing": ["c"], "extra": []}
    seg = summary["segmentation"]
    assert seg["n_cases"] == 2 and seg["cases_without_pred_mask"] == ["c"] and seg["cases_without_ref_mask"] == []
    assert sorted(seg["per_label"]) == ["1", "2"]  # the ignore label (3), predicted in a, is not scored
    assert seg["per_label"]["1"]["name"] == "disc" and seg["per_label"]["2"]["name"] == "body"
    assert seg["per_case"]["a"]["labels"]["1"]["dice"] == pytest.approx(0.5)
    assert seg["per_case"]["a"]["labels"]["2"]["dice"] == pytest.approx(6 / 7)
    assert seg["per_case"]["a"]["inverse_frequency_weighted_dice"] == pytest.approx(WEIGHTED_A)
    assert seg["per_case"]["b"]["inverse_frequency_weighted_dice"] == pytest.approx(1.0)
    # per label: mean over cases a and b; plain mean Dice: mean over labels; weighted: mean over cases
    assert seg["per_label"]["1"]["dice"] == {"mean": pytest.approx((0.5 + 1) / 2), "n": 2}
    assert seg["per_label"]["2"]["dice"] == {"mean": pytest.approx((6 / 7 + 1) / 2), "n": 2}
    assert seg["mean_dice"]["mean"] == pytest.approx(((0.5 + 1) / 2 + (6 / 7 + 1) / 2) / 2)
    assert seg["inverse_frequency_weighted_dice"]["mean"] == pytest.approx((WEIGHTED_A + 1) / 2)
    assert seg["per_case"]["b"]["labels"]["2"]["asd_mm"] == 0.0  # identical masks

    on_disk = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert on_disk["points"] is None and on_disk["points_not_scored"] == summary["points_not_scored"]
    assert on_disk["segmentation"]["per_label"]["1"]["dice"]["mean"] == pytest.approx(0.75)
    assert not (tmp_path / "out" / "points.csv").exists()


def test_cli_on_labelsTs_prints_the_segmentation_part_only(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    ds = tmp_path / "Dataset778_Held"
    _dataset_json(ds)
    _label_map(ds / "labelsTs" / "a.nii.gz", REF_A)
    _label_map(ds / "labelsTs" / "c.nii.gz", REF_A)
    pred = _masks_only_prediction(tmp_path / "pred", cases=("a",))
    _label_map(pred / "z.nii.gz", REF_A)  # a predicted case without reference
    assert main(["-ref", str(ds / "labelsTs"), "-pred", str(pred)]) == 0
    printed = capsys.readouterr().out
    assert "points not scored" in printed and "TRE" not in printed and "all points missing" not in printed
    assert "reference cases without a predicted mask (not scored): c" in printed
    assert "predicted cases without reference (not scored): z" in printed
    assert "disc" in printed and "inverse-frequency-weighted dice" in printed
    summary = json.loads((pred / "evaluation" / "summary.json").read_text())
    assert summary["cases"]["missing"] == ["c"] and summary["cases"]["extra"] == ["z"]
    assert summary["segmentation"]["inverse_frequency_weighted_dice"]["mean"] == pytest.approx(WEIGHTED_A)


def test_flat_mask_reference_takes_names_and_ignore_from_the_prediction(tmp_path: Path) -> None:
    ref = tmp_path / "ref"
    _label_map(ref / "a.nii.gz", REF_A)
    pred = _masks_only_prediction(tmp_path / "pred", cases=("a",))
    summary = evaluate_folders(ref, pred, tmp_path / "out")
    seg = summary["segmentation"]
    assert sorted(seg["per_label"]) == ["1", "2"] and seg["per_label"]["2"]["name"] == "body"
    assert seg["mean_dice"]["mean"] == pytest.approx((0.5 + 6 / 7) / 2)


def test_masks_only_reference_restricted_to_a_fold(tmp_path: Path) -> None:
    """point_sup's end-of-training validation scores its fold's cases out of all of labelsTr_reference."""
    ref = _clicks_dataset(tmp_path)
    pred = _masks_only_prediction(tmp_path / "pred", cases=("b",))
    summary = evaluate_folders(ref, pred, tmp_path / "out", cases=["b"])
    assert summary["cases"] == {"n_ref": 1, "n_pred": 1, "n_scored": 1, "missing": [], "extra": []}
    with pytest.raises(PoiNnunetError, match="zzz"):
        evaluate_folders(ref, pred, tmp_path / "out2", cases=["zzz"])


def _poi_dataset(root: Path) -> Path:
    """Dataset779_Spine with points and dense masks for held-out cases a and b."""
    ds = root / "Dataset779_Spine"
    _dataset_json(ds, pois={"1": "tip"})
    for case in ("a", "b"):
        write_poi_file(ds / "poisTs" / f"{case}.json", PoiSet([Poi(1, 1, (0.0, 3.0, 12.0))]))
        _label_map(ds / "labelsTs" / f"{case}.nii.gz", REF_A)
    return ds / "poisTs"


def test_point_reference_against_a_segmentation_only_model(tmp_path: Path) -> None:
    ref = _poi_dataset(tmp_path)
    pred = _masks_only_prediction(tmp_path / "pred")
    out = tmp_path / "out"
    out.mkdir()
    (out / "points.csv").write_text("stale\n")  # from an earlier evaluation into the same folder
    summary = evaluate_folders(ref, pred, out)

    # no reference point is counted as missing, no TRE is reported: the model predicts none
    assert summary["points"] is None
    assert summary["points_not_scored"].startswith("no points predicted")
    assert str(pred) in summary["points_not_scored"] and "2 reference point file(s)" in summary["points_not_scored"]
    assert summary["cases"] == {"n_ref": 2, "n_pred": 2, "n_scored": 2, "missing": [], "extra": []}
    seg = summary["segmentation"]
    assert seg["per_case"]["a"]["labels"]["1"]["dice"] == pytest.approx(0.5)
    assert seg["inverse_frequency_weighted_dice"]["mean"] == pytest.approx((WEIGHTED_A + 1) / 2)
    assert not (out / "points.csv").exists()
    table = format_table(summary)
    assert table.startswith("points not scored: no points predicted")
    assert "missing" not in table and "TRE" not in table and "segmentation (2 cases" in table

    # the nnunet trainer's validation: poisTr restricted to a fold, against its masks-only predictions
    assert evaluate_folders(ref, pred, tmp_path / "fold", cases=["a"])["cases"]["n_scored"] == 1


def test_masks_on_another_grid_are_an_error_naming_both_files(tmp_path: Path) -> None:
    ref = _clicks_dataset(tmp_path)
    pred = tmp_path / "pred"
    _label_map(pred / "a.nii.gz", REF_A, spacing=(2.0, 1.0, 1.0))
    with pytest.raises(PoiNnunetError) as exc:
        evaluate_folders(ref, pred, tmp_path / "out")
    assert str(pred / "a.nii.gz") in str(exc.value) and str(ref / "a.nii.gz") in str(exc.value)


def test_errors_name_the_folder_when_there_is_nothing_to_compare(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture) -> None:
    ref = _clicks_dataset(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(PoiNnunetError, match=re.escape(f"prediction folder {empty}: nothing to evaluate")):
        evaluate_folders(ref, empty, tmp_path / "out")
    with pytest.raises(PoiNnunetError, match=re.escape(f"reference folder {empty}: nothing to evaluate")):
        evaluate_folders(empty, _masks_only_prediction(tmp_path / "pred"), tmp_path / "out")

    # masks-only reference, prediction of points only
    points_only = tmp_path / "points_only"
    write_poi_file(points_only / "a.json", PoiSet([Poi(1, 1, (0.0, 3.0, 12.0))]))
    with pytest.raises(PoiNnunetError, match="no masks") as exc:
        evaluate_folders(ref, points_only, tmp_path / "out")
    assert str(points_only) in str(exc.value)

    # landmark-only reference (points, no masks), masks-only prediction
    landmarks = tmp_path / "landmarks"
    write_poi_file(landmarks / "a.json", PoiSet([Poi(1, 1, (0.0, 3.0, 12.0))]))
    with pytest.raises(PoiNnunetError, match="nothing to compare") as exc:
        evaluate_folders(landmarks, tmp_path / "pred", tmp_path / "out")
    assert str(landmarks) in str(exc.value)

    # masks on both sides, none of the same case
    other = tmp_path / "other"
    _label_map(other / "q.nii.gz", REF_A)
    with pytest.raises(PoiNnunetError, match="no matching cases") as exc:
        evaluate_folders(ref, other, tmp_path / "out")
    assert str(ref) in str(exc.value) and str(other) in str(exc.value)

    # the dataset folder itself instead of one of its folders
    (ref.parent / "imagesTr").mkdir()
    assert main(["-ref", str(ref.parent), "-pred", str(tmp_path / "pred")]) == 2
    assert "labelsTr_reference" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # nothing written for any of these

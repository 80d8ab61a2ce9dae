"""The uv trainer's used-by path, tiny: plan -> poi_train uv -> poi_predict -tr uv [--add-points] -> poi_evaluate.

2D on the X-ray phantom (whole-image mode) and 3D on the spine phantom (structure mode), each with a
couple of iterations: the path and its outputs, not accuracy (benchmarks measure that). The added
points' template coordinates are checked against the plans' template itself: a point added exactly
where a trained POI lies must get that POI's template coordinate.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict

import numpy as np
import pytest

from poi_nnunet.cli.evaluate import main as evaluate_main
from poi_nnunet.cli.predict import main as predict_main
from poi_nnunet.cli.train import main as train_main
from poi_nnunet.inference.added_points import added_template_points
from poi_nnunet.plan import PoiPlan
from poi_nnunet.pois import PoiSet, read_poi_file, write_poi_file
from tests.factories import planned_xray_and_spine, use_nnunet_folders

SHORT = ["-device", "cpu", "--epochs", "2", "--iterations_per_epoch", "2"]


@pytest.fixture(scope="module")
def planned(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Path]:
    return planned_xray_and_spine(tmp_path_factory.mktemp("uv"), 521, 522, xray_cases=6, spine_cases=4, num_test=2,
                                  xray_shape=(64, 64), spine_shape=(40, 32, 32))


@pytest.fixture
def env(planned: Dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> Dict[str, Path]:
    use_nnunet_folders(planned, monkeypatch)
    return planned


def _plan(env: Dict[str, Path], name: str, config: str) -> PoiPlan:
    plans = json.loads((env["nnUNet_preprocessed"] / name / "poiPlans.json").read_text())
    return PoiPlan.from_block(plans["configurations"][config]["poi"])


def test_uv_trains_predicts_every_template_point_and_evaluates_in_2d(env: Dict[str, Path], tmp_path: Path) -> None:
    assert train_main(["521", "2d", "uv", "-f", "0", *SHORT]) == 0
    fold = env["nnUNet_results"] / "Dataset521_Xray" / "PoiUvTrainer__poiPlans__2d" / "fold_0"
    assert (fold / "checkpoint_final.pth").is_file()
    assert (fold / "validation" / "evaluation" / "summary.json").is_file()
    raw = env["nnUNet_raw"] / "Dataset521_Xray"
    out = tmp_path / "pred"
    assert predict_main(["-i", str(raw / "imagesTs"), "-o", str(out), "-d", "521", "-c", "2d", "-tr", "uv",
                         "-f", "0", "-device", "cpu", "--min_confidence", "0", "--no_pbar"]) == 0
    templates = _plan(env, "Dataset521_Xray", "2d").uv_templates
    expected = {(t.structure, p) for t in templates for p in t.pois}
    for case in sorted(p.stem for p in (raw / "poisTs").glob("*.json")):
        assert (out / f"{case}.nii.gz").is_file() and (out / f"{case}.mrk.json").is_file()
        written = set(read_poi_file(out / f"{case}.json").keys())
        dropped = {(d["structure"], d["poi"]) for d in json.loads((out / "dropped_points.json").read_text())
                   .get("cases", {}).get(case, [])} if (out / "dropped_points.json").is_file() else set()
        assert written | dropped == expected  # every template point is written, or reported with its reason
    assert evaluate_main(["-ref", str(raw / "poisTs"), "-pred", str(out), "-o", str(tmp_path / "eval")]) == 0


def test_added_points_get_their_template_coordinates_and_are_predicted(env: Dict[str, Path], tmp_path: Path) -> None:
    name = "Dataset521_Xray"
    fold = env["nnUNet_results"] / name / "PoiUvTrainer__poiPlans__2d" / "fold_0"
    if not (fold / "checkpoint_final.pth").is_file():
        assert train_main(["521", "2d", "uv", "-f", "0", *SHORT, "--no_validation"]) == 0
    raw = env["nnUNet_raw"] / name
    case = sorted(p.stem for p in (raw / "poisTr").glob("*.json"))[0]
    trained = read_poi_file(raw / "poisTr" / f"{case}.json")
    templates = _plan(env, name, "2d").uv_templates
    template = templates.templates[0]
    chosen = [p for p in trained if p.structure == template.structure and p.poi in template.pois][5:8]
    added = PoiSet([type(p)(p.structure, 90000 + p.poi, p.position) for p in chosen])
    points_file = tmp_path / f"{case}.json"
    write_poi_file(points_file, added)

    # a point placed where trained POI k lies gets POI k's template coordinate
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
    plans = json.loads((env["nnUNet_preprocessed"] / name / "poiPlans.json").read_text())
    config = plans["configurations"]["2d"]
    folder = env["nnUNet_preprocessed"] / name / config["data_identifier"]
    _, seg, _, _ = infer_dataset_class(str(folder))(str(folder), [case]).load_case(case)
    mapped = added_template_points(points_file, templates, folder, np.asarray(config["spacing"]), np.asarray(seg)[0])
    pois, uv = mapped[template.structure]
    assert pois == [90000 + p.poi for p in chosen]
    assert np.abs(uv - template.uv_of([p.poi for p in chosen])).max() < 1e-3

    out = tmp_path / "pred"
    assert predict_main(["-i", str(raw / "imagesTs"), "-o", str(out), "-d", "521", "-c", "2d", "-tr", "uv", "-f", "0",
                         "-device", "cpu", "--min_confidence", "0", "--no_pbar", "--add-points", str(points_file)]) == 0
    for test_case in sorted(p.stem for p in (raw / "poisTs").glob("*.json")):
        keys = set(read_poi_file(out / f"{test_case}.json").keys())
        assert {(template.structure, 90000 + p.poi) for p in chosen} <= keys, test_case


def test_added_point_outside_its_structure_is_a_clear_error(env: Dict[str, Path], tmp_path: Path,
                                                            capsys: pytest.CaptureFixture) -> None:
    name = "Dataset521_Xray"
    fold = env["nnUNet_results"] / name / "PoiUvTrainer__poiPlans__2d" / "fold_0"
    if not (fold / "checkpoint_final.pth").is_file():
        assert train_main(["521", "2d", "uv", "-f", "0", *SHORT, "--no_validation"]) == 0
    raw = env["nnUNet_raw"] / name
    case = sorted(p.stem for p in (raw / "poisTr").glob("*.json"))[0]
    template = _plan(env, name, "2d").uv_templates.templates[0]
    corner = read_poi_file(raw / "poisTr" / f"{case}.json").points[0]
    far = type(corner)(template.structure, 91234, tuple(-1000.0 for _ in corner.position))
    points_file = tmp_path / f"{case}.json"
    write_poi_file(points_file, PoiSet([far]))
    code = predict_main(["-i", str(raw / "imagesTs"), "-o", str(tmp_path / "p"), "-d", "521", "-c", "2d", "-tr", "uv",
                         "-f", "0", "-device", "cpu", "--no_pbar", "--add-points", str(points_file)])
    assert code == 2
    assert "point 91234 of structure" in capsys.readouterr().err


def test_uv_trains_and_predicts_in_3d_structure_mode(env: Dict[str, Path]) -> None:
    plan = _plan(env, "Dataset522_Spine", "3d_fullres")
    assert plan.structure_mode and plan.uv_templates.dim == 3
    assert train_main(["522", "3d_fullres", "uv", "-f", "all", "-device", "cpu", "--epochs", "1",
                       "--iterations_per_epoch", "1"]) == 0
    fold = env["nnUNet_results"] / "Dataset522_Spine" / "PoiUvTrainer__poiPlans__3d_fullres" / "fold_all"
    log = next(fold.glob("training_log*.txt")).read_text()
    assert "uv_l1" in log and "uv_lm" in log and "uv_tv" in log
    # the end-of-training validation predicted every training case with the uv predictor and evaluated it
    assert (fold / "validation" / "evaluation" / "summary.json").is_file()
    assert len(list((fold / "validation").glob("*.mrk.json"))) == 4

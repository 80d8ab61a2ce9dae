"""The used-by path, tiny: poi_plan_and_preprocess -> poi_train -> poi_predict -> poi_evaluate.

Runs on the 2D X-ray phantom (whole-image mode), on a landmark-only dataset
made by the CSV converter, and on the 3D spine phantom (structure mode), each
with a couple of training iterations: these tests check that the path works
and its outputs are complete, not accuracy (benchmarks measure that).
"""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Dict

import pytest
import SimpleITK as sitk
import torch

from dataset_conversion.synthetic_spine import write_spine_dataset
from dataset_conversion.synthetic_xray import write_xray_dataset
from poi_nnunet.cli.convert import main as convert_main
from poi_nnunet.cli.evaluate import main as evaluate_main
from poi_nnunet.cli.plan_and_preprocess import main as plan_main
from poi_nnunet.cli.predict import main as predict_main
from poi_nnunet.cli.train import main as train_main
from poi_nnunet.geometry import ImageGeometry
from poi_nnunet.pois import read_poi_file
from tests.factories import use_nnunet_folders

SHORT = ["-device", "cpu", "--epochs", "2", "--iterations_per_epoch", "2"]


def _folders(base: Path) -> Dict[str, Path]:
    env = {"nnUNet_raw": base / "raw", "nnUNet_preprocessed": base / "pre", "nnUNet_results": base / "res"}
    for path in env.values():
        path.mkdir()
    return env


def _landmark_table(xray: Path, table: Path, pois: int = 12) -> None:
    """A CSV landmark table (mm) for the phantom's training images: a landmark-only dataset's raw input."""
    rows = []
    for poi_file in sorted((xray / "poisTr").glob("*.json")):
        points = {p.poi: p.position for p in read_poi_file(poi_file)}
        row = {"image": str(xray / "imagesTr" / f"{poi_file.stem}_0000.nii.gz")}
        for i in range(1, pois + 1):
            x, y = points.get(i * 13, ("", ""))
            row[f"x_{i}"], row[f"y_{i}"] = x, y
        rows.append(row)
    with table.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


@pytest.fixture(scope="module")
def planned(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Path]:
    """Three planned datasets: 503 X-ray, 504 landmark-only (CSV), 505 spine."""
    base = tmp_path_factory.mktemp("train")
    env = _folders(base)
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, str(v))
        xray = write_xray_dataset(env["nnUNet_raw"] / "Dataset503_Xray", num_cases=6, num_test=2, shape=(64, 64))
        _landmark_table(xray, base / "landmarks.csv")
        assert convert_main(["csv", str(base / "landmarks.csv"), "-d", "504", "-n", "Landmarks", "--units", "mm"]) == 0
        write_spine_dataset(env["nnUNet_raw"] / "Dataset505_Spine", num_cases=5, num_test=1, shape=(40, 32, 32))
        for dataset, config in (("503", "2d"), ("504", "2d"), ("505", "3d_fullres")):
            assert plan_main(["-d", dataset, "-c", config, "-np", "1", "-npfp", "1", "--no_pbar"]) == 0
    return env


@pytest.fixture
def env(planned: Dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> Dict[str, Path]:
    use_nnunet_folders(planned, monkeypatch)
    return planned


def _fold(env: Dict[str, Path], dataset: str, config: str, fold: str = "fold_0") -> Path:
    return env["nnUNet_results"] / dataset / f"PoiHeatmapTrainer__poiPlans__{config}" / fold


def test_train_predict_evaluate_on_the_xray_phantom(env: Dict[str, Path], tmp_path: Path) -> None:
    torch.manual_seed(0)
    assert train_main(["503", "2d", "heatmap", "-f", "0", *SHORT]) == 0
    fold = _fold(env, "Dataset503_Xray", "2d")
    assert (fold / "checkpoint_final.pth").is_file()
    log = "".join(p.read_text() for p in fold.glob("training_log_*.txt"))
    # progress a user can read: epoch and iteration out of the total, time left, the POI loss by name
    assert "epoch 1/2 (iteration 2/4) | elapsed" in log and "epoch 2/2 (iteration 4/4)" in log
    assert "about 0s left | loss " in log and "poi_loss" in log.split("epoch 2/2")[1].splitlines()[0]
    summary = json.loads((fold / "validation" / "evaluation" / "summary.json").read_text())
    assert summary["cases"]["n_ref"] >= 1 and summary["cases"]["missing"] == []

    raw = env["nnUNet_raw"] / "Dataset503_Xray"
    out = tmp_path / "pred"
    assert predict_main(["-i", str(raw / "imagesTs"), "-o", str(out), "-d", "503", "-c", "2d", "-tr", "heatmap",
                         "-f", "0", "-device", "cpu", "--no_pbar"]) == 0
    for image in sorted((raw / "imagesTs").glob("*_0000.nii.gz")):
        case = image.name[: -len("_0000.nii.gz")]
        geo = ImageGeometry.from_file(image)
        for point in read_poi_file(out / f"{case}.json"):
            assert geo.contains_world(point.position)
        assert ImageGeometry.from_file(out / f"{case}.nii.gz").same_grid(geo)
    assert evaluate_main(["-ref", str(raw / "poisTs"), "-pred", str(out), "-q"]) == 0
    summary = json.loads((out / "evaluation" / "summary.json").read_text())
    assert summary["cases"]["n_ref"] == 2
    assert summary["points"]["overall"]["n_ref"] == sum(len(read_poi_file(p)) for p in (raw / "poisTs").glob("*.json"))


def test_continue_training_resumes_from_the_checkpoint(env: Dict[str, Path]) -> None:
    assert train_main(["503", "2d", "heatmap", "-f", "1", *SHORT, "--no_validation"]) == 0
    fold = _fold(env, "Dataset503_Xray", "2d", "fold_1")
    assert torch.load(fold / "checkpoint_final.pth", weights_only=False)["current_epoch"] == 2
    assert train_main(["503", "2d", "heatmap", "-f", "1", "-device", "cpu", "--epochs", "3",
                       "--iterations_per_epoch", "2", "--c", "--no_validation"]) == 0
    assert torch.load(fold / "checkpoint_final.pth", weights_only=False)["current_epoch"] == 3


def test_landmark_only_dataset_trains_and_predicts(env: Dict[str, Path], tmp_path: Path) -> None:
    assert train_main(["504", "2d", "heatmap", "-f", "0", *SHORT]) == 0
    raw = env["nnUNet_raw"] / "Dataset504_Landmarks"
    out = tmp_path / "pred"
    assert predict_main(["-i", str(raw / "imagesTr"), "-o", str(out), "-d", "504", "-c", "2d", "-tr", "heatmap",
                         "-f", "0", "-device", "cpu", "--no_pbar", "--min_confidence", "0"]) == 0
    cases = sorted(p.stem for p in (raw / "poisTr").glob("*.json"))
    assert all((out / f"{case}.json").is_file() and (out / f"{case}.mrk.json").is_file() for case in cases)
    assert not list(out.glob("*.nii.gz")), "a landmark-only model writes no segmentation"
    points = read_poi_file(out / f"{cases[0]}.json")
    assert {p.structure for p in points} == {0}
    assert 0 < len(points) <= 12  # a barely trained model may place a few outside the image: those are dropped


def test_structure_mode_heatmap_training_on_the_spine(env: Dict[str, Path]) -> None:
    plans = json.loads((env["nnUNet_preprocessed"] / "Dataset505_Spine" / "poiPlans.json").read_text())
    assert plans["configurations"]["3d_fullres"]["poi"]["crop_mode"] == "structure_with_neighbours"
    assert train_main(["505", "3d_fullres", "heatmap", "-f", "0", "-device", "cpu", "--epochs", "1",
                       "--iterations_per_epoch", "1"]) == 0
    validation = _fold(env, "Dataset505_Spine", "3d_fullres") / "validation"
    assert (validation / "evaluation" / "summary.json").is_file()
    assert list(validation.glob("*.nii.gz")), "structure mode decodes within predicted segmentations"


def test_unknown_trainer_and_unplanned_dataset_are_clear_errors(env: Dict[str, Path],
                                                                capsys: pytest.CaptureFixture) -> None:
    assert train_main(["503", "2d", "nosuchtrainer", "-device", "cpu"]) == 2
    assert "unknown trainer 'nosuchtrainer'" in capsys.readouterr().err
    assert train_main(["503", "3d_lowres", "heatmap", "-device", "cpu"]) == 2
    assert "no configuration '3d_lowres'" in capsys.readouterr().err
    assert train_main(["999", "2d", "heatmap", "-device", "cpu"]) == 2
    err = capsys.readouterr().err  # says what is missing and where it was looked for, not only what to run
    assert "no Dataset999_* folder in $nnUNet_raw (" in err and "poi_convert" in err


def test_nnunet_baseline_trains_with_the_same_command_on_the_same_plans(env: Dict[str, Path]) -> None:
    """``poi_train 503 2d nnunet``: nnU-Net's own trainer, unchanged, in nnU-Net's results layout."""
    assert train_main(["503", "2d", "nnunet", "-f", "0", *SHORT, "--no_validation"]) == 0
    fold = env["nnUNet_results"] / "Dataset503_Xray" / "nnUNetTrainer__poiPlans__2d" / "fold_0"
    checkpoint = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert checkpoint["trainer_name"] == "nnUNetTrainer"
    # segmentation only: its last layer has one output per label (background + 5 structures), no heatmaps
    last = [v for k, v in checkpoint["network_weights"].items() if k.endswith("seg_layers.0.weight")]
    assert last and all(w.shape[0] == 6 for w in last)

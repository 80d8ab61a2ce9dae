"""poi_predict end to end on a tiny planned X-ray phantom with untrained (initialised, saved) folds:
valid outputs for every case, fold ensembling, mirror-aware test-time augmentation, the preprocessed
path used after training, skipping and overwriting, and the errors a user can cause."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Dict

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from torch import nn

from dataset_conversion.synthetic_xray import write_xray_dataset
from poi_nnunet.cli.plan_and_preprocess import main as plan_main
from poi_nnunet.cli.predict import main
from poi_nnunet.geometry import ImageGeometry, PreprocessedSpace
from poi_nnunet.inference import PoiPredictor, predict_input_cases, predict_preprocessed_cases
from poi_nnunet.trained_models import load_poi_model
from poi_nnunet.inference.inputs import list_input_cases
from poi_nnunet.markups import read_markups_json
from poi_nnunet.pois import read_poi_file

XRAY = "Dataset502_Xray"
FOLDER = "PoiHeatmapTrainer__poiPlans__2d"
ARGS = ["-d", "502", "-c", "2d", "-tr", "heatmap", "-device", "cpu", "--no_pbar"]


def _save_untrained_fold(fold: int) -> None:
    """What poi_train leaves behind, without the training: plans, dataset.json and a checkpoint."""
    from poi_nnunet.trainer_factory import build_trainer

    trainer = build_trainer("502", "2d", "heatmap", fold, "poiPlans", device="cpu")
    trainer.initialize()
    trainer.configure_rotation_dummyDA_mirroring_and_inital_patch_size()  # sets the inference mirror axes
    os.makedirs(trainer.output_folder, exist_ok=True)
    trainer.save_checkpoint(os.path.join(trainer.output_folder, "checkpoint_final.pth"))
    base = Path(trainer.output_folder_base)
    (base / "plans.json").write_text(json.dumps(trainer.plans_manager.plans))
    (base / "dataset.json").write_text(json.dumps(trainer.dataset_json))


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Path]:
    base = tmp_path_factory.mktemp("predict")
    env = {"nnUNet_raw": base / "raw", "nnUNet_preprocessed": base / "pre", "nnUNet_results": base / "res"}
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            v.mkdir()
            mp.setenv(k, str(v))
        write_xray_dataset(env["nnUNet_raw"] / XRAY, num_cases=3, num_test=2, shape=(64, 64))
        assert plan_main(["-d", "502", "-c", "2d", "-np", "1", "-npfp", "1", "--no_pbar"]) == 0
        mp.setenv("nnUNet_n_proc_DA", "0")
        mp.setenv("nnUNet_def_n_proc", "1")
        for fold in (0, 1):
            torch.manual_seed(fold)
            _save_untrained_fold(fold)
    return env


@pytest.fixture
def env(built: Dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> Dict[str, Path]:
    for k, v in built.items():
        monkeypatch.setenv(k, str(v))
    monkeypatch.setenv("nnUNet_n_proc_DA", "0")
    monkeypatch.setenv("nnUNet_def_n_proc", "1")
    return {**built, "images_ts": built["nnUNet_raw"] / XRAY / "imagesTs", "model": built["nnUNet_results"] / XRAY / FOLDER}


def _no_partial_files(folder: Path) -> None:
    assert not [p.name for p in folder.iterdir() if p.name.startswith(".") or p.name.endswith(".part")]


# ----------------------------------------------------------------------------------------------- end to end
def test_poi_predict_writes_valid_outputs_for_every_case(env, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert main(["-i", str(env["images_ts"]), "-o", str(out), *ARGS, "--min_confidence", "0"]) == 0
    channels = len(json.loads((env["model"] / "plans.json").read_text())["configurations"]["2d"]["poi"]["poi_channels"])
    cases = sorted(p.name[: -len("_0000.nii.gz")] for p in env["images_ts"].iterdir())
    assert len(cases) == 2
    for case in cases:
        image = env["images_ts"] / f"{case}_0000.nii.gz"
        geo = ImageGeometry.from_file(image)
        pois = read_poi_file(out / f"{case}.json")
        # with no minimum confidence every channel gives a point, unless an (untrained) fit ran off the image
        assert channels // 2 <= len(pois) <= channels
        assert pois.dim == 2
        assert all(geo.contains_world(p.position) for p in pois)
        assert all(p.confidence is not None and 0 <= p.confidence <= 1 for p in pois)
        markups = read_markups_json(out / f"{case}.mrk.json")
        assert len(markups) == len(pois)
        by_key = pois.by_key()
        for m in markups:
            p = by_key[(m.extra["structure"], m.extra["poi"])]
            np.testing.assert_allclose(m.position[:2], p.position, atol=1e-9)
        seg = ImageGeometry.from_file(out / f"{case}.nii.gz")
        assert seg.same_grid(geo), seg.describe_difference(geo)
    assert json.loads((out / "dataset.json").read_text())["file_ending"] == ".nii.gz"
    assert json.loads((out / "predict_from_raw_data_args.json").read_text())["folds"] == [0, 1]
    _no_partial_files(out)

    from poi_nnunet.evaluation import evaluate_folders

    summary = evaluate_folders(env["nnUNet_raw"] / XRAY / "poisTs", out, out_dir=tmp_path / "evaluation")
    assert summary is not None


def test_existing_outputs_are_skipped_unless_overwrite(env, tmp_path: Path, capsys) -> None:
    images = tmp_path / "in"
    images.mkdir()
    shutil.copy(env["images_ts"] / "xray_003_0000.nii.gz", images)
    out = tmp_path / "out"
    fast = ["-f", "0", "--disable_tta"]
    assert main(["-i", str(images), "-o", str(out), *ARGS, *fast]) == 0
    stamp = {p.name: p.stat().st_mtime_ns for p in out.glob("xray_003*")}
    assert set(stamp) == {"xray_003.json", "xray_003.mrk.json", "xray_003.nii.gz"}
    capsys.readouterr()
    assert main(["-i", str(images), "-o", str(out), *ARGS, *fast]) == 0
    assert "already predicted" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("xray_003*")} == stamp
    (out / "xray_003.mrk.json").unlink()  # an unfinished case is predicted again
    assert main(["-i", str(images), "-o", str(out), *ARGS, *fast]) == 0
    assert (out / "xray_003.mrk.json").is_file()
    assert main(["-i", str(images), "-o", str(out), *ARGS, *fast, "--overwrite"]) == 0
    assert all(stamp[p.name] != p.stat().st_mtime_ns for p in out.glob("xray_003*"))
    _no_partial_files(out)


# ----------------------------------------------------------------------------------------------- ensembling
def _preprocessed_case(predictor: PoiPredictor, env, case: str = "xray_003"):
    from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor

    files = [str(env["images_ts"] / f"{case}_0000.nii.gz")]
    data, _, props = DefaultPreprocessor(verbose=False).run_case(files, None, predictor.plans_manager,
                                                                 predictor.configuration_manager,
                                                                 predictor.dataset_json)
    space = PreprocessedSpace.from_nnunet_properties(props, predictor.plans_manager.transpose_forward,
                                                     data.shape[1:])
    return torch.from_numpy(data), space


def test_fold_ensemble_averages_the_folds_outputs(env) -> None:
    both = load_poi_model("502", "2d", "heatmap", folds=[0, 1], device="cpu", use_mirroring=False)
    assert both.folds == [0, 1] and len(both.list_of_parameters) == 2
    data, space = _preprocessed_case(both, env)
    ensemble = both.predict_logits_from_preprocessed_data(data).float()
    singles = [load_poi_model("502", "2d", "heatmap", folds=[f], device="cpu", use_mirroring=False)
               .predict_logits_from_preprocessed_data(data).float() for f in (0, 1)]
    assert ensemble.shape[0] == both.num_outputs > both.num_segmentation_outputs
    assert not torch.allclose(singles[0], singles[1], atol=1e-2)  # two different parameter sets
    torch.testing.assert_close(ensemble, (singles[0] + singles[1]) / 2, atol=2e-2, rtol=1e-2)  # fp16 accumulation
    prediction = both.predict_case(data, space)
    assert prediction.heatmaps.shape == (both.layout.num_channels, *data.shape[1:])


class _MirrorConsistent(nn.Module):
    """A network whose outputs obey the dataset's mirror pairs: a channel whose partner comes later sees
    only the left half of the patch, its partner the right half, self-paired channels all of it.
    Mirroring such a network, with partners exchanged, changes nothing."""

    def __init__(self, permutation: np.ndarray, lr_axis: int):
        super().__init__()
        self.permutation = permutation
        self.lr_axis = lr_axis

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[2 + self.lr_axis]
        coord = torch.arange(size, dtype=x.dtype).reshape([-1 if d == self.lr_axis else 1 for d in range(x.ndim - 2)])
        left = (coord < size / 2).to(x.dtype)
        right = left.flip(self.lr_axis)
        image = x[:, :1] + 2.0  # the image itself is not mirror-symmetric
        outs = []
        for c, partner in enumerate(self.permutation):
            mask = left if c < partner else right if c > partner else torch.ones_like(left)
            outs.append(image * mask)
        return torch.cat(outs, 1)


def test_mirroring_exchanges_left_right_partners(env) -> None:
    predictor = load_poi_model("502", "2d", "heatmap", folds=[0], device="cpu", use_mirroring=True)
    assert predictor.allowed_mirroring_axes == (0, 1)
    perm = predictor.mirror_permutation
    assert perm is not None and not np.array_equal(perm, np.arange(len(perm)))
    data, space = _preprocessed_case(predictor, env)
    predictor.set_case_space(space)
    assert predictor.left_right_axis == 1  # the image's x axis; a 2d network's axes are (y, x)
    network = _MirrorConsistent(perm, predictor.left_right_axis)
    predictor.network = network
    predictor.list_of_parameters = [network.state_dict()]
    mirrored = predictor.predict_logits_from_preprocessed_data(data).float()
    predictor.use_mirroring = False
    plain = predictor.predict_logits_from_preprocessed_data(data).float()
    torch.testing.assert_close(mirrored, plain, atol=2e-2, rtol=1e-2)
    predictor.use_mirroring, saved, predictor.mirror_permutation = True, predictor.mirror_permutation, None
    naive = predictor.predict_logits_from_preprocessed_data(data).float()  # nnU-Net's plain average
    assert (naive - plain).abs().max() > 0.5
    predictor.mirror_permutation = saved


# ----------------------------------------------------------------------------------------------- after training
def test_preprocessed_cases_and_trainer_predictor_match_raw_prediction(env, tmp_path: Path) -> None:
    from poi_nnunet.trainer_factory import build_trainer

    raw_out, pre_out = tmp_path / "raw", tmp_path / "pre"
    predictor = load_poi_model("502", "2d", "heatmap", folds=[0], device="cpu", use_mirroring=False,
                               min_confidence=0.0)
    train_images = env["nnUNet_raw"] / XRAY / "imagesTr"
    cases = [c for c in list_input_cases(train_images, ".nii.gz", 1) if c.case == "xray_000"]
    assert predict_input_cases(predictor, cases, raw_out, progress=False) == ["xray_000"]

    trainer = build_trainer("502", "2d", "heatmap", 0, "poiPlans", device="cpu")
    trainer.initialize()
    checkpoint = torch.load(env["model"] / "fold_0" / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    trainer.network.load_state_dict(checkpoint["network_weights"])
    from_trainer = PoiPredictor.from_trainer(trainer, use_mirroring=False, min_confidence=0.0)
    folder = env["nnUNet_preprocessed"] / XRAY / "poiPlans_2d"
    assert predict_preprocessed_cases(from_trainer, folder, ["xray_000"], pre_out) == ["xray_000"]

    a, b = read_poi_file(raw_out / "xray_000.json"), read_poi_file(pre_out / "xray_000.json")
    assert len(a) > 0 and a.keys() == b.keys()
    np.testing.assert_allclose(a.positions(), b.positions(), atol=1e-3)
    seg_a = sitk.GetArrayFromImage(sitk.ReadImage(str(raw_out / "xray_000.nii.gz")))
    seg_b = sitk.GetArrayFromImage(sitk.ReadImage(str(pre_out / "xray_000.nii.gz")))
    assert (seg_a == seg_b).mean() > 0.999
    assert read_markups_json(pre_out / "xray_000.mrk.json")
    assert json.loads((pre_out / "dataset.json").read_text())["file_ending"] == ".nii.gz"  # for poi_evaluate


# ----------------------------------------------------------------------------------------------- errors
def _err(capsys) -> str:
    return capsys.readouterr().err


def test_missing_model_folder_is_a_clear_error(env, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    assert main(["-i", str(env["images_ts"]), "-o", str(out), "-d", "502", "-c", "3d_fullres", "-tr", "heatmap",
                 "-device", "cpu"]) == 2
    err = _err(capsys)
    assert "PoiHeatmapTrainer__poiPlans__3d_fullres" in err and "poi_train" in err and "Traceback" not in err
    assert main(["-i", str(env["images_ts"]), "-o", str(out), "-d", "777", "-c", "2d", "-tr", "heatmap"]) == 2
    assert "777" in _err(capsys)
    assert main(["-i", str(env["images_ts"]), "-o", str(out), *ARGS, "-f", "3"]) == 2
    err = _err(capsys)
    assert "fold_3" in err and "poi_train" in err
    assert main(["-i", str(env["images_ts"]), "-o", str(out), *ARGS, "-chk", "checkpoint_best.pth"]) == 2
    assert "checkpoint_best.pth" in _err(capsys)
    assert not out.exists() or not list(out.iterdir())


def test_wrong_channel_count_names_the_case_and_files(env, tmp_path: Path, capsys) -> None:
    images = tmp_path / "in"
    images.mkdir()
    shutil.copy(env["images_ts"] / "xray_003_0000.nii.gz", images / "xray_003_0000.nii.gz")
    shutil.copy(env["images_ts"] / "xray_003_0000.nii.gz", images / "xray_003_0001.nii.gz")
    shutil.copy(env["images_ts"] / "xray_004_0000.nii.gz", images / "xray_004_0001.nii.gz")
    assert main(["-i", str(images), "-o", str(tmp_path / "out"), *ARGS]) == 2
    err = _err(capsys)
    assert "'xray_003' has 2 channel file(s)" in err and "xray_003_0001.nii.gz" in err
    assert "'xray_004' has 1 channel file(s) (xray_004_0001.nii.gz)" in err and "takes 1" in err


def test_input_folder_problems_are_clear_errors(env, tmp_path: Path, capsys) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["-i", str(empty), "-o", str(tmp_path / "out"), *ARGS]) == 2
    assert "no input images" in _err(capsys)
    assert main(["-i", str(tmp_path / "missing"), "-o", str(tmp_path / "out"), *ARGS]) == 2
    assert "does not exist" in _err(capsys)
    badly_named = tmp_path / "named"
    badly_named.mkdir()
    shutil.copy(env["images_ts"] / "xray_003_0000.nii.gz", badly_named / "xray_003.nii.gz")
    assert main(["-i", str(badly_named), "-o", str(tmp_path / "out"), *ARGS]) == 2
    assert "xray_003.nii.gz: not named <case>_XXXX.nii.gz" in _err(capsys)


def test_image_dimensionality_must_match_the_model(env, tmp_path: Path, capsys) -> None:
    images = tmp_path / "in"
    images.mkdir()
    volume = sitk.GetImageFromArray(np.zeros((5, 64, 64), dtype=np.float32))
    sitk.WriteImage(volume, str(images / "ct_000_0000.nii.gz"))
    assert main(["-i", str(images), "-o", str(tmp_path / "out"), *ARGS]) == 2
    err = _err(capsys)
    assert "'ct_000' is a 3D image but the model was trained on 2D images" in err


def test_a_3d_configuration_refuses_2d_images(tmp_path: Path) -> None:
    from poi_nnunet.errors import InvalidInputError
    from poi_nnunet.inference.inputs import InputCase, check_dimensionality

    path = tmp_path / "x_0000.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((8, 8), dtype=np.float32)), str(path))
    with pytest.raises(InvalidInputError, match="2D image but configuration '3d_fullres' is 3D"):
        check_dimensionality([InputCase("x", [str(path)])], "3d_fullres", 3, False)


# ----------------------------------------------------------------------------------------------- modes
class _Identity(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.clone()


def _plans_and_dataset(env) -> tuple:
    plans = json.loads((env["model"] / "plans.json").read_text())
    dataset_json = json.loads((env["model"] / "dataset.json").read_text())
    return plans, dataset_json


def test_structure_mode_decodes_inside_each_predicted_structure(env) -> None:
    """Through the whole predictor (sliding window, full-width accumulation, argmax in preprocessed space,
    per-structure boxes): an identity network passes crafted logits and heatmaps through unchanged."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from poi_nnunet.heatmaps import render_gaussian_heatmaps

    plans, dataset_json = _plans_and_dataset(env)
    block = plans["configurations"]["2d"]["poi"]
    block.update(crop_mode="structure_with_neighbours", heatmap_sigma_voxels=[1.5, 1.5],
                 poi_channels=[{"structure": None, "poi": 1, "name": "a"}, {"structure": None, "poi": 2, "name": "b"}])
    dataset_json = {**dataset_json, "labels": {"background": 0, "left": 1, "right": 2}, "pois": {"1": "a", "2": "b"},
                    "channel_names": {str(i): "noNorm" for i in range(5)}, "poi_mirror_pairs": [],
                    "structure_mirror_pairs": []}
    manager = PlansManager(plans)
    predictor = PoiPredictor(device=torch.device("cpu"), use_mirroring=False, allow_tqdm=False)
    predictor.manual_initialization(_Identity(), manager, manager.get_configuration("2d"), [{}], dataset_json,
                                    "PoiHeatmapTrainer", None)
    shape = (1, 80, 70)  # larger than the 64 x 64 patch: several windows
    seg = np.zeros(shape[1:], dtype=int)
    seg[10:30, 8:30] = 1
    seg[45:70, 35:60] = 2
    logits = np.stack([(seg == k).astype(np.float32) * 4 for k in range(3)])[:, None]
    truth = {(1, 1): (14.3, 12.6), (1, 2): (25.2, 24.8), (2, 1): (50.4, 40.7), (2, 2): (63.1, 55.35)}
    heat = torch.zeros(2, *shape[1:])
    for (structure, poi), yx in truth.items():
        heat[poi - 1] += render_gaussian_heatmaps(torch.tensor([[yx]], dtype=torch.float32),
                                                  torch.ones(1, 1, dtype=torch.bool), shape[1:], 1.5, 10.0)[0, 0]
    data = np.concatenate([logits, heat.numpy()[:, None]]).astype(np.float32)
    raw = ImageGeometry((0.0, 0.0), (1.0, 1.0), np.eye(2), (70, 80))
    space = PreprocessedSpace(raw, (0, 1, 2), ((0, 1), (0, 80), (0, 70)), shape, shape)
    prediction = predictor.predict_case(data, space)
    assert (prediction.segmentation[0] == seg).all()
    got = {(int(s), int(p)): pos for s, p, pos in zip(prediction.points.structures, prediction.points.pois,
                                                       prediction.points.positions)}
    assert set(got) == set(truth)
    for key, yx in truth.items():
        np.testing.assert_allclose(got[key], (0.0, *yx), atol=0.02)  # fp16 accumulation of the windows


def test_landmark_only_model_writes_points_without_segmentation(env, tmp_path: Path) -> None:
    """A dataset without labels: one (background) segmentation output, nothing to export as a mask."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from trainers.heatmap import PoiHeatmapTrainer

    plans, dataset_json = _plans_and_dataset(env)
    block = plans["configurations"]["2d"]["poi"]
    block["poi_channels"] = [dict(c, structure=0) for c in block["poi_channels"][:6]]
    dataset_json = {**dataset_json, "labels": {"background": 0}, "poi_mirror_pairs": [[1, 2]],
                    "structure_mirror_pairs": []}
    manager = PlansManager(plans)
    config = manager.get_configuration("2d")
    torch.manual_seed(0)
    network = PoiHeatmapTrainer.build_network_architecture(manager, config, 1, 1, enable_deep_supervision=False)
    predictor = PoiPredictor(device=torch.device("cpu"), allow_tqdm=False, min_confidence=0.0)
    predictor.manual_initialization(network, manager, config, [network.state_dict()], dataset_json,
                                    "PoiHeatmapTrainer", (0, 1))
    assert not predictor.has_segmentation and predictor.num_outputs == 7
    cases = list_input_cases(env["images_ts"], ".nii.gz", 1)[:1]
    predict_input_cases(predictor, cases, tmp_path, progress=False)
    case = cases[0].case
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{case}.json", f"{case}.mrk.json"]
    pois = read_poi_file(tmp_path / f"{case}.json")
    assert {p.structure for p in pois} <= {0} and len(pois) > 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_cuda_without_a_gpu_is_a_clear_error(env, tmp_path: Path, capsys) -> None:
    args = [a for a in ARGS if a not in ("-device", "cpu")]
    assert main(["-i", str(env["images_ts"]), "-o", str(tmp_path / "out"), *args]) == 2
    assert "pass -device cpu" in _err(capsys)

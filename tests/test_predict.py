"""poi_predict end to end on a tiny planned X-ray phantom with untrained (initialised, saved) folds:
outputs for every case (and an evaluation that agrees with distances computed here), fold ensembling,
mirror-aware test-time augmentation, skipping and overwriting, and the errors a user can cause. Where
points must land, a handcrafted network turns dots drawn at known raw voxels into heatmaps, on raw
images of oblique, flipped, anisotropic geometry and on a preprocessed case through the trainer's
predictor, and the written world points are compared with SimpleITK's."""
from __future__ import annotations

import json
import os
import pickle
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
from tests.factories import use_nnunet_folders

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
    use_nnunet_folders(built, monkeypatch)
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

    reference = env["nnUNet_raw"] / XRAY / "poisTs"
    summary = evaluate_folders(reference, out, out_dir=tmp_path / "evaluation")
    # the evaluation's errors against world distances computed here from the two JSON files
    errors, n_ref = [], 0
    for case in cases:
        ref = {(p["structure"], p["poi"]): p["position"] for p in json.loads((reference / f"{case}.json").read_text())["points"]}
        pred = {(p["structure"], p["poi"]): p["position"] for p in json.loads((out / f"{case}.json").read_text())["points"]}
        n_ref += len(ref)
        errors += [float(np.linalg.norm(np.subtract(pred[k], ref[k]))) for k in ref if k in pred]
    overall = summary["points"]["overall"]
    assert (overall["n_ref"], overall["n_matched"]) == (n_ref, len(errors)) and len(errors) > 0
    assert overall["tre_mm"]["mean"] == pytest.approx(np.mean(errors), rel=1e-9)
    assert overall["tre_mm"]["max"] == pytest.approx(np.max(errors), rel=1e-9)


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


# ----------------------------------------------------------------------------------------------- world positions
# A handcrafted network whose heatmaps are bright Gaussian dots the test drew at known raw voxels: the dots
# travel through nnU-Net's preprocessing (crop, transpose, resampling) like any image, so the predicted
# world point must be SimpleITK's world point of the voxel the dot was drawn at. Nothing here calls
# poi_nnunet.geometry: the reference is SimpleITK (and, for a preprocessed case, a hand-written map).
AMPLITUDE = 10.0
# Tolerance, in raw voxels along each index axis. The dots are Gaussians of 2.5 raw voxels (2 preprocessed
# voxels for the preprocessed case), wide enough that nnU-Net's cubic resampling and the float16
# sliding-window accumulation move the fitted peak by under 0.001 raw voxel (measured); 0.02 leaves room
# for that, while a wrong convention (half a voxel, edge- versus centre-aligned resampling, a transposed
# or flipped axis, the crop offset) moves it by 0.2 raw voxels or (much) more.
TOL_RAW_VOXELS = 0.02


class _DotsAreHeatmaps(nn.Module):
    """Heatmap channel ``k`` is input channel ``k`` (``heat_from``: all from one input channel);
    segmentation: label 1 where input channel 0 is above half the dot's height."""

    def __init__(self, heat_from: "int | None" = None, num_heatmaps: "int | None" = None,
                 num_segmentation: int = 2):
        super().__init__()
        self.heat_from, self.num_heatmaps, self.num_segmentation = heat_from, num_heatmaps, num_segmentation
        self.decoder = type("Decoder", (), {"deep_supervision": False})()  # what a trainer switches off

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        foreground = x[:, :1] - AMPLITUDE / 2
        seg = [torch.zeros_like(foreground), foreground] + [torch.zeros_like(foreground)] * (self.num_segmentation - 2)
        heat = x if self.heat_from is None else x[:, self.heat_from:self.heat_from + 1].expand(
            -1, self.num_heatmaps, *x.shape[2:])
        return torch.cat([*seg, heat], 1)


def _gaussian_dot(shape_zyx, centre_zyx, sigma: float) -> np.ndarray:
    grids = np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape_zyx], indexing="ij")
    d2 = sum((g - c) ** 2 for g, c in zip(grids, centre_zyx))
    return AMPLITUDE * np.exp(-d2 / (2 * sigma**2))


def _rotation(axis, angle: float) -> np.ndarray:
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k


# ITK size, spacing, origin, direction, the dots' continuous ITK indices, the non-zero body (ITK index
# box [lo, hi)) that nnU-Net crops to, and the configuration: (name, spacing, patch, transpose_forward).
# Spacings differ from the configuration's on every axis, so every axis is resampled, up or down.
DOT_CASES = {
    "2d": dict(size=(40, 56), spacing=(1.3, 0.7), origin=(-31.5, 17.25),
               direction=np.array([[np.cos(0.5), -np.sin(0.5)], [np.sin(0.5), np.cos(0.5)]]),  # oblique
               dots=[(12.3, 30.6), (27.8, 18.15), (20.45, 41.7)], body=((3, 37), (5, 52)),
               config=("2d", [1.1, 0.8], [64, 64], [0, 1, 2])),
    "3d": dict(size=(14, 40, 28), spacing=(2.2, 0.9, 1.3), origin=(12.0, -40.5, 7.25),
               direction=_rotation([0.3, -0.5, 0.8], 0.6) @ np.diag([1.0, -1.0, 1.0]),  # oblique and flipped
               dots=[(6.4, 14.3, 10.8), (7.9, 27.55, 16.2), (5.35, 20.1, 19.6)], body=((1, 13), (4, 37), (3, 26)),
               # x has the coarsest spacing: nnU-Net's transpose puts it first, (z, y, x) -> (x, z, y)
               config=("3d_fullres", [2.0, 1.0, 1.2], [16, 32, 32], [2, 0, 1])),
}
DOT_SIGMA_RAW_VOXELS = 2.5


def _dot_structure(k: int) -> int:
    """Dot 0 belongs to the segmented body (label 1, see :class:`_DotsAreHeatmaps`); the others to no
    structure, so their peaks are searched in the whole image."""
    return 1 if k == 0 else 0


def _dot_model(env, setup: dict):
    """Plans and dataset.json of a model with one noNorm input channel per dot and one heatmap per dot."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    plans, dataset_json = _plans_and_dataset(env)
    name, spacing, patch, transpose = setup["config"]
    n = len(setup["dots"])
    config = dict(plans["configurations"]["2d"])  # its architecture is never built: the network is handcrafted
    config.update(spacing=spacing, patch_size=patch, normalization_schemes=["NoNormalization"] * n,
                  use_mask_for_norm=[False] * n, data_identifier=f"dots_{name}")
    block = dict(config["poi"])
    block.update(crop_mode="whole_image", heatmap_amplitude=AMPLITUDE, heatmap_sigma_voxels=[2.0] * len(patch),
                 refine_patch_size=[16] * len(patch), crop_size_mm=[100.0] * len(patch),
                 poi_channels=[{"structure": _dot_structure(k), "poi": k + 1, "name": f"dot{k}"} for k in range(n)])
    config["poi"] = block
    intensities = plans["foreground_intensity_properties_per_channel"]["0"]  # read by nnU-Net, unused by noNorm
    plans = {**plans, "configurations": {name: config}, "transpose_forward": transpose,
             "transpose_backward": [int(i) for i in np.argsort(transpose)],
             "foreground_intensity_properties_per_channel": {str(k): intensities for k in range(n)}}
    dataset_json = {**dataset_json, "labels": {"background": 0, "body": 1},
                    "channel_names": {str(k): "noNorm" for k in range(n)},
                    "pois": {str(k + 1): f"dot{k}" for k in range(n)},
                    "poi_mirror_pairs": [], "structure_mirror_pairs": []}
    manager = PlansManager(plans)
    return manager, manager.get_configuration(name), dataset_json


def _write_dot_case(setup: dict, folder: Path, case: str) -> sitk.Image:
    """One ``_000k`` file per dot, inside a non-zero body; returns the last channel (for its geometry)."""
    folder.mkdir(parents=True, exist_ok=True)
    shape_zyx = tuple(setup["size"][::-1])
    body = np.zeros(shape_zyx, dtype=bool)
    body[tuple(slice(lo, hi) for lo, hi in setup["body"][::-1])] = True
    for k, dot in enumerate(setup["dots"]):
        array = _gaussian_dot(shape_zyx, dot[::-1], DOT_SIGMA_RAW_VOXELS) * body
        if k == 0:
            array = array + 1e-3 * body  # a faint body, so that nnU-Net crops exactly to it
        image = sitk.GetImageFromArray(array.astype(np.float32))
        image.SetSpacing(setup["spacing"])
        image.SetOrigin(setup["origin"])
        image.SetDirection(tuple(np.asarray(setup["direction"]).ravel()))
        sitk.WriteImage(image, str(folder / f"{case}_{k:04d}.nii.gz"))
    return image


def _world_points(path: Path) -> Dict[tuple, np.ndarray]:
    return {(p["structure"], p["poi"]): np.asarray(p["position"], float)
            for p in json.loads(path.read_text())["points"]}


@pytest.mark.parametrize("name", sorted(DOT_CASES))
def test_predicted_world_points_are_the_raw_voxels_the_dots_were_drawn_at(env, tmp_path: Path, name: str) -> None:
    """The raw-image path end to end: nnU-Net's preprocessing, sliding window with mirroring, decoding,
    mapping to world mm, writing ``<case>.json`` and exporting the segmentation onto the raw grid."""
    setup = DOT_CASES[name]
    manager, config, dataset_json = _dot_model(env, setup)
    network = _DotsAreHeatmaps()
    predictor = PoiPredictor(device=torch.device("cpu"), use_mirroring=True, allow_tqdm=False, min_confidence=0.0)
    predictor.manual_initialization(network, manager, config, [network.state_dict()], dataset_json,
                                    "PoiHeatmapTrainer", tuple(range(len(config.patch_size))))
    image = _write_dot_case(setup, tmp_path / "in", "dots")
    cases = list_input_cases(tmp_path / "in", ".nii.gz", len(setup["dots"]))
    assert predict_input_cases(predictor, cases, tmp_path / "out", progress=False) == ["dots"]

    found = _world_points(tmp_path / "out" / "dots.json")
    assert sorted(found) == sorted((_dot_structure(k), k + 1) for k in range(len(setup["dots"])))
    for k, dot in enumerate(setup["dots"]):
        truth = np.array(image.TransformContinuousIndexToPhysicalPoint(dot))
        at = np.array(image.TransformPhysicalPointToContinuousIndex(tuple(found[(_dot_structure(k), k + 1)])))
        assert np.max(np.abs(at - dot)) < TOL_RAW_VOXELS, (name, k, at, dot)
        assert np.linalg.norm(found[(_dot_structure(k), k + 1)] - truth) < TOL_RAW_VOXELS * max(setup["spacing"])

    # the segmentation (label 1 on dot 0) comes back on the raw grid, around dot 0's voxel
    seg = sitk.ReadImage(str(tmp_path / "out" / "dots.nii.gz"))
    assert seg.GetSize() == image.GetSize()
    np.testing.assert_allclose(seg.GetSpacing(), image.GetSpacing(), atol=1e-4)
    np.testing.assert_allclose(seg.GetOrigin(), image.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(seg.GetDirection(), image.GetDirection(), atol=1e-4)
    labelled = np.argwhere(sitk.GetArrayFromImage(seg) == 1)[:, ::-1]  # ITK index order
    assert len(labelled) > 0
    np.testing.assert_allclose(labelled.mean(axis=0), setup["dots"][0], atol=0.5)


def _hand_preprocessed(index_xy, properties: dict, shape) -> list:
    """A 2D image's ITK index in nnU-Net's preprocessed array ``(1, y, x)`` (no transpose), by hand:
    minus the crop start, resampled with voxel edges aligned (``(c + 0.5) * new / old - 0.5``)."""
    array = (0.0, index_xy[1], index_xy[0])
    lo = [b[0] for b in properties["bbox_used_for_cropping"]]
    old = properties["shape_after_cropping_and_before_resampling"]
    return [(a - l + 0.5) * n / o - 0.5 for a, l, n, o in zip(array, lo, shape, old)]


def test_preprocessed_case_through_the_trainers_predictor_lands_on_the_raw_voxel(env, tmp_path: Path) -> None:
    """The path used after training: a case nnU-Net preprocessed (with its POI file), predicted by
    ``PoiPredictor.from_trainer`` through ``predict_preprocessed_cases``. The case's data is replaced by
    a dot drawn where a chosen raw voxel lands; every channel reads that dot."""
    from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2

    from poi_nnunet.preprocessing.poi_files import preprocessed_pois_file
    from poi_nnunet.trainer_factory import build_trainer

    source = env["nnUNet_preprocessed"] / XRAY / "poiPlans_2d"
    folder = tmp_path / "poiPlans_2d"
    folder.mkdir()
    properties = pickle.loads((source / "xray_000.pkl").read_bytes())
    data, seg, _, _ = nnUNetDatasetBlosc2(str(source), ["xray_000"]).load_case("xray_000")
    shape = data.shape[1:]
    raw = sitk.ReadImage(str(env["nnUNet_raw"] / XRAY / "imagesTr" / "xray_000_0000.nii.gz"))
    voxel = (23.35, 40.8)  # ITK (x, y)
    centre = _hand_preprocessed(voxel, properties, shape)
    dot = _gaussian_dot(shape, centre, 2.0)[None].astype(np.float32)
    nnUNetDatasetBlosc2.save_case(dot, np.asarray(seg[:]), properties, str(folder / "xray_000"),
                                  chunks=dot.shape, blocks=dot.shape)
    poi_file = preprocessed_pois_file(folder, "xray_000")
    poi_file.parent.mkdir()
    shutil.copy(preprocessed_pois_file(source, "xray_000"), poi_file)

    trainer = build_trainer("502", "2d", "heatmap", 0, "poiPlans", device="cpu")
    trainer.initialize()
    trainer.configure_rotation_dummyDA_mirroring_and_inital_patch_size()  # the inference mirror axes
    channels = len(trainer.configuration_manager.configuration["poi"]["poi_channels"])
    trainer.network = _DotsAreHeatmaps(heat_from=0, num_heatmaps=channels,
                                       num_segmentation=trainer.label_manager.num_segmentation_heads)
    predictor = PoiPredictor.from_trainer(trainer, use_mirroring=True, min_confidence=0.0)
    assert predictor.allowed_mirroring_axes == (0, 1)
    out = tmp_path / "out"
    assert predict_preprocessed_cases(predictor, folder, ["xray_000"], out) == ["xray_000"]

    found = _world_points(out / "xray_000.json")
    assert len(found) == channels
    truth = np.array(raw.TransformContinuousIndexToPhysicalPoint(voxel))
    for key, position in found.items():
        at = np.array(raw.TransformPhysicalPointToContinuousIndex(tuple(position)))
        assert np.max(np.abs(at - voxel)) < TOL_RAW_VOXELS, (key, at, voxel)
        assert np.linalg.norm(position - truth) < TOL_RAW_VOXELS * max(raw.GetSpacing())
    assert read_markups_json(out / "xray_000.mrk.json")
    assert json.loads((out / "dataset.json").read_text())["file_ending"] == ".nii.gz"  # for poi_evaluate
    exported = sitk.ReadImage(str(out / "xray_000.nii.gz"))
    assert exported.GetSize() == raw.GetSize()
    labelled = np.argwhere(sitk.GetArrayFromImage(exported) == 1)[:, ::-1]
    np.testing.assert_allclose(labelled.mean(axis=0), voxel, atol=0.5)


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
    # no mask; dropped_points.json only where an untrained fit ran off the image
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "dropped_points.json") == [f"{case}.json",
                                                                                            f"{case}.mrk.json"]
    pois = read_poi_file(tmp_path / f"{case}.json")
    assert {p.structure for p in pois} <= {0} and len(pois) > 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_without_a_gpu_the_default_device_is_the_cpu_and_forcing_cuda_is_a_clear_error(env, tmp_path: Path,
                                                                                        capsys) -> None:
    """The README's commands carry no -device: on a machine without a GPU they must run (on the CPU, said
    in the log); -device cuda there is a one-line error."""
    args = [a for a in ARGS if a not in ("-device", "cpu")]
    assert main(["-i", str(env["images_ts"]), "-o", str(tmp_path / "out"), *args]) == 0
    assert "device: cpu" in capsys.readouterr().out
    assert list((tmp_path / "out").glob("*.json"))
    assert main(["-i", str(env["images_ts"]), "-o", str(tmp_path / "out2"), *args, "-device", "cuda"]) == 2
    assert "pass -device cpu" in _err(capsys)


def test_without_labels_the_model_finds_the_structures_itself(env, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """nnU-Net's preprocessor returns its nonzero mask (0 / -1) as the 'segmentation' of a case without a
    label file; taken for provided labels it hid every structure (structure mode found no point, whole-image
    channels lost their bounds). Without --labels, predict_case must be left to segment the case itself."""
    setup = DOT_CASES[sorted(DOT_CASES)[0]]
    manager, config, dataset_json = _dot_model(env, setup)
    network = _DotsAreHeatmaps()
    predictor = PoiPredictor(device=torch.device("cpu"), use_mirroring=False, allow_tqdm=False, min_confidence=0.0)
    predictor.manual_initialization(network, manager, config, [network.state_dict()], dataset_json,
                                    "PoiHeatmapTrainer", tuple(range(len(config.patch_size))))
    given = []
    original = predictor.predict_case
    monkeypatch.setattr(predictor, "predict_case",
                        lambda data, space, segmentation=None: given.append(segmentation) or original(data, space,
                                                                                                   segmentation))
    _write_dot_case(setup, tmp_path / "in", "dots")
    cases = list_input_cases(tmp_path / "in", ".nii.gz", len(setup["dots"]))
    predict_input_cases(predictor, cases, tmp_path / "out", progress=False)
    assert given == [None]

"""Point supervision's used-by path, tiny: poi_convert clicks -> plan -> poi_train point_sup (3D) and the
ignore-label baseline (nnunet on the same sparse labels) -> poi_predict (masks only) -> poi_evaluate.

A couple of iterations each: the path and its outputs, not accuracy (``benchmarks/point_sup.py`` measures
that). The planned extent radius is checked against the clicks themselves, read back with SimpleITK.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from poi_nnunet.cli.convert import main as convert_main
from poi_nnunet.cli.evaluate import main as evaluate_main
from poi_nnunet.cli.plan_and_preprocess import main as plan_main
from poi_nnunet.cli.predict import main as predict_main
from poi_nnunet.cli.train import main as train_main
from poi_nnunet.errors import PoiNnunetError
from poi_nnunet.plan import PoiPlan
from tests.factories import use_nnunet_folders

SHORT = ["-device", "cpu", "-f", "0", "--epochs", "1", "--iterations_per_epoch", "2"]
DENSE, SPARSE = 531, 532


@pytest.fixture(scope="module")
def planned(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Path]:
    from dataset_conversion.synthetic_spine import write_spine_dataset

    base = tmp_path_factory.mktemp("point_sup")
    env = {"nnUNet_raw": base / "raw", "nnUNet_preprocessed": base / "pre", "nnUNet_results": base / "res"}
    with pytest.MonkeyPatch.context() as mp:
        for key, path in env.items():
            path.mkdir()
            mp.setenv(key, str(path))
        write_spine_dataset(env["nnUNet_raw"] / f"Dataset{DENSE}_Spine", num_cases=5, num_test=1, seed=3,
                            shape=(32, 24, 24))
        assert convert_main(["clicks", "--from-dataset", str(DENSE), "-d", str(SPARSE), "-n", "SpineClicks",
                             "--clicks-per-structure", "4", "--background-clicks", "6", "--click-radius-mm", "4"]) == 0
        assert plan_main(["-d", str(SPARSE), "-c", "3d_fullres", "-np", "1", "-npfp", "1", "--no_pbar"]) == 0
    return env


@pytest.fixture
def env(planned: Dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> Dict[str, Path]:
    use_nnunet_folders(planned, monkeypatch)
    return planned


def _raw(env: Dict[str, Path]) -> Path:
    return env["nnUNet_raw"] / f"Dataset{SPARSE}_SpineClicks"


def test_planned_extent_covers_each_class_clicks(env: Dict[str, Path]) -> None:
    plans = json.loads((env["nnUNet_preprocessed"] / f"Dataset{SPARSE}_SpineClicks" / "poiPlans.json").read_text())
    extent = PoiPlan.from_block(plans["configurations"]["3d_fullres"]["poi"]).point_sup_extent_mm
    labels = json.loads((_raw(env) / "dataset.json").read_text())["labels"]
    ignore = labels["ignore"]
    largest: Dict[int, float] = {}
    for f in sorted((_raw(env) / "labelsTr").glob("*.nii.gz")):
        image = sitk.ReadImage(str(f))
        array = sitk.GetArrayFromImage(image)
        for label in np.unique(array):
            if label in (0, ignore):
                continue
            idx = np.argwhere(array == label)
            mm = np.array([image.TransformIndexToPhysicalPoint([int(v) for v in i[::-1]]) for i in idx])
            spread = max(np.linalg.norm(a - b) for a in mm for b in mm)
            largest[int(label)] = max(largest.get(int(label), 0.0), spread)
    assert extent is not None and set(extent) == set(largest)
    for label, spread in largest.items():
        # five times the clicks' spread (the planner uses a box diagonal, an upper bound of the spread)
        assert 5 * spread - 1e-3 <= extent[label] <= 5 * spread * np.sqrt(3) + 1e-3


def test_sparse_labels_flag_no_poi_as_off_the_surface(env: Dict[str, Path]) -> None:
    # the dense twin flags none (the phantom's POIs lie on its bones); measured against a few clicks, POIs
    # would sit "tens of mm off the surface" and be left out of training
    report = json.loads((env["nnUNet_preprocessed"] / f"Dataset{SPARSE}_SpineClicks" / "poi_cleaning.json").read_text())
    assert report["num_flagged"] == 0 and report["max_surface_distance_mm"] == {}

def test_point_sup_trains_in_3d_and_predicts_masks_only(env: Dict[str, Path], tmp_path: Path) -> None:
    assert train_main([str(SPARSE), "3d_fullres", "point_sup", *SHORT]) == 0
    fold = env["nnUNet_results"] / f"Dataset{SPARSE}_SpineClicks" / "PoiPointSupTrainer__poiPlans__3d_fullres" / "fold_0"
    assert (fold / "checkpoint_final.pth").is_file()
    log = "".join(p.read_text() for p in fold.glob("training_log_*.txt"))
    for term in ("point", "consistency", "separation", "extent"):
        assert f"{term} " in log.split("train ", 1)[1]
    # end-of-training validation was scored against the dense references, not the sparse labels
    summary = json.loads((fold / "validation" / "evaluation" / "summary.json").read_text())
    assert summary["segmentation"]["n_cases"] >= 1
    assert Path(summary["ref_dir"]).name == "labelsTr_reference"
    raw = _raw(env)
    out = tmp_path / "pred"
    assert predict_main(["-i", str(raw / "imagesTs"), "-o", str(out), "-d", str(SPARSE), "-c", "3d_fullres",
                         "-tr", "point_sup", "-f", "0", "-device", "cpu", "--no_pbar"]) == 0
    for image in sorted((raw / "imagesTs").glob("*_0000.nii.gz")):
        case = image.name[: -len("_0000.nii.gz")]
        mask = sitk.ReadImage(str(out / f"{case}.nii.gz"))
        reference = sitk.ReadImage(str(image))
        assert mask.GetSize() == reference.GetSize()
        np.testing.assert_allclose(mask.GetOrigin(), reference.GetOrigin(), atol=1e-4)
        assert not (out / f"{case}.json").exists() and not (out / f"{case}.mrk.json").exists()
    assert evaluate_main(["-ref", str(raw / "labelsTs"), "-pred", str(out), "-o", str(tmp_path / "eval")]) == 0


def test_nnunets_own_predictor_gives_the_same_masks(env: Dict[str, Path], tmp_path: Path) -> None:
    """The point_sup network is nnU-Net's, unchanged: nnU-Net's own predictor, built on nnUNetTrainer's network
    with the checkpoint's weights, predicts what poi_predict -tr point_sup writes."""
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from poi_nnunet.pseudo_masks.plane_prediction import predict_probabilities
    from poi_nnunet.trained_models import load_poi_model

    model = env["nnUNet_results"] / f"Dataset{SPARSE}_SpineClicks" / "PoiPointSupTrainer__poiPlans__3d_fullres"
    if not (model / "fold_0" / "checkpoint_final.pth").is_file():
        assert train_main([str(SPARSE), "3d_fullres", "point_sup", *SHORT, "--no_validation"]) == 0
    raw = _raw(env)
    ours = tmp_path / "ours"
    assert predict_main(["-i", str(raw / "imagesTs"), "-o", str(ours), "-d", str(SPARSE), "-c", "3d_fullres",
                         "-tr", "point_sup", "-f", "0", "-device", "cpu", "--no_pbar"]) == 0
    plans_manager = PlansManager(json.loads((model / "plans.json").read_text()))
    dataset_json = json.loads((model / "dataset.json").read_text())
    configuration = plans_manager.get_configuration("3d_fullres")
    checkpoint = torch.load(model / "fold_0" / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    network = nnUNetTrainer.build_network_architecture(
        plans_manager, configuration, determine_num_input_channels(plans_manager, configuration, dataset_json),
        plans_manager.get_label_manager(dataset_json).num_segmentation_heads, enable_deep_supervision=False)
    predictor = nnUNetPredictor(device=torch.device("cpu"), perform_everything_on_device=False, allow_tqdm=False)
    predictor.manual_initialization(network, plans_manager, configuration, [checkpoint["network_weights"]],
                                    dataset_json, "nnUNetTrainer", checkpoint["inference_allowed_mirroring_axes"])
    mine_predictor = load_poi_model(f"Dataset{SPARSE}_SpineClicks", "3d_fullres", "point_sup", ["0"], device="cpu",
                                    allow_tqdm=False)
    for image in sorted((raw / "imagesTs").glob("*_0000.nii.gz")):
        case = image.name[: -len("_0000.nii.gz")]
        data, properties = SimpleITKIO().read_images([str(f) for f in sorted(raw.glob(f"imagesTs/{case}_*.nii.gz"))])
        theirs, their_probabilities = predictor.predict_single_npy_array(data, properties, None, None, True)
        mine = sitk.GetArrayFromImage(sitk.ReadImage(str(ours / f"{case}.nii.gz")))
        assert theirs.shape == mine.shape and np.mean(theirs == mine) > 0.999
        # masks of a barely trained model may be all background: the probabilities must agree too
        my_probabilities = predict_probabilities(mine_predictor, DefaultPreprocessor(verbose=False),
                                                 sorted(raw.glob(f"imagesTs/{case}_*.nii.gz")))
        assert my_probabilities.shape == their_probabilities.shape
        np.testing.assert_allclose(my_probabilities, their_probabilities, atol=2e-3)


def test_ignore_label_baseline_trains_and_predicts_masks_only(env: Dict[str, Path], tmp_path: Path) -> None:
    # (2D point_sup trains in tests/test_pseudo_masks_pipeline.py, one model per slicing plane)
    assert train_main([str(SPARSE), "3d_fullres", "nnunet", *SHORT, "--no_validation"]) == 0
    out = tmp_path / "baseline"
    assert predict_main(["-i", str(_raw(env) / "imagesTs"), "-o", str(out), "-d", str(SPARSE), "-c", "3d_fullres",
                         "-tr", "nnunet", "-f", "0", "-device", "cpu", "--no_pbar"]) == 0
    written = sorted(p.name for p in out.iterdir())
    assert [n for n in written if n.endswith(".nii.gz")] and not [n for n in written if n.endswith(".mrk.json")]


def test_point_sup_refuses_dense_labels(env: Dict[str, Path]) -> None:
    from trainers.point_sup import PoiPointSupTrainer

    name = f"Dataset{SPARSE}_SpineClicks"
    plans = json.loads((env["nnUNet_preprocessed"] / name / "poiPlans.json").read_text())
    dataset_json = json.loads((env["nnUNet_preprocessed"] / name / "dataset.json").read_text())
    del dataset_json["labels"]["ignore"]  # the same dataset, densely labelled
    plans["continue_training"] = False  # as trainer_factory.build_trainer passes it to nnU-Net >= 2.8
    with pytest.raises(PoiNnunetError, match="poi_convert clicks"):
        PoiPointSupTrainer(plans, "3d_fullres", 0, dataset_json, torch.device("cpu"))

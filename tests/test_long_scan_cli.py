"""A long scan end to end: planned fields of view, ``poi_train --fov all``, and ``poi_predict`` merging every field
of view's points (a field of view the coarse pass cannot find is reported, not fatal)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from benchmarks.leg_fields_of_view import capped_planner
from tests.factories import fresh_nnunet_folders, use_nnunet_folders

DATASET = 623
NAME = f"Dataset{DATASET}_LongLeg"
# voxels of 96 over the 800 mm leg: on a phantom small enough for a test nnU-Net's own patch shows the whole leg,
# and only a patch shorter than the scan has fields of view
PATCH_ALONG_SCAN = 48


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict:
    from dataset_conversion.synthetic_leg import write_leg_dataset
    from poi_nnunet.preprocessing.pipeline import plan_and_preprocess

    with fresh_nnunet_folders(tmp_path_factory.mktemp("long_scan")) as env:
        write_leg_dataset(env["nnUNet_raw"] / NAME, num_cases=5, num_test=1, shape=(96, 24, 24))
        plan_and_preprocess(str(DATASET), configurations=["3d_fullres"], num_processes=[1],
                            num_processes_fingerprint=1, progress=False, planner_class=capped_planner(PATCH_ALONG_SCAN))
    return env


@pytest.fixture(scope="module")
def trained(folders: dict) -> dict:
    """``poi_train --fov all`` on the planned leg (one iteration per model): the coarse pass and every field of
    view's model, as a user trains them."""
    from poi_nnunet.cli.train import main as train

    with pytest.MonkeyPatch.context() as mp:
        use_nnunet_folders(folders, mp)
        assert train([str(DATASET), "3d_fullres", "coarse_refine", "-f", "all", "-device", "cpu", "--epochs", "1",
                      "--iterations_per_epoch", "1", "--fov", "all", "--no_validation"]) == 0
    return folders


def test_long_scan_plans_train_and_predict_merged(trained: dict, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture) -> None:
    from poi_nnunet.cli.predict import main as predict
    from poi_nnunet.pois import read_poi_file

    folders = trained
    use_nnunet_folders(folders, monkeypatch)
    # one iteration teaches the coarse pass nothing: its guesses stay below the default threshold that places a
    # field of view, so this test lets every guess place one (the next test covers the threshold's refusal)
    monkeypatch.setattr("poi_nnunet.trained_models.MIN_CONFIDENCE", 0.0)
    pre = folders["nnUNet_preprocessed"] / NAME
    plans = json.loads((pre / "poiPlans.json").read_text())
    block = plans["configurations"]["3d_fullres"]["poi"]
    fovs = block["fields_of_view"]
    assert len(fovs) >= 2
    # the coarse pass's patch shows every training scan whole (their extent read by SimpleITK, in nnU-Net's axes)
    coarse = plans["configurations"]["3d_coarse"]
    extents = []
    for path in sorted((folders["nnUNet_raw"] / NAME / "imagesTr").glob("*.nii.gz")):
        image = sitk.ReadImage(str(path))
        extents.append((np.array(image.GetSize()) * np.array(image.GetSpacing()))[::-1][plans["transpose_forward"]])
    covered = np.array(coarse["patch_size"]) * np.array(coarse["spacing"])
    assert np.all(covered >= np.max(extents, axis=0) - np.array(coarse["spacing"])), (covered, extents)
    # every POI channel is in exactly one field of view, and the hip's (1-3) and the ankle's malleoli are apart
    grouped = [(c["structure"], c["poi"]) for f in fovs for c in f["channels"]]
    assert sorted(grouped) == sorted((c["structure"], c["poi"]) for c in block["poi_channels"])
    fov_of = {c["poi"]: f["name"] for f in fovs for c in f["channels"]}
    assert fov_of[1] == fov_of[2] == fov_of[3] and fov_of[1] != fov_of[14]
    # the coarse pass's data and a plans file per field of view, on the 3d_fullres data
    assert (pre / "poiPlans_3d_coarse").is_dir()
    for fov in fovs:
        fov_plans = json.loads((pre / f"poiPlans_{fov['name']}.json").read_text())
        assert fov_plans["configurations"]["3d_fullres"]["data_identifier"] == "poiPlans_3d_fullres"

    results = folders["nnUNet_results"] / NAME
    trained = sorted(p.name for p in results.iterdir())
    assert trained == sorted(["PoiHeatmapTrainer__poiPlans__3d_coarse"]
                             + [f"PoiCoarseRefineTrainer__poiPlans_{f['name']}__3d_fullres" for f in fovs])

    out = folders["nnUNet_results"].parent / "predicted"
    images = folders["nnUNet_raw"] / NAME / "imagesTs"
    assert predict(["-i", str(images), "-o", str(out), "-d", str(DATASET), "-c", "3d_fullres", "-tr",
                    "coarse_refine", "-f", "all", "-device", "cpu", "--min_confidence", "0", "--disable_tta",
                    "--no_pbar"]) == 0
    case = sorted(images.glob("*_0000.nii.gz"))[0].name[: -len("_0000.nii.gz")]
    written = read_poi_file(out / f"{case}.json")
    # one file, every field of view's points in it (confidence 0 writes every point found inside the image)
    assert {(p.structure, p.poi) for p in written.points} <= set(grouped)
    assert {fov_of[p.poi] for p in written.points} == {f["name"] for f in fovs}
    assert (out / f"{case}.nii.gz").is_file()
    assert "fields of view" in capsys.readouterr().out


def test_a_field_of_view_the_coarse_pass_misses_is_reported(trained: dict, monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture) -> None:
    """A coarse pass that finds nothing of one field of view (a scan cut off there): that field of view's points
    are listed as not found, the others are written. And a coarse pass sure of nothing places no field of view at
    all, whatever ``--min_confidence`` the points are written at (its own threshold is raised above every
    confidence: whether a one-iteration model's random peaks reach the default 0.1 depends on its initialisation,
    so on the tests run before)."""
    from poi_nnunet.cli.predict import main as predict
    from poi_nnunet.inference import fields_of_view
    from poi_nnunet.pois import read_poi_file

    folders = trained
    use_nnunet_folders(folders, monkeypatch)
    images = folders["nnUNet_raw"] / NAME / "imagesTs"
    unsure = folders["nnUNet_results"].parent / "predicted_unsure"
    monkeypatch.setattr("poi_nnunet.trained_models.MIN_CONFIDENCE", 2.0)  # confidences lie in [0, 1]
    assert predict(["-i", str(images), "-o", str(unsure), "-d", str(DATASET), "-c", "3d_fullres", "-tr",
                    "coarse_refine", "-f", "all", "-device", "cpu", "--min_confidence", "0", "--disable_tta",
                    "--no_pbar"]) == 0
    dropped = json.loads((unsure / "dropped_points.json").read_text())["cases"]
    assert {d["reason"] for points in dropped.values() for d in points} == {"field_of_view_not_found"}
    assert [len(read_poi_file(f)) for f in unsure.glob("leg_*[0-9].json")] == [0]

    monkeypatch.setattr("poi_nnunet.trained_models.MIN_CONFIDENCE", 0.0)  # every guess places its field of view
    plans = json.loads((folders["nnUNet_preprocessed"] / NAME / "poiPlans.json").read_text())
    hidden = {c["poi"] for c in plans["configurations"]["3d_fullres"]["poi"]["fields_of_view"][0]["channels"]}
    original = fields_of_view.merged_points

    def coarse_pass_blind_to_the_first(models, coarse_points, *args, **kwargs):
        return original(models, coarse_points.select(~np.isin(coarse_points.pois, list(hidden))), *args, **kwargs)

    monkeypatch.setattr(fields_of_view, "merged_points", coarse_pass_blind_to_the_first)
    out = folders["nnUNet_results"].parent / "predicted_cut"
    assert predict(["-i", str(images), "-o", str(out), "-d", str(DATASET), "-c", "3d_fullres", "-tr",
                    "coarse_refine", "-f", "all", "-device", "cpu", "--min_confidence", "0", "--disable_tta",
                    "--no_pbar"]) == 0
    said = capsys.readouterr()
    assert "warning" in said.out + said.err and "field of view not found" in said.out
    dropped = json.loads((out / "dropped_points.json").read_text())["cases"]
    reasons = {(d["poi"], d["reason"]) for points in dropped.values() for d in points}
    assert {p for p, reason in reasons if reason == "field_of_view_not_found"} == hidden
    written = {p.poi for f in out.glob("leg_*[0-9].json") for p in read_poi_file(f).points}
    assert written and not written & hidden  # the other fields of view's points are written


def test_replanning_without_fields_of_view_drops_the_coarse_pass(tmp_path) -> None:
    """nnU-Net keeps configurations of the plans file it replaces: a re-plan whose patch shows the whole scan must
    not keep (and preprocess) the coarse pass planned before, nor the fields of view's plans (a model trained on
    them would learn channels the plans no longer have); plans a user named otherwise stay."""
    from dataset_conversion.synthetic_leg import write_leg_dataset
    from poi_nnunet.preprocessing.pipeline import plan_and_preprocess

    with fresh_nnunet_folders(tmp_path) as env:
        write_leg_dataset(env["nnUNet_raw"] / "Dataset624_Replan", num_cases=3, shape=(96, 24, 24))
        plans_file = env["nnUNet_preprocessed"] / "Dataset624_Replan" / "poiPlans.json"
        options = dict(configurations=["3d_fullres"], num_processes=[1], num_processes_fingerprint=1, progress=False,
                       preprocess=False)
        plan_and_preprocess("624", planner_class=capped_planner(PATCH_ALONG_SCAN), **options)
        assert "3d_coarse" in json.loads(plans_file.read_text())["configurations"]
        folder = plans_file.parent
        fov_plans = sorted(p.name for p in folder.glob("poiPlans_fov*.json"))
        assert fov_plans and "poiPlans_fov1.json" in fov_plans
        (folder / "poiPlans_fov1_mine.json").write_bytes((folder / "poiPlans_fov1.json").read_bytes())
        plan_and_preprocess("624", **options)  # nnU-Net's own patch: the whole 96-voxel scan
        configurations = json.loads(plans_file.read_text())["configurations"]
        assert "3d_coarse" not in configurations and "fields_of_view" not in configurations["3d_fullres"]["poi"]
        assert sorted(p.name for p in folder.glob("poiPlans_fov*.json")) == ["poiPlans_fov1_mine.json"]

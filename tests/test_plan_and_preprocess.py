"""poi_plan_and_preprocess on the synthetic phantoms: plans, POI files, cleaning, reuse."""
from __future__ import annotations

import hashlib
import json
import pickle
from pathlib import Path
from typing import Dict

import blosc2
import numpy as np
import pytest
import SimpleITK as sitk
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from dataset_conversion.synthetic_spine import DISPLACED_FILE, write_spine_dataset
from dataset_conversion.synthetic_xray import make_xray_case, write_xray_dataset, xray_dataset_json_fields
from poi_nnunet.cli.plan_and_preprocess import main
from poi_nnunet.pois import Poi, PoiSet, read_poi_file
from poi_nnunet.preprocessing import load_preprocessed_pois
from poi_nnunet.plan import PoiPlan
from poi_nnunet.raw_dataset import RawDataset
from poi_nnunet.raw_dataset_writer import CaseData, DatasetWriter

SPINE, XRAY, LANDMARKS = "Dataset501_Spine", "Dataset502_Xray", "Dataset503_XrayLandmarks"
ARGS = ["-c", "2d", "3d_fullres", "-np", "1", "-npfp", "1", "--no_pbar"]


def _landmark_only_xray(target: Path, cases: int) -> None:
    """The X-ray phantom without masks: every POI on structure 0, no labelsTr."""
    channels, _, names, _ = xray_dataset_json_fields()
    with DatasetWriter(target, channels, {"background": 0}, pois=names) as writer:
        for i in range(cases):
            case = make_xray_case(f"xr_{i:03d}", i, shape=(64, 64))
            writer.add_case(CaseData(case.case_id, case.images, None,
                                     PoiSet([Poi(0, p.poi, p.position) for p in case.pois])))


def _tree_hash(folder: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(folder.rglob("*")):
        if f.is_file():
            h.update(f.relative_to(folder).as_posix().encode() + f.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Path]:
    base = tmp_path_factory.mktemp("phantoms")
    env = {"nnUNet_raw": base / "raw", "nnUNet_preprocessed": base / "pre", "nnUNet_results": base / "res"}
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            v.mkdir()
            mp.setenv(k, str(v))
        write_spine_dataset(env["nnUNet_raw"] / SPINE, num_cases=4, displaced_pois=2, shape=(32, 24, 24))
        write_xray_dataset(env["nnUNet_raw"] / XRAY, num_cases=4, shape=(64, 64))
        _landmark_only_xray(env["nnUNet_raw"] / LANDMARKS, 4)
        raw_before = {name: _tree_hash(env["nnUNet_raw"] / name) for name in (SPINE, XRAY, LANDMARKS)}
        for dataset_id in ("501", "502", "503"):
            assert main(["-d", dataset_id] + ARGS) == 0
    return {**env, "raw_before": raw_before}


def _plans(runs, name: str) -> dict:
    return json.loads((runs["nnUNet_preprocessed"] / name / "poiPlans.json").read_text())


def test_raw_data_is_never_changed(runs) -> None:
    for name, digest in runs["raw_before"].items():
        assert _tree_hash(runs["nnUNet_raw"] / name) == digest
    assert not (runs["nnUNet_raw"] / LANDMARKS / "labelsTr").exists()


@pytest.mark.parametrize("name", [SPINE, XRAY, LANDMARKS])
def test_plans_load_with_nnunets_plans_manager(runs, name: str) -> None:
    manager = PlansManager(str(runs["nnUNet_preprocessed"] / name / "poiPlans.json"))
    expected = {"2d", "3d_fullres"} if name == SPINE else {"2d"}
    assert expected <= set(manager.available_configurations)
    for config in expected:
        cm = manager.get_configuration(config)
        assert cm.data_identifier == f"poiPlans_{config}"
        assert cm.preprocessor_name == "DefaultPreprocessor"
        assert (runs["nnUNet_preprocessed"] / name / cm.data_identifier).is_dir()
        assert len(cm.configuration["poi"]["refine_patch_size"]) == len(cm.patch_size)


def test_poi_blocks_differ_between_spine_and_xray(runs) -> None:
    spine = _plans(runs, SPINE)["configurations"]["3d_fullres"]["poi"]
    xray = _plans(runs, XRAY)["configurations"]["2d"]["poi"]
    landmarks = _plans(runs, LANDMARKS)["configurations"]["2d"]["poi"]
    # vertebrae share POI ids: one crop per vertebra with its neighbours, one channel per POI id
    assert spine["crop_mode"] == "structure_with_neighbours"
    names = RawDataset.open(runs["nnUNet_raw"] / SPINE).poi_names
    assert [c["poi"] for c in spine["poi_channels"]] == sorted(names)[: len(spine["poi_channels"])]
    assert all(c["structure"] is None for c in spine["poi_channels"])
    assert len(spine["crop_size_mm"]) == 3
    # X-ray landmarks are distinct: the whole image, one channel per (structure, POI) pair
    assert xray["crop_mode"] == landmarks["crop_mode"] == "whole_image"
    assert {c["structure"] for c in xray["poi_channels"]} == {1, 2, 3, 4, 5}
    assert {c["structure"] for c in landmarks["poi_channels"]} == {0} and len(landmarks["poi_channels"]) == 160
    for block, config in ((spine, _plans(runs, SPINE)["configurations"]["3d_fullres"]),
                          (xray, _plans(runs, XRAY)["configurations"]["2d"])):
        spacing = np.array(config["spacing"])
        plan = PoiPlan.from_block(block)  # what every trainer and the predictor read
        assert plan.heatmap_amplitude > 0 and plan.elastic_magnitude_voxels[1] >= 3.0
        assert np.all(np.array(block["crop_size_mm"]) > 0) and len(block["crop_size_mm"]) == len(spacing)


def _separation_from_raw_files(runs, name: str) -> float:
    """The plans' POI separation measured directly on the raw POI files: per case and structure, each
    point's distance (world mm) to its nearest other POI, 5th percentile over all points, leaving out
    the points the cleaning removed from training."""
    ds = RawDataset.open(runs["nnUNet_raw"] / name)
    report = json.loads((runs["nnUNet_preprocessed"] / name / "poi_cleaning.json").read_text())
    flagged = {(f["case"], f["structure"], f["poi"]) for f in report["flagged"]}
    nearest = []
    for case in ds.case_ids("Tr"):
        points = json.loads(Path(ds.poi_file(case)).read_text())["points"]
        for p in points:
            others = [q for q in points if q["structure"] == p["structure"] and q["poi"] != p["poi"]]
            if others and (case, p["structure"], p["poi"]) not in flagged:
                nearest.append(min(float(np.linalg.norm(np.subtract(q["position"], p["position"]))) for q in others))
    return float(np.percentile(nearest, 5))


@pytest.mark.parametrize("name, config", [(SPINE, "3d_fullres"), (SPINE, "2d"), (XRAY, "2d"), (LANDMARKS, "2d")])
def test_heatmap_width_for_the_phantoms(runs, name: str, config: str) -> None:
    """The phantoms' POIs lie a voxel or two apart, far closer than the 8 voxels at which a quarter
    of the separation would pass the two-voxel floor: so every phantom's heatmap is exactly two voxels
    wide along its median-spacing axis (the X-ray grids are isotropic: two on both), and neighbouring
    peaks overlap (not separable)."""
    configuration = _plans(runs, name)["configurations"][config]
    block = configuration["poi"]
    spacing = np.array(configuration["spacing"])
    separation = _separation_from_raw_files(runs, name)
    assert block["poi_separation_mm"] == pytest.approx(separation, abs=1e-3)
    assert separation < 2.5 * 2 * spacing.min()  # the premise: the floor wins and the peaks overlap
    sigma_voxels = np.array(block["heatmap_sigma_voxels"])
    np.testing.assert_allclose(block["heatmap_sigma_mm"] / spacing, sigma_voxels, atol=1e-3)
    assert float(np.median(sigma_voxels)) == pytest.approx(2.0, abs=1e-3)
    if name != SPINE:
        np.testing.assert_allclose(sigma_voxels, [2.0, 2.0], atol=1e-4)
    assert block["peaks_separable"] is False


def test_displaced_pois_are_cleaned_from_training_targets(runs) -> None:
    pre = runs["nnUNet_preprocessed"] / SPINE
    report = json.loads((pre / "poi_cleaning.json").read_text())
    displaced = json.loads((runs["nnUNet_raw"] / SPINE / DISPLACED_FILE).read_text())
    truth = {(case, s, p) for case, keys in displaced.items() for s, p in keys}
    assert {(f["case"], f["structure"], f["poi"]) for f in report["flagged"]} == truth
    for config in ("2d", "3d_fullres"):
        for case in displaced:
            pois = load_preprocessed_pois(pre / f"poiPlans_{config}", case)
            invalid = {(case, s, p) for (s, p), v in zip(pois.keys(), pois.valid) if not v}
            assert invalid == {k for k in truth if k[0] == case}
            assert len(pois.training_points()) == len(pois) - len(invalid)


@pytest.mark.parametrize("name", [SPINE, XRAY, LANDMARKS])
def test_every_case_round_trips_through_preprocessed_space(runs, name: str) -> None:
    ds = RawDataset.open(runs["nnUNet_raw"] / name)
    plans = _plans(runs, name)
    for config in plans["configurations"]:
        folder = runs["nnUNet_preprocessed"] / name / f"poiPlans_{config}"
        for case in ds.case_ids():
            raw = read_poi_file(ds.poi_file(case))
            pois = load_preprocessed_pois(folder, case)
            assert pois.keys() == raw.keys()
            shape = blosc2.open(str(folder / f"{case}.b2nd"), mode="r").shape[1:]
            assert tuple(pois.space.shape_after_resampling) == tuple(shape)
            expected = _preprocessed_by_hand(ds.image_files(case)[0], folder / f"{case}.pkl",
                                             plans["transpose_forward"], shape, raw.positions())
            np.testing.assert_allclose(pois.positions, expected, atol=1e-6)
            assert np.max(np.abs(pois.space.preprocessed_to_world(pois.positions) - raw.positions())) < 1e-3


def _preprocessed_by_hand(image_file, properties_file: Path, transpose, shape, world: np.ndarray) -> np.ndarray:
    """Preprocessed positions from SimpleITK and nnU-Net's own record of the case, without
    poi_nnunet.geometry: raw continuous ITK index, reversed to nnU-Net's array order (``(0, y, x)`` for
    a 2D image), transposed, minus the crop start, resampled with voxel edges aligned
    (``(c + 0.5) * new / old - 0.5``)."""
    image = sitk.ReadImage(str(image_file))
    properties = pickle.loads(properties_file.read_bytes())
    lo = [b[0] for b in properties["bbox_used_for_cropping"]]
    old = properties["shape_after_cropping_and_before_resampling"]
    out = []
    for point in world:
        index = image.TransformPhysicalPointToContinuousIndex(tuple(float(v) for v in point))
        array = list(index[::-1]) if len(index) == 3 else [0.0, index[1], index[0]]
        out.append([(array[transpose[i]] - lo[i] + 0.5) * shape[i] / old[i] - 0.5 for i in range(3)])
    return np.array(out)


def test_landmark_only_dataset_gets_background_targets(runs) -> None:
    pre = runs["nnUNet_preprocessed"] / LANDMARKS
    seg = blosc2.open(str(pre / "poiPlans_2d" / "xr_000_seg.b2nd"), mode="r")[:]
    assert set(np.unique(seg)) <= {0, -1}
    assert (pre / "gt_segmentations" / "xr_000.nii.gz").is_file()
    assert json.loads((pre / "poi_cleaning.json").read_text())["num_flagged"] == 0  # no surface to be far from


def test_rerun_reuses_a_valid_fingerprint_and_redoes_a_stale_one(runs, monkeypatch, capsys) -> None:
    for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.setenv(k, str(runs[k]))
    pre = runs["nnUNet_preprocessed"] / XRAY
    before = (pre / "poi_fingerprint.json").read_text()
    assert main(["-d", "502", "--no_pp", "-npfp", "1", "--no_pbar"]) == 0
    out = capsys.readouterr().out
    assert "reusing" in out
    # the plans path said is where they stay, not the staging folder removed after publishing
    assert f"Plans: {pre / 'poiPlans.json'}" in out and ".poi_plan_" not in out
    assert (pre / "poi_fingerprint.json").read_text() == before
    assert (pre / "poiPlans_2d").is_dir()  # planning alone leaves the preprocessed data in place
    # a moved POI makes the stamp stale: fingerprint, validation and plans are redone
    poi_file = sorted((runs["nnUNet_raw"] / XRAY / "poisTr").iterdir())[0]
    original = poi_file.read_text()
    data = json.loads(original)
    data["points"][0]["position"][0] += 1.0
    poi_file.write_text(json.dumps(data))
    try:
        assert main(["-d", "502", "--no_pp", "-npfp", "1", "--no_pbar"]) == 0
    finally:
        poi_file.write_text(original)
    out = capsys.readouterr().out
    assert "reusing" not in out and "Validating" in out
    assert json.loads((pre / "poi_fingerprint.json").read_text())["source_stamp"] != json.loads(before)["source_stamp"]


def test_nnunets_dataset_class_reads_our_data_folders(runs) -> None:
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class, nnUNetDatasetBlosc2

    folder = runs["nnUNet_preprocessed"] / SPINE / "poiPlans_3d_fullres"
    dataset_class = infer_dataset_class(str(folder))  # refuses folders holding foreign file kinds
    assert dataset_class is nnUNetDatasetBlosc2
    data, seg, _, properties = dataset_class(str(folder))["spine_000"]
    pois = load_preprocessed_pois(folder, "spine_000")
    assert tuple(pois.space.shape_after_resampling) == tuple(data.shape[1:]) == tuple(seg.shape[1:])
    assert list(properties["shape_after_resampling"]) == list(data.shape[1:])

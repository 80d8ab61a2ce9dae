"""Long scans on the synthetic leg: planned fields of view against the phantom's POI groups, and TRE per field
of view of the coarse pass alone, each field of view's coarse (soft-argmax) stage, and its refined points.

Steps (each skipped where its output exists, so a run resumes):

1. ``poi_convert synthetic-leg`` (``--cases`` + ``--test``, ``--shape``), planned by
   ``poi_plan_and_preprocess``; with ``--patch-along-scan N`` nnU-Net's planner is given a median shape of at
   most N voxels along the scan, so its patch is that short (a CPU-sized phantom whose scan would otherwise fit
   one patch). The planned fields of view are listed against the phantom's groups (hip: POIs 1-3; knee: 4-12
   and 15; ankle: 13, 14, 16).
2. With ``--width-divisor K`` > 1, copies of the plans (``poiPlansW<K>``, ``poiPlansW<K>_fov1``, ...) with the
   feature widths divided by K, on the same preprocessed data (a CPU budget; the numbers then speak for the
   method's relative stages, not for nnU-Net-size networks).
3. ``poi_train D 3d_fullres coarse_refine --fov all -f all`` with ``--epochs`` x ``--iterations`` (the coarse
   pass by the heatmap trainer, the fields of view by ``coarse_refine``).
4. Prediction of ``imagesTs`` at ``--min_confidence 0`` without mirroring: ``poi_predict -c 3d_fullres`` (the
   coarse pass places the fields of view, refined points), the same with the field-of-view models' soft-argmax
   points, ``poi_predict -c 3d_coarse -tr heatmap`` (the coarse pass alone), and the field-of-view models placed at
   their reference POIs' box instead (soft-argmax and refined: the field models' own accuracy, whatever the coarse
   pass does).
5. TRE (mm) against ``poisTs``: per field of view and overall, median / mean / p95 over the reference points
   found, and how many were found; written to ``leg_fields_of_view.json`` and printed as a table.

    python benchmarks/leg_fields_of_view.py --work /tmp/legb --cases 20 --test 5 --shape 320 104 104 \\
        --epochs 40 --iterations 25 [--width-divisor 4] [--patch-along-scan 96] [--device cuda]
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from planners.experiment_planner import PoiExperimentPlanner  # noqa: E402
from poi_nnunet.plan import COARSE_PASS_TRAINER  # noqa: E402

DATASET_ID = 630
DATASET = f"Dataset{DATASET_ID}_LegLong"
PHANTOM_GROUPS = {"hip": {1, 2, 3}, "knee": {4, 5, 6, 7, 8, 9, 10, 11, 12, 15}, "ankle": {13, 14, 16}}
TRAINER = "coarse_refine"


def capped_planner(patch_along_scan: Optional[int]) -> type:
    """:class:`PoiExperimentPlanner`, or one whose 3D median shape is at most ``patch_along_scan`` voxels along
    array axis 0 (so nnU-Net's patch is no longer than that)."""
    if not patch_along_scan:
        return PoiExperimentPlanner

    class PatchCappedPlanner(PoiExperimentPlanner):
        def get_plans_for_configuration(self, spacing, median_shape, data_identifier, approximate_n_voxels_dataset,
                                        _cache):
            if len(spacing) == 3:
                median_shape = [min(float(median_shape[0]), patch_along_scan), *median_shape[1:]]
            return super().get_plans_for_configuration(spacing, median_shape, data_identifier,
                                                       approximate_n_voxels_dataset, _cache)

    return PatchCappedPlanner


def setup(work: Path, cases: int, test: int, shape: Sequence[int], seed: int, patch_along_scan: Optional[int]) -> Path:
    for name in ("raw", "preprocessed", "results"):
        (work / name).mkdir(parents=True, exist_ok=True)
    os.environ.update(nnUNet_raw=str(work / "raw"), nnUNet_preprocessed=str(work / "preprocessed"),
                      nnUNet_results=str(work / "results"))
    pre = work / "preprocessed" / DATASET
    if not (pre / "poiPlans.json").is_file():
        from dataset_conversion.synthetic_leg import write_leg_dataset
        from poi_nnunet.preprocessing.pipeline import plan_and_preprocess

        if not (work / "raw" / DATASET / "dataset.json").is_file():
            write_leg_dataset(work / "raw" / DATASET, num_cases=cases, num_test=test, seed=seed, shape=tuple(shape),
                              overwrite=True)
        plan_and_preprocess(str(DATASET_ID), configurations=["3d_fullres"], num_processes=[2],
                            num_processes_fingerprint=2, progress=False, planner_class=capped_planner(patch_along_scan))
    return pre


def planned_against_phantom(pre: Path) -> List[Dict[str, object]]:
    """Each planned field of view: its POIs and which of the phantom's groups they come from."""
    block = json.loads((pre / "poiPlans.json").read_text())["configurations"]["3d_fullres"]["poi"]
    rows = []
    for fov in block.get("fields_of_view", []):
        pois = sorted(int(c["poi"]) for c in fov["channels"])
        groups = {g: sorted(set(pois) & members) for g, members in PHANTOM_GROUPS.items() if set(pois) & members}
        rows.append({"field_of_view": fov["name"], "pois": pois, "phantom_groups": groups,
                     "extent_mm": fov["extent_mm"]})
    return rows


def narrow_plans(pre: Path, divisor: int) -> str:
    """Copies of the plans and of every field of view's plans with feature widths divided by ``divisor``."""
    name = f"poiPlansW{divisor}"
    main = json.loads((pre / "poiPlans.json").read_text())
    fovs = [f["name"] for f in main["configurations"]["3d_fullres"]["poi"].get("fields_of_view", [])]
    for source, target in [("poiPlans", name)] + [(f"poiPlans_{f}", f"{name}_{f}") for f in fovs]:
        plans = copy.deepcopy(json.loads((pre / f"{source}.json").read_text()))
        plans["plans_name"] = target
        for config in plans["configurations"].values():
            arch = config.get("architecture", {}).get("arch_kwargs")
            if arch:
                arch["features_per_stage"] = [max(4, int(f) // divisor) for f in arch["features_per_stage"]]
        (pre / f"{target}.json").write_text(json.dumps(plans, indent=1))
    return name


def train(plans: str, epochs: int, iterations: int, device: str) -> float:
    from poi_nnunet.cli.train import main as train_main

    start = time.perf_counter()
    assert train_main([str(DATASET_ID), "3d_fullres", TRAINER, "-device", device, "-f", "all", "-p", plans, "--fov",
                       "all", "--epochs", str(epochs), "--iterations_per_epoch", str(iterations),
                       "--no_validation", "--c"]) == 0
    return time.perf_counter() - start


def predict(work: Path, plans: str, device: str) -> Dict[str, Path]:
    """The three predictions of the test images (see the module docstring); their folders by name."""
    from poi_nnunet.cli.predict import main as predict_main
    from poi_nnunet.inference.fields_of_view import predict_long_scans
    from poi_nnunet.inference.inputs import list_input_cases
    from poi_nnunet.trained_models import find_long_scan_models, load_long_scan_models

    images = work / "raw" / DATASET / "imagesTs"
    options = ["-p", plans, "-f", "all", "-device", device, "--min_confidence", "0", "--disable_tta", "--no_pbar",
               "--overwrite"]
    common = ["-d", str(DATASET_ID), "-tr", TRAINER, *options]
    folders = {"refined": work / "pred_refined", "fov_coarse": work / "pred_fov_coarse",
               "coarse_pass": work / "pred_coarse_pass"}
    assert predict_main(["-i", str(images), "-o", str(folders["refined"]), "-c", "3d_fullres", *common]) == 0
    assert predict_main(["-i", str(images), "-o", str(folders["coarse_pass"]), "-d", str(DATASET_ID), "-c", "3d_coarse",
                         "-tr", COARSE_PASS_TRAINER, *options]) == 0
    coarse, fields = find_long_scan_models(str(DATASET_ID), "3d_fullres", TRAINER, plans)
    models = load_long_scan_models(coarse, fields, ["all"], device=device, use_mirroring=False, min_confidence=0.0)
    for _, predictor in models.fields:
        predictor.point_stage = "coarse"
    predict_long_scans(models, list_input_cases(images, ".nii.gz", 1), folders["fov_coarse"], overwrite=True,
                       progress=False)
    for stage in ("coarse", "refined"):
        folders[f"reference_placed_{stage}"] = work / f"pred_reference_placed_{stage}"
        predict_at_reference(work, models, stage, folders[f"reference_placed_{stage}"])
    return folders


def predict_at_reference(work: Path, models, stage: str, out: Path) -> None:
    """The field-of-view models placed at their reference POIs' box instead of the coarse pass's (the library's
    merging with the reference points standing in for the coarse estimates): how well each field of view's
    model does when the coarse pass has placed it right, at its soft-argmax (``stage`` coarse) or refined points."""
    from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor

    from poi_nnunet.geometry import ImageGeometry, PreprocessedSpace
    from poi_nnunet.inference.decoding import DecodedPoints
    from poi_nnunet.inference.fields_of_view import merged_points
    from poi_nnunet.inference.inputs import list_input_cases
    from poi_nnunet.pois import read_poi_file, write_poi_file

    out.mkdir(parents=True, exist_ok=True)
    fine = models.fields[0][1]
    for _, predictor in models.fields:
        predictor.point_stage = stage
    preprocessor = DefaultPreprocessor(verbose=False)
    for case in list_input_cases(work / "raw" / DATASET / "imagesTs", ".nii.gz", 1):
        data, _, properties = preprocessor.run_case(case.files, None, fine.plans_manager, fine.configuration_manager,
                                                    fine.dataset_json)
        space = PreprocessedSpace.from_nnunet_properties(properties, fine.plans_manager.transpose_forward,
                                                         data.shape[1:], raw=ImageGeometry.from_file(case.files[0]))
        reference = list(read_poi_file(work / "raw" / DATASET / "poisTs" / f"{case.case}.json"))
        placed = DecodedPoints(np.array([p.structure for p in reference]), np.array([p.poi for p in reference]),
                               space.world_to_preprocessed(np.array([p.position for p in reference])),
                               np.ones(len(reference)))
        points, _ = merged_points(models, placed, space, data, space)
        write_poi_file(out / f"{case.case}.json", points.to_world(space))


def tre(work: Path, folder: Path, fov_of: Dict[int, str]) -> Dict[str, Dict[str, float]]:
    """Median / mean / p95 error (mm) and found / reference counts, per field of view and overall."""
    from poi_nnunet.pois import read_poi_file

    distances: Dict[str, List[float]] = {}
    references: Dict[str, int] = {}
    for ref_file in sorted((work / "raw" / DATASET / "poisTs").glob("*.json")):
        reference = read_poi_file(ref_file).by_key()
        predicted_file = folder / ref_file.name
        predicted = read_poi_file(predicted_file).by_key() if predicted_file.is_file() else {}
        for key, poi in reference.items():
            for name in (fov_of.get(key[1], "none"), "all"):
                references[name] = references.get(name, 0) + 1
                if key in predicted:
                    d = float(np.linalg.norm(np.subtract(predicted[key].position, poi.position)))
                    distances.setdefault(name, []).append(d)
    out = {}
    for name, n_ref in references.items():
        d = np.array(distances.get(name, []))
        out[name] = {"median": round(float(np.median(d)), 2) if len(d) else float("nan"),
                     "mean": round(float(d.mean()), 2) if len(d) else float("nan"),
                     "p95": round(float(np.percentile(d, 95)), 2) if len(d) else float("nan"),
                     "found": int(len(d)), "reference": int(n_ref)}
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--cases", type=int, default=20)
    parser.add_argument("--test", type=int, default=5)
    parser.add_argument("--shape", type=int, nargs=3, default=[320, 104, 104])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--iterations", type=int, default=25)
    parser.add_argument("--width-divisor", type=int, default=1)
    parser.add_argument("--patch-along-scan", type=int, default=None)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = parser.parse_args(argv)
    os.environ.setdefault("nnUNet_def_n_proc", "1")
    pre = setup(args.work, args.cases, args.test, args.shape, args.seed, args.patch_along_scan)
    if args.device == "cpu":  # augmentation in the training process: faster for small CPU runs (never while planning)
        os.environ.setdefault("nnUNet_n_proc_DA", "0")
    planned = planned_against_phantom(pre)
    for row in planned:
        print(f"{row['field_of_view']}: POIs {row['pois']} from {row['phantom_groups']}, extent {row['extent_mm']} mm")
    if not planned:
        print("the scans fit the patch: no fields of view (use a longer --shape or --patch-along-scan)")
        return 1
    plans = narrow_plans(pre, args.width_divisor) if args.width_divisor > 1 else "poiPlans"
    seconds = train(plans, args.epochs, args.iterations, args.device)
    folders = predict(args.work, plans, args.device)
    fov_of = {p: row["field_of_view"] for row in planned for p in row["pois"]}
    results = {name: tre(args.work, folder, fov_of) for name, folder in folders.items()}
    report = {"planned": planned, "train_seconds": round(seconds, 1), "plans": plans, "epochs": args.epochs,
              "iterations": args.iterations, "tre": results}
    (args.work / "leg_fields_of_view.json").write_text(json.dumps(report, indent=1))
    print("| points | field of view | median | mean | p95 | found |")
    print("|---|---|---|---|---|---|")
    for name, per_fov in results.items():
        for fov, r in sorted(per_fov.items()):
            print(f"| {name} | {fov} | {r['median']} | {r['mean']} | {r['p95']} | {r['found']}/{r['reference']} |")
    print(f"training (all models) {seconds:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

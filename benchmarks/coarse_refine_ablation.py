"""Ablation on the synthetic 3D spine: coarse points alone, coarse + refinement, and the heatmap trainer.

One synthetic spine is generated and planned once; ``heatmap`` and ``coarse_refine`` are trained
with the same budget (epochs x iterations, fold ``all``, same plans) and predict the held-out test
cases. Reported per method: TRE (mm) median / mean / 95th percentile over the reference points that
were found and how many were found. Every predictor runs with confidence threshold 0 and without
test-time mirroring, so every channel of every structure a setting sees is answered. Two settings:

* ``gt-labels``: structures from the reference label maps (isolates point localisation, which is
  what the refinement is for): heatmap peaks decoded inside each reference structure's box
  (:func:`decode_points`), coarse_refine crops centred on each reference structure's centroid;
* ``predicted``: each model's own segmentation, as ``poi_predict`` runs.

"coarse" is the soft-argmax output of the *same* coarse_refine model (``point_stage='coarse'``).

CPU budget: ``--width_divisor`` (default 4; 1 = the plans as planned) divides the plans' feature
widths into a second plans file (``poiPlansSmall``) used by both trainers, so a CPU run fits in minutes; the
numbers then speak for the relative effect of the refinement, not for nnU-Net-size networks.

    nohup /work/venv/bin/python benchmarks/coarse_refine_ablation.py --work /tmp/cr_ablation \\
        --cases 12 --test 4 --epochs 80 --iterations 12 > ablation.log 2>&1 &
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path
from typing import Dict, List

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DATASET = "Dataset501_SyntheticSpine"


def setup(work: Path, cases: int, test: int, shape, seed: int) -> None:
    for name in ("raw", "preprocessed", "results"):
        (work / name).mkdir(parents=True, exist_ok=True)
    os.environ["nnUNet_raw"] = str(work / "raw")
    os.environ["nnUNet_preprocessed"] = str(work / "preprocessed")
    os.environ["nnUNet_results"] = str(work / "results")
    if not (work / "preprocessed" / DATASET / "poiPlans.json").is_file():
        from dataset_conversion.synthetic_spine import write_spine_dataset
        from poi_nnunet.cli.plan_and_preprocess import main as plan

        write_spine_dataset(work / "raw" / DATASET, num_cases=cases, num_test=test, seed=seed, shape=tuple(shape),
                            overwrite=True)
        assert plan(["-d", "501", "-c", "3d_fullres", "-np", "1", "--no_pbar"]) == 0


def small_plans(work: Path, divisor: int) -> str:
    """A copy of the plans with feature widths divided by ``divisor`` (same preprocessed data)."""
    folder = work / "preprocessed" / DATASET
    plans = json.loads((folder / "poiPlans.json").read_text())
    small = copy.deepcopy(plans)
    small["plans_name"] = "poiPlansSmall"
    arch = small["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]
    arch["features_per_stage"] = [max(4, int(f) // divisor) for f in arch["features_per_stage"]]
    (folder / "poiPlansSmall.json").write_text(json.dumps(small, indent=1))
    return "poiPlansSmall"


def train(trainer: str, plans: str, epochs: int, iterations: int) -> float:
    from poi_nnunet.cli.train import main as train_main

    start = time.perf_counter()
    assert train_main(["501", "3d_fullres", trainer, "-device", "cpu", "-f", "all", "-p", plans, "--epochs",
                       str(epochs), "--iterations_per_epoch", str(iterations), "--no_validation"]) == 0
    return time.perf_counter() - start


def errors(reference, predicted) -> Dict[str, object]:
    ref = reference.by_key()
    pred = predicted.by_key()
    d = [float(np.linalg.norm(np.subtract(pred[k].position, p.position))) for k, p in ref.items() if k in pred]
    return {"distances": d, "n_ref": len(ref), "n_found": len(d), "n_extra": len(set(pred) - set(ref))}


def summarise(rows: List[Dict[str, object]]) -> Dict[str, float]:
    d = np.array([x for r in rows for x in r["distances"]])
    n_ref = sum(r["n_ref"] for r in rows)
    if not len(d):
        return {"median": float("nan"), "mean": float("nan"), "p95": float("nan"), "found": 0, "n_ref": n_ref}
    return {"median": float(np.median(d)), "mean": float(d.mean()), "p95": float(np.percentile(d, 95)),
            "found": int(len(d)), "n_ref": int(n_ref), "extra": int(sum(r["n_extra"] for r in rows))}


def predict_all(work: Path, plans: str) -> Dict[str, Dict[str, Dict[str, float]]]:
    from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor

    from poi_nnunet.geometry import ImageGeometry, PreprocessedSpace
    from poi_nnunet.inference import decode_points, predictor_for
    from poi_nnunet.trained_models import find_model
    from poi_nnunet.inference.inputs import list_input_cases
    from poi_nnunet.pois import read_poi_file

    raw = work / "raw" / DATASET
    options = dict(device="cpu", use_mirroring=False, min_confidence=0.0)  # every channel of every structure
    hm = predictor_for(find_model("501", "3d_fullres", "heatmap", plans), ["all"], **options)
    cr = predictor_for(find_model("501", "3d_fullres", "coarse_refine", plans), ["all"], **options)
    cases = list_input_cases(raw / "imagesTs", ".nii.gz", 2)
    pre = DefaultPreprocessor(verbose=False)
    rows: Dict[str, List] = {}
    for case in cases:
        data, seg, props = pre.run_case(case.files, str(raw / "labelsTs" / f"{case.case}.nii.gz"), hm.plans_manager,
                                        hm.configuration_manager, hm.dataset_json)
        space = PreprocessedSpace.from_nnunet_properties(props, hm.plans_manager.transpose_forward, data.shape[1:],
                                                         raw=ImageGeometry.from_file(case.files[0]))
        reference = read_poi_file(raw / "poisTs" / f"{case.case}.json")
        labels = np.asarray(seg[0])
        heat = hm.predict_case(data, space)
        found = {
            ("heatmap", "predicted"): heat.points,
            ("heatmap", "gt-labels"): decode_points(heat.heatmaps, hm.layout, hm.poi_plan.heatmap_amplitude,
                                                    segmentation=labels, sigma_voxels=hm.poi_plan.heatmap_sigma_voxels,
                                                    min_confidence=hm.min_confidence,
                                                    support_sigmas=hm.poi_plan.peak_support_sigmas),
        }
        for stage in ("coarse", "refined"):
            cr.point_stage = stage
            found[(f"coarse_refine:{stage}", "gt-labels")] = cr.predict_case(data, space, segmentation=labels).points
            found[(f"coarse_refine:{stage}", "predicted")] = cr.predict_case(data, space).points
        for key, points in found.items():
            rows.setdefault(key, []).append(errors(reference, points.to_world(space)))
        print(f"predicted {case.case}", flush=True)
    out: Dict[str, Dict[str, Dict[str, float]]] = {}
    for (method, setting), r in rows.items():
        out.setdefault(setting, {})[method] = summarise(r)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/coarse_refine_ablation"))
    parser.add_argument("--cases", type=int, default=12)
    parser.add_argument("--test", type=int, default=4)
    parser.add_argument("--shape", type=int, nargs=3, default=(48, 32, 32), metavar=("Z", "Y", "X"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=80)
    parser.add_argument("--iterations", type=int, default=12)
    parser.add_argument("--width_divisor", type=int, default=4, help="feature width divisor (1: plans as planned)")
    parser.add_argument("--train", nargs="*", default=["heatmap", "coarse_refine"], metavar="TRAINER",
                        help="trainers to train (default both; none: predict with the models already trained)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1 keeps shared CPUs from thrashing; timing is not the point here)")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    setup(args.work, args.cases, args.test, args.shape, args.seed)
    os.environ.setdefault("nnUNet_n_proc_DA", "0")
    os.environ.setdefault("nnUNet_def_n_proc", "1")
    plans = small_plans(args.work, args.width_divisor) if args.width_divisor > 1 else "poiPlans"
    times = {}
    for trainer in args.train:
        torch.manual_seed(args.seed)
        times[trainer] = train(trainer, plans, args.epochs, args.iterations)
        print(f"trained {trainer} in {times[trainer]:.0f} s", flush=True)
    result = predict_all(args.work, plans)
    report = {"arguments": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
              "plans": plans, "train_seconds": times, "tre_mm": result}
    (args.work / "ablation.json").write_text(json.dumps(report, indent=1))
    for setting, methods in result.items():
        print(f"\n{setting}: TRE mm over found reference points")
        print(f"  {'method':24s} {'median':>8s} {'mean':>8s} {'p95':>8s} {'found':>11s}")
        for method, s in methods.items():
            print(f"  {method:24s} {s['median']:8.2f} {s['mean']:8.2f} {s['p95']:8.2f} "
                  f"{s['found']:5d}/{s['n_ref']:<5d}")
    print(f"\nwritten {args.work / 'ablation.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

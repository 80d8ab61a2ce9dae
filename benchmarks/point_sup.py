"""Segmentation from clicks on the synthetic 3D spine: seed 002's Table 1 in nnU-Net's terms.

One dense phantom (``Dataset<id>_SpineDense``) and its point-annotated twin (``poi_convert clicks``:
``--clicks`` clicks per vertebra from its interior, ``--background-clicks`` background clicks, radius
``--click-radius-mm``). Every row trains with the same budget (``--iterations``, fold ``all``, seed 0,
CPU) on the same plans, and is scored on the held-out cases (``labelsTs``, dense) with the
inverse-frequency-weighted Dice (seed 002, Eq. 5), the plain mean Dice over vertebrae, and the foreground
Dice (any vertebra against background, computed here with SimpleITK's arrays, not by ``poi_evaluate``). The
phantom's vertebrae are a run of 3-4 of eight levels (T10-L5) at a random height, so a short run can outline
them well and still name them wrongly: the per-vertebra Dice then mixes identity with outline, and the
foreground Dice tells the outline alone; ``volume_ratio`` (predicted over true foreground voxels) tells
over- from under-segmentation.

==================  =====================================================================
reference           ``nnunet`` on the dense labels
ignore_baseline     ``nnunet`` on the sparse labels (nnU-Net's partial Dice+CE alone)
point_sup_3d        ``point_sup`` on ``3d_fullres``
plane_<name>        the three 2D ``point_sup`` models of ``poi_pseudo_masks`` (one per slicing plane)
pseudo_mask         the fused, smoothed pseudo masks (training cases: scored on ``labelsTr_reference``)
final               ``nnunet`` on the pseudo masks (held-out cases)
no_<term>           ``point_sup_3d`` with one loss term removed (the ablation)
unbalanced          ``point_sup_3d`` with each clicked voxel counted once in the point loss (asked for only)
==================  =====================================================================

Also measured: the labelling cost (clicked voxels / all voxels, from ``poi_convert clicks``) and the
cost of the consistency term per step (``point_sup`` against ``point_sup_no_consistency``, median step
seconds). Writes ``point_sup.csv`` and prints a table. Runs resume: a trained model or a finished
prediction is not redone.

    python benchmarks/point_sup.py --work /tmp/psb --iterations 250 --jobs 2
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Dict, List, Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.learning_speed import environment, run  # noqa: E402

DENSE_ID, SPARSE_ID, PSEUDO_ID = 541, 542, 543
DENSE, SPARSE = f"Dataset{DENSE_ID}_SpineDense", f"Dataset{SPARSE_ID}_SpineClicks"
PER_EPOCH = 25
ABLATION = ("point_sup_no_point", "point_sup_no_consistency", "point_sup_no_separation", "point_sup_no_extent")
VARIANTS = ABLATION + ("point_sup_unbalanced",)  # rows beside the ablation, run only when asked for
FIELDS = ["row", "dataset", "configuration", "trainer", "plans", "scored_on", "cases", "weighted_dice", "mean_dice",
          "foreground_dice", "volume_ratio", "train_s"]


def prepare(work: Path, args: argparse.Namespace) -> Dict[str, object]:
    """Write the dense phantom, simulate its clicks and plan both (once); return the click annotation."""
    from dataset_conversion.synthetic_spine import write_spine_dataset

    env = environment(work, 2)
    raw = work / "raw"
    if not (raw / DENSE / "dataset.json").is_file():
        write_spine_dataset(raw / DENSE, num_cases=args.cases, num_test=args.test, seed=args.seed,
                            shape=tuple(args.shape), overwrite=True)
    if not (raw / SPARSE / "dataset.json").is_file():
        run(["poi_convert", "clicks", "--from-dataset", str(raw / DENSE), "-d", str(SPARSE_ID), "-n", "SpineClicks",
             "-o", str(raw), "--clicks-per-structure", str(args.clicks), "--background-clicks",
             str(args.background_clicks), "--click-radius-mm", str(args.click_radius_mm), "--seed", str(args.seed)],
            env, work / "logs" / "clicks.log")
    for dataset, configurations in ((DENSE_ID, ["3d_fullres"]), (SPARSE_ID, ["3d_fullres", "2d"])):
        name = DENSE if dataset == DENSE_ID else SPARSE
        if not (work / "preprocessed" / name / "poiPlans.json").is_file():
            run(["poi_plan_and_preprocess", "-d", str(dataset), "-c", *configurations, "-np", "2", "--no_pbar"],
                env, work / "logs" / f"{name}_plan.log")
    return json.loads((raw / SPARSE / "dataset.json").read_text()).get("click_annotation", {})


def model_folder(work: Path, dataset: str, trainer: str, configuration: str, plans: str = "poiPlans") -> Path:
    from trainers.registry import trainer_class

    return work / "results" / dataset / f"{trainer_class(trainer).__name__}__{plans}__{configuration}" / "fold_all"


def train(work: Path, dataset_id: int, dataset: str, trainer: str, configuration: str, iterations: int,
          threads: int) -> float:
    """Train one row (or find it trained); its training seconds."""
    folder = model_folder(work, dataset, trainer, configuration)
    timing = folder / "train_seconds.json"
    if (folder / "checkpoint_final.pth").is_file() and timing.is_file():
        return float(json.loads(timing.read_text())["seconds"])
    env = environment(work, threads)
    env["nnUNet_n_proc_DA"] = "0"
    start = time.perf_counter()
    run(["poi_train", str(dataset_id), configuration, trainer, "-f", "all", "-device", "cpu", "--epochs",
         str(max(1, iterations // PER_EPOCH)), "--iterations_per_epoch", str(PER_EPOCH), "--no_validation"],
        env, work / "logs" / f"{dataset}_{trainer}_{configuration}_train.log")
    seconds = time.perf_counter() - start
    timing.write_text(json.dumps({"seconds": seconds}))
    return seconds


def predict(work: Path, dataset_id: int, dataset: str, trainer: str, configuration: str, images: Path,
            threads: int, plans: str = "poiPlans") -> Path:
    out = work / "predictions" / dataset / f"{trainer}_{configuration}_{plans}"
    if (out / "done").is_file():
        return out
    run(["poi_predict", "-i", str(images), "-o", str(out), "-d", str(dataset_id), "-c", configuration, "-tr", trainer,
         "-p", plans, "-f", "all", "-device", "cpu", "--overwrite", "--no_pbar"],
        environment(work, threads), work / "logs" / f"{dataset}_{trainer}_{configuration}_{plans}_predict.log")
    (out / "done").write_text("")
    return out


def dice_scores(reference: Path, prediction: Path, out: Path) -> Dict[str, float]:
    """Inverse-frequency-weighted and plain mean Dice of ``prediction``'s masks against ``reference``'s
    (``poi_evaluate``'s files go to ``out``)."""
    from poi_nnunet.evaluation import evaluate_folders

    seg = evaluate_folders(reference, prediction, out)["segmentation"]
    return {"cases": seg["n_cases"], "weighted_dice": seg["inverse_frequency_weighted_dice"]["mean"],
            "mean_dice": seg["mean_dice"]["mean"], **foreground_scores(reference, prediction)}


def foreground_scores(reference: Path, prediction: Path) -> Dict[str, float]:
    """Means over the reference's cases of the Dice of ``label > 0`` (every structure as one) and of the
    predicted over the true foreground volume (above 1: over-segmentation)."""
    import numpy as np
    import SimpleITK as sitk

    dices, volumes = [], []
    for ref_file in sorted(reference.glob("*.nii.gz")):
        truth = sitk.GetArrayFromImage(sitk.ReadImage(str(ref_file))) > 0
        predicted = sitk.GetArrayFromImage(sitk.ReadImage(str(prediction / ref_file.name))) > 0
        dices.append(2.0 * float((truth & predicted).sum()) / max(1, int(truth.sum() + predicted.sum())))
        volumes.append(float(predicted.sum()) / max(1, int(truth.sum())))
    return {"foreground_dice": float(np.mean(dices)), "volume_ratio": float(np.mean(volumes))}


def supervised_row(work: Path, row: str, dataset_id: int, dataset: str, trainer: str, configuration: str,
                   args: argparse.Namespace) -> Dict[str, object]:
    """Train, predict the held-out images (the sparse dataset's: the pseudo-mask dataset has none) and score."""
    seconds = train(work, dataset_id, dataset, trainer, configuration, args.iterations, args.threads)
    out = predict(work, dataset_id, dataset, trainer, configuration, work / "raw" / SPARSE / "imagesTs", args.threads)
    return {"row": row, "dataset": dataset, "configuration": configuration, "trainer": trainer, "plans": "poiPlans",
            "scored_on": "labelsTs", "train_s": round(seconds, 1),
            **dice_scores(work / "raw" / SPARSE / "labelsTs", out, work / "evaluations" / row)}


def pseudo_mask_rows(work: Path, args: argparse.Namespace) -> List[Dict[str, object]]:
    """The three-plane pipeline (``poi_pseudo_masks``), its plane models on the held-out cases, the pseudo masks
    on the training cases, and the final ``nnunet`` on them."""
    from poi_nnunet.pseudo_masks.planes import PLANE_CONFIGURATION, dataset_planes
    from poi_nnunet.raw_dataset import RawDataset

    env = environment(work, args.threads)
    env["nnUNet_n_proc_DA"] = "0"
    pseudo = f"Dataset{PSEUDO_ID}_SpineClicksPseudoMasks"
    timing = work / "pseudo_masks_seconds.json"  # a resumed run reports the seconds of the run that made it
    if not (work / "raw" / pseudo / "dataset.json").is_file():
        start = time.perf_counter()
        run(["poi_pseudo_masks", "-d", str(SPARSE_ID), "--output-id", str(PSEUDO_ID), "-device", "cpu",
             "--epochs", str(max(1, args.iterations // PER_EPOCH)), "--iterations_per_epoch", str(PER_EPOCH),
             "-np", "2", "-npfp", "2", "--no_pbar"], env, work / "logs" / "pseudo_masks.log")
        timing.write_text(json.dumps({"seconds": time.perf_counter() - start}))
    seconds = float(json.loads(timing.read_text())["seconds"]) if timing.is_file() else math.nan
    rows: List[Dict[str, object]] = []
    for plane in dataset_planes(RawDataset.open(work / "raw" / SPARSE)):
        out = predict(work, SPARSE_ID, SPARSE, "point_sup", PLANE_CONFIGURATION, work / "raw" / SPARSE / "imagesTs",
                      args.threads, plane.plans_name)
        rows.append({"row": f"plane_{plane.name}", "dataset": SPARSE, "configuration": PLANE_CONFIGURATION,
                     "trainer": "point_sup", "plans": plane.plans_name, "scored_on": "labelsTs", "train_s": math.nan,
                     **dice_scores(work / "raw" / SPARSE / "labelsTs", out,
                                   work / "evaluations" / f"plane_{plane.name}")})
    rows.append({"row": "pseudo_mask", "dataset": pseudo, "configuration": "-", "trainer": "-", "plans": "-",
                 "scored_on": "labelsTr_reference", "train_s": round(seconds, 1),
                 **dice_scores(work / "raw" / SPARSE / "labelsTr_reference", work / "raw" / pseudo / "labelsTr",
                               work / "evaluations" / "pseudo_mask")})
    if not (work / "preprocessed" / pseudo / "poiPlans.json").is_file():
        run(["poi_plan_and_preprocess", "-d", str(PSEUDO_ID), "-c", "3d_fullres", "-np", "2", "--no_pbar"],
            environment(work, 2), work / "logs" / f"{pseudo}_plan.log")
    rows.append(supervised_row(work, "final", PSEUDO_ID, pseudo, "nnunet", "3d_fullres", args))
    return rows


def consistency_cost(work: Path, steps: int, threads: int) -> Dict[str, float]:
    """Median step seconds of ``point_sup`` with and without the consistency pass (child processes)."""
    out: Dict[str, float] = {}
    for trainer in ("point_sup", "point_sup_no_consistency"):
        env = environment(work, threads)
        env["nnUNet_n_proc_DA"] = "0"
        result = work / f"step_{trainer}.json"
        if not result.is_file():
            code = ("import json, torch; from benchmarks.train_step import timed_steps; "
                    "from poi_nnunet.trainer_factory import build_trainer; "
                    f"torch.set_num_threads({threads}); "
                    f"t = build_trainer({SPARSE!r}, '3d_fullres', {trainer!r}, 'all', 'poiPlans', device='cpu'); "
                    f"open({str(result)!r}, 'w').write(json.dumps(timed_steps(t, {steps}, 'cpu')))")
            run([sys.executable, "-c", code], env, work / "logs" / f"step_{trainer}.log")
        out[trainer] = float(json.loads(result.read_text())["step_s"])
    return out


def write_rows(path: Path, rows: List[Dict[str, object]]) -> None:
    """Write ``rows`` into the CSV, keeping rows of earlier invocations that these do not replace."""
    kept: Dict[str, Dict[str, object]] = {}
    if path.is_file():
        with open(path, newline="") as fh:
            kept = {r["row"]: r for r in csv.DictReader(fh)}
    kept.update({str(r["row"]): r for r in rows})
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(kept.values())


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True, help="work folder (raw, preprocessed, results, CSV)")
    parser.add_argument("--iterations", type=int, default=250, help="training iterations of every row (default 250)")
    parser.add_argument("--rows", nargs="+", default=["reference", "ignore_baseline", "point_sup_3d", "pseudo_masks",
                                                      "ablation"],
                        help="row groups to run (default: all); 'pseudo_masks' gives the planes, pseudo_mask and "
                             "final rows")
    parser.add_argument("--cases", type=int, default=12, help="training cases of the phantom (default 12)")
    parser.add_argument("--test", type=int, default=4, help="held-out cases (default 4)")
    parser.add_argument("--shape", type=int, nargs=3, default=[48, 40, 40], help="phantom shape (z y x)")
    parser.add_argument("--clicks", type=int, default=5, help="clicks per vertebra (default 5)")
    parser.add_argument("--background-clicks", type=int, default=10, help="background clicks per case (default 10)")
    parser.add_argument("--click-radius-mm", type=float, default=4.0, help="click radius in mm (default 4)")
    parser.add_argument("--ablation", nargs="+", default=list(ABLATION), choices=VARIANTS, metavar="TRAINER",
                        help="the ablation rows to run (default: all four terms removed once; "
                             "point_sup_unbalanced: the point loss without class balancing)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=2, help="rows trained at once (default 2)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run (default 1)")
    parser.add_argument("--step-samples", type=int, default=5, help="timed steps for the consistency cost")
    args = parser.parse_args(argv)
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    annotation = prepare(work, args)

    jobs = []
    if "reference" in args.rows:
        jobs.append(("reference", DENSE_ID, DENSE, "nnunet"))
    if "ignore_baseline" in args.rows:
        jobs.append(("ignore_baseline", SPARSE_ID, SPARSE, "nnunet"))
    if "point_sup_3d" in args.rows:
        jobs.append(("point_sup_3d", SPARSE_ID, SPARSE, "point_sup"))
    if "ablation" in args.rows:
        jobs += [(t.replace("point_sup_", ""), SPARSE_ID, SPARSE, t) for t in args.ablation]
    csv_path = work / "point_sup.csv"
    rows: List[Dict[str, object]] = []
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = [pool.submit(supervised_row, work, row, i, d, t, "3d_fullres", args) for row, i, d, t in jobs]
        if "pseudo_masks" in args.rows:
            futures.append(pool.submit(pseudo_mask_rows, work, args))
        for f in as_completed(futures):
            result = f.result()
            rows += result if isinstance(result, list) else [result]
            write_rows(csv_path, rows)  # as each finishes, merged with earlier invocations' rows
    cost = consistency_cost(work, args.step_samples, args.threads) if "ablation" in args.rows else {}

    print(f"labelling cost: {annotation.get('annotated_fraction', float('nan')):.4%} of voxels clicked "
          f"({args.clicks} per vertebra, {args.background_clicks} background, radius {args.click_radius_mm} mm)")
    print(f"{'row':<18} {'scored on':<19} {'cases':>5} {'w. Dice':>8} {'Dice':>7} {'fg Dice':>8} {'volume':>7} "
          f"{'train s':>8}")
    for r in rows:
        print(f"{r['row']:<18} {r['scored_on']:<19} {r['cases']:>5} {r['weighted_dice']:8.3f} {r['mean_dice']:7.3f} "
              f"{r['foreground_dice']:8.3f} {r['volume_ratio']:7.2f} {r['train_s']:8.1f}")
    if cost:
        print(f"step seconds: point_sup {cost['point_sup']:.2f}, without consistency "
              f"{cost['point_sup_no_consistency']:.2f} ({cost['point_sup'] / cost['point_sup_no_consistency']:.2f}x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

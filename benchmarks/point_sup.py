"""Segmentation from clicks on the synthetic 3D spine: seed 002's Table 1 in nnU-Net's terms.

One dense phantom (``Dataset<id>_SpineDense``) and its point-annotated twin (``poi_convert clicks``:
``--clicks`` clicks per vertebra from its interior, ``--background-clicks`` background clicks, radius
``--click-radius-mm``). Every row trains with the same budget (``--iterations``, fold ``all``, seed 0,
``--device``, ``--per-epoch`` iterations per epoch, and ``--train-seconds`` as a time cap) on the same plans,
and is scored on the held-out cases (``labelsTs``, dense) with the
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

Every training runs in its own process (:mod:`benchmarks.timed_training`) and records the iterations it
did (``iterations``), whether the time cap ended it at an epoch end before ``--iterations``
(``stopped_early``: its final checkpoint is saved there, the poly learning rate not decayed to its end), its
seconds, median step seconds and peak GPU memory. The plane models are trained here, in parallel and on
the same budget, in the folders ``poi_pseudo_masks`` trains them into; it then finds them trained (its
stages resume) and predicts, fuses and writes the pseudo masks on ``--device``. The ``pseudo_mask`` row
counts the three planes' iterations and seconds plus the seconds of ``poi_pseudo_masks``. ``--jobs`` bounds
the trainings and predictions running at once (the three planes count three). On CUDA, nnU-Net's
``torch.compile`` is off unless ``nnUNet_compile`` is set (it takes minutes per training).

Also measured: the labelling cost (clicked voxels / all voxels, from ``poi_convert clicks``) and the
cost of the consistency term per step (``point_sup`` against ``point_sup_no_consistency``, median step
seconds, each alone after the rows; ``--step-samples 0`` skips it). Writes ``point_sup.csv`` and prints a
table. Runs resume: a trained model (``checkpoint_final.pth``) or a finished prediction is not redone.

    python benchmarks/point_sup.py --work /tmp/psb --iterations 250 --jobs 2

On one GPU, every training at once under a time cap (``--jobs 10``: seven 3D rows and the three planes;
the ``final`` row trains after the planes), e.g.::

    python benchmarks/point_sup.py --work /tmp/psb --device cuda --iterations 500 --per-epoch 100 --da-workers 1
      --threads 1 --jobs 10 --train-seconds 125 --step-samples 0

(one line; the pseudo-mask chain trains twice in a row, so the whole run takes about twice the cap plus the
planning and predictions; ``--step-samples 0``: the ``no_consistency`` row's step seconds, beside
``point_sup_3d``'s, give that cost, both measured while every row trains). Resuming keys on the final
checkpoint alone, so another ``--iterations`` wants another ``--work``.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.learning_speed import environment, run  # noqa: E402
from benchmarks.timed_training import RunSettings, add_run_arguments, schedule, train_in_child  # noqa: E402

DENSE_ID, SPARSE_ID, PSEUDO_ID = 541, 542, 543
DENSE, SPARSE = f"Dataset{DENSE_ID}_SpineDense", f"Dataset{SPARSE_ID}_SpineClicks"
ABLATION = ("point_sup_no_point", "point_sup_no_consistency", "point_sup_no_separation", "point_sup_no_extent")
VARIANTS = ABLATION + ("point_sup_unbalanced",)  # rows beside the ablation, run only when asked for
FIELDS = ["row", "dataset", "configuration", "trainer", "plans", "scored_on", "cases", "weighted_dice", "mean_dice",
          "foreground_dice", "volume_ratio", "device", "iterations", "stopped_early", "train_s", "step_s",
          "peak_gpu_mb"]
#: Plan and preprocess the 2d configuration of every slicing plane, as ``poi_pseudo_masks``' first stage does
PLAN_PLANES = ("from poi_nnunet.pseudo_masks.options import PseudoMaskOptions; "
               "from poi_nnunet.pseudo_masks.plane_models import stage_plan; "
               "from poi_nnunet.pseudo_masks.planes import dataset_planes; "
               "from poi_nnunet.raw_dataset import RawDataset; "
               "ds = RawDataset.open({raw!r}); "
               "stage_plan(ds, dataset_planes(ds), ds.case_ids('Tr'), "
               "PseudoMaskOptions(num_processes=2, num_processes_fingerprint=2, progress=False))")


@dataclass(frozen=True)
class Budget:
    """What every row trains and predicts with, and the slots (``--jobs``) its processes take."""

    work: Path
    iterations: int
    settings: RunSettings
    slots: threading.Semaphore


def prepare(work: Path, args: argparse.Namespace) -> Dict[str, object]:
    """Write the dense phantom, simulate its clicks and plan both (once); return the click annotation."""
    env = environment(work, 2)
    raw = work / "raw"
    if not (raw / DENSE / "dataset.json").is_file():
        from dataset_conversion.synthetic_spine import write_spine_dataset  # only to write it (needs TPTBox)

        write_spine_dataset(raw / DENSE, num_cases=args.cases, num_test=args.test, seed=args.seed,
                            shape=tuple(args.shape), overwrite=True)
    if not (raw / SPARSE / "dataset.json").is_file():
        run(["poi_convert", "clicks", "--from-dataset", str(raw / DENSE), "-d", str(SPARSE_ID), "-n", "SpineClicks",
             "-o", str(raw), "--clicks-per-structure", str(args.clicks), "--background-clicks",
             str(args.background_clicks), "--click-radius-mm", str(args.click_radius_mm), "--seed", str(args.seed)],
            env, work / "logs" / "clicks.log")

    def plan(dataset: int, name: str, configurations: List[str]) -> None:
        if not (work / "preprocessed" / name / "poiPlans.json").is_file():
            run(["poi_plan_and_preprocess", "-d", str(dataset), "-c", *configurations, "-np", "2", "--no_pbar"],
                env, work / "logs" / f"{name}_plan.log")

    with ThreadPoolExecutor(max_workers=2) as pool:  # two datasets, planned at once
        list(pool.map(plan, (DENSE_ID, SPARSE_ID), (DENSE, SPARSE), (["3d_fullres"], ["3d_fullres", "2d"])))
    return json.loads((raw / SPARSE / "dataset.json").read_text()).get("click_annotation", {})


def model_folder(work: Path, dataset: str, trainer: str, configuration: str, plans: str = "poiPlans") -> Path:
    from trainers.registry import trainer_class

    return work / "results" / dataset / f"{trainer_class(trainer).__name__}__{plans}__{configuration}" / "fold_all"


def train(budget: Budget, dataset: str, trainer: str, configuration: str, plans: str = "poiPlans") -> Dict[str, object]:
    """Train one model (or find it trained) in its own process; its ``train_stats.json`` (empty for a model
    trained before the statistics were recorded)."""
    folder = model_folder(budget.work, dataset, trainer, configuration, plans)
    stats = folder / "train_stats.json"
    if not (folder / "checkpoint_final.pth").is_file():
        with budget.slots:
            train_in_child(budget.work, dataset, trainer, configuration, budget.iterations, budget.settings, stats,
                           budget.work / "logs" / f"{dataset}_{trainer}_{configuration}_{plans}_train.log", plans)
    return json.loads(stats.read_text()) if stats.is_file() else {}


def training_columns(stats: Dict[str, object]) -> Dict[str, object]:
    """The CSV's training columns from a ``train_stats.json``."""
    number = (lambda key, digits: round(float(stats[key]), digits) if key in stats else math.nan)  # noqa: E731
    return {"device": stats.get("device", ""), "iterations": stats.get("iterations", ""),
            "stopped_early": stats.get("stopped_early", ""), "train_s": number("train_s", 1),
            "step_s": number("step_s", 4), "peak_gpu_mb": number("peak_gpu_mb", 0)}


def predict(budget: Budget, dataset_id: int, dataset: str, trainer: str, configuration: str, images: Path,
            plans: str = "poiPlans") -> Path:
    work, settings = budget.work, budget.settings
    out = work / "predictions" / dataset / f"{trainer}_{configuration}_{plans}"
    if (out / "done").is_file():
        return out
    with budget.slots:
        run(["poi_predict", "-i", str(images), "-o", str(out), "-d", str(dataset_id), "-c", configuration, "-tr",
             trainer, "-p", plans, "-f", "all", "-device", settings.device, "--overwrite", "--no_pbar"],
            environment(work, settings.threads),
            work / "logs" / f"{dataset}_{trainer}_{configuration}_{plans}_predict.log")
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


def supervised_row(budget: Budget, row: str, dataset_id: int, dataset: str, trainer: str,
                   configuration: str) -> Dict[str, object]:
    """Train, predict the held-out images (the sparse dataset's: the pseudo-mask dataset has none) and score."""
    work = budget.work
    stats = train(budget, dataset, trainer, configuration)
    out = predict(budget, dataset_id, dataset, trainer, configuration, work / "raw" / SPARSE / "imagesTs")
    return {"row": row, "dataset": dataset, "configuration": configuration, "trainer": trainer, "plans": "poiPlans",
            "scored_on": "labelsTs", **training_columns(stats),
            **dice_scores(work / "raw" / SPARSE / "labelsTs", out, work / "evaluations" / row)}


def pseudo_mask_rows(budget: Budget) -> List[Dict[str, object]]:
    """The three-plane pipeline (``poi_pseudo_masks``, its plane models trained here in parallel), its plane
    models on the held-out cases, the pseudo masks on the training cases, and the final ``nnunet`` on them."""
    from poi_nnunet.pseudo_masks.planes import PLANE_CONFIGURATION, dataset_planes
    from poi_nnunet.raw_dataset import RawDataset

    work, settings = budget.work, budget.settings
    pseudo = f"Dataset{PSEUDO_ID}_SpineClicksPseudoMasks"
    planes = dataset_planes(RawDataset.open(work / "raw" / SPARSE))
    timing = work / "pseudo_masks_seconds.json"  # a resumed run reports the seconds of the run that made it
    made = (work / "raw" / pseudo / "dataset.json").is_file()
    if not made:
        with budget.slots:
            run([sys.executable, "-c", PLAN_PLANES.format(raw=str(work / "raw" / SPARSE))], environment(work, 2),
                work / "logs" / "pseudo_masks_plan.log")
    with ThreadPoolExecutor(max_workers=len(planes)) as pool:  # each plane waits for its own slot
        plane_stats = list(pool.map(
            lambda plane: train(budget, SPARSE, "point_sup", PLANE_CONFIGURATION, plane.plans_name), planes))
    if not made:
        env = environment(work, settings.threads)
        env["nnUNet_n_proc_DA"] = str(settings.da_workers)
        epochs, per_epoch = schedule(budget.iterations, settings)
        start = time.perf_counter()
        with budget.slots:  # the planes are trained: it predicts, fuses and writes
            run(["poi_pseudo_masks", "-d", str(SPARSE_ID), "--output-id", str(PSEUDO_ID), "-device", settings.device,
                 "--epochs", str(epochs), "--iterations_per_epoch", str(per_epoch), "-np", "2", "-npfp", "2",
                 "--no_pbar"], env, work / "logs" / "pseudo_masks.log")
        timing.write_text(json.dumps({"seconds": time.perf_counter() - start}))
    seconds = float(json.loads(timing.read_text())["seconds"]) if timing.is_file() else math.nan

    def plane_row(plane, stats: Dict[str, object]) -> Dict[str, object]:
        out = predict(budget, SPARSE_ID, SPARSE, "point_sup", PLANE_CONFIGURATION, work / "raw" / SPARSE / "imagesTs",
                      plane.plans_name)
        return {"row": f"plane_{plane.name}", "dataset": SPARSE, "configuration": PLANE_CONFIGURATION,
                "trainer": "point_sup", "plans": plane.plans_name, "scored_on": "labelsTs", **training_columns(stats),
                **dice_scores(work / "raw" / SPARSE / "labelsTs", out, work / "evaluations" / f"plane_{plane.name}")}

    with ThreadPoolExecutor(max_workers=len(planes) + 1) as pool:  # the final model trains meanwhile
        final = pool.submit(final_row, budget, pseudo)
        rows = list(pool.map(plane_row, planes, plane_stats))
        planes_total = {"device": settings.device, "iterations": sum(int(s.get("iterations", 0)) for s in plane_stats),
                        "stopped_early": any(bool(s.get("stopped_early")) for s in plane_stats),
                        "train_s": sum(float(s.get("train_s", math.nan)) for s in plane_stats) + seconds}
        rows.append({"row": "pseudo_mask", "dataset": pseudo, "configuration": "-", "trainer": "-", "plans": "-",
                     "scored_on": "labelsTr_reference", **training_columns(planes_total),
                     **dice_scores(work / "raw" / SPARSE / "labelsTr_reference", work / "raw" / pseudo / "labelsTr",
                                   work / "evaluations" / "pseudo_mask")})
        rows.append(final.result())
    return rows


def final_row(budget: Budget, pseudo: str) -> Dict[str, object]:
    """Plan the pseudo-mask dataset, then train ``nnunet`` on it like the other rows."""
    if not (budget.work / "preprocessed" / pseudo / "poiPlans.json").is_file():
        with budget.slots:
            run(["poi_plan_and_preprocess", "-d", str(PSEUDO_ID), "-c", "3d_fullres", "-np", "2", "--no_pbar"],
                environment(budget.work, 2), budget.work / "logs" / f"{pseudo}_plan.log")
    return supervised_row(budget, "final", PSEUDO_ID, pseudo, "nnunet", "3d_fullres")


def consistency_cost(work: Path, steps: int, threads: int, device: str) -> Dict[str, float]:
    """Median step seconds of ``point_sup`` with and without the consistency pass (child processes)."""
    out: Dict[str, float] = {}
    suffix = "" if device == "cpu" else f"_{device}"
    for trainer in ("point_sup", "point_sup_no_consistency"):
        env = environment(work, threads)
        env["nnUNet_n_proc_DA"] = "0"
        result = work / f"step_{trainer}{suffix}.json"
        if not result.is_file():
            code = ("import json, torch; from benchmarks.train_step import timed_steps; "
                    "from poi_nnunet.trainer_factory import build_trainer; "
                    f"torch.set_num_threads({threads}); "
                    f"t = build_trainer({SPARSE!r}, '3d_fullres', {trainer!r}, 'all', 'poiPlans', device={device!r}); "
                    f"open({str(result)!r}, 'w').write(json.dumps(timed_steps(t, {steps}, {device!r})))")
            run([sys.executable, "-c", code], env, work / "logs" / f"step_{trainer}{suffix}.log")
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
    parser.add_argument("--jobs", type=int, default=2,
                        help="trainings and predictions running at once (default 2; the three planes count three)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run (default 1)")
    add_run_arguments(parser, "trainings, predictions and the consistency cost")
    parser.add_argument("--step-samples", type=int, default=5,
                        help="timed steps for the consistency cost (default 5; 0: not measured)")
    args = parser.parse_args(argv)
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("nnUNet_compile", "f")  # the children's torch.compile (CUDA) costs minutes per run
    annotation = prepare(work, args)
    settings = RunSettings(args.threads, args.device, args.per_epoch, args.da_workers, args.train_seconds)
    budget = Budget(work, args.iterations, settings, threading.BoundedSemaphore(max(1, args.jobs)))

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
    with ThreadPoolExecutor(max_workers=len(jobs) + 1) as pool:  # budget.slots bounds the processes
        futures = []
        if "pseudo_masks" in args.rows:  # first: the longest chain (planes, pseudo masks, final)
            futures.append(pool.submit(pseudo_mask_rows, budget))
        futures += [pool.submit(supervised_row, budget, row, i, d, t, "3d_fullres") for row, i, d, t in jobs]
        for f in as_completed(futures):
            result = f.result()
            rows += result if isinstance(result, list) else [result]
            write_rows(csv_path, rows)  # as each finishes, merged with earlier invocations' rows
    measure = "ablation" in args.rows and args.step_samples > 0
    cost = consistency_cost(work, args.step_samples, args.threads, args.device) if measure else {}

    print(f"labelling cost: {annotation.get('annotated_fraction', float('nan')):.4%} of voxels clicked "
          f"({args.clicks} per vertebra, {args.background_clicks} background, radius {args.click_radius_mm} mm)")
    print(f"{'row':<18} {'scored on':<19} {'cases':>5} {'w. Dice':>8} {'Dice':>7} {'fg Dice':>8} {'volume':>7} "
          f"{'iters':>6} {'cut':>4} {'train s':>8}")
    for r in rows:
        print(f"{r['row']:<18} {r['scored_on']:<19} {r['cases']:>5} {r['weighted_dice']:8.3f} {r['mean_dice']:7.3f} "
              f"{r['foreground_dice']:8.3f} {r['volume_ratio']:7.2f} {r['iterations']!s:>6} "
              f"{'yes' if r['stopped_early'] is True else '':>4} {r['train_s']:8.1f}")
    if settings.train_seconds is not None:
        print(f"cut: ended by the {settings.train_seconds:g} s cap before {args.iterations} iterations (at an epoch "
              "end; the learning rate had not decayed)")
    if cost:
        print(f"step seconds: point_sup {cost['point_sup']:.2f}, without consistency "
              f"{cost['point_sup_no_consistency']:.2f} ({cost['point_sup'] / cost['point_sup_no_consistency']:.2f}x)")
    trained = {r["row"]: float(r["step_s"]) for r in rows}
    if "point_sup_3d" in trained and "no_consistency" in trained:  # both trained side by side in this run
        print(f"median step seconds in training: point_sup {trained['point_sup_3d']:.3f}, without consistency "
              f"{trained['no_consistency']:.3f} ({trained['point_sup_3d'] / trained['no_consistency']:.2f}x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

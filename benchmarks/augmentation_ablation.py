"""Augmentation ablation (seed 000): ``coarse_refine`` with nnU-Net's augmentation only, with elastic
deformation, with registration-based samples (``poi_augment``), and with both, on the same budget.

One phantom (``--phantom spine``: structure crops; ``leg``: whole image, at the converter's default shape a scan
that fits one patch; ``--shape`` sets another, read only when the raw dataset is written) is written with
``--cases`` training and ``--test`` held-out cases, planned, and augmented by ``poi_augment --registration N``
into a second dataset (its cases plus N registered samples per case), planned too. Rows, each trained on fold
``all`` for ``--iterations`` (:mod:`benchmarks.timed_training`):

========== ================= ===============================
row        dataset           trainer
========== ================= ===============================
none       original          ``coarse_refine_no_elastic``
elastic    original          ``coarse_refine`` (p 0.2)
registration augmented       ``coarse_refine_no_elastic``
both       augmented         ``coarse_refine``
========== ================= ===============================

Each model predicts the original dataset's ``imagesTs`` (``poi_predict``, confidence threshold 0, no
mirroring); TRE (mm) median / mean / p95 over the reference points found, and how many. Written to
``augmentation_ablation.json`` and printed as a table.

    python benchmarks/augmentation_ablation.py --work /tmp/aug --phantom spine --cases 12 --test 4 \\
        --registration 2 --iterations 600 [--shape 48 40 40] [--device cuda --per-epoch 100 --jobs 4]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.learning_speed import environment, run  # noqa: E402
from benchmarks.timed_training import RunSettings, add_run_arguments, train_in_child  # noqa: E402

PHANTOMS = {"spine": (640, "AugSpine"), "leg": (642, "AugLeg")}
ROWS = {"none": (False, "coarse_refine_no_elastic"), "elastic": (False, "coarse_refine"),
        "registration": (True, "coarse_refine_no_elastic"), "both": (True, "coarse_refine")}


def prepare(work: Path, phantom: str, cases: int, test: int, registration: int, seed: int,
            shape: Optional[Sequence[int]] = None) -> Dict[bool, str]:
    """Write, plan and augment the phantom once; the dataset names, original (False) and augmented (True)."""
    from poi_nnunet.cli.augment import main as augment
    from poi_nnunet.preprocessing.pipeline import plan_and_preprocess

    for name in ("raw", "preprocessed", "results"):
        (work / name).mkdir(parents=True, exist_ok=True)
    os.environ.update(nnUNet_raw=str(work / "raw"), nnUNet_preprocessed=str(work / "preprocessed"),
                      nnUNet_results=str(work / "results"))
    number, name = PHANTOMS[phantom]
    original, augmented = f"Dataset{number}_{name}", f"Dataset{number + 1}_{name}Reg"
    if not (work / "raw" / original / "dataset.json").is_file():
        if phantom == "spine":
            from dataset_conversion.synthetic_spine import write_spine_dataset as write
        else:
            from dataset_conversion.synthetic_leg import write_leg_dataset as write
        options = {} if shape is None else {"shape": tuple(shape)}
        write(work / "raw" / original, num_cases=cases, num_test=test, seed=seed, overwrite=True, **options)
    if not (work / "raw" / augmented / "dataset.json").is_file():
        assert augment(["-d", str(number), "--registration", str(registration), "--output-id", str(number + 1),
                        "--name", f"{name}Reg", "-np", str(max(1, os.cpu_count() or 1)), "--no_pbar"]) == 0
    for dataset in (original, augmented):
        if not (work / "preprocessed" / dataset / "poiPlans.json").is_file():
            plan_and_preprocess(dataset, configurations=["3d_fullres"], num_processes=[2],
                                num_processes_fingerprint=2, progress=False)
    return {False: original, True: augmented}


def predict(work: Path, dataset: str, trainer: str, reference: str, out: Path, device: str, threads: int) -> None:
    env = environment(work, threads)
    run([sys.executable, "-m", "poi_nnunet.cli.predict", "-i", str(work / "raw" / reference / "imagesTs"), "-o",
         str(out), "-d", dataset, "-c", "3d_fullres", "-tr", trainer, "-f", "all", "-device", device,
         "--min_confidence", "0", "--disable_tta", "--no_pbar", "--overwrite"], env, out.parent / f"{out.name}.log")


def tre(reference: Path, predicted: Path) -> Dict[str, float]:
    from poi_nnunet.pois import read_poi_file

    distances: List[float] = []
    total = 0
    for ref_file in sorted(reference.glob("*.json")):
        truth = read_poi_file(ref_file).by_key()
        found = read_poi_file(predicted / ref_file.name).by_key() if (predicted / ref_file.name).is_file() else {}
        total += len(truth)
        distances += [float(np.linalg.norm(np.subtract(found[k].position, p.position))) for k, p in truth.items()
                      if k in found]
    d = np.array(distances)
    if not len(d):
        return {"median": float("nan"), "mean": float("nan"), "p95": float("nan"), "found": 0, "reference": total}
    return {"median": round(float(np.median(d)), 2), "mean": round(float(d.mean()), 2),
            "p95": round(float(np.percentile(d, 95)), 2), "found": int(len(d)), "reference": total}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--phantom", choices=sorted(PHANTOMS), default="spine")
    parser.add_argument("--cases", type=int, default=12)
    parser.add_argument("--test", type=int, default=4)
    parser.add_argument("--registration", type=int, default=2, help="poi_augment samples per training case")
    parser.add_argument("--iterations", type=int, default=400)
    parser.add_argument("--rows", nargs="+", choices=sorted(ROWS), default=list(ROWS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shape", type=int, nargs=3, help="phantom shape (z y x; default: the converter's)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--jobs", type=int, default=2, help="trainings at once")
    add_run_arguments(parser, "trainings and predictions")
    args = parser.parse_args(argv)
    settings = RunSettings(args.threads, args.device, args.per_epoch, args.da_workers, args.train_seconds)
    names = prepare(args.work, args.phantom, args.cases, args.test, args.registration, args.seed, args.shape)

    def row(name: str) -> Dict[str, object]:
        augmented, trainer = ROWS[name]
        dataset = names[augmented]
        stats = train_in_child(args.work, dataset, trainer, "3d_fullres", args.iterations, settings,
                               args.work / "stats" / f"{name}.json", args.work / "logs" / f"{name}_train.log")
        out = args.work / "predictions" / name
        predict(args.work, dataset, trainer, names[False], out, args.device, args.threads)
        return {"row": name, "dataset": dataset, "trainer": trainer, **stats,
                **tre(args.work / "raw" / names[False] / "poisTs", out)}

    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        rows = list(pool.map(row, args.rows))
    (args.work / "augmentation_ablation.json").write_text(json.dumps(rows, indent=1))
    print("| row | dataset | iterations | median | mean | p95 | found |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['row']} | {r['dataset']} | {r['iterations']} | {r['median']} | {r['mean']} | {r['p95']} | "
              f"{r['found']}/{r['reference']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

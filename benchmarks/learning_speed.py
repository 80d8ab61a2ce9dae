"""How fast landmarks learn, per trainer variant: error, identity confusions and Dice against iterations.

Each phantom is generated, planned and preprocessed once; every variant trains on the same plans
with the same seed (fold ``all``), and snapshots of the one run are taken at the requested
iterations (nnU-Net's poly learning rate decays over the run's full length, so the 500-iteration
point of a 2000-iteration run is not a 500-iteration run: the run length is a column of the CSV).
Every snapshot predicts the phantom's held-out test cases with ``poi_predict`` exactly as a user
runs it (test-time mirroring on, the model's own segmentation), with ``--min_confidence 0`` so that
every point is written with its confidence; the scores are then taken at ``--min_confidence``
(default 0.1, poi_predict's default).

Reported per (phantom, variant, iterations):

* ``mean_mm``/``median_mm``/``p95_mm``: point error over the points written at the threshold;
* ``found``: the fraction of reference points written at the threshold;
* ``confused``: the fraction of written points that sit on *another* landmark's place
  (:func:`~poi_nnunet.evaluation.identity.identity_confusions`, 2 mm);
* ``*_all``: the same over every point (threshold 0: an undecided point counts with its error);
* ``dice``: mean Dice of the predicted segmentation (NaN on a landmark-only phantom);
* ``train_s``: training seconds up to that snapshot.

Phantoms: ``polygons`` (2D, three polygons with masks, 12 vertex landmarks, 112x128 at 0.8 mm, 32
training and 8 test cases), ``polygons_lmk`` (the same without masks: landmark-only) and ``spine``
(the 3D synthetic spine, structure mode); ``demo_xray`` is ``poi_demo``'s X-ray (100 training and 5
test cases at 64x64, 160 contour landmarks), to size the demo's schedule. Writes ``learning_speed.csv``
and ``learning_speed.png`` (error and confusions against iterations, one line per variant) into
``--work``. Runs resume: a
finished snapshot or prediction is not redone, while the scores are taken anew on every run (delete
``predictions/`` to predict again after a change to decoding).

    python benchmarks/learning_speed.py --work /tmp/ls --phantoms polygons polygons_lmk \\
        --variants heatmap heatmap_coord --length 500 --snapshots 100 250 500 --jobs 2
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


@dataclass(frozen=True)
class Phantom:
    """A benchmark dataset: how to write it and which configuration trains on it."""

    dataset_id: int
    name: str
    configuration: str
    iterations_per_epoch: int  # snapshot granularity

    @property
    def dataset(self) -> str:
        return f"Dataset{self.dataset_id}_{self.name}"

    def write(self, raw: Path, seed: int) -> None:
        target = raw / self.dataset
        if self.name == "DemoXray":  # poi_demo's X-ray as the demo writes it (its defaults), to size its schedule
            from dataset_conversion.synthetic_xray import write_xray_dataset

            write_xray_dataset(target, num_cases=100, num_test=5, seed=seed, shape=(64, 64), overwrite=True)
        elif self.name.startswith("Polygons"):
            from dataset_conversion.synthetic_polygons import write_polygon_dataset

            write_polygon_dataset(target, num_cases=32, num_test=8, seed=seed, masks=self.name == "PolygonsMasks",
                                  overwrite=True)
        else:
            from dataset_conversion.synthetic_spine import write_spine_dataset

            write_spine_dataset(target, num_cases=16, num_test=4, seed=seed, shape=(64, 48, 48), overwrite=True)


PHANTOMS: Dict[str, Phantom] = {
    "polygons": Phantom(611, "PolygonsMasks", "2d", 50),
    "polygons_lmk": Phantom(612, "PolygonsLandmarks", "2d", 50),
    "spine": Phantom(613, "SpineSmall", "3d_fullres", 25),
    "demo_xray": Phantom(614, "DemoXray", "2d", 25),
}


def environment(work: Path, threads: int) -> Dict[str, str]:
    env = dict(os.environ)
    env.update(nnUNet_raw=str(work / "raw"), nnUNet_preprocessed=str(work / "preprocessed"),
               nnUNet_results=str(work / "results"), OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               nnUNet_def_n_proc="1", PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""))
    return env


def run(command: List[str], env: Dict[str, str], log: Path) -> None:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as out:
        out.write(f"$ {' '.join(command)}\n")
        out.flush()
        done = subprocess.run(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:4])} ... failed ({done.returncode}); see {log}")


def prepare(work: Path, phantom: Phantom, seed: int) -> None:
    """Write and plan the phantom once (planning uses nnU-Net's own process settings)."""
    plans = work / "preprocessed" / phantom.dataset / "poiPlans.json"
    if plans.is_file():
        return
    phantom.write(work / "raw", seed)
    env = environment(work, 2)
    run(["poi_plan_and_preprocess", "-d", str(phantom.dataset_id), "-c", phantom.configuration, "-np", "2",
         "--no_pbar"], env, work / "logs" / f"{phantom.dataset}_plan.log")


def snapshot_name(iterations: int) -> str:
    return f"checkpoint_it{iterations}.pth"


def train_with_snapshots(dataset: str, configuration: str, variant: str, length: int, per_epoch: int,
                         snapshots: Sequence[int], threads: int) -> None:
    """(In a child process) train one run of ``length`` iterations, saving the model at ``snapshots``."""
    import torch

    from poi_nnunet.trainer_factory import build_trainer, run_fold

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    np.random.seed(0)
    trainer = build_trainer(dataset, configuration, variant, "all", "poiPlans", device="cpu",
                            epochs=length // per_epoch, iterations_per_epoch=per_epoch)
    start = time.perf_counter()
    times: Dict[int, float] = {}
    base_epoch_end = trainer.on_epoch_end

    def on_epoch_end() -> None:
        done = (trainer.current_epoch + 1) * per_epoch  # before nnU-Net increments current_epoch
        base_epoch_end()
        if done in snapshots:
            trainer.save_checkpoint(str(Path(trainer.output_folder) / snapshot_name(done)))
            times[done] = time.perf_counter() - start
            (Path(trainer.output_folder) / "snapshot_seconds.json").write_text(json.dumps(times))

    trainer.on_epoch_end = on_epoch_end
    run_fold(trainer, validate=False)


def model_folder(work: Path, phantom: Phantom, variant: str) -> Path:
    from trainers.registry import trainer_class

    name = trainer_class(variant).__name__
    return work / "results" / phantom.dataset / f"{name}__poiPlans__{phantom.configuration}" / "fold_all"


def train_variant(work: Path, phantom: Phantom, variant: str, length: int, snapshots: Sequence[int],
                  threads: int) -> None:
    folder = model_folder(work, phantom, variant)
    if all((folder / snapshot_name(n)).is_file() for n in snapshots):
        return
    env = environment(work, threads)
    env["nnUNet_n_proc_DA"] = "0"  # several times faster for small CPU runs
    code = ("import sys; sys.argv=['x']; from benchmarks.learning_speed import train_with_snapshots as t; "
            f"t({phantom.dataset!r}, {phantom.configuration!r}, {variant!r}, {length}, "
            f"{phantom.iterations_per_epoch}, {list(snapshots)!r}, {threads})")
    run([sys.executable, "-c", code], env, work / "logs" / f"{phantom.dataset}_{variant}_train.log")


def predict_snapshot(work: Path, phantom: Phantom, variant: str, iterations: int, threads: int) -> Path:
    out = work / "predictions" / phantom.dataset / variant / f"it{iterations}"
    if (out / "done").is_file():
        return out
    env = environment(work, threads)
    run(["poi_predict", "-i", str(work / "raw" / phantom.dataset / "imagesTs"), "-o", str(out),
         "-d", str(phantom.dataset_id), "-c", phantom.configuration, "-tr", variant, "-f", "all",
         "-chk", snapshot_name(iterations), "-device", "cpu", "--min_confidence", "0", "--overwrite", "--no_pbar"],
        env, work / "logs" / f"{phantom.dataset}_{variant}_predict.log")
    (out / "done").write_text("")
    return out


def _point_errors(work: Path, phantom: Phantom, prediction: Path, min_confidence: float) -> Dict[str, float]:
    """Error statistics, found fraction and identity confusions over the points at ``min_confidence``."""
    from poi_nnunet.evaluation.identity import identity_confusions
    from poi_nnunet.evaluation.points import MATCHED, match_points
    from poi_nnunet.pois import PoiSet, read_poi_file

    errors: List[float] = []
    n_reference = n_confused = 0
    for ref_file in sorted((work / "raw" / phantom.dataset / "poisTs").glob("*.json")):
        reference = read_poi_file(ref_file)
        pred_file = prediction / ref_file.name
        kept = PoiSet([p for p in read_poi_file(pred_file) if (p.confidence or 0.0) >= min_confidence]) \
            if pred_file.is_file() else PoiSet([])
        n_reference += len(reference)
        errors += [r.error_mm for r in match_points(ref_file.stem, reference, kept) if r.status == MATCHED]
        n_confused += len(identity_confusions(reference, kept))
    e = np.asarray(errors)
    nan = float("nan")
    return {"mean_mm": float(e.mean()) if len(e) else nan, "median_mm": float(np.median(e)) if len(e) else nan,
            "p95_mm": float(np.percentile(e, 95)) if len(e) else nan, "found": len(e) / max(n_reference, 1),
            "confused": n_confused / max(len(e), 1)}


def score(work: Path, phantom: Phantom, prediction: Path, min_confidence: float) -> Dict[str, float]:
    """Point scores at ``min_confidence`` and over every point (``*_all``: threshold 0, nothing left out),
    and the mean Dice of the predicted segmentation."""
    from poi_nnunet.evaluation import evaluate_folders

    kept = _point_errors(work, phantom, prediction, min_confidence)
    every = _point_errors(work, phantom, prediction, 0.0)
    summary = evaluate_folders(work / "raw" / phantom.dataset / "poisTs", prediction, prediction / "evaluation")
    dice = ((summary.get("segmentation") or {}).get("mean_dice") or {}).get("mean", float("nan"))
    return {**kept, "mean_all_mm": every["mean_mm"], "median_all_mm": every["median_mm"],
            "p95_all_mm": every["p95_mm"], "confused_all": every["confused"],
            "dice": float(dice) if dice is not None else float("nan")}


FIELDS = ["phantom", "variant", "run_length", "iterations", "mean_mm", "median_mm", "p95_mm", "found", "confused",
          "mean_all_mm", "median_all_mm", "p95_all_mm", "confused_all", "dice", "train_s"]


def write_outputs(work: Path, rows: List[Dict[str, object]]) -> None:
    path = work / "learning_speed.csv"
    old = []
    if path.is_file():  # rows of other runs into the same work folder stay
        with open(path) as f:
            old = [{k: r.get(k, "") for k in FIELDS} for r in csv.DictReader(f)
                   if (r["phantom"], r["variant"], r["run_length"], r["iterations"]) not in
                   {(str(n["phantom"]), str(n["variant"]), str(n["run_length"]), str(n["iterations"])) for n in rows}]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        for r in old + rows:
            writer.writerow({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in r.items()})
    plot(work / "learning_speed.png", path)


def plot(png: Path, csv_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(csv_path) as f:
        rows = list(csv.DictReader(f))
    phantoms = sorted({r["phantom"] for r in rows})
    fig, axes = plt.subplots(2, len(phantoms), figsize=(5 * len(phantoms), 7), squeeze=False)
    for col, phantom in enumerate(phantoms):
        mine = [r for r in rows if r["phantom"] == phantom]
        for key in sorted({(r["variant"], r["run_length"]) for r in mine}):
            line = sorted((r for r in mine if (r["variant"], r["run_length"]) == key), key=lambda r: int(r["iterations"]))
            x = [int(r["iterations"]) for r in line]
            label = f"{key[0]} (run {key[1]})"
            value = lambda r, k: float(r[k]) if r.get(k) not in (None, "") else float("nan")  # noqa: E731
            drawn = axes[0, col].plot(x, [value(r, "mean_all_mm") for r in line], marker="o", label=label)
            axes[0, col].plot(x, [value(r, "mean_mm") for r in line], linestyle="--", color=drawn[0].get_color())
            axes[1, col].plot(x, [100 * value(r, "confused_all") for r in line], marker="o", label=label)
        axes[0, col].set(title=f"{phantom} (solid: every point, dashed: confident)", xscale="log", yscale="log",
                         ylabel="mean point error (mm)")
        axes[1, col].set(xscale="log", xlabel="training iterations", ylabel="on another landmark (%)")
        axes[0, col].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True, help="work folder (raw, preprocessed, results, CSV, PNG)")
    parser.add_argument("--phantoms", nargs="+", default=["polygons", "polygons_lmk"], choices=sorted(PHANTOMS))
    parser.add_argument("--variants", nargs="+", default=["heatmap"], help="trainer names (poi_train's)")
    parser.add_argument("--length", type=int, default=500, help="training iterations of each run (default 500)")
    parser.add_argument("--snapshots", type=int, nargs="+", default=[100, 250, 500],
                        help="iterations at which the model is evaluated (default 100 250 500)")
    parser.add_argument("--min_confidence", type=float, default=0.1, help="threshold the scores are taken at")
    parser.add_argument("--jobs", type=int, default=2, help="runs trained at once (default 2)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run (default 1)")
    parser.add_argument("--seed", type=int, default=0, help="phantom seed (default 0)")
    args = parser.parse_args(argv)
    work = args.work.resolve()
    snapshots = sorted(set(args.snapshots) | {args.length})
    for phantom_name in args.phantoms:
        phantom = PHANTOMS[phantom_name]
        bad = [n for n in snapshots if n % phantom.iterations_per_epoch or n > args.length]
        if bad:
            parser.error(f"snapshots {bad} are not multiples of {phantom.iterations_per_epoch} up to --length")
        prepare(work, phantom, args.seed)

    def one(task) -> List[Dict[str, object]]:
        phantom_name, variant = task
        phantom = PHANTOMS[phantom_name]
        train_variant(work, phantom, variant, args.length, snapshots, args.threads)
        times = json.loads((model_folder(work, phantom, variant) / "snapshot_seconds.json").read_text())
        rows = []
        for n in snapshots:
            prediction = predict_snapshot(work, phantom, variant, n, args.threads)
            rows.append({"phantom": phantom_name, "variant": variant, "run_length": args.length, "iterations": n,
                         **score(work, phantom, prediction, args.min_confidence),
                         "train_s": float(times.get(str(n), float("nan")))})
            print(json.dumps(rows[-1]), flush=True)
        return rows

    tasks = [(p, v) for p in args.phantoms for v in args.variants]
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        rows = [r for result in pool.map(one, tasks) for r in result]
    write_outputs(work, rows)
    print(f"wrote {work / 'learning_speed.csv'} and {work / 'learning_speed.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

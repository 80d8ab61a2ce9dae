"""``uv`` against ``heatmap`` (issue 11, section 6): accuracy, cost, landmarks added without retraining.

Three measurements, each on 2D phantoms planned once (``2d``) and trained with the same plans, seed,
fold ``all`` and iterations, one training per process (``nnUNet_n_proc_DA=0 nnUNet_def_n_proc=1``,
one torch thread; planning runs with nnU-Net's own settings):

1. **Side by side** (``uv_vs_heatmap.csv``), per phantom (``xray``: ``poi_convert synthetic-xray``, 160
   contour landmarks on lungs, heart and clavicles; ``wrist``: ``poi_convert synthetic-wrist``, 720 on 17
   bones) and trainer (``heatmap``, ``uv``): the held-out test cases are predicted with ``poi_predict
   --min_confidence 0`` as a user runs it and scored with the project's evaluation: TRE mean, median
   and p95 (mm) over every point written, the fraction of reference points written at all (a structure
   left unsegmented drops its points) and at confidence 0.1, mean Dice
   and ASD (``summary.json``'s segmentation block); the training cost: median ``train_step`` seconds
   (forward, backward, optimiser, targets), wall seconds per iteration of the whole run (augmentation,
   per-epoch validation and checkpoints included) and the training process's peak RSS.
2. **Added landmarks** (``uv_added_points.csv``): a copy of each phantom whose training cases lose
   every fourth contour point of each structure (``poisTr`` only; the test cases keep them as truth)
   is planned and trained with ``uv``; the held-out points of one training case (its original point
   file, same POI ids) are given to ``poi_predict --add-points``, and the TRE of the added points is
   reported beside that of the trained ones. A held-out point that ``--add-points`` refuses (outside the
   hull of the structure's remaining points, or under another structure's label) is left out of the
   file and counted (``not_addable``).
3. **Cost against landmark count** (``uv_landmark_scaling.csv``): on the wrist phantom's plans, the POI
   channels are replaced by N of the 720 (spread evenly over the bones; for ``uv`` the templates keep
   only those points), and ``heatmap`` and ``uv`` each run a few steps in their own process
   (:func:`benchmarks.train_step.timed_steps`): median augmentation and step seconds and peak RSS above
   the RSS before the warm-up step.

Runs resume: finished trainings (``checkpoint_final.pth`` with ``train_stats.json``), predictions
(``done``) and scaling rows are not redone; scores are taken anew. First measure the step times
(``--probe``: the scaling runs at each phantom's own landmark count), then choose ``--iterations``::

    python benchmarks/uv_vs_heatmap.py --work /tmp/uvb --probe
    python benchmarks/uv_vs_heatmap.py --work /tmp/uvb --iterations 400 --jobs 2 --scaling 20 100 500 720
"""
from __future__ import annotations

import argparse
import csv
import json
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.learning_speed import _point_errors, environment, model_folder, prepare, run  # noqa: E402
from benchmarks.timed_training import RunSettings, add_run_arguments  # noqa: E402

CONFIGURATION = "2d"
TRAINERS = ("heatmap", "uv")
HOLDOUT_EVERY = 4


@dataclass(frozen=True)
class Phantom:
    """A 2D phantom as ``learning_speed.prepare`` needs it: id, name, configuration and a writer."""

    key: str
    dataset_id: int
    name: str
    cases: int
    test_cases: int
    shape: Tuple[int, int]
    holdout_of: Optional["Phantom"] = None  # a copy of that phantom with training points held out
    configuration: str = CONFIGURATION

    @property
    def dataset(self) -> str:
        return f"Dataset{self.dataset_id}_{self.name}"

    def write(self, raw: Path, seed: int) -> None:
        if self.holdout_of is not None:
            write_holdout_copy(raw / self.holdout_of.dataset, raw / self.dataset)
            return
        writer = _writer(self.key)
        writer(raw / self.dataset, num_cases=self.cases, num_test=self.test_cases, seed=seed, overwrite=True,
               shape=self.shape)


def _writer(key: str) -> Callable[..., Path]:
    if key == "xray":
        from dataset_conversion.synthetic_xray import write_xray_dataset

        return write_xray_dataset
    from dataset_conversion.synthetic_wrist import write_wrist_dataset

    return write_wrist_dataset


def phantoms(cases: int, test_cases: int, shape: Tuple[int, int]) -> Dict[str, Phantom]:
    """The two phantoms and their hold-out copies (``<key>_holdout``)."""
    base = {"xray": Phantom("xray", 631, "UvbXray", cases, test_cases, shape),
            "wrist": Phantom("wrist", 632, "UvbWrist", cases, test_cases, shape)}
    out = dict(base)
    for key, p in base.items():
        out[f"{key}_holdout"] = Phantom(key, p.dataset_id + 10, p.name + "Holdout", cases, test_cases, shape,
                                        holdout_of=p)
    return out


# ---------------------------------------------------------------- hold-out copy
def held_out_ids(points_by_structure: Dict[int, List[int]]) -> Dict[int, List[int]]:
    """Every ``HOLDOUT_EVERY``-th POI id (in id order, from the first) of each structure."""
    return {s: sorted(ids)[::HOLDOUT_EVERY] for s, ids in points_by_structure.items()}


def structure_pois(points_dir: Path) -> Dict[int, List[int]]:
    """POI ids per structure over every point file of ``points_dir``."""
    from poi_nnunet.pois import read_poi_file

    found: Dict[int, set] = {}
    for path in sorted(points_dir.glob("*.json")):
        for p in read_poi_file(path):
            found.setdefault(int(p.structure), set()).add(int(p.poi))
    return {s: sorted(ids) for s, ids in sorted(found.items())}


def write_holdout_copy(source: Path, target: Path) -> None:
    """Copy the raw dataset ``source`` to ``target`` with the held-out POIs deleted from ``poisTr``."""
    from poi_nnunet.pois import PoiSet, read_poi_file, write_poi_file

    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(source, target)
    held = held_out_keys(source)
    for path in sorted((target / "poisTr").glob("*.json")):
        kept = [p for p in read_poi_file(path) if (int(p.structure), int(p.poi)) not in held]
        write_poi_file(path, PoiSet(kept))
    (target / "held_out.json").write_text(json.dumps(sorted(held)))


def held_out_keys(raw_dataset: Path) -> set:
    """``(structure, poi)`` of the held-out points of a (source) raw dataset."""
    held = held_out_ids(structure_pois(raw_dataset / "poisTr"))
    return {(s, p) for s, ids in held.items() for p in ids}


# ---------------------------------------------------------------- training
def train(work: Path, phantom: Phantom, trainer: str, iterations: int, settings: RunSettings) -> Dict[str, float]:
    """Train (unless done) and return the run's ``train_stats.json``."""
    folder = model_folder(work, phantom, trainer)
    stats = folder / "train_stats.json"
    if not ((folder / "checkpoint_final.pth").is_file() and stats.is_file()):
        env = environment(work, settings.threads)
        env["nnUNet_n_proc_DA"] = str(settings.da_workers)
        folder.mkdir(parents=True, exist_ok=True)
        code = ("import sys; sys.argv=['x']; from benchmarks.timed_training import train_timed as t, RunSettings; "
                f"t({phantom.dataset!r}, {trainer!r}, {iterations}, {settings!r}, {str(stats)!r})")
        run([sys.executable, "-c", code], env, work / "logs" / f"{phantom.dataset}_{trainer}_train.log")
    return json.loads(stats.read_text())


# ---------------------------------------------------------------- prediction and scores
def predict(work: Path, phantom: Phantom, trainer: str, settings: RunSettings,
            add_points: Optional[Path] = None) -> Path:
    """``poi_predict`` of the phantom's test images, every point written (``--min_confidence 0``)."""
    out = work / "predictions" / phantom.dataset / trainer
    if (out / "done").is_file():
        return out
    command = ["poi_predict", "-i", str(work / "raw" / phantom.dataset / "imagesTs"), "-o", str(out),
               "-d", str(phantom.dataset_id), "-c", CONFIGURATION, "-tr", trainer, "-f", "all", "-device", settings.device,
               "--min_confidence", "0", "--overwrite", "--no_pbar"]
    if add_points is not None:
        command += ["--add-points", str(add_points)]
    run(command, environment(work, settings.threads), work / "logs" / f"{phantom.dataset}_{trainer}_predict.log")
    (out / "done").write_text("")
    return out


def segmentation_scores(work: Path, phantom: Phantom, prediction: Path) -> Dict[str, float]:
    """Mean Dice and ASD (mm) over labels, from the evaluation's segmentation summary."""
    from poi_nnunet.evaluation import evaluate_folders

    summary = evaluate_folders(work / "raw" / phantom.dataset / "poisTs", prediction, prediction / "evaluation")
    seg = summary.get("segmentation") or {}
    return {"dice": float((seg.get("mean_dice") or {}).get("mean", float("nan"))),
            "asd_mm": float((seg.get("mean_asd_mm") or {}).get("mean", float("nan")))}


def subset_errors(work: Path, phantom: Phantom, prediction: Path, keys: Optional[set]) -> Dict[str, float]:
    """TRE over every written point whose ``(structure, poi)`` is in ``keys`` (all when None)."""
    from poi_nnunet.evaluation.points import MATCHED, match_points
    from poi_nnunet.pois import PoiSet, read_poi_file

    errors: List[float] = []
    n_reference = 0
    for ref_file in sorted((work / "raw" / phantom.dataset / "poisTs").glob("*.json")):
        pick = (lambda p: keys is None or (int(p.structure), int(p.poi)) in keys)  # noqa: E731
        reference = PoiSet([p for p in read_poi_file(ref_file) if pick(p)])
        pred_file = prediction / ref_file.name
        predicted = PoiSet([p for p in read_poi_file(pred_file) if pick(p)]) if pred_file.is_file() else PoiSet([])
        n_reference += len(reference)
        errors += [r.error_mm for r in match_points(ref_file.stem, reference, predicted) if r.status == MATCHED]
    e = np.asarray(errors)
    nan = float("nan")
    return {"n_points": n_reference, "found_all": len(e) / max(n_reference, 1),
            "mean_mm": float(e.mean()) if len(e) else nan, "median_mm": float(np.median(e)) if len(e) else nan,
            "p95_mm": float(np.percentile(e, 95)) if len(e) else nan}


def side_by_side_row(work: Path, phantom: Phantom, trainer: str, iterations: int,
                     settings: RunSettings) -> Dict[str, object]:
    stats = train(work, phantom, trainer, iterations, settings)
    prediction = predict(work, phantom, trainer, settings)
    every = _point_errors(work, phantom, prediction, 0.0)
    confident = _point_errors(work, phantom, prediction, 0.1)
    return {"phantom": phantom.key, "trainer": trainer, "iterations": stats["iterations"],
            "n_pois": len(structure_keys(work, phantom)),
            "mean_mm": every["mean_mm"], "median_mm": every["median_mm"], "p95_mm": every["p95_mm"],
            "found_all": every["found"], "found_0.1": confident["found"], **segmentation_scores(work, phantom, prediction),
            "step_s": stats["step_s"], "iteration_s": stats["iteration_s"], "train_s": stats["train_s"],
            "peak_rss_mb": stats["peak_rss_mb"], "peak_gpu_mb": stats.get("peak_gpu_mb", float("nan")),
            "device": stats.get("device", "cpu"), "stopped_early": stats.get("stopped_early", False)}


def structure_keys(work: Path, phantom: Phantom) -> set:
    return {(s, p) for s, ids in structure_pois(work / "raw" / phantom.dataset / "poisTs").items() for p in ids}


# ---------------------------------------------------------------- added landmarks
def addable_points(work: Path, phantom: Phantom, case: str, held: set, scratch: Path) -> Tuple[list, List[str]]:
    """The held-out points of training ``case`` (original file) that ``--add-points`` accepts, and why
    the others were refused (one message each)."""
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class

    from poi_nnunet.errors import PoiNnunetError
    from poi_nnunet.inference.added_points import added_template_points
    from poi_nnunet.plan import PoiPlan
    from poi_nnunet.pois import PoiSet, read_poi_file, write_poi_file

    plans = json.loads((work / "preprocessed" / phantom.dataset / "poiPlans.json").read_text())
    config = plans["configurations"][CONFIGURATION]
    templates = PoiPlan.from_block(config["poi"]).uv_templates
    folder = work / "preprocessed" / phantom.dataset / config["data_identifier"]
    _, seg, _, _ = infer_dataset_class(str(folder))(str(folder), [case]).load_case(case)
    original = read_poi_file(work / "raw" / phantom.holdout_of.dataset / "poisTr" / f"{case}.json")
    kept, refused = [], []
    scratch.mkdir(parents=True, exist_ok=True)
    for point in original:
        if (int(point.structure), int(point.poi)) not in held:
            continue
        one = scratch / f"{case}.json"
        write_poi_file(one, PoiSet([point]))
        try:
            added_template_points(one, templates, folder, np.asarray(config["spacing"]), np.asarray(seg)[0])
            kept.append(point)
        except PoiNnunetError as exc:
            refused.append(str(exc))
    return kept, refused


def added_points_file(work: Path, phantom: Phantom, held: set) -> Tuple[Path, int, int, List[str]]:
    """Write the held-out points of the training case that keeps most of them; returns the file, how
    many it holds, how many were refused and the refusal messages."""
    from poi_nnunet.pois import PoiSet, write_poi_file

    cases = sorted(p.stem for p in (work / "raw" / phantom.dataset / "poisTr").glob("*.json"))[:5]
    best = max(((c, *addable_points(work, phantom, c, held, work / "scratch" / phantom.dataset)) for c in cases),
                key=lambda t: len(t[1]))
    case, kept, refused = best
    path = work / "added_points" / phantom.dataset / f"{case}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_poi_file(path, PoiSet(kept))
    return path, len(kept), len(refused), refused


def added_points_row(work: Path, phantom: Phantom, iterations: int, settings: RunSettings) -> Dict[str, object]:
    from poi_nnunet.pois import read_poi_file

    stats = train(work, phantom, "uv", iterations, settings)
    held = {tuple(k) for k in json.loads((work / "raw" / phantom.dataset / "held_out.json").read_text())}
    points, n_added, n_refused, refused = added_points_file(work, phantom, held)
    if refused:
        (points.parent / "refused.txt").write_text("\n".join(refused) + "\n")
    prediction = predict(work, phantom, "uv", settings, add_points=points)
    trained = structure_keys(work, phantom) - held
    added_keys = {(int(p.structure), int(p.poi)) for p in read_poi_file(points)}
    t, a = subset_errors(work, phantom, prediction, trained), subset_errors(work, phantom, prediction, added_keys)
    return {"phantom": phantom.key, "iterations": stats["iterations"], "case": points.stem,
            "held_out": len(held), "added": n_added, "not_addable": n_refused,
            **{f"trained_{k}": v for k, v in t.items()}, **{f"added_{k}": v for k, v in a.items()}}


# ---------------------------------------------------------------- cost against landmark count
def spread_channels(channels: List[dict], n: int) -> List[dict]:
    """``n`` of ``channels`` spread evenly over the list (which runs structure by structure)."""
    index = np.unique(np.round(np.linspace(0, len(channels) - 1, n)).astype(int))
    return [channels[i] for i in index]


def scaled_plans(preprocessed: Path, trainer: str, n: int) -> Tuple[dict, dict]:
    """Plans and dataset.json with ``n`` POI channels (and, for ``uv``, templates of those points only;
    a structure none of whose points is kept loses its template)."""
    plans = json.loads((preprocessed / "poiPlans.json").read_text())
    dataset_json = json.loads((preprocessed / "dataset.json").read_text())
    block = plans["configurations"][CONFIGURATION]["poi"]
    block["poi_channels"] = spread_channels(block["poi_channels"], n)
    kept = {int(c["poi"]) for c in block["poi_channels"]}
    dataset_json["poi_mirror_pairs"] = [p for p in dataset_json.get("poi_mirror_pairs") or []
                                        if int(p[0]) in kept and int(p[1]) in kept]
    if trainer == "uv" and block.get("uv_templates"):
        block["uv_templates"] = restricted_templates(block["uv_templates"], kept)
    plans["continue_training"] = False
    return plans, dataset_json


def restricted_templates(uv_block: dict, kept: set) -> dict:
    out = dict(uv_block)
    templates = []
    for t in uv_block["templates"]:
        rows = [i for i, p in enumerate(t["pois"]) if int(p) in kept]
        if rows:
            templates.append({**t, "pois": [t["pois"][i] for i in rows],
                              "points_mm": [t["points_mm"][i] for i in rows]})
    out["templates"] = templates
    return out


def scaling_one(work: Path, dataset: str, trainer: str, n: int, steps: int, threads: int,
                device: str = "cpu") -> dict:
    """(In a child process) a few timed steps of ``trainer`` with ``n`` landmarks on ``device``."""
    import os
    import tempfile

    import torch

    from benchmarks.train_step import timed_steps
    from trainers.registry import trainer_class

    torch.set_num_threads(threads)
    os.environ["nnUNet_results"] = tempfile.mkdtemp(prefix="uvb_scaling_")
    plans, dataset_json = scaled_plans(work / "preprocessed" / dataset, trainer, n)
    torch.manual_seed(0)
    t = trainer_class(trainer)(plans=plans, configuration=CONFIGURATION, fold="all", dataset_json=dataset_json,
                               device=torch.device(device))
    row = timed_steps(t, steps, device)
    shutil.rmtree(os.environ["nnUNet_results"], ignore_errors=True)
    return {**row, "trainer": trainer, "device": device, "landmarks": n, "channels": len(plans["configurations"][CONFIGURATION]
                                                                        ["poi"]["poi_channels"])}


def scaling_row(work: Path, phantom: Phantom, trainer: str, n: int, steps: int, threads: int,
                device: str = "cpu") -> dict:
    suffix = "" if device == "cpu" else f"_{device}"
    cache = work / "scaling" / f"{phantom.dataset}_{trainer}_{n}_{steps}{suffix}.json"
    if cache.is_file():
        return json.loads(cache.read_text())
    env = environment(work, threads)
    env["nnUNet_n_proc_DA"] = "0"
    code = ("import sys, json; sys.argv=['x']; from pathlib import Path; "
            "from benchmarks.uv_vs_heatmap import scaling_one as s; "
            f"print('RESULT ' + json.dumps(s(Path({str(work)!r}), {phantom.dataset!r}, {trainer!r}, {n}, {steps}, "
            f"{threads}, {device!r})))")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=ROOT)
    line = [x for x in done.stdout.splitlines() if x.startswith("RESULT ")]
    if not line:
        raise RuntimeError(f"scaling {trainer} N={n} failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    row = {"phantom": phantom.key, **json.loads(line[0][len("RESULT "):])}
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(row))
    return row


# ---------------------------------------------------------------- output
def guarded(task: Tuple[str, Callable[[], Dict[str, object]]]) -> Optional[Tuple[str, Dict[str, object]]]:
    """Run one task; a failure is printed and leaves its row out (the other tasks go on)."""
    kind, work = task
    try:
        return kind, work()
    except Exception as exc:  # noqa: BLE001 - reported, and the rerun resumes
        print(f"{kind} task failed: {exc}", flush=True)
        return None


def parse_iterations(values: Sequence[str], keys: Sequence[str]) -> Dict[str, int]:
    """``N`` (every phantom) and ``PHANTOM=N`` items -> iterations per phantom."""
    out: Dict[str, int] = {}
    for value in values:
        key, _, n = value.rpartition("=")
        for k in ([key] if key else keys):
            out[k] = int(n)
    missing = [k for k in keys if k not in out]
    if missing:
        raise SystemExit(f"--iterations: no count for {missing}")
    return out


def ordered_runs(keys: Sequence[str], iterations: Dict[str, int]) -> List[Tuple[str, str]]:
    """(phantom, trainer) pairs, the longer trainings first so that the workers balance."""
    return sorted(((k, t) for k in keys for t in TRAINERS), key=lambda kt: -iterations[kt[0]])
def write_csv(path: Path, rows: List[Dict[str, object]]) -> None:
    if not rows:
        return
    fields = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for r in rows:
            writer.writerow({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in r.items()})
    print(f"\n{path}")
    print(" | ".join(fields))
    for r in rows:
        print(" | ".join(f"{r.get(k):.4g}" if isinstance(r.get(k), float) else str(r.get(k, "")) for k in fields))


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--phantoms", nargs="+", default=["xray", "wrist"], choices=("xray", "wrist"))
    parser.add_argument("--iterations", nargs="+", default=["400"], metavar="[PHANTOM=]N",
                        help="training iterations, for every phantom or per phantom (xray=500 wrist=100); "
                        "multiples of --per-epoch")
    parser.add_argument("--cases", type=int, default=24, help="training cases per phantom (default 24)")
    parser.add_argument("--test-cases", type=int, default=6, help="held-out test cases (default 6)")
    parser.add_argument("--shape", type=int, nargs=2, default=[128, 128], help="image rows, columns (default 128 128)")
    parser.add_argument("--scaling", type=int, nargs="*", default=[20, 100, 500, 720],
                        help="landmark counts of the cost scan on the wrist plans (none: skip)")
    parser.add_argument("--scaling-steps", type=int, default=4)
    parser.add_argument("--probe", action="store_true", help="only plan and time each trainer at each phantom's "
                        "own landmark count, to choose --iterations")
    parser.add_argument("--skip", nargs="*", default=[], choices=("side", "added", "scaling"))
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    add_run_arguments(parser, "trainings, predictions and the scaling scan")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    work = args.work.resolve()
    iterations = parse_iterations(args.iterations, args.phantoms)
    settings = RunSettings(args.threads, args.device, args.per_epoch, args.da_workers, args.train_seconds)
    table = phantoms(args.cases, args.test_cases, tuple(args.shape))
    for key in args.phantoms:
        prepare(work, table[key], args.seed)
        if "added" not in args.skip and not args.probe:
            prepare(work, table[f"{key}_holdout"], args.seed)
    if args.probe:
        rows = [scaling_row(work, table[k], t, len(structure_keys(work, table[k])), args.scaling_steps, args.threads,
                            args.device) for k in args.phantoms for t in TRAINERS]
        write_csv(work / "uv_probe.csv", rows)
        return 0
    tasks: List[Tuple[str, Callable[[], Dict[str, object]]]] = []
    if "added" not in args.skip:
        tasks += [("added", lambda k=k: added_points_row(work, table[f"{k}_holdout"], iterations[k], settings))
                  for k in args.phantoms]
    if "side" not in args.skip:
        tasks += [("side", lambda k=k, t=t: side_by_side_row(work, table[k], t, iterations[k], settings))
                  for k, t in ordered_runs(args.phantoms, iterations)]
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        results = [r for r in pool.map(guarded, tasks) if r is not None]
    write_csv(work / "uv_vs_heatmap.csv", [r for kind, r in results if kind == "side"])
    write_csv(work / "uv_added_points.csv", [r for kind, r in results if kind == "added"])
    if args.scaling and "scaling" not in args.skip:
        wrist = table["wrist"]
        prepare(work, wrist, args.seed)
        rows = [scaling_row(work, wrist, t, n, args.scaling_steps, args.threads, args.device)
                for n in args.scaling for t in TRAINERS]
        write_csv(work / "uv_landmark_scaling.csv", rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())

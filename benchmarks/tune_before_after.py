"""A finished ``poi_tune`` study's chosen weights against today's, trained on the same budget, scored on held-out cases.

Reads the study from its default storage (or ``--storage``), picks a trial (``--trial``, else by the rule
below), writes its plans with ``poi_tune --apply``, then trains the trainer twice on fold 0 with the same
schedule (``--epochs`` x ``--iterations_per_epoch``): once on the original plans (the trainer's current
values), once on the applied ones. Both predict the raw dataset's ``imagesTs`` and are scored against
``poisTs``/``labelsTs`` by ``poi_evaluate``, twice: with every point written (``--min_confidence 0``, what
the study optimised) and at ``poi_predict``'s default threshold (what the demo reports).

The rule: the study's first trial is the trainer's current values (``poi_tune`` queues it); among the Pareto
front's trials that beat it on both objectives, the one with the lowest TRE; where none does, the front's
lowest-TRE trial (said in the output).

    python benchmarks/tune_before_after.py -d 614 -c 2d -tr heatmap --epochs 30 --iterations_per_epoch 25 [-device cuda]

Writes ``tune_before_after.json`` into the study's report folder and prints a table.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def choose_trial(study: Any) -> Tuple[int, str]:
    """The trial the module docstring's rule picks, and why."""
    complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    start = next((t for t in complete if t.user_attrs.get("starting_point")), None)
    front = sorted(study.best_trials, key=lambda t: t.values[0])
    if start is None:
        return front[0].number, "no starting-point trial in the study: the front's lowest TRE"
    better = [t for t in front if t.values[0] < start.values[0] and t.values[1] > start.values[1]]
    if better:
        return better[0].number, f"the lowest-TRE front trial that beats today's values (trial {start.number}) on both"
    return front[0].number, f"no trial beats today's values (trial {start.number}) on both: the front's lowest TRE"


def _run(command: List[str], log: Path) -> str:
    log.parent.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log.write_text(f"$ {' '.join(command)}\n{done.stdout}")
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:4])} ... failed ({done.returncode}); see {log}")
    return done.stdout


def train_and_score(args: argparse.Namespace, plans: str, raw: Path, out: Path) -> Dict[str, Any]:
    """Train on ``plans``, predict ``imagesTs`` at both thresholds, evaluate; the summaries' headline numbers."""
    common = ["-device", args.device]
    _run(["poi_train", args.dataset, args.configuration, args.trainer, "-f", "0", "-p", plans, "--epochs",
          str(args.epochs), "--iterations_per_epoch", str(args.iterations_per_epoch), "--no_validation", *common],
         out / f"train_{plans}.log")
    row: Dict[str, Any] = {"plans": plans}
    for label, threshold in (("all", ["--min_confidence", "0"]), ("default", [])):
        prediction = out / f"{plans}_{label}"
        _run(["poi_predict", "-i", str(raw / "imagesTs"), "-o", str(prediction), "-d", args.dataset, "-c",
              args.configuration, "-tr", args.trainer, "-f", "0", "-p", plans, "--overwrite", "--no_pbar",
              *threshold, *common], out / f"predict_{plans}_{label}.log")
        _run(["poi_evaluate", "-ref", str(raw / "poisTs"), "-pred", str(prediction), "-q"],
             out / f"evaluate_{plans}_{label}.log")
        summary = json.loads((prediction / "evaluation" / "summary.json").read_text())
        points = summary["points"]["overall"]
        row[label] = {"tre_mean": points["tre_mm"]["mean"], "tre_median": points["tre_mm"]["median"],
                      "written": points["n_matched"] / max(points["n_ref"], 1),
                      "dice": (summary.get("segmentation") or {}).get("mean_dice", {}).get("mean")}
    return row


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-d", "--dataset", required=True)
    parser.add_argument("-c", "--configuration", required=True)
    parser.add_argument("-tr", "--trainer", required=True)
    parser.add_argument("-p", "--plans", default="poiPlans")
    parser.add_argument("--storage", default=None, help="Optuna storage URL (default: poi_tune's SQLite file)")
    parser.add_argument("--trial", type=int, default=None, help="apply this trial instead of the rule's")
    parser.add_argument("--epochs", type=int, required=True)
    parser.add_argument("--iterations_per_epoch", type=int, required=True)
    parser.add_argument("-device", default="cpu")
    parser.add_argument("--jobs", type=int, default=2, help="trainings at once (default 2: both)")
    args = parser.parse_args(argv)

    from poi_nnunet.raw_dataset import raw_root
    from poi_nnunet.trainer_factory import preprocessed_dataset_folder
    from poi_nnunet.tuning import study as studies
    from poi_nnunet.tuning.plans import applied_identifier, slug

    dataset_name = preprocessed_dataset_folder(args.dataset).name
    url = args.storage or studies.default_storage(dataset_name, args.trainer, args.plans, args.configuration)
    name = studies.study_name(args.trainer, args.plans, args.configuration, 0)
    study = studies.load(studies.open_storage(url, 60), name)
    number, why = (args.trial, "chosen with --trial") if args.trial is not None else choose_trial(study)
    trial = next(t for t in study.get_trials(deepcopy=False) if t.number == number)
    print(f"trial {number} ({why}): TRE {trial.values[0]:.2f} mm, Dice {trial.values[1]:.3f}; "
          + ", ".join(f"{k} {v:g}" for k, v in trial.params.items()), flush=True)
    _run(["poi_tune", "-d", args.dataset, "-c", args.configuration, "-tr", args.trainer, "-p", args.plans,
          "--apply", str(number), *(["--storage", url] if args.storage else [])],
         studies.tune_folder(dataset_name) / "before_after" / "apply.log")
    tuned = applied_identifier(args.plans, args.trainer, args.configuration, number)
    out = studies.tune_folder(dataset_name) / slug(name) / "before_after"
    raw = raw_root() / dataset_name
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        rows = list(pool.map(lambda plans: train_and_score(args, plans, raw, out), [args.plans, tuned]))
    result = {"study": name, "trial": number, "why": why, "values": trial.params,
              "study_objectives": list(trial.values), "epochs": args.epochs,
              "iterations_per_epoch": args.iterations_per_epoch, "device": args.device, "rows": rows}
    (out / "tune_before_after.json").write_text(json.dumps(result, indent=2))
    lines = ["| plans | TRE mean (all) | median (all) | TRE mean (default thr.) | median | written | Dice |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        a, d = r["all"], r["default"]
        dice = "-" if a["dice"] is None else f"{a['dice']:.3f}"
        lines.append(f"| {r['plans']} | {a['tre_mean']:.2f} | {a['tre_median']:.2f} | {d['tre_mean']:.2f} | "
                     f"{d['tre_median']:.2f} | {d['written']:.0%} | {dice} |")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())

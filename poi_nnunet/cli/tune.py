"""``poi_tune -d D -c CONFIG -tr TRAINER --trials N``: search a trainer's loss weights with Optuna.

Each trial trains one short fold under its own plans identifier (the sampled values in its ``poi`` block),
predicts and evaluates the fold's validation cases and reports mean TRE (mm) and mean Dice (one of them
where the dataset or method has only one). What is searched is declared by the trainer
(:mod:`poi_nnunet.tuning.space`). The study lives in Optuna storage (a SQLite file in the results folder
by default), so a re-run resumes it and workers on several machines can share it
(:mod:`poi_nnunet.tuning.study`). At the end the Pareto front is printed and written as CSV and PNG;
``--apply TRIAL`` writes that trial's values into new plans for ``poi_train -p``.
"""
from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from ..errors import PoiNnunetError
from .common import add_device_argument, parse_fold, reports_user_errors, resolve_device

DEFAULT_PLANS = "poiPlans"
DEFAULT_EPOCHS = 20
DEFAULT_ITERATIONS = 50
DEFAULT_HEARTBEAT = 60
MAX_FAILED_IN_A_ROW = 3  # this worker's trials failing one after another: something beyond one bad setting


def build_parser() -> argparse.ArgumentParser:
    from trainers.registry import TRAINERS

    names = ", ".join(n for n in TRAINERS if n != "nnunet")
    parser = argparse.ArgumentParser(
        prog="poi_tune",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="""Search a POI trainer's loss weights (and, for heatmap, the target's sigma and amplitude) with
Optuna's TPE sampler. Each trial trains a short fold of a dataset planned by poi_plan_and_preprocess, predicts
and evaluates the fold's validation cases and reports mean TRE (mm) and mean Dice (one objective for a
landmark-only dataset or a masks-only method). The trainer declares what is searched and in which ranges (class
attribute 'tunable'); the search space is printed at the start.""",
        epilog="""examples:
  poi_tune -d 502 -c 2d -tr heatmap --trials 30 --epochs 10 --iterations_per_epoch 50
      run (or resume) the study until it has 30 finished trials; re-run the same command after a crash
  poi_tune -d 502 -c 2d -tr heatmap --trials 30 --storage postgresql://user:pw@host/db
      one study shared by many workers: start the same command on each machine
  poi_tune -d 502 -c 2d -tr heatmap --report        the Pareto front so far
  poi_tune -d 502 -c 2d -tr heatmap --apply 7       trial 7's values as new plans; prints the poi_train command

The study is kept in Optuna storage, by default the SQLite file
$nnUNet_results/<Dataset>/poi_tune/<trainer>__<plans>__<config>.sqlite3; reports go to
$nnUNet_results/<Dataset>/poi_tune/<study>/ (pareto.csv, pareto.png). Each trial trains under its own plans
identifier <plans>_tune_<study>_tNNNN (removed from the preprocessed folder when the trial ends) and keeps its
log and validation in nnU-Net's results layout; checkpoints are removed unless --keep_checkpoints.""",
    )
    parser.add_argument("-d", "--dataset", required=True, help="dataset id (502) or name (Dataset502_Xray)")
    parser.add_argument("-c", "--configuration", required=True, help="nnU-Net configuration: 2d, 3d_fullres, ...")
    parser.add_argument("-tr", "--trainer", required=True, help=f"POI trainer to tune: {names} (or a variant)")
    parser.add_argument("-p", "--plans", default=DEFAULT_PLANS, help=f"plans identifier (default {DEFAULT_PLANS})")
    parser.add_argument("-f", "--fold", default="0", help="fold whose validation cases score each trial (default 0)")
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--trials", type=int, help="run trials until the study has N finished (complete or pruned) "
                      "trials, whichever workers ran them; then print and write the Pareto front")
    mode.add_argument("--apply", type=int, metavar="TRIAL", help="write trial TRIAL's values into new plans "
                      "<plans>_tuned_<trainer>_<config>_t<TRIAL>.json beside the original (which stays) and print "
                      "the poi_train command that uses them")
    mode.add_argument("--report", action="store_true", help="print and write the Pareto front so far; train nothing")
    parser.add_argument("--apply_as", metavar="IDENTIFIER", help="plans identifier --apply writes instead of the "
                        "default one")
    parser.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS,
                        help=f"epochs of each trial's training (default {DEFAULT_EPOCHS})")
    parser.add_argument("--iterations_per_epoch", type=int, default=DEFAULT_ITERATIONS,
                        help=f"training iterations per epoch of each trial (default {DEFAULT_ITERATIONS}; "
                        "validation iterations scale along)")
    parser.add_argument("--storage", help="Optuna storage URL (any SQLAlchemy URL Optuna accepts, e.g. "
                        "postgresql://user:pw@host/db to share one study between machines); default: a SQLite "
                        "file in $nnUNet_results/<Dataset>/poi_tune/")
    parser.add_argument("--study_name", help="study name (default <trainer>__<plans>__<config>__fold<F>)")
    parser.add_argument("--dice", choices=("mean", "weighted"), default="mean",
                        help="the Dice objective: mean over labels, or inverse-frequency-weighted (default mean)")
    parser.add_argument("--no_pruning", action="store_true", help="a single-objective study stops unpromising "
                        "trials early (median rule) on a per-epoch validation value that does not scale with the "
                        "weights searched (TRE: the trainer's unweighted point term; Dice: nnU-Net's pseudo-Dice); "
                        "this turns it off")
    parser.add_argument("--seed", type=int, default=None, help="seed of the sampler and of each trial's training "
                        "(seed + trial number); default: none, so workers started together sample differently")
    parser.add_argument("--heartbeat", type=int, default=DEFAULT_HEARTBEAT,
                        help=f"seconds between a running trial's heartbeats (default {DEFAULT_HEARTBEAT}); a trial "
                        "silent for twice as long belongs to a dead worker: it is marked failed and its values are "
                        "queued again")
    parser.add_argument("--keep_checkpoints", action="store_true",
                        help="keep each trial's checkpoints (default: removed when the trial ends)")
    parser.add_argument("--verbose", action="store_true", help="show the trainers' own output during trials")
    parser.add_argument("--no_pbar", action="store_true", help="no progress bar over trials")
    add_device_argument(parser, "train each trial on")
    return parser


@dataclass
class TuneContext:
    """What every mode reads before touching the study: plans, dataset, search space, objectives."""

    dataset_name: str
    preprocessed: Path
    plans: Dict[str, Any]
    dataset_json: Dict[str, Any]
    space: Dict[str, Any]
    planned: Dict[str, float]
    trainer_cls: type


def _context(args: argparse.Namespace) -> TuneContext:
    from trainers.registry import trainer_class

    from ..json_files import read_json
    from ..trainer_factory import preprocessed_dataset_folder
    from ..tuning.plans import poi_block
    from ..tuning.space import planned_values
    from ..tuning.trainer_space import trainer_search_space

    space = trainer_search_space(args.trainer)
    folder = preprocessed_dataset_folder(args.dataset)
    hint = f"run poi_plan_and_preprocess -d {args.dataset} first"
    plans_path = folder / f"{args.plans}.json"
    plans = read_json(plans_path, hint)
    if args.configuration not in plans.get("configurations", {}):
        raise PoiNnunetError(f"{plans_path}: no configuration {args.configuration!r} "
                             f"(planned: {', '.join(plans.get('configurations', {}))})")
    try:
        planned = planned_values(space, poi_block(plans, args.configuration))
    except PoiNnunetError as exc:
        raise PoiNnunetError(f"{plans_path}: {exc}") from None
    return TuneContext(folder.name, folder, plans, read_json(folder / "dataset.json", hint), space, planned,
                       trainer_class(args.trainer))


def _space_record(space: Dict[str, Any]) -> Dict[str, List[Any]]:
    return {name: [t.low, t.high, t.log, t.in_plan, t.relative] for name, t in space.items()}


@reports_user_errors
def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    import optuna

    from ..tuning import study as studies
    from ..tuning.plans import slug

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    ctx = _context(args)
    fold = parse_fold(args.fold)
    name = args.study_name or studies.study_name(args.trainer, args.plans, args.configuration, fold)
    url = args.storage or studies.default_storage(ctx.dataset_name, args.trainer, args.plans, args.configuration)
    storage = studies.open_storage(url, args.heartbeat)
    report_folder = studies.tune_folder(ctx.dataset_name) / slug(name)
    if args.apply is not None:
        return _apply(args, ctx, studies.load(storage, name), fold)
    if args.report:
        study = studies.load(storage, name)
        print(_report(study, ctx, report_folder))
        return 0
    return _run(args, ctx, storage, name, fold, report_folder)


def _run(args: argparse.Namespace, ctx: TuneContext, storage: Any, name: str, fold: Any, report_folder: Path) -> int:
    import optuna
    from nnunetv2.paths import nnUNet_results

    from ..tuning import study as studies
    from ..tuning.objectives import TrialFailed, can_prune, study_objectives
    from ..tuning.plans import poi_block, slug
    from ..tuning.progress import TuneProgress
    from ..tuning.space import starting_values
    from ..tuning.trial import TrialRunner, TrialSettings

    if args.trials < 1:
        raise PoiNnunetError(f"--trials must be at least 1, got {args.trials}")
    for option in ("epochs", "iterations_per_epoch"):
        if getattr(args, option) < 1:
            raise PoiNnunetError(f"--{option} must be at least 1, got {getattr(args, option)}")
    objectives = study_objectives(ctx.trainer_cls, ctx.dataset_json, args.dice)
    prune = len(objectives) == 1 and not args.no_pruning and can_prune(objectives[0], ctx.trainer_cls)
    pruner = optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=max(1, args.epochs // 4)) if prune \
        else optuna.pruners.NopPruner()
    attributes = {"trainer": args.trainer, "plans": args.plans, "configuration": args.configuration,
                  "fold": str(fold), "epochs": args.epochs, "iterations_per_epoch": args.iterations_per_epoch,
                  "search_space": _space_record(ctx.space)}
    start = starting_values(ctx.space, ctx.planned, poi_block(ctx.plans, args.configuration).get("loss_weights") or {},
                            ctx.trainer_cls.default_loss_weight)
    study = studies.create_or_load(storage, name, objectives, attributes, args.seed,
                                   startup_trials=min(10, max(3, args.trials // 3)), pruner=pruner, start=start)
    study_slug = slug(name)
    results = Path(nnUNet_results.require()) / ctx.dataset_name
    _check_no_foreign_trials(study, results, args, study_slug)
    studies.fail_stale_trials(study)  # a dead worker's trial, once its heartbeat is stale: failed and queued again
    _remove_finished_trial_plans(study, ctx.preprocessed, args.plans, study_slug)

    device = resolve_device(args.device)
    print(_run_header(args, ctx, study, storage.url, objectives, prune, fold), flush=True)
    trials = study.get_trials(deepcopy=False)
    if start and trials and trials[0].user_attrs.get("starting_point"):
        print(f"trial {trials[0].number} is the trainer's current values (plans or defaults): "
              + ", ".join(f"{k} {v:g}" for k, v in start.items()), flush=True)

    settings = TrialSettings(args.dataset, args.configuration, args.trainer, args.plans, fold, device, args.epochs,
                             args.iterations_per_epoch, name, study_slug, ctx.preprocessed,
                             keep_checkpoints=args.keep_checkpoints, verbose=args.verbose, seed=args.seed)
    crop = poi_block(ctx.plans, args.configuration).get("crop_size_mm") or []
    runner = TrialRunner(settings, ctx.plans, ctx.space, ctx.planned, objectives, prune,
                         nothing_matched_tre_mm=math.hypot(*map(float, crop)) if crop else None)
    progress = TuneProgress(study, objectives, args.trials, show_bar=not args.no_pbar)
    try:
        while studies.finished_trials(study) < args.trials:
            study.optimize(runner, n_trials=1, catch=(TrialFailed,), callbacks=[progress])
            if progress.failed_in_a_row() >= MAX_FAILED_IN_A_ROW:
                raise PoiNnunetError(f"{MAX_FAILED_IN_A_ROW} trials failed in a row (last: {progress.last_error}); "
                                     f"each trial's log is in its results folder under {results}. Re-run the "
                                     "command to resume")
    finally:
        progress.close()
        studies.fail_stale_trials(study)
        _remove_finished_trial_plans(study, ctx.preprocessed, args.plans, study_slug)
    print(_report(study, ctx, report_folder))
    return 0


def _run_header(args: argparse.Namespace, ctx: TuneContext, study: Any, url: str, objectives: List[Any],
                prune: bool, fold: Any) -> str:
    """What the run is about to do: the study and its progress, objectives, search space, schedule."""
    from ..tuning.objectives import TRAINER_TERM
    from ..tuning.study import finished_trials, shown_url

    said = ", ".join(f"{o.label}{' (' + o.unit + ')' if o.unit else ''} {o.direction[:-1]}ed" for o in objectives)
    if prune:
        o = objectives[0]
        said += "; pruned on the per-epoch validation's " + \
            (f"{ctx.trainer_cls.pruning_term}" if o.intermediate == TRAINER_TERM else o.intermediate)
    space = ", ".join(f"{k} {t.describe(ctx.planned.get(k))}" for k, t in ctx.space.items())
    return "\n".join([
        f"study {study.study_name!r} in {shown_url(url)}: {finished_trials(study)}/{args.trials} "
        "trials finished",
        f"objectives: {said}",
        f"search space (declared by the trainer): {space}",
        f"each trial: {args.epochs} epochs x {args.iterations_per_epoch} iterations on fold {fold}, then its "
        "validation cases are predicted and evaluated"])


def _report(study: Any, ctx: TuneContext, folder: Path) -> str:
    from ..tuning.objectives import OBJECTIVES_BY_NAME
    from ..tuning.report import write_report

    objectives = [OBJECTIVES_BY_NAME[n] for n in study.user_attrs.get("objectives", [])]
    if not objectives:
        raise PoiNnunetError(f"study {study.study_name!r} records no objectives: it was not made by poi_tune")
    table = write_report(folder, study, objectives, list(ctx.space))
    return (f"{table}\nwritten: {folder / 'pareto.csv'}, {folder / 'pareto.png'}\n"
            "apply a trial's values with: poi_tune ... --apply TRIAL")


def _apply(args: argparse.Namespace, ctx: TuneContext, study: Any, fold: Any) -> int:
    from ..tuning.apply import apply_trial

    result = apply_trial(study, args.apply, ctx.plans, args.plans, args.configuration, args.trainer, ctx.space,
                         ctx.preprocessed, identifier=args.apply_as)
    said = "wrote" if result["written"] else "already there, unchanged:"
    print(f"{said} {result['path']}")
    print("values: " + ", ".join(f"{k} {v:.4g}" for k, v in result["values"].items()))
    print(f"train with them: poi_train {args.dataset} {args.configuration} {args.trainer} -p {result['identifier']} "
          f"-f {fold}")
    return 0


def _check_no_foreign_trials(study: Any, results: Path, args: argparse.Namespace, study_slug: str) -> None:
    """Results folders of trials the study does not know come from an earlier study of the same name whose
    storage is gone: its trial numbers would be reused and their folders written into."""
    from ..tuning.plans import trial_result_folders

    known = {t.number for t in study.get_trials(deepcopy=False)}
    foreign = sorted(p for n, p in trial_result_folders(results, args.plans, study_slug, args.configuration).items()
                     if n not in known)
    if foreign:
        raise PoiNnunetError(f"{foreign[0]} (and {len(foreign) - 1} more) hold trials of an earlier study named "
                             f"{study.study_name!r} that this storage does not have; move them away, or pass "
                             "--study_name (or the earlier --storage)")


def _remove_finished_trial_plans(study: Any, folder: Path, plans: str, study_slug: str) -> None:
    """Per-trial plans files of trials no worker runs any more (a killed worker leaves its file behind)."""
    from ..tuning.plans import trial_plans_files
    from ..tuning.study import trial_states

    states = trial_states(study)
    for number, path in trial_plans_files(folder, plans, study_slug).items():
        if states.get(number) in ("COMPLETE", "PRUNED", "FAIL"):
            path.unlink(missing_ok=True)


if __name__ == "__main__":
    sys.exit(main())

"""``poi_train DATASET CONFIG TRAINER``: train a POI trainer on a planned and preprocessed dataset.

Results go where nnU-Net puts them:
``$nnUNet_results/DatasetNNN_Name/<TrainerClass>__<plans>__<config>/fold_F``.
At the end the fold's validation cases are predicted and evaluated, and the
evaluation summary is written into the fold folder.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

from .common import add_device_argument, parse_fold, reports_user_errors, resolve_device

DEFAULT_PLANS = "poiPlans"


def build_parser() -> argparse.ArgumentParser:
    from trainers.registry import TRAINERS

    names = ", ".join(TRAINERS)
    parser = argparse.ArgumentParser(
        prog="poi_train",
        description="Train a POI model on a dataset planned by poi_plan_and_preprocess. The trainer class is "
        f"built directly from its short name ({names}).",
    )
    parser.add_argument("dataset", help="dataset id (501) or name (Dataset501_Spine)")
    parser.add_argument("configuration", help="nnU-Net configuration: 2d, 3d_fullres, 3d_lowres")
    parser.add_argument("trainer", help=f"trainer: {names}")
    parser.add_argument("-f", "--fold", default="0", help="fold 0-4 of nnU-Net's 5-fold split, or 'all' (default 0)")
    parser.add_argument("-p", "--plans", default=DEFAULT_PLANS, help=f"plans identifier (default {DEFAULT_PLANS})")
    add_device_argument(parser, "train on (cpu works, slowly)")
    parser.add_argument("--c", dest="continue_training", action="store_true",
                        help="continue from the fold's latest checkpoint")
    parser.add_argument("--epochs", type=int, default=None, help="override the number of epochs")
    parser.add_argument("--iterations_per_epoch", type=int, default=None,
                        help="override training iterations per epoch (validation iterations scale along)")
    parser.add_argument("--val", dest="validation_only", action="store_true",
                        help="skip training; predict and evaluate the validation cases with checkpoint_final")
    parser.add_argument("--no_validation", action="store_true", help="skip the final validation")
    parser.add_argument("-num_gpus", type=int, default=1, metavar="N",
                        help="train with N processes in PyTorch DDP, nnU-Net's multi-GPU path: one per GPU with "
                        "-device cuda (NCCL; CUDA_VISIBLE_DEVICES picks them), N CPU processes with -device cpu "
                        "(gloo). The plans' batch size is split across "
                        "the processes, so it must be at least N (default 1: one process)")
    parser.add_argument("--fov", default=None, metavar="NAME",
                        help="long scans split into fields of view by the planner (the plans' fields_of_view): train "
                        "the model of field of view NAME (plans <plans>_NAME, e.g. poiPlans_fov1), 'coarse' for the "
                        "whole-scan coarse pass that places them in a new scan (configuration 3d_coarse, always "
                        "trained by the heatmap trainer: its points only place the fields of view), or 'all' "
                        "for the coarse pass and then every field of view, one after the other (poi_predict needs "
                        "all of them)")
    return parser


@reports_user_errors
def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    from ..distributed import FoldRequest

    request = FoldRequest(args.dataset, args.configuration, args.trainer, parse_fold(args.fold), args.plans,
                          resolve_device(args.device), continue_training=args.continue_training, epochs=args.epochs,
                          iterations_per_epoch=args.iterations_per_epoch, validation_only=args.validation_only,
                          validate=not args.no_validation)
    requests = [request] if args.fov is None else field_of_view_requests(request, args.fov)
    for one in requests:
        if args.fov is not None:  # the coarse pass has its own trainer: say which runs
            print(f"=== {one.configuration}, plans {one.plans}, trainer {one.trainer} ===", flush=True)
        if args.num_gpus != 1:
            _train_distributed(one, args.num_gpus)
        else:
            _train(one)
    return 0


def field_of_view_requests(request, which: str) -> list:
    """The trainings ``--fov which`` stands for: the coarse pass (``3d_coarse`` under the same plans, by
    :data:`~poi_nnunet.plan.COARSE_PASS_TRAINER`) and/or a
    field of view's model (the configuration under the plans ``<plans>_<name>``); an unknown name, or plans
    without fields of view, is an error that lists what there is."""
    from dataclasses import replace

    from ..errors import PoiNnunetError
    from ..plan import COARSE_PASS_TRAINER, PoiPlan
    from ..trainer_factory import read_plans

    from trainers.registry import trainer_class

    from ..trained_models import predicts_fields_of_view

    if not predicts_fields_of_view(trainer_class(request.trainer)):
        raise PoiNnunetError(f"--fov: {request.trainer} does not predict per field of view; train coarse_refine "
                             "(or one of its variants) with --fov")
    plans, _ = read_plans(request.dataset, request.configuration, request.plans)
    plan = PoiPlan.from_block(plans["configurations"][request.configuration].get("poi"),
                              f"{request.plans}.json ({request.configuration})")
    if not plan.fields_of_view:
        raise PoiNnunetError(f"--fov: the {request.configuration} configuration of {request.plans} has no fields of "
                             "view (its scans fit the patch, or they are planned per structure); train without --fov")
    coarse = replace(request, configuration=plan.coarse_configuration, trainer=COARSE_PASS_TRAINER)
    fields = {fov.name: replace(request, plans=fov.plans_name(request.plans)) for fov in plan.fields_of_view}
    if which == "all":
        return [coarse] + list(fields.values())
    if which == "coarse":
        return [coarse]
    if which not in fields:
        raise PoiNnunetError(f"--fov {which}: no such field of view in {request.plans} (there are: "
                             f"{', '.join(fields)}; or 'coarse', 'all')")
    return [fields[which]]


def _train(request) -> None:
    from ..distributed import train_fold

    trainer, summary = train_fold(request)
    print(f"results: {trainer.output_folder}")
    if summary is not None:
        print(f"validation summary: {Path(trainer.output_folder) / 'validation' / 'evaluation' / 'summary.json'}")


def _train_distributed(request, world_size: int) -> int:
    """Check the request in this process (clear errors before anything is spawned), then train on
    ``world_size`` ranks; the fold folder is the same as for one process."""
    from nnunetv2.utilities.file_path_utilities import get_output_folder
    from trainers.registry import trainer_class

    from ..distributed import check_request, launch

    cls = trainer_class(request.trainer)
    plans = check_request(request, world_size)
    batch = plans.get_configuration(request.configuration).batch_size
    print(f"training on {world_size} processes ({'GPUs' if request.device == 'cuda' else 'CPU, gloo'}), "
          f"batch {batch} split across them", flush=True)
    launch(request, world_size)
    folder = Path(get_output_folder(plans.dataset_name, cls.__name__, request.plans, request.configuration,
                                    request.fold))
    print(f"results: {folder}")
    if request.validate and (folder / "validation" / "evaluation" / "summary.json").is_file():
        print(f"validation summary: {folder / 'validation' / 'evaluation' / 'summary.json'}")
    return 0

if __name__ == "__main__":
    sys.exit(main())

"""Stages 1 and 2 of ``poi_pseudo_masks``: plan every slicing plane's ``2d`` configuration, then train one
``point_sup`` model per plane (:mod:`.pipeline` says what each stage is done by)."""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator, Sequence

from tqdm import tqdm

from ..raw_dataset import RawDataset
from .options import PseudoMaskOptions, parse_fold, say
from .planes import PLANE_CONFIGURATION, Plane, plan_plane, plane_is_planned

TRAINER = "point_sup"


def stage_plan(ds: RawDataset, planes: Sequence[Plane], cases: Sequence[str], options: PseudoMaskOptions) -> bool:
    """Plan and preprocess the ``2d`` configuration of every plane not yet planned; True if any was."""
    from ..preprocessing.staging import preprocessed_root

    folder = preprocessed_root() / ds.path.name
    todo = [p for p in planes if not plane_is_planned(folder, p, cases)]
    for p in planes:
        if p not in todo:
            say("plan", f"skipped {p.plans_name}: planned, {len(cases)} case(s) preprocessed in "
                f"{folder / p.data_identifier}")
    for p in tqdm(todo, desc="plan planes", unit="plane", disable=not options.progress or len(todo) < 2):
        say("plan", f"{p.plans_name}: slices along array axis {p.array_axis} (transpose_forward "
            f"{p.transpose_forward})")
        with _planning_environment():
            plan_plane(ds.path, p, options.num_processes, options.num_processes_fingerprint, options.progress)
    return bool(todo)


@contextlib.contextmanager
def _planning_environment() -> Iterator[None]:
    """nnU-Net's planner calls ``torch.set_num_threads(nnUNet_n_proc_DA)``: 0 (the CPU setting for small training
    runs) crashes it, and any value would stay in force for training in this process. Planning sees at least 1;
    the thread count is restored afterwards."""
    import torch

    threads = torch.get_num_threads()
    saved = os.environ.get("nnUNet_n_proc_DA")
    if saved is not None and saved.strip() == "0":
        os.environ["nnUNet_n_proc_DA"] = "1"
    try:
        yield
    finally:
        if saved is not None:
            os.environ["nnUNet_n_proc_DA"] = saved
        torch.set_num_threads(threads)


def model_fold_folder(ds: RawDataset, plane: Plane, fold: str) -> Path:
    """``$nnUNet_results/<D>/PoiPointSupTrainer__poiPlans_<plane>__2d/fold_<fold>`` (nnU-Net's layout)."""
    from trainers.registry import trainer_class

    from ..inference.model import results_root

    name = f"{trainer_class(TRAINER).__name__}__{plane.plans_name}__{PLANE_CONFIGURATION}"
    return results_root() / ds.path.name / name / f"fold_{fold}"


def stage_train(ds: RawDataset, planes: Sequence[Plane], options: PseudoMaskOptions) -> bool:
    """Train every plane's model that has no final checkpoint (continuing one that has a latest); True if any."""
    from ..trainer_factory import build_trainer, run_fold

    fold = parse_fold(options.fold)
    todo = []
    for p in planes:
        folder = model_fold_folder(ds, p, str(fold))
        if (folder / "checkpoint_final.pth").is_file():
            say("train", f"skipped {p.name}: {folder / 'checkpoint_final.pth'} exists (delete it to retrain)")
        else:
            todo.append(p)
    for p in tqdm(todo, desc="train planes", unit="model", disable=not options.progress):
        resume = (model_fold_folder(ds, p, str(fold)) / "checkpoint_latest.pth").is_file()
        say("train", f"{'continuing' if resume else 'training'} poi_train {ds.path.name} {PLANE_CONFIGURATION} "
            f"{TRAINER} -p {p.plans_name} -f {fold}")
        trainer = build_trainer(ds.path.name, PLANE_CONFIGURATION, TRAINER, fold, p.plans_name, options.device,
                                continue_training=resume, epochs=options.epochs,
                                iterations_per_epoch=options.iterations_per_epoch)
        run_fold(trainer, continue_training=resume, validate=False)
    return bool(todo)

"""Build a POI trainer for a planned dataset and run one fold, the way ``nnUNetv2_train`` does.

nnU-Net's own entry point finds trainer classes by searching its folders (and
imports timm on the way); here the class comes from :mod:`trainers.registry`,
and everything else (plans, dataset.json, results layout, checkpoints) is
nnU-Net's.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Tuple, Union

import torch

from .errors import PoiNnunetError
from .json_files import read_json


def preprocessed_dataset_folder(dataset: str) -> Path:
    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    if not nnUNet_preprocessed.is_set():
        raise PoiNnunetError("nnUNet_preprocessed is not set: export it to nnU-Net's preprocessed data folder")
    try:
        name = maybe_convert_to_dataset_name(int(dataset) if str(dataset).isdigit() else str(dataset))
    except RuntimeError:
        import os

        looked = ", ".join(f"${v} ({os.environ.get(v) or 'not set'})"
                           for v in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"))
        raise PoiNnunetError(
            f"unknown dataset {dataset!r}: no "
            f"{'Dataset%03d_* folder' % int(dataset) if str(dataset).isdigit() else 'folder of that name'} in {looked}; write "
            "the raw dataset first (poi_convert), then poi_plan_and_preprocess -d it") from None
    return Path(nnUNet_preprocessed.require()) / name


def read_plans(dataset: str, configuration: str, plans_identifier: str) -> Tuple[dict, dict]:
    """The plans and dataset.json of a planned dataset, with clear errors for an unplanned dataset or
    configuration."""
    folder = preprocessed_dataset_folder(dataset)
    hint = f"run poi_plan_and_preprocess -d {dataset} first"
    plans = read_json(folder / f"{plans_identifier}.json", hint)
    dataset_json = read_json(folder / "dataset.json", hint)
    configurations = plans.get("configurations", {})
    if configuration not in configurations:
        raise PoiNnunetError(f"{folder / (plans_identifier + '.json')}: no configuration {configuration!r} "
                             f"(planned: {', '.join(configurations)})")
    if "poi" not in configurations[configuration] and "inherits_from" not in configurations[configuration]:
        raise PoiNnunetError(f"configuration {configuration!r} has no 'poi' block: plan with poi_plan_and_preprocess")
    return plans, dataset_json


def build_trainer(dataset: str, configuration: str, trainer: str, fold: Union[int, str], plans_identifier: str,
                  device: str = "cuda", continue_training: bool = False, epochs: Optional[int] = None,
                  iterations_per_epoch: Optional[int] = None):
    """Instantiate the trainer with nnU-Net's plans and dataset.json, applying schedule overrides.

    Overrides are set before ``initialize`` builds the optimiser, so the poly learning-rate
    schedule runs over the shortened training.
    """
    from trainers.registry import trainer_class

    cls = trainer_class(trainer)
    plans, dataset_json = read_plans(dataset, configuration, plans_identifier)
    if device == "cuda" and not torch.cuda.is_available():
        raise PoiNnunetError("-device cuda requested but no CUDA GPU is available; pass -device cpu")
    plans["continue_training"] = continue_training  # nnU-Net >= 2.8 reads (and removes) this key
    instance = cls(plans=plans, configuration=configuration, fold=fold, dataset_json=dataset_json,
                   device=torch.device(device))
    if epochs is not None:
        if epochs < 1:
            raise PoiNnunetError(f"--epochs must be at least 1, got {epochs}")
        instance.num_epochs = epochs
    if iterations_per_epoch is not None:
        if iterations_per_epoch < 1:
            raise PoiNnunetError(f"--iterations_per_epoch must be at least 1, got {iterations_per_epoch}")
        instance.num_iterations_per_epoch = iterations_per_epoch
        instance.num_val_iterations_per_epoch = max(1, iterations_per_epoch // 5)
    return instance


def run_fold(trainer, continue_training: bool = False, validation_only: bool = False,
             validate: bool = True) -> Optional[dict]:
    """Train (or resume), then predict and evaluate the fold's validation cases; return their summary."""
    from nnunetv2.run.run_training import maybe_load_checkpoint

    try:
        maybe_load_checkpoint(trainer, continue_training, validation_only)
    except RuntimeError as exc:
        raise PoiNnunetError(f"{trainer.output_folder}: {exc}") from None
    if not validation_only:
        trainer.run_training()
    if not validate:
        return None
    return trainer.perform_actual_validation()

"""Finding a trained POI model in nnU-Net's results folder and loading it into a :class:`PoiPredictor`.

Layout (nnU-Net's): ``$nnUNet_results/DatasetNNN_Name/<TrainerClass>__<plans>__<config>/`` holds
``plans.json`` and ``dataset.json`` and one ``fold_F/<checkpoint>`` per trained fold. The network
is rebuilt through the trainer class the caller names (the command-line layer resolves short names
with :func:`trainers.registry.trainer_class`; never nnU-Net's name search), with deep supervision
off, and every fold's ``network_weights`` become one parameter set of the trainer's
``predictor_class``, which averages their outputs.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import torch

from ..errors import PoiNnunetError

DEFAULT_PLANS = "poiPlans"
DEFAULT_CHECKPOINT = "checkpoint_final.pth"
FoldLike = Union[int, str]


@dataclass
class ModelFolder:
    """A trained model's folder and what is in it (before any checkpoint is read)."""

    path: Path
    trainer_class: type
    configuration: str
    plans: Dict[str, Any]
    dataset_json: Dict[str, Any]

    @property
    def file_ending(self) -> str:
        return str(self.dataset_json["file_ending"])

    @property
    def num_input_channels(self) -> int:
        return len(self.dataset_json.get("channel_names", self.dataset_json.get("modality", {})))

    @property
    def configuration_axes(self) -> int:
        """2 for a 2d configuration, 3 for the 3d ones."""
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

        return len(PlansManager(self.plans).get_configuration(self.configuration).patch_size)

    @property
    def trained_on_2d_images(self) -> bool:
        """nnU-Net lays a 2D image out as ``(1, y, x)``; its plans keep that leading 1."""
        shape = self.plans.get("original_median_shape_after_transp")
        transpose = self.plans.get("transpose_forward", [0, 1, 2])
        return bool(shape) and int(shape[list(transpose).index(0)]) == 1

    def checkpoint(self, fold: FoldLike, checkpoint_name: str = DEFAULT_CHECKPOINT) -> Path:
        return self.path / f"fold_{fold}" / checkpoint_name

    def available_folds(self, checkpoint_name: str = DEFAULT_CHECKPOINT) -> List[FoldLike]:
        """Folds with the checkpoint, numeric folds first (nnU-Net's auto-detection, plus ``all``)."""
        folds: List[FoldLike] = []
        for sub in sorted(self.path.glob("fold_*")):
            name = sub.name[len("fold_"):]
            if (sub / checkpoint_name).is_file():
                folds.append(int(name) if name.isdigit() else name)
        numeric = sorted(f for f in folds if isinstance(f, int))
        return numeric or [f for f in folds if not isinstance(f, int)]


def results_root() -> Path:
    value = os.environ.get("nnUNet_results")
    if not value:
        raise PoiNnunetError("nnUNet_results is not set: export it to nnU-Net's results folder")
    return Path(value)


def _dataset_name(dataset: str) -> str:
    """``501``, ``Dataset501_X`` or ``Dataset501`` -> the folder name under ``$nnUNet_results``."""
    root = results_root()
    text = str(dataset)
    if (root / text).is_dir():
        return text
    digits = text[len("Dataset"):] if text.startswith("Dataset") else text
    digits = digits.split("_")[0]
    if digits.isdigit():
        matches = sorted(p.name for p in root.glob(f"Dataset{int(digits):03d}_*") if p.is_dir())
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise PoiNnunetError(f"{root}: several datasets with id {int(digits)}: {', '.join(matches)}")
    raise PoiNnunetError(f"{root}: no trained models for dataset {dataset!r}; train one with poi_train first")


def _read_json(path: Path) -> Dict[str, Any]:
    if not path.is_file():
        raise PoiNnunetError(f"{path}: missing; the model folder is incomplete (train again with poi_train)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise PoiNnunetError(f"{path}: not valid JSON ({exc})") from None


def find_model_folder(dataset: str, configuration: str, trainer_class: type,
                      plans: str = DEFAULT_PLANS) -> ModelFolder:
    """Locate ``<TrainerClass>__<plans>__<config>`` of a dataset and read its plans and dataset.json."""
    cls = trainer_class
    name = _dataset_name(dataset)
    path = results_root() / name / f"{cls.__name__}__{plans}__{configuration}"
    if not path.is_dir():
        present = sorted(p.name for p in (results_root() / name).iterdir() if p.is_dir())
        raise PoiNnunetError(
            f"{path}: no such model folder; train it with `poi_train {dataset} {configuration} {cls.__name__}`"
            + (f" (trained here: {', '.join(present)})" if present else ""))
    plans_dict = _read_json(path / "plans.json")
    dataset_json = _read_json(path / "dataset.json")
    if configuration not in plans_dict.get("configurations", {}):
        raise PoiNnunetError(f"{path / 'plans.json'}: no configuration {configuration!r}")
    return ModelFolder(path, cls, configuration, plans_dict, dataset_json)


def load_fold_parameters(model: ModelFolder, folds: Sequence[FoldLike],
                         checkpoint_name: str = DEFAULT_CHECKPOINT) -> tuple:
    """``network_weights`` of every fold, and the first checkpoint's inference mirroring axes."""
    if not folds:
        raise PoiNnunetError(f"{model.path}: no fold has {checkpoint_name}; train one with poi_train "
                             f"(or pick another checkpoint with -chk)")
    parameters, mirror_axes = [], None
    for i, fold in enumerate(folds):
        path = model.checkpoint(fold, checkpoint_name)
        if not path.is_file():
            what = "fold folder" if not path.parent.is_dir() else "checkpoint"
            raise PoiNnunetError(f"{path}: missing {what}; train fold {fold} with "
                                 f"`poi_train DATASET {model.configuration} TRAINER -f {fold}` "
                                 "or choose folds with -f")
        try:
            checkpoint = torch.load(path, map_location=torch.device("cpu"), weights_only=False)
        except Exception as exc:  # a truncated or foreign file
            raise PoiNnunetError(f"{path}: cannot be read as a checkpoint ({exc})") from None
        if not isinstance(checkpoint, dict) or "network_weights" not in checkpoint:
            raise PoiNnunetError(f"{path}: not an nnU-Net checkpoint (no 'network_weights')")
        trained_by = checkpoint.get("trainer_name")
        if trained_by is not None and trained_by != model.trainer_class.__name__:
            raise PoiNnunetError(f"{path}: written by {trained_by}, not {model.trainer_class.__name__}")
        if i == 0:
            mirror_axes = checkpoint.get("inference_allowed_mirroring_axes")
        parameters.append(checkpoint["network_weights"])
    return parameters, mirror_axes


def predictor_for(model: ModelFolder, folds: Optional[Sequence[FoldLike]] = None,
                  checkpoint_name: str = DEFAULT_CHECKPOINT, device: Union[str, torch.device] = "cuda",
                  **predictor_kwargs: Any):
    """Build the network of ``model`` through its trainer class and load the folds' parameters."""
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    device = torch.device(device) if isinstance(device, str) else device
    if device.type == "cuda" and not torch.cuda.is_available():
        raise PoiNnunetError("-device cuda requested but no CUDA GPU is available; pass -device cpu")
    folds = list(folds) if folds is not None else model.available_folds(checkpoint_name)
    parameters, mirror_axes = load_fold_parameters(model, folds, checkpoint_name)

    plans_manager = PlansManager(model.plans)
    configuration_manager = plans_manager.get_configuration(model.configuration)
    if configuration_manager.previous_stage_name is not None:
        raise PoiNnunetError(f"configuration {model.configuration!r} is a cascade stage; poi_predict does not "
                             "run cascades")
    label_manager = plans_manager.get_label_manager(model.dataset_json)
    num_inputs = determine_num_input_channels(plans_manager, configuration_manager, model.dataset_json)
    network = model.trainer_class.build_network_architecture(
        plans_manager, configuration_manager, num_inputs, label_manager.num_segmentation_heads,
        enable_deep_supervision=False)
    for fold, params in zip(folds, parameters):
        try:
            network.load_state_dict(params)
        except RuntimeError as exc:
            raise PoiNnunetError(f"{model.checkpoint(fold, checkpoint_name)}: its weights do not fit the network "
                                 f"of {model.path / 'plans.json'} ({str(exc).splitlines()[0]})") from None
    network.load_state_dict(parameters[0])

    predictor_kwargs.setdefault("allow_tqdm", False)
    predictor_kwargs.setdefault("perform_everything_on_device", device.type == "cuda")
    from .segmentation_predictor import predictor_class_of

    predictor = predictor_class_of(model.trainer_class)(device=device, **predictor_kwargs)
    predictor.manual_initialization(network, plans_manager, configuration_manager, parameters, model.dataset_json,
                                    model.trainer_class.__name__, mirror_axes)
    predictor.model_folder = model
    predictor.folds = folds
    return predictor

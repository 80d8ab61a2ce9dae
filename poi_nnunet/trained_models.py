"""Trained models by short trainer name (``heatmap``, ``coarse_refine``): the orchestration layer's door
to :mod:`poi_nnunet.inference`, which itself only takes trainer classes and never imports ``trainers``."""
from __future__ import annotations

from typing import Any, List, Optional, Sequence, Tuple, Union

import torch

from .errors import PoiNnunetError
from .inference.decoding import MIN_CONFIDENCE
from .inference.fields_of_view import LongScanModels
from .inference.model import DEFAULT_CHECKPOINT, DEFAULT_PLANS, FoldLike, ModelFolder, find_model_folder, predictor_for
from .plan import COARSE_CONFIGURATION, COARSE_PASS_TRAINER, FieldOfView, PoiPlan


def find_model(dataset: str, configuration: str, trainer: str, plans: str = DEFAULT_PLANS) -> ModelFolder:
    """The model folder of ``trainer`` (a short or class name, see :mod:`trainers.registry`)."""
    from trainers.registry import trainer_class

    return find_model_folder(dataset, configuration, trainer_class(trainer), plans)


def load_poi_model(dataset: str, configuration: str, trainer: str, folds: Optional[Sequence[FoldLike]] = None,
                   checkpoint_name: str = DEFAULT_CHECKPOINT, plans: str = DEFAULT_PLANS,
                   device: Union[str, torch.device] = "cuda", **predictor_kwargs: Any):
    """A ready predictor for a trained model (``folds=None``: every fold that has the checkpoint).

    ``predictor_kwargs`` go to the predictor (``use_mirroring``, ``tile_step_size``, ``allow_tqdm``,
    ``min_confidence``, ...).
    """
    model = find_model(dataset, configuration, trainer, plans)
    return predictor_for(model, folds, checkpoint_name, device, **predictor_kwargs)


def predicts_fields_of_view(trainer_cls: type) -> bool:
    """Whether a trainer's predictor can predict one field of view from a placed crop (``coarse_refine`` and its
    variants): the trainers ``poi_train --fov`` takes and ``poi_predict`` runs per field of view."""
    return hasattr(getattr(trainer_cls, "predictor_class", None), "predict_field_of_view")


def find_long_scan_models(dataset: str, configuration: str, trainer: str,
                          plans: str = DEFAULT_PLANS) -> Optional[Tuple[ModelFolder, List[Tuple[FieldOfView, ModelFolder]]]]:
    """The coarse pass and the field-of-view models of a long-scan dataset (:mod:`.inference.fields_of_view`), or
    None where ``configuration`` has no fields of view or no coarse-pass model was trained (then the plain
    ``configuration`` model is used). A field of view without a model is an error that names the command."""
    from trainers.registry import trainer_class

    if configuration != "3d_fullres":
        return None
    cls = trainer_class(trainer)
    if not predicts_fields_of_view(cls):
        return None  # only coarse_refine trains per field of view (poi_train --fov refuses the others)
    try:
        coarse = find_model_folder(dataset, COARSE_CONFIGURATION, trainer_class(COARSE_PASS_TRAINER), plans)
    except PoiNnunetError:
        return None
    fields = PoiPlan.from_block(coarse.plans["configurations"][configuration].get("poi"),
                                f"{coarse.path / 'plans.json'}").fields_of_view
    if not fields:
        return None
    models = []
    for fov in fields:
        try:
            models.append((fov, find_model_folder(dataset, configuration, cls, fov.plans_name(plans))))
        except PoiNnunetError:
            raise PoiNnunetError(f"{coarse.path}: the coarse pass is trained, but field of view {fov.name} has no model; "
                                 f"train it with `poi_train {dataset} {configuration} {trainer} --fov {fov.name}` "
                                 "(or --fov all)") from None
    return coarse, models


def load_long_scan_models(coarse: ModelFolder, fields: Sequence[Tuple[FieldOfView, ModelFolder]],
                          folds: Optional[Sequence[FoldLike]] = None, checkpoint_name: str = DEFAULT_CHECKPOINT,
                          device: Union[str, torch.device] = "cuda", **predictor_kwargs: Any) -> LongScanModels:
    """Ready predictors of the coarse pass and of every field of view, each with the same folds and options, but
    the coarse pass always at the default confidence threshold (its points only place the fields of view, and
    one below it must not place a field of view the scan lacks). The coarse pass is a heatmap model
    (:data:`~poi_nnunet.plan.COARSE_PASS_TRAINER`), so ``predictor_kwargs`` are the options every predictor
    takes (nnU-Net's and ``min_confidence``); set options of the field models' own predictor on them after."""
    coarse_kwargs = {**predictor_kwargs, "min_confidence": MIN_CONFIDENCE}
    return LongScanModels(predictor_for(coarse, folds, checkpoint_name, device, **coarse_kwargs),
                          [(fov, predictor_for(model, folds, checkpoint_name, device, **predictor_kwargs))
                           for fov, model in fields])

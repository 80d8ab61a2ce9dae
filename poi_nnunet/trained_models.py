"""Trained models by short trainer name (``heatmap``, ``coarse_refine``): the orchestration layer's door
to :mod:`poi_nnunet.inference`, which itself only takes trainer classes and never imports ``trainers``."""
from __future__ import annotations

from typing import Any, Optional, Sequence, Union

import torch

from .inference.model import DEFAULT_CHECKPOINT, DEFAULT_PLANS, FoldLike, ModelFolder, find_model_folder, predictor_for


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

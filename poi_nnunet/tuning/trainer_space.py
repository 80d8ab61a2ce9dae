"""The search space a trainer declares, looked up by its name (``poi_tune -tr NAME``).

Apart from :mod:`.space`, which the trainers themselves import to declare their ranges, so that the
trainers never import back into the tuning package.
"""
from __future__ import annotations

from typing import Dict

from ..errors import PoiNnunetError
from .space import Tunable


def trainer_search_space(trainer: str) -> Dict[str, Tunable]:
    """The search space the trainer named ``trainer`` declares; the nnU-Net baseline (no POI loss, nothing of
    ours to tune) and trainers that declare nothing are clear errors."""
    from trainers.base import PoiTrainer
    from trainers.registry import trainer_class

    cls = trainer_class(trainer)
    if not issubclass(cls, PoiTrainer):
        raise PoiNnunetError(f"trainer {trainer!r} ({cls.__name__}) is nnU-Net's own: it has no POI loss weights "
                             "to tune (its hyperparameters are nnU-Net's); tune a POI trainer such as heatmap, "
                             "coarse_refine, uv or point_sup")
    space = cls.search_space()
    if not space:
        raise PoiNnunetError(f"trainer {trainer!r} ({cls.__name__}) declares no tunable values (class attribute "
                             "'tunable' in its module)")
    return space

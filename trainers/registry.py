"""Short trainer names -> classes, resolved directly (never through nnU-Net's folder search,
which imports every trainer nnU-Net ships, timm included, and crashes on a CPU-only torch)."""
from __future__ import annotations

from typing import Dict, Type

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from poi_nnunet.errors import PoiNnunetError

from .coarse_refine import PoiCoarseRefineTrainer
from .coarse_refine_variants import COARSE_REFINE_VARIANTS
from .heatmap import PoiHeatmapTrainer
from .heatmap_variants import VARIANTS
from .point_sup import PoiPointSupTrainer
from .point_sup_variants import POINT_SUP_VARIANTS
from .uv import PoiUvTrainer

TRAINERS: Dict[str, Type[nnUNetTrainer]] = {
    "heatmap": PoiHeatmapTrainer,
    "coarse_refine": PoiCoarseRefineTrainer,
    "uv": PoiUvTrainer,
    "point_sup": PoiPointSupTrainer,
    # nnU-Net's own trainer, unchanged (segmentation only): the plain baseline, and the last stage of
    # the point-supervision pipeline, trained with the same command on the same plans
    "nnunet": nnUNetTrainer,
}


def trainer_class(name: str) -> Type[nnUNetTrainer]:
    """A trainer by short name (``heatmap``) or class name (``PoiHeatmapTrainer``); the heatmap trainer's
    training variants under comparison (:data:`~trainers.heatmap_variants.VARIANTS`), the point_sup loss
    ablation (:data:`~trainers.point_sup_variants.POINT_SUP_VARIANTS`) and coarse_refine without elastic
    deformation (:data:`~trainers.coarse_refine_variants.COARSE_REFINE_VARIANTS`) too."""
    every = {**TRAINERS, **VARIANTS, **POINT_SUP_VARIANTS, **COARSE_REFINE_VARIANTS}
    if name in every:
        return every[name]
    for cls in every.values():
        if cls.__name__ == name:
            return cls
    known = ", ".join(f"{k} ({v.__name__})" for k, v in every.items())
    raise PoiNnunetError(f"unknown trainer {name!r}; known trainers: {known}")

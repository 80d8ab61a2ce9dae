"""``coarse_refine`` without elastic deformation: the "no augmentation beyond nnU-Net's" and "registration only"
rows of the augmentation ablation (``benchmarks/augmentation_ablation.py``, seed 000).

Trainable by name (``poi_train D 3d_fullres coarse_refine_no_elastic``); differs from
:class:`~trainers.coarse_refine.PoiCoarseRefineTrainer` only in ``p_elastic_deform``.
"""
from __future__ import annotations

from typing import Dict, Type

from .coarse_refine import PoiCoarseRefineTrainer


class PoiCoarseRefineNoElasticTrainer(PoiCoarseRefineTrainer):
    """nnU-Net's augmentation (rotation, scaling, mirroring, intensity) with the points, no elastic deformation."""

    p_elastic_deform: float = 0.0


COARSE_REFINE_VARIANTS: Dict[str, Type[PoiCoarseRefineTrainer]] = {
    "coarse_refine_no_elastic": PoiCoarseRefineNoElasticTrainer,
}

"""Training variants of the ``heatmap`` trainer, compared by ``benchmarks/learning_speed.py`` (issue 10).

Each is a small subclass of :class:`~trainers.heatmap.PoiHeatmapTrainer` in its own module that
changes only its heads, loss, targets or optimiser; :data:`VARIANTS` maps the short names
:func:`trainers.registry.trainer_class` resolves to the classes.
"""
from __future__ import annotations

from typing import Dict, Type

from ..heatmap import PoiHeatmapTrainer
from .coord import PoiHeatmapCoordTrainer
from .ds import PoiHeatmapDsTrainer
from .headopt import PoiHeatmapHeadOptTrainer
from .scn import PoiHeatmapScnTrainer
from .sigma import PoiHeatmapSigmaTrainer
from .single import PoiHeatmapSingleTrainer

VARIANTS: Dict[str, Type[PoiHeatmapTrainer]] = {
    "heatmap_coord": PoiHeatmapCoordTrainer,
    "heatmap_headopt": PoiHeatmapHeadOptTrainer,
    "heatmap_sigma": PoiHeatmapSigmaTrainer,
    "heatmap_scn": PoiHeatmapScnTrainer,
    "heatmap_ds": PoiHeatmapDsTrainer,
    "heatmap_single": PoiHeatmapSingleTrainer,
}

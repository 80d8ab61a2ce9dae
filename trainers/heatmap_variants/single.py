"""``heatmap_single``: ``heatmap`` with its heatmaps supervised at the full resolution only, whatever the plan
says: the default before the planner switched on ``poi.heatmap_deep_supervision``, kept for comparisons."""
from __future__ import annotations

from ..heatmap import PoiHeatmapTrainer


class PoiHeatmapSingleTrainer(PoiHeatmapTrainer):
    """``heatmap`` with one heatmap head, at the full resolution."""

    deep_supervised_heatmaps = False

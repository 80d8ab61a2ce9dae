"""``heatmap_ds``: ``heatmap`` with its heatmaps supervised at the decoder's lower resolutions whatever
the plan says (:attr:`~trainers.heatmap.PoiHeatmapTrainer.deep_supervised_heatmaps`).

nnU-Net supervises the segmentation at every decoder stage, so the deep stages learn "which
structure" early; with the heatmaps supervised at the full resolution only, the deep stages of a
landmark-only model learn nothing but through the one head at the end. Each decoder stage's output
layer gets its own heatmap head, trained against targets rendered at its resolution
(:class:`~trainers.heatmap_loss.DeepSupervisedHeatmapLoss`). The planner now switches this on
(``poi.heatmap_deep_supervision``); this variant forces it for comparisons on older plans.
"""
from __future__ import annotations

from ..heatmap import PoiHeatmapTrainer


class PoiHeatmapDsTrainer(PoiHeatmapTrainer):
    """``heatmap`` with a heatmap head on every deep-supervision output, trained at its resolution."""

    deep_supervised_heatmaps = True

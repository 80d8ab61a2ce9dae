"""The ``point_sup`` loss ablation: each of the four terms removed once (``benchmarks/point_sup.py``), and the
point loss without the seed's class balancing.

Trainable by name (``poi_train D 3d_fullres point_sup_no_consistency``); each differs from
:class:`~trainers.point_sup.PoiPointSupTrainer` only in one field of its loss weights.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Dict, Type

from .point_sup import PoiPointSupTrainer

_DEFAULT = PoiPointSupTrainer.loss_weights


class PoiPointSupNoPointTrainer(PoiPointSupTrainer):
    """Without the point cross-entropy: only the label-free terms and the extent."""

    loss_weights = replace(_DEFAULT, point=0.0)


class PoiPointSupNoConsistencyTrainer(PoiPointSupTrainer):
    """Without rotation consistency (and its second pass)."""

    loss_weights = replace(_DEFAULT, consistency=0.0)


class PoiPointSupNoSeparationTrainer(PoiPointSupTrainer):
    """Without the separation term."""

    loss_weights = replace(_DEFAULT, separation=0.0)


class PoiPointSupNoExtentTrainer(PoiPointSupTrainer):
    """Without the prior-extent term."""

    loss_weights = replace(_DEFAULT, extent=0.0)


class PoiPointSupUnbalancedTrainer(PoiPointSupTrainer):
    """Each clicked voxel counts once in the point loss, as in nnU-Net's cross-entropy (no class balancing)."""

    loss_weights = replace(_DEFAULT, balance_click_classes=False)


POINT_SUP_VARIANTS: Dict[str, Type[PoiPointSupTrainer]] = {
    "point_sup_no_point": PoiPointSupNoPointTrainer,
    "point_sup_no_consistency": PoiPointSupNoConsistencyTrainer,
    "point_sup_no_separation": PoiPointSupNoSeparationTrainer,
    "point_sup_no_extent": PoiPointSupNoExtentTrainer,
    "point_sup_unbalanced": PoiPointSupUnbalancedTrainer,
}

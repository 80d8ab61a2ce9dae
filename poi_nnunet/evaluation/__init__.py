"""Evaluation of predicted points and/or masks against references: TRE, success and identification
rates, Dice, average surface distance and inverse-frequency-weighted Dice.

``evaluate_folders`` is what commands call; the metric functions are pure and
work on arrays or point sets, for trainers and notebooks.
"""
from .points import DEFAULT_ID_RADIUS_MM, PointMatch, match_points
from .run import evaluate_folders
from .segmentation import (LabelMetrics, average_surface_distance, dice, inverse_frequency_weighted_dice,
                           label_metrics)
from .statistics import DEFAULT_THRESHOLDS_MM, identification_rate, success_rates, summarise_rows, tre_statistics
from .report import format_table

__all__ = [
    "DEFAULT_ID_RADIUS_MM", "DEFAULT_THRESHOLDS_MM", "LabelMetrics", "PointMatch", "average_surface_distance",
    "dice", "evaluate_folders", "format_table", "identification_rate", "inverse_frequency_weighted_dice",
    "label_metrics", "match_points", "success_rates", "summarise_rows", "tre_statistics",
]

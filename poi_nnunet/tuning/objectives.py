"""What a study optimises: mean TRE (mm) of the fold's validation points and mean (or weighted) Dice of its masks.

A method that writes points and a dataset with masks give two objectives (a Pareto front); a landmark-only
dataset gives TRE alone, a masks-only method (``point_sup``) Dice alone. Both are read from the summary
:meth:`trainers.base.PoiTrainer.perform_actual_validation` writes (``fold_F/validation/evaluation/summary.json``):
``points.overall.tre_mm.mean`` and ``segmentation.mean_dice.mean`` or
``segmentation.inverse_frequency_weighted_dice.mean``. The trials' validation writes every point (``min_confidence`` 0, see
:mod:`.trial`), so the TRE covers all of them: a model that dares only its few sure points cannot look good;
the share matched is kept beside it. A trial whose model matched no point at all (early in
a search, or with a bad sigma) has no mean TRE; it scores the planned crop's diagonal (whole-image mode: the
field of view), the largest error a point in view can have, so that it ranks last on TRE but still counts
(with its Dice) instead of failing.

For pruning (single-objective studies only; Optuna cannot prune on several objectives) each objective names
a per-epoch validation value that moves the same way and does not depend on the searched weights: for TRE
the trainer's ``pruning_term`` (an unweighted loss term that follows point accuracy: ``poi_loss`` of
``heatmap``, ``refined_mm`` of ``coarse_refine``; lower is better, as TRE; the total loss would not do, since
it scales with the weights being searched), for Dice nnU-Net's pseudo-Dice (higher is better).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, List, Mapping, Optional, Tuple

from ..errors import PoiNnunetError


class TrialFailed(Exception):
    """A trial that produced no usable objective (training crashed, nothing matched): the trial is marked
    failed and the study goes on. User errors (:class:`~poi_nnunet.errors.PoiNnunetError`) stop the run."""


@dataclass(frozen=True)
class Objective:
    """One objective: its ``name`` (a study attribute), how it reads in a progress line, its direction,
    where it is in a summary and the logger value pruning follows."""

    name: str
    label: str
    unit: str
    direction: str  # "minimize" or "maximize"
    path: Tuple[str, ...]
    intermediate: str  # per-epoch value: nnU-Net logger key, or TRAINER_TERM (the trainer's pruning_term)

    def read(self, summary: Optional[Mapping[str, Any]], nothing_matched: Optional[float] = None) -> float:
        """The objective's value in a validation summary; ``nothing_matched`` where points were scored and none
        matched (given for TRE); no value otherwise (no reference, nothing predicted) is TrialFailed."""
        value: Any = summary
        for key in self.path:
            value = value.get(key) if isinstance(value, Mapping) else None
        if (value is None or not math.isfinite(float(value))) and nothing_matched is not None \
                and self.path[0] == "points" and points_found(summary) == 0:
            return float(nothing_matched)
        if value is None or not math.isfinite(float(value)):
            where = ".".join(self.path)
            raise TrialFailed(f"the validation has no {self.label} ({where} is {value!r}): "
                              + ("no reference to score against" if summary is None else "nothing was matched"))
        return float(value)

    def better(self, a: float, b: float) -> bool:
        return a < b if self.direction == "minimize" else a > b

    def format(self, value: float) -> str:
        return f"{self.label} {value:.{2 if self.unit == 'mm' else 3}f}{' ' + self.unit if self.unit else ''}"


TRAINER_TERM = "pruning_term"
TRE = Objective("tre_mm", "TRE", "mm", "minimize", ("points", "overall", "tre_mm", "mean"), TRAINER_TERM)
DICE = Objective("dice", "Dice", "", "maximize", ("segmentation", "mean_dice", "mean"), "mean_fg_dice")
WEIGHTED_DICE = Objective("weighted_dice", "weighted Dice", "", "maximize",
                          ("segmentation", "inverse_frequency_weighted_dice", "mean"), "mean_fg_dice")
DICE_CHOICES = {"mean": DICE, "weighted": WEIGHTED_DICE}
OBJECTIVES_BY_NAME = {o.name: o for o in (TRE, DICE, WEIGHTED_DICE)}


def intermediate_value(objective: Objective, trainer: Any) -> Optional[float]:
    """The objective's per-epoch value after an epoch of ``trainer`` (None where it has none)."""
    if objective.intermediate == TRAINER_TERM:
        name = getattr(type(trainer), "pruning_term", None)
        value = trainer.val_term_means.get(name) if name else None
    else:
        value = trainer.logger.get_value(objective.intermediate, step=-1)
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def can_prune(objective: Objective, trainer_cls: type) -> bool:
    """Whether a study on ``objective`` alone has a per-epoch value to prune on."""
    return objective.intermediate != TRAINER_TERM or getattr(trainer_cls, "pruning_term", None) is not None


def has_masks(dataset_json: Mapping[str, Any]) -> bool:
    """Whether the dataset's labels name a structure (anything but background and nnU-Net's ``ignore``)."""
    labels = dataset_json.get("labels") or {}
    return any(name not in ("background", "ignore") for name in labels)


def study_objectives(trainer_cls: type, dataset_json: Mapping[str, Any], dice: str = "mean") -> List[Objective]:
    """TRE where the trainer writes points, Dice where the dataset has masks; at least one, else an error."""
    objectives = []
    if getattr(getattr(trainer_cls, "predictor_class", None), "writes_points", True):
        objectives.append(TRE)
    if has_masks(dataset_json):
        objectives.append(DICE_CHOICES[dice])
    if not objectives:
        raise PoiNnunetError(f"{trainer_cls.__name__} writes no points and the dataset has no masks: nothing to "
                             "optimise")
    return objectives


def points_found(summary: Optional[Mapping[str, Any]]) -> Optional[float]:
    """Share of the reference points matched by a prediction (None where points were not scored)."""
    overall = ((summary or {}).get("points") or {}).get("overall") or {}
    n_ref = overall.get("n_ref")
    return float(overall.get("n_matched", 0)) / n_ref if n_ref else None

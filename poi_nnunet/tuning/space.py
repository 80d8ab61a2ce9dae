"""What a trainer lets ``poi_tune`` search: :class:`Tunable` ranges, declared on the trainer class.

Each POI trainer declares ``tunable: ClassVar[Dict[str, Tunable]]`` (see :mod:`trainers.base`): the loss
weights it owns (trainer attributes, read from the plans' ``poi.loss_weights`` when present) and, for the
heatmap methods, values of the ``poi`` block itself (``heatmap_sigma_mm``, ``heatmap_amplitude``). The
command line never names a parameter: what a method can be tuned on changes with the method, so it is
declared next to the code that uses it, and a subclass inherits or extends its parent's declaration.

This module imports neither optuna nor torch: trainers import :class:`Tunable` at class definition.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional

from ..errors import PoiNnunetError


@dataclass(frozen=True)
class Tunable:
    """One searchable value: sampled in ``[low, high]``, on a log scale when ``log``.

    * ``in_plan``: the name is a key of the configuration's ``poi`` block (read by :class:`~poi_nnunet.plan.PoiPlan`),
      not a trainer attribute; a trial writes it into the block, where every reader (loss, decoding,
      ``poi_predict``) sees the same value.
    * ``relative``: ``low`` and ``high`` are factors of the planned value (``in_plan`` only): a heatmap sigma
      in mm depends on the dataset, a factor of the planned one does not.
    """

    low: float
    high: float
    log: bool = False
    in_plan: bool = False
    relative: bool = False

    def __post_init__(self) -> None:
        if not (math.isfinite(self.low) and math.isfinite(self.high) and self.low < self.high):
            raise ValueError(f"Tunable range must have finite low < high, got [{self.low}, {self.high}]")
        if self.log and self.low <= 0:
            raise ValueError(f"a log-scale Tunable needs low > 0, got {self.low}")
        if self.relative and not self.in_plan:
            raise ValueError("a relative Tunable scales a planned value: it needs in_plan=True")

    def bounds(self, planned: Optional[float] = None) -> tuple:
        """``(low, high)`` in the value's own unit (a relative range times the ``planned`` value)."""
        if not self.relative:
            return float(self.low), float(self.high)
        if planned is None or not planned > 0:
            raise PoiNnunetError(f"a range relative to the planned value needs a positive planned value, got {planned}")
        return float(self.low * planned), float(self.high * planned)

    def describe(self, planned: Optional[float] = None) -> str:
        """``[0.05, 5] log`` (and ``x planned 2.4``) for ``--help`` and error messages."""
        low, high = (self.low, self.high)
        text = f"[{low:g}, {high:g}]{' x planned' if self.relative else ''} {'log' if self.log else 'linear'}"
        if self.relative and planned is not None:
            text += f" (planned {planned:g})"
        return text


def planned_values(space: Mapping[str, Tunable], block: Mapping[str, Any]) -> Dict[str, float]:
    """The ``poi`` block's value of every ``in_plan`` tunable (what a relative range scales)."""
    values = {}
    for name, tunable in space.items():
        if tunable.in_plan:
            if name not in block:
                raise PoiNnunetError(f"the 'poi' block has no {name!r} to tune; plan again with "
                                     "poi_plan_and_preprocess")
            values[name] = float(block[name])
    return values


def starting_values(space: Mapping[str, Tunable], planned: Mapping[str, float], plan_weights: Mapping[str, float],
                    default_weight) -> Optional[Dict[str, float]]:
    """The values a trainer trains with today, as one point of its search space: planned values for
    ``in_plan`` names, the plans' ``loss_weights`` or else the class defaults (``default_weight(name)``) for
    weights. ``None`` when one lies outside its range (it could not be a trial of this space)."""
    values = {}
    for name, tunable in space.items():
        value = float(planned[name]) if tunable.in_plan else float(plan_weights.get(name, default_weight(name)))
        low, high = tunable.bounds(planned.get(name))
        if not low <= value <= high:
            return None
        values[name] = value
    return values

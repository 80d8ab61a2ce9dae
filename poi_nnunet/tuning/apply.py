"""``poi_tune --apply TRIAL``: the trial's values into a new plans identifier that ``poi_train -p`` trains with.

The new plans are the study's plans (``-p``) with the trial's values in the configuration's ``poi`` block
(:func:`~poi_nnunet.tuning.plans.plans_with_values`), saved beside them as
``<plans>_tuned_<trainer>_<config>_t<N>.json``: the original plans stay as they are, and the identifier says
where the values came from. An existing file of that name is never replaced (the same content again is
fine). The trainer and configuration are part of the name because every study numbers its trials from 0
and one plans file may be tuned for several trainers.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Mapping, Optional

from ..errors import PoiNnunetError
from .plans import applied_identifier, plans_with_values, write_new_plans
from .space import Tunable


def finished_trial(study: Any, number: int) -> Any:
    """Trial ``number`` of the study, which must be complete."""
    for trial in study.get_trials(deepcopy=False):
        if trial.number == number:
            if trial.state.name != "COMPLETE":
                raise PoiNnunetError(f"trial {number} of study {study.study_name!r} is {trial.state.name}, not "
                                     "COMPLETE: only a finished trial's values can be applied")
            return trial
    raise PoiNnunetError(f"study {study.study_name!r} has no trial {number} (it has {len(study.trials)} trials)")


def apply_trial(study: Any, number: int, plans: Mapping[str, Any], plans_name: str, configuration: str,
                trainer: str, space: Mapping[str, Tunable], folder: Path,
                identifier: Optional[str] = None) -> Dict[str, Any]:
    """Write the trial's plans; return ``{"identifier", "path", "values", "written"}`` (``written`` False when
    the same file already existed)."""
    trial = finished_trial(study, number)
    values = {name: float(value) for name, value in trial.params.items() if name in space}
    missing = sorted(set(space) - set(values))
    if missing:
        raise PoiNnunetError(f"trial {number} has no value for {', '.join(missing)} (the trainer's search space "
                             "changed since the study ran): apply a trial of a study run with this code")
    identifier = identifier or applied_identifier(plans_name, trainer, configuration, number)
    provenance = {"study": study.study_name, "trial": number, "from_plans": plans_name, "values": values,
                  "objectives": dict(zip(study.user_attrs.get("objectives", []), trial.values))}
    new = plans_with_values(plans, configuration, identifier, values, space, provenance)
    path = folder / f"{identifier}.json"
    written = write_new_plans(path, new, same_is_fine=True)
    return {"identifier": identifier, "path": path, "values": values, "written": written}

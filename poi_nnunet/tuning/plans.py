"""Trial and applied plans: a copy of the plans, under a new identifier, with the searched values in one
configuration's ``poi`` block.

Why a plans file per trial: a trainer reads everything it trains with from its plans (``build_trainer``
takes a plans identifier), and nnU-Net names the results folder after the plans
(``<Trainer>__<plans_name>__<config>``). A per-trial identifier therefore gives each trial its own results
folder, on any number of workers, without touching nnU-Net's paths, and trains exactly what
``poi_tune --apply`` followed by ``poi_train -p`` will train. The copy keeps the configuration's
``data_identifier``, so every trial reads the one preprocessed dataset. It lives beside ``poiPlans.json``
only while its trial runs (nnU-Net copies it into the trial's results folder as ``plans.json``).

The values go where their readers look: loss weights into ``poi.loss_weights`` (the trainer sets them,
:meth:`trainers.base.PoiTrainer.apply_loss_weights`), planned values into the block's own keys
(:func:`poi_nnunet.plan.block_with_values`).
"""
from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any, Dict, Mapping, Optional

from ..atomic import atomic_write_text
from ..errors import PoiNnunetError
from ..plan import block_with_values
from .space import Tunable


def slug(text: str) -> str:
    """``heatmap__poiPlans__2d__fold0`` -> ``heatmap_poiPlans_2d_fold0`` (safe in a file and folder name)."""
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_")


def trial_identifier(plans: str, study_slug: str, number: int) -> str:
    """The plans identifier of one trial: unique per study and trial number (numbers are never reused)."""
    return f"{plans}_tune_{study_slug}_t{number:04d}"


def applied_identifier(plans: str, trainer: str, configuration: str, number: int) -> str:
    """The plans identifier ``--apply`` writes: per trainer and configuration, since each study numbers its
    trials from 0 and one plans file may be tuned for several trainers."""
    return f"{plans}_tuned_{slug(trainer)}_{slug(configuration)}_t{number}"


def poi_block(plans: Mapping[str, Any], configuration: str) -> Dict[str, Any]:
    """The ``poi`` block a configuration trains with (its own, or the one it inherits)."""
    configurations = plans.get("configurations", {})
    seen = set()
    name: Optional[str] = configuration
    while name is not None and name not in seen:
        seen.add(name)
        config = configurations.get(name)
        if config is None:
            break
        if "poi" in config:
            return config["poi"]
        name = config.get("inherits_from")
    raise PoiNnunetError(f"configuration {configuration!r} has no 'poi' block: plan it with poi_plan_and_preprocess")


def plans_with_values(plans: Mapping[str, Any], configuration: str, identifier: str, values: Mapping[str, float],
                      space: Mapping[str, Tunable], provenance: Mapping[str, Any]) -> Dict[str, Any]:
    """A deep copy of ``plans`` named ``identifier`` whose ``configuration`` has ``values`` in its ``poi`` block.

    Loss weights are merged over any the block already holds; ``provenance`` (study, trial, ...) is recorded
    as ``poi.tuned`` for the reader.
    """
    unknown = sorted(set(values) - set(space))
    if unknown:
        raise PoiNnunetError(f"values {unknown} are not in the trainer's search space ({', '.join(space)})")
    out = copy.deepcopy(dict(plans))
    out["plans_name"] = identifier
    block = copy.deepcopy(poi_block(plans, configuration))
    block = block_with_values(block, {k: v for k, v in values.items() if space[k].in_plan})
    weights = {k: float(v) for k, v in values.items() if not space[k].in_plan}
    if weights:
        block["loss_weights"] = {**(block.get("loss_weights") or {}), **weights}
    block["tuned"] = dict(provenance)
    out["configurations"][configuration]["poi"] = block
    return out


def plans_text(plans: Mapping[str, Any]) -> str:
    return json.dumps(plans, indent=4) + "\n"


def write_new_plans(path: Path, plans: Mapping[str, Any], same_is_fine: bool = False) -> bool:
    """Write ``plans`` to ``path`` atomically; an existing file is never replaced. Returns False when it already
    held the same plans (``same_is_fine``: running ``--apply`` twice is harmless), else raises."""
    if path.exists():
        try:
            existing = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError):
            existing = None
        if same_is_fine and existing == json.loads(plans_text(plans)):
            return False
        raise PoiNnunetError(f"{path}: already exists with other content; it is left as it is (remove it, or "
                             "choose another identifier)")
    atomic_write_text(path, plans_text(plans))
    return True


def _trial_number(name: str, prefix: str) -> Optional[int]:
    match = re.fullmatch(re.escape(prefix) + r"(\d+)", name)
    return int(match.group(1)) if match else None


def trial_plans_files(folder: Path, plans: str, study_slug: str) -> Dict[int, Path]:
    """The per-trial plans files of a study in the preprocessed folder, by trial number."""
    prefix = trial_identifier(plans, study_slug, 0)[: -len("0000")]
    found = {}
    for path in folder.glob(f"{prefix}*.json"):
        number = _trial_number(path.stem, prefix)
        if number is not None:
            found[number] = path
    return found


def trial_result_folders(results: Path, plans: str, study_slug: str, configuration: str) -> Dict[int, Path]:
    """The results folders of a study's trials (``<Trainer>__<trial plans>__<config>``), by trial number."""
    prefix = trial_identifier(plans, study_slug, 0)[: -len("0000")]
    found = {}
    if results.is_dir():
        for path in results.glob(f"*__{prefix}*__{configuration}"):
            head = path.name[: -len(f"__{configuration}")]
            number = _trial_number(head.split("__", 1)[1], prefix) if "__" in head else None
            if number is not None:
                found[number] = path
    return found

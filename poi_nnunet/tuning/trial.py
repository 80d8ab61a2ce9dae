"""One trial: sample the trainer's search space, write the trial's plans, train a short fold, validate it,
return the objectives.

Each trial trains under its own plans identifier (:mod:`.plans` says why), so its results are nnU-Net's
``$nnUNet_results/<Dataset>/<Trainer>__<plans>_tune_<study>_tNNNN__<config>/fold_F``: the training log,
the progress plot and the validation summary stay there; the checkpoints are removed when the trial ends
(``keep_checkpoints`` keeps them): a trial is a short run whose weights ``poi_train`` retrains anyway, and
a 3D checkpoint per trial would fill a disk.

Failures: an exception in training or validation fails this trial only (:class:`~.objectives.TrialFailed`);
a :class:`~poi_nnunet.errors.PoiNnunetError` is the user's to fix (a dataset the trainer cannot train) and
stops the run.
"""
from __future__ import annotations

import contextlib
import gc
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

from ..errors import PoiNnunetError
from .objectives import Objective, TrialFailed, intermediate_value, points_found
from .plans import plans_with_values, trial_identifier, write_new_plans
from .space import Tunable


@dataclass(frozen=True)
class TrialSettings:
    """What every trial of a run shares."""

    dataset: str
    configuration: str
    trainer: str
    plans: str
    fold: Union[int, str]
    device: str
    epochs: int
    iterations_per_epoch: int
    study_name: str
    study_slug: str
    preprocessed_folder: Path
    keep_checkpoints: bool = False
    verbose: bool = False
    seed: Optional[int] = None


def suggest(trial: Any, space: Mapping[str, Tunable], planned: Mapping[str, float]) -> Dict[str, float]:
    """One value per searched name, in the value's own unit (a relative range scales the planned value)."""
    values = {}
    for name, tunable in space.items():
        low, high = tunable.bounds(planned.get(name))
        values[name] = float(trial.suggest_float(name, low, high, log=tunable.log))
    return values


class TrialRunner:
    """The objective Optuna calls: ``runner(trial)`` returns the objective values (a tuple for two)."""

    def __init__(self, settings: TrialSettings, plans: Mapping[str, Any], space: Mapping[str, Tunable],
                 planned: Mapping[str, float], objectives: List[Objective], prune: bool,
                 nothing_matched_tre_mm: Optional[float] = None):
        self.settings = settings
        self.nothing_matched_tre_mm = nothing_matched_tre_mm  # TRE of a trial that matched no point (objectives)
        self.plans = plans
        self.space = space
        self.planned = planned
        self.objectives = objectives
        self.prune = prune and len(objectives) == 1

    def __call__(self, trial: Any) -> Union[float, Tuple[float, ...]]:
        s = self.settings
        values = suggest(trial, self.space, self.planned)
        identifier = trial_identifier(s.plans, s.study_slug, trial.number)
        path = s.preprocessed_folder / f"{identifier}.json"
        provenance = {"study": s.study_name, "trial": trial.number, "from_plans": s.plans, "values": values}
        write_new_plans(path, plans_with_values(self.plans, s.configuration, identifier, values, self.space,
                                                provenance))
        trial.set_user_attr("plans_identifier", identifier)
        try:
            self._seed(trial.number)
            summary = self._train(trial, identifier)
        finally:
            path.unlink(missing_ok=True)
            folder = trial.user_attrs.get("output_folder")
            if folder and not s.keep_checkpoints:
                for checkpoint in Path(folder).glob("checkpoint_*.pth"):
                    checkpoint.unlink(missing_ok=True)
            _free_memory()
        found = points_found(summary)
        if found is not None:
            trial.set_user_attr("points_found", found)
        try:
            scores = tuple(o.read(summary, self.nothing_matched_tre_mm) for o in self.objectives)
        except TrialFailed as exc:
            trial.set_user_attr("error", str(exc))
            raise
        return scores[0] if len(scores) == 1 else scores

    def _train(self, trial: Any, identifier: str) -> Optional[dict]:
        """Build and run the trainer on the trial's plans; return the validation summary."""
        import optuna

        from ..trainer_factory import build_trainer, run_fold

        s = self.settings
        trainer = None
        try:
            with _quiet(not s.verbose):
                trainer = build_trainer(s.dataset, s.configuration, s.trainer, s.fold, identifier, s.device,
                                        epochs=s.epochs, iterations_per_epoch=s.iterations_per_epoch)
                trainer.validation_min_confidence = 0.0  # every point written: TRE over all of them
                if self.prune:
                    trainer.epoch_end_callbacks.append(_pruning_callback(trial, self.objectives[0]))
                return run_fold(trainer)
        except optuna.TrialPruned:
            _end_training(trainer)
            raise
        except PoiNnunetError:
            raise
        except Exception as exc:  # this trial's training or validation failed: the study goes on
            _end_training(trainer)
            message = f"{type(exc).__name__}: {exc}"
            trial.set_user_attr("error", message)
            raise TrialFailed(message) from exc
        finally:
            if trainer is not None and trainer.output_folder is not None:
                trial.set_user_attr("output_folder", str(trainer.output_folder))

    def _seed(self, number: int) -> None:
        """With ``--seed``, each trial's training starts from seed + its number (reproducible trials)."""
        if self.settings.seed is None:
            return
        import numpy as np
        import torch

        seed = self.settings.seed + number
        random.seed(seed)
        np.random.seed(seed % 2 ** 32)
        torch.manual_seed(seed)


def _pruning_callback(trial: Any, objective: Objective):
    """Report the epoch's intermediate validation value; stop the run (raise) when the pruner says so."""
    import optuna

    def callback(trainer) -> None:
        value = intermediate_value(objective, trainer)
        epoch = trainer.current_epoch  # nnU-Net has counted the finished epoch: 1 after the first
        if value is None:  # NaN (a pseudo-Dice without foreground, a term without valid points) is not reported
            return
        trial.report(value, step=epoch)
        if trial.should_prune():
            trial.set_user_attr("pruned_at_epoch", epoch)
            raise optuna.TrialPruned(f"pruned after epoch {epoch}")

    return callback


def _end_training(trainer) -> None:
    """Shut down a run stopped in the middle (data-augmentation workers, open files): nnU-Net's own end."""
    if trainer is None or getattr(trainer, "dataloader_train", None) is None:
        return
    try:
        with _quiet(True):
            trainer.on_train_end()
    except Exception:  # the trial already failed; its cleanup must not hide why
        pass


@contextlib.contextmanager
def _quiet(enabled: bool):
    """Send what training prints (nnU-Net's console copy of its log) to nowhere; the log file keeps it."""
    if not enabled:
        yield
        return
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
        yield


def _free_memory() -> None:
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:
        pass

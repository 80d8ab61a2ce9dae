"""The Optuna study: where it is stored, how it is opened, and how a killed worker's trial is recovered.

Storage: any SQLAlchemy URL Optuna's ``RDBStorage`` accepts. The default is a SQLite file in the results
folder, ``$nnUNet_results/<Dataset>/poi_tune/<trainer>__<plans>__<config>.sqlite3`` (embedded, nothing to
start; several workers on one machine may share it). Workers on several machines share one study through
a server database (``--storage postgresql://user:pw@host/db``), each started with the same command.

Resume: every running trial records a heartbeat in the storage (a thread, every ``heartbeat`` seconds). A
trial whose heartbeat is older than ``2 x heartbeat`` (by the database's clock; SQLite's counts whole
seconds, so up to one second more) belongs to a worker that died (killed, machine lost): the next worker
to start a trial marks it FAIL and queues its parameters again (``RetryHeartbeatStaleTrialCallback``), so a
killed worker loses only the training of its running trial.
Re-running the command opens the same study (``load_if_exists``) and runs trials until the study, not this
worker, has ``--trials`` finished (complete or pruned) trials.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

from ..errors import PoiNnunetError
from .objectives import Objective

FINISHED_STATES = ("COMPLETE", "PRUNED")


def study_name(trainer: str, plans: str, configuration: str, fold: Any) -> str:
    return f"{trainer}__{plans}__{configuration}__fold{fold}"


def tune_folder(dataset_name: str) -> Path:
    """``$nnUNet_results/<Dataset>/poi_tune``: the default storage and the reports."""
    from nnunetv2.paths import nnUNet_results

    if not nnUNet_results.is_set():
        raise PoiNnunetError("nnUNet_results is not set: export it to nnU-Net's results folder")
    return Path(nnUNet_results.require()) / dataset_name / "poi_tune"


def default_storage(dataset_name: str, trainer: str, plans: str, configuration: str) -> str:
    path = tune_folder(dataset_name) / f"{trainer}__{plans}__{configuration}.sqlite3"
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def shown_url(url: str) -> str:
    """The storage URL with any password hidden (it is printed)."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL SQLAlchemy parses: Optuna will say so
        return url


def open_storage(url: str, heartbeat: int):
    """An ``RDBStorage`` with heartbeats and the retry of stale trials (module docstring)."""
    import optuna
    from optuna.storages import RDBStorage

    try:
        from optuna.storages import RetryHeartbeatStaleTrialCallback as Retry
    except ImportError:  # optuna < 4.9 names it RetryFailedTrialCallback
        from optuna.storages import RetryFailedTrialCallback as Retry
    if heartbeat < 1:
        raise PoiNnunetError(f"--heartbeat must be at least 1 second, got {heartbeat}")
    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else None  # wait for a busy file
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        try:
            return RDBStorage(url, engine_kwargs=engine, heartbeat_interval=int(heartbeat),
                              grace_period=2 * int(heartbeat), **{_retry_keyword(): Retry(max_retry=2)})
        except Exception as exc:  # a bad URL, an unreachable server, a missing driver
            raise PoiNnunetError(f"storage {shown_url(url)}: cannot be opened ({type(exc).__name__}: {exc})") from None


def _retry_keyword() -> str:
    import inspect

    from optuna.storages import RDBStorage

    params = inspect.signature(RDBStorage.__init__).parameters
    return "heartbeat_stale_trial_callback" if "heartbeat_stale_trial_callback" in params else "failed_trial_callback"


def create_or_load(storage, name: str, objectives: List[Objective], attributes: Mapping[str, Any],
                   seed: Optional[int], startup_trials: int, pruner=None,
                   start: Optional[Mapping[str, float]] = None):
    """Open study ``name`` (creating it on first use) with a TPE sampler; a study run with other objectives or
    another schedule is an error (its trials would not compare with this run's). A new study gets ``start``
    (the trainer's current values) queued as its first trial, so the front shows where the defaults stand."""
    import optuna

    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup_trials)
    study = optuna.create_study(storage=storage, study_name=name, load_if_exists=True, sampler=sampler,
                                pruner=pruner, directions=[o.direction for o in objectives])
    recorded = study.user_attrs
    wanted = {"objectives": [o.name for o in objectives], **attributes}
    if not recorded:
        for key, value in wanted.items():
            study.set_user_attr(key, value)
        if start:
            study.enqueue_trial(dict(start), user_attrs={"starting_point": True})
        return study
    differ = {k: (recorded.get(k), v) for k, v in wanted.items() if recorded.get(k) != v}
    if differ:
        said = "; ".join(f"{k}: study {a!r}, this run {b!r}" for k, (a, b) in differ.items())
        raise PoiNnunetError(f"study {name!r} in {shown_url(storage.url)} was run differently ({said}); run it as it "
                             "was, or start another study with --study_name")
    return study


def load(storage, name: str):
    """An existing study, or an error listing the studies the storage holds."""
    import optuna

    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        names = optuna.get_all_study_names(storage)
        raise PoiNnunetError(f"no study {name!r} in {shown_url(storage.url)} (it holds: "
                             f"{', '.join(names) or 'none'}); run poi_tune with --trials first") from None


def finished_trials(study) -> int:
    """Trials that count toward ``--trials``: complete or pruned (failed ones are retried, not counted)."""
    from optuna.trial import TrialState

    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))


def fail_stale_trials(study) -> None:
    """Mark trials whose worker stopped beating FAIL now (Optuna does it before each new trial)."""
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def trial_states(study) -> Dict[int, str]:
    return {t.number: t.state.name for t in study.get_trials(deepcopy=False)}

"""``poi_tune``: search spaces declared by the trainers, a tiny study, resume after a killed worker, ``--apply``.

One planned 2D X-ray phantom (48x48, 5 cases) serves every test; trials train 1 epoch of 2 iterations on the
CPU, so these tests check that the path works (storage, objectives, resume, plans), not what is found.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import fields
from pathlib import Path
from typing import Dict

import optuna
import pytest
from optuna.trial import TrialState

from dataset_conversion.synthetic_xray import write_xray_dataset
from poi_nnunet.cli.plan_and_preprocess import main as plan_main
from poi_nnunet.cli.train import main as train_main
from poi_nnunet.cli.tune import main as tune_main
from poi_nnunet.errors import PoiNnunetError
from poi_nnunet.plan import TUNABLE_BLOCK_KEYS
from poi_nnunet.trainer_factory import build_trainer
from poi_nnunet.tuning.space import Tunable
from poi_nnunet.tuning.trainer_space import trainer_search_space
from tests.factories import use_nnunet_folders
from trainers.base import PoiTrainer
from trainers.heatmap_variants import VARIANTS
from trainers.point_sup import PoiPointSupTrainer
from trainers.point_sup_variants import POINT_SUP_VARIANTS
from trainers.registry import TRAINERS, trainer_class

REPO = Path(__file__).resolve().parents[1]
DATASET = "Dataset511_Xray"
SHORT = ["-device", "cpu", "--epochs", "1", "--iterations_per_epoch", "2", "--no_pbar"]
STUDY = ["-d", "511", "-c", "2d", "-tr", "heatmap"]


@pytest.fixture(scope="module")
def planned(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Path]:
    base = tmp_path_factory.mktemp("tune")
    env = {"nnUNet_raw": base / "raw", "nnUNet_preprocessed": base / "pre", "nnUNet_results": base / "res"}
    with pytest.MonkeyPatch.context() as mp:
        for key, path in env.items():
            path.mkdir()
            mp.setenv(key, str(path))
        write_xray_dataset(env["nnUNet_raw"] / DATASET, num_cases=5, shape=(48, 48))
        assert plan_main(["-d", "511", "-c", "2d", "-np", "1", "-npfp", "1", "--no_pbar"]) == 0
    return env


@pytest.fixture
def env(planned: Dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> Dict[str, Path]:
    use_nnunet_folders(planned, monkeypatch)
    return planned


@pytest.fixture(scope="module")
def two_trial_study(planned: Dict[str, Path]) -> Dict[str, object]:
    """The default study of ``heatmap`` on the phantom, run once with 2 trials; what it printed."""
    with pytest.MonkeyPatch.context() as mp:
        use_nnunet_folders(planned, mp)
        original = (planned["nnUNet_preprocessed"] / DATASET / "poiPlans.json").read_bytes()
        out = io.StringIO()
        started = time.monotonic()
        with contextlib.redirect_stdout(out):
            code = tune_main([*STUDY, "--trials", "2", "--seed", "0", *SHORT])
        return {"code": code, "stdout": out.getvalue(), "original_plans": original,
                "seconds": time.monotonic() - started}


def _storage(env: Dict[str, Path]) -> Path:
    return env["nnUNet_results"] / DATASET / "poi_tune" / "heatmap__poiPlans__2d.sqlite3"


def _study(env: Dict[str, Path], name: str = "heatmap__poiPlans__2d__fold0") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{_storage(env)}")


def _has_heartbeat(env: Dict[str, Path], trial_id: int) -> bool:
    """Whether the trial's heartbeat thread has written its first beat (read from the SQLite file itself)."""
    import sqlite3

    with contextlib.closing(sqlite3.connect(_storage(env), timeout=60)) as db:
        return db.execute("SELECT COUNT(*) FROM trial_heartbeats WHERE trial_id = ?", (trial_id,)).fetchone()[0] > 0


# ---------------------------------------------------------------------------------------------- search spaces
def test_every_poi_trainer_declares_a_search_space_of_real_names(env: Dict[str, Path]) -> None:
    plans = json.loads((env["nnUNet_preprocessed"] / DATASET / "poiPlans.json").read_text())
    block = plans["configurations"]["2d"]["poi"]
    for name in [*TRAINERS, *VARIANTS, *POINT_SUP_VARIANTS]:
        cls = trainer_class(name)
        if not issubclass(cls, PoiTrainer):
            continue
        space = trainer_search_space(name)
        assert space, name
        for key, tunable in space.items():
            assert isinstance(tunable, Tunable) and tunable.low < tunable.high, (name, key)
            if tunable.in_plan:
                assert key in TUNABLE_BLOCK_KEYS and key in block, (name, key)  # a value the planner writes
            elif issubclass(cls, PoiPointSupTrainer):
                assert key in {f.name for f in fields(cls.loss_weights)}, (name, key)
            else:
                assert isinstance(getattr(cls, key), float), (name, key)  # a weight the loss is built from
            if not tunable.in_plan:  # today's weight is a point of the space: trial 0 of a new study trains it
                assert tunable.low <= cls.default_loss_weight(key) <= tunable.high, (name, key)
    assert set(trainer_search_space("heatmap")) == {"heatmap_weight", "heatmap_sigma_mm", "heatmap_amplitude"}
    assert set(trainer_search_space("uv")) == {"uv_weight", "tv_weight"}
    assert {"coarse_weight", "refine_weight", "heatmap_weight"} <= set(trainer_search_space("coarse_refine"))
    assert set(trainer_search_space("point_sup")) == {"consistency", "separation", "extent"}
    assert "consistency" not in trainer_search_space("point_sup_no_consistency")  # an ablation stays ablated
    with pytest.raises(PoiNnunetError, match="nnU-Net's own"):
        trainer_search_space("nnunet")
    with pytest.raises(ValueError):
        Tunable(1.0, 1.0)


def test_the_nnunet_baseline_is_refused_clearly(env: Dict[str, Path], capsys: pytest.CaptureFixture) -> None:
    assert tune_main(["-d", "511", "-c", "2d", "-tr", "nnunet", "--trials", "1", *SHORT]) == 2
    assert "no POI loss weights to tune" in capsys.readouterr().err


def test_point_sup_weights_are_set_on_the_instance_only() -> None:
    trainer = PoiPointSupTrainer.__new__(PoiPointSupTrainer)
    trainer.set_loss_weight("extent", 2.5)
    assert trainer.loss_weight("extent") == 2.5 and trainer.loss_weights.consistency == 1.0
    assert PoiPointSupTrainer.loss_weights.extent == 1.0


def test_an_unknown_loss_weight_in_the_plans_names_the_file(env: Dict[str, Path]) -> None:
    folder = env["nnUNet_preprocessed"] / DATASET
    plans = json.loads((folder / "poiPlans.json").read_text())
    plans["plans_name"] = "poiPlans_wrongweights"
    plans["configurations"]["2d"]["poi"]["loss_weights"] = {"uv_weight": 2.0}
    (folder / "poiPlans_wrongweights.json").write_text(json.dumps(plans))
    try:
        with pytest.raises(PoiNnunetError, match=r"poiPlans_wrongweights\.json.*'uv_weight'.*PoiHeatmapTrainer"):
            build_trainer("511", "2d", "heatmap", 0, "poiPlans_wrongweights", "cpu")
    finally:
        (folder / "poiPlans_wrongweights.json").unlink()


# ---------------------------------------------------------------------------------------------- a study
def test_a_two_trial_study_completes_in_sqlite_with_two_objectives(env: Dict[str, Path],
                                                                   two_trial_study: Dict[str, object]) -> None:
    assert two_trial_study["code"] == 0, two_trial_study["stdout"]
    assert _storage(env).is_file()
    study = _study(env)
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(complete) == 2 and all(len(t.values) == 2 for t in complete)
    assert [d.name for d in study.directions] == ["MINIMIZE", "MAXIMIZE"]  # TRE down, Dice up
    out = str(two_trial_study["stdout"])
    assert "trial 0 (1/2 done): TRE " in out and "trial 1 (2/2 done): TRE " in out and "| best TRE " in out
    # trial 0 is what the trainer trains with today (heatmap's class weight 1, the planned sigma and amplitude)
    block = json.loads((env["nnUNet_preprocessed"] / DATASET / "poiPlans.json").read_text())["configurations"]["2d"]["poi"]
    first = min(complete, key=lambda t: t.number)
    assert first.number == 0 and first.params == pytest.approx(
        {"heatmap_weight": 1.0, "heatmap_sigma_mm": block["heatmap_sigma_mm"],
         "heatmap_amplitude": block["heatmap_amplitude"]})
    assert "Pareto front of study heatmap__poiPlans__2d__fold0" in out
    report = env["nnUNet_results"] / DATASET / "poi_tune" / "heatmap_poiPlans_2d_fold0"
    assert (report / "pareto.png").stat().st_size > 0
    rows = (report / "pareto.csv").read_text().splitlines()
    assert rows[0].startswith("trial,tre_mm,dice,points_found,heatmap_weight") and len(rows) >= 2
    # each trial trained with its sampled values, in its own results folder; scaffolding and checkpoints gone
    for trial in complete:
        fold = Path(trial.user_attrs["output_folder"])
        assert fold.parent.name == f"PoiHeatmapTrainer__{trial.user_attrs['plans_identifier']}__2d"
        block = json.loads((fold.parent / "plans.json").read_text())["configurations"]["2d"]["poi"]
        assert block["loss_weights"]["heatmap_weight"] == pytest.approx(trial.params["heatmap_weight"])
        assert block["heatmap_sigma_mm"] == pytest.approx(trial.params["heatmap_sigma_mm"])
        assert block["heatmap_amplitude"] == pytest.approx(trial.params["heatmap_amplitude"])
        assert (fold / "validation" / "evaluation" / "summary.json").is_file()
        # every point written (threshold 0), so the TRE is over all of them, however unsure the short run is
        dropped = fold / "validation" / "dropped_points.json"
        assert not dropped.is_file() or "below_min_confidence" not in dropped.read_text()
        assert not list(fold.glob("checkpoint_*.pth"))
    assert not list((env["nnUNet_preprocessed"] / DATASET).glob("poiPlans_tune_*.json"))


def test_a_study_run_with_another_schedule_is_refused(env: Dict[str, Path], two_trial_study: Dict[str, object],
                                                      capsys: pytest.CaptureFixture) -> None:
    assert tune_main([*STUDY, "--trials", "3", "-device", "cpu", "--epochs", "5", "--no_pbar"]) == 2
    assert "was run differently (epochs: study 1, this run 5" in capsys.readouterr().err
    assert len(_study(env).trials) == 2  # nothing ran


# ---------------------------------------------------------------------------------------------- resume
def test_a_killed_worker_loses_only_its_running_trial(env: Dict[str, Path]) -> None:
    """A worker killed (SIGKILL) inside a trial leaves it RUNNING; the same command re-run marks it failed once
    its heartbeat is stale, re-queues it, and ends with the requested number of complete trials."""
    args = [*STUDY, "--study_name", "resume", "--trials", "1", "--heartbeat", "1", *SHORT]
    code = f"import sys; from poi_nnunet.cli.tune import main; sys.exit(main({args!r}))"
    worker = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=os.environ.copy(),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 90
        running = []
        trial_plans = env["nnUNet_preprocessed"] / DATASET
        while time.monotonic() < deadline and not running and worker.poll() is None:
            time.sleep(0.2)
            if list(trial_plans.glob("poiPlans_tune_resume_t*.json")):  # values sampled: training
                running = [t for t in _study(env, "resume").get_trials(states=(TrialState.RUNNING,))
                           if _has_heartbeat(env, t._trial_id)]  # Optuna never fails a trial with none
        assert running, "the worker never started a trial"
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait(timeout=30)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    killed = running[0].number
    assert _study(env, "resume").trials[killed].state == TrialState.RUNNING
    # its heartbeat (every second) must be older than the grace period (two seconds) by SQLite's clock, which
    # Optuna reads as CURRENT_TIMESTAMP: whole seconds, so an age of 2.5 s can read as 2 and not be stale yet
    time.sleep(3.5)

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert tune_main(args) == 0, out.getvalue()
    trials = _study(env, "resume").trials
    assert trials[killed].state == TrialState.FAIL
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 1
    assert complete[0].system_attrs.get("failed_trial") == killed  # the killed trial's values, run again
    assert not list((env["nnUNet_preprocessed"] / DATASET).glob("poiPlans_tune_resume_*.json"))
    # a finished study re-run trains nothing and reports
    with contextlib.redirect_stdout(io.StringIO()):
        assert tune_main(args) == 0
    assert len(_study(env, "resume").trials) == len(trials)


# ---------------------------------------------------------------------------------------------- apply
def test_apply_writes_new_plans_that_poi_train_reads(env: Dict[str, Path], two_trial_study: Dict[str, object],
                                                     capsys: pytest.CaptureFixture) -> None:
    folder = env["nnUNet_preprocessed"] / DATASET
    trial = _study(env).best_trials[0]
    identifier = f"poiPlans_tuned_heatmap_2d_t{trial.number}"
    assert tune_main([*STUDY, "--apply", str(trial.number)]) == 0
    out = capsys.readouterr().out
    assert f"poi_train 511 2d heatmap -p {identifier} -f 0" in out
    assert (folder / "poiPlans.json").read_bytes() == two_trial_study["original_plans"]  # the original stays

    original = json.loads(two_trial_study["original_plans"])["configurations"]["2d"]["poi"]
    tuned = json.loads((folder / f"{identifier}.json").read_text())
    block = tuned["configurations"]["2d"]["poi"]
    assert tuned["plans_name"] == identifier
    assert block["loss_weights"] == {"heatmap_weight": pytest.approx(trial.params["heatmap_weight"])}
    assert block["heatmap_amplitude"] == pytest.approx(trial.params["heatmap_amplitude"])
    factor = trial.params["heatmap_sigma_mm"] / original["heatmap_sigma_mm"]
    assert block["heatmap_sigma_voxels"] == pytest.approx([v * factor for v in original["heatmap_sigma_voxels"]])
    assert block["tuned"]["trial"] == trial.number

    trainer = build_trainer("511", "2d", "heatmap", 0, identifier, "cpu")
    assert trainer.heatmap_weight == pytest.approx(block["loss_weights"]["heatmap_weight"])
    assert trainer.poi_plan.heatmap_amplitude == pytest.approx(block["heatmap_amplitude"])
    assert trainer.poi_plan.heatmap_sigma_voxels == pytest.approx(tuple(block["heatmap_sigma_voxels"]))
    assert PoiTrainer.__dict__.get("heatmap_weight") is None and type(trainer).heatmap_weight == 1.0

    assert train_main(["511", "2d", "heatmap", "-p", identifier, "-f", "0", "-device", "cpu", "--epochs", "1",
                       "--iterations_per_epoch", "1", "--no_validation"]) == 0
    run = env["nnUNet_results"] / DATASET / f"PoiHeatmapTrainer__{identifier}__2d"
    assert json.loads((run / "plans.json").read_text())["configurations"]["2d"]["poi"]["loss_weights"] == \
        block["loss_weights"]

    capsys.readouterr()
    assert tune_main([*STUDY, "--apply", str(trial.number)]) == 0  # the same again: harmless
    assert "already there, unchanged" in capsys.readouterr().out
    changed = (folder / f"{identifier}.json").read_text().replace('"version"', '"version_edited"', 1)
    (folder / f"{identifier}.json").write_text(changed)
    assert tune_main([*STUDY, "--apply", str(trial.number)]) == 2
    assert "already exists with other content" in capsys.readouterr().err
    assert (folder / f"{identifier}.json").read_text() == changed  # never overwritten


def test_pruning_follows_a_value_that_does_not_scale_with_the_searched_weights() -> None:
    """TRE studies prune on the trainer's unweighted point term (the total loss grows with heatmap_weight)."""
    from types import SimpleNamespace

    from poi_nnunet.tuning.objectives import DICE, TRE, can_prune, intermediate_value
    from trainers.heatmap import PoiHeatmapTrainer

    class Logged:
        def get_value(self, key: str, step: int) -> float:
            return {"mean_fg_dice": 0.25, "val_losses": 99.0}[key]

    trainer = PoiHeatmapTrainer.__new__(PoiHeatmapTrainer)
    trainer.val_term_means, trainer.logger = {"loss": 99.0, "poi_loss": 0.5, "seg_loss": 1.0}, Logged()
    assert intermediate_value(TRE, trainer) == 0.5
    assert intermediate_value(DICE, trainer) == 0.25
    trainer.val_term_means = {"poi_loss": float("nan")}
    assert intermediate_value(TRE, trainer) is None  # not reported
    assert can_prune(TRE, PoiHeatmapTrainer) and not can_prune(TRE, SimpleNamespace)
    assert can_prune(DICE, PoiPointSupTrainer)

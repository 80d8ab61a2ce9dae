"""``benchmarks/timed_training.py``: the run settings both training benchmarks share, and the time cap that ends
a training at an epoch end (checked with a stand-in trainer: no network is built)."""
from __future__ import annotations

import argparse
import json

import pytest
import torch

from benchmarks import timed_training
from benchmarks.timed_training import RunSettings, add_run_arguments, schedule, train_timed


class FakeTrainer:
    """nnU-Net's loop as :func:`train_timed` sees it: steps, an epoch-end hook, a final end."""

    def __init__(self, epochs: int, per_epoch: int) -> None:
        self.num_epochs, self.num_iterations_per_epoch = epochs, per_epoch
        self.current_epoch, self.ended = 0, 0

    def train_step(self, batch: dict) -> dict:
        return {"loss": 0.0}

    def on_epoch_end(self) -> None:
        self.current_epoch += 1

    def on_train_end(self) -> None:
        self.ended += 1


def fake_run_fold(trainer: FakeTrainer, validate: bool = True) -> None:
    while trainer.current_epoch < trainer.num_epochs:
        for _ in range(trainer.num_iterations_per_epoch):
            trainer.train_step({})
        trainer.on_epoch_end()
    trainer.on_train_end()


@pytest.fixture
def fake_training(monkeypatch: pytest.MonkeyPatch) -> list:
    import poi_nnunet.trainer_factory as factory

    made: list = []

    def build(dataset, configuration, trainer, fold, plans, device, epochs, iterations_per_epoch):
        made.append(FakeTrainer(epochs, iterations_per_epoch))
        made[-1].built_with = (dataset, configuration, trainer, fold, plans, device)
        return made[-1]

    monkeypatch.setattr(factory, "build_trainer", build)
    monkeypatch.setattr(factory, "run_fold", fake_run_fold)
    threads = torch.get_num_threads()
    yield made
    torch.set_num_threads(threads)


def test_schedule_whole_epochs() -> None:
    assert schedule(20, RunSettings(per_epoch=10)) == (2, 10)
    assert schedule(30, RunSettings(per_epoch=25)) == (1, 25)
    assert schedule(5, RunSettings(per_epoch=25)) == (1, 5)


def test_run_arguments_default_to_the_cpu_settings() -> None:
    parser = argparse.ArgumentParser()
    add_run_arguments(parser, "trainings")
    args = parser.parse_args([])
    assert RunSettings(1, args.device, args.per_epoch, args.da_workers, args.train_seconds) == RunSettings()
    args = parser.parse_args(["--device", "cuda", "--per-epoch", "50", "--da-workers", "2", "--train-seconds", "9"])
    assert (args.device, args.per_epoch, args.da_workers, args.train_seconds) == ("cuda", 50, 2, 9.0)


def test_both_benchmarks_share_the_settings() -> None:
    from benchmarks import point_sup, uv_vs_heatmap

    assert uv_vs_heatmap.RunSettings is point_sup.RunSettings is timed_training.RunSettings


def test_without_a_cap_every_iteration_runs(tmp_path, fake_training) -> None:
    stats = tmp_path / "stats.json"
    train_timed("D", "point_sup", 20, RunSettings(per_epoch=10), str(stats), configuration="3d_fullres",
                plans="poiPlans_axial")
    out = json.loads(stats.read_text())
    assert (out["iterations"], out["planned_iterations"], out["stopped_early"]) == (20, 20, False)
    assert fake_training[0].built_with == ("D", "3d_fullres", "point_sup", "all", "poiPlans_axial", "cpu")
    assert fake_training[0].ended == 1


def test_the_cap_ends_training_at_an_epoch_end(tmp_path, fake_training) -> None:
    stats = tmp_path / "stats.json"
    train_timed("D", "nnunet", 30, RunSettings(per_epoch=10, train_seconds=0.0), str(stats))
    out = json.loads(stats.read_text())
    assert (out["iterations"], out["planned_iterations"], out["stopped_early"]) == (10, 30, True)
    assert fake_training[0].ended == 1  # nnU-Net's end (final checkpoint) ran once, after the cut

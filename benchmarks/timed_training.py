"""One training of a benchmark in its own process, on a device, with an optional time cap (shared by
``uv_vs_heatmap.py`` and ``point_sup.py``).

:class:`RunSettings` says how a training runs (torch threads, device, iterations per epoch, augmentation
workers, time cap). :func:`train_timed` (in the child process) trains one fold ``all`` with nnU-Net's loop and
writes ``train_stats.json``-style statistics: iterations actually done and planned, whether the time cap cut
the run short, wall seconds, median step seconds, peak RSS and peak GPU memory. :func:`train_in_child` starts
that child with the benchmark's environment (``learning_speed.environment``, ``nnUNet_n_proc_DA`` from the
settings) and returns the statistics.

The time cap (``train_seconds``) is checked at each epoch end (the clock starts before nnU-Net's
``initialize``, so set-up counts): past it, training ends there and nnU-Net's own ``on_train_end`` saves
``checkpoint_final.pth`` as after a full run. The poly learning rate has then not decayed to its end, which
``stopped_early`` records; the granularity is one epoch (``per_epoch`` iterations and its validation steps).
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.learning_speed import environment, run  # noqa: E402

PER_EPOCH = 25  # iterations per epoch on the CPU (validation every epoch: PER_EPOCH // 5 steps)


@dataclass(frozen=True)
class RunSettings:
    """How trainings and predictions run: CPU runs use one thread and in-process augmentation; a GPU run
    (``--device cuda``) takes nnU-Net's augmentation workers and its 250-iteration epochs."""

    threads: int = 1
    device: str = "cpu"
    per_epoch: int = PER_EPOCH
    da_workers: int = 0  # nnUNet_n_proc_DA of the training processes
    train_seconds: Optional[float] = None  # stop a training at the first epoch end past this (None: never)


def add_run_arguments(parser: argparse.ArgumentParser, where: str) -> None:
    """The command-line options of :class:`RunSettings` beyond ``--threads``: ``--device`` (``where`` says what
    runs there), ``--per-epoch``, ``--da-workers`` and ``--train-seconds``."""
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help=f"where {where} run (default cpu)")
    parser.add_argument("--per-epoch", type=int, default=PER_EPOCH,
                        help=f"iterations per epoch (default {PER_EPOCH}; nnU-Net's own is 250)")
    parser.add_argument("--da-workers", type=int, default=0,
                        help="nnUNet_n_proc_DA of the trainings (default 0: augmentation in the training process)")
    parser.add_argument("--train-seconds", type=float, default=None,
                        help="end a training at the first epoch end past this many seconds (a time cap)")


def schedule(iterations: int, settings: RunSettings) -> Tuple[int, int]:
    """Epochs and iterations per epoch of an ``iterations``-iteration training (whole epochs, at least one)."""
    per_epoch = min(settings.per_epoch, iterations)
    return max(1, iterations // per_epoch), per_epoch


class _TimeUp(Exception):
    """Raised at an epoch end once a training has run past ``RunSettings.train_seconds``."""


def train_timed(dataset: str, trainer_name: str, iterations: int, settings: RunSettings, stats: str,
                configuration: str = "2d", plans: str = "poiPlans") -> None:
    """(In a child process) train ``iterations`` iterations; write step times and peak memory to ``stats``.

    With ``settings.train_seconds`` the run ends at the first epoch end past that time and saves its final
    checkpoint there (``stopped_early``; the poly learning rate has then not decayed to its end).
    """
    import torch

    from poi_nnunet.trainer_factory import build_trainer, run_fold

    torch.set_num_threads(settings.threads)
    torch.manual_seed(0)
    np.random.seed(0)
    epochs, per_epoch = schedule(iterations, settings)
    trainer = build_trainer(dataset, configuration, trainer_name, "all", plans, device=settings.device,
                            epochs=epochs, iterations_per_epoch=per_epoch)
    steps: List[float] = []
    base_step = trainer.train_step
    cuda = settings.device == "cuda"

    def timed_step(batch: dict) -> dict:
        start = time.perf_counter()
        out = base_step(batch)
        if cuda:
            torch.cuda.synchronize()
        steps.append(time.perf_counter() - start)
        return out

    trainer.train_step = timed_step
    start = time.perf_counter()
    if settings.train_seconds is not None:
        base_epoch_end = trainer.on_epoch_end

        def on_epoch_end() -> None:
            base_epoch_end()
            if time.perf_counter() - start > settings.train_seconds and trainer.current_epoch < trainer.num_epochs:
                raise _TimeUp

        trainer.on_epoch_end = on_epoch_end
    stopped_early = False
    try:
        run_fold(trainer, validate=False)
    except _TimeUp:
        stopped_early = True
        trainer.on_train_end()  # nnU-Net's own end: checkpoint_final.pth, loaders shut down
    wall = time.perf_counter() - start
    done = len(steps)
    Path(stats).write_text(json.dumps({
        "iterations": done, "planned_iterations": trainer.num_epochs * trainer.num_iterations_per_epoch,
        "stopped_early": stopped_early, "device": settings.device, "train_s": wall,
        "iteration_s": wall / max(done, 1), "step_s": float(np.median(steps)) if steps else float("nan"),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2 ** 20 if cuda else float("nan")}))


def train_in_child(work: Path, dataset: str, trainer: str, configuration: str, iterations: int,
                   settings: RunSettings, stats: Path, log: Path, plans: str = "poiPlans") -> Dict[str, object]:
    """Run :func:`train_timed` in a child process (the benchmark's nnU-Net folders under ``work``,
    ``settings.threads`` threads, ``settings.da_workers`` augmentation workers, output to ``log``); return
    the statistics it wrote to ``stats``."""
    env = environment(work, settings.threads)
    env["nnUNet_n_proc_DA"] = str(settings.da_workers)
    stats.parent.mkdir(parents=True, exist_ok=True)
    code = ("import sys; sys.argv=['x']; from benchmarks.timed_training import train_timed, RunSettings; "
            f"train_timed({dataset!r}, {trainer!r}, {iterations}, {settings!r}, {str(stats)!r}, "
            f"configuration={configuration!r}, plans={plans!r})")
    run([sys.executable, "-c", code], env, log)
    return json.loads(stats.read_text())

"""Training one fold on several processes with PyTorch DDP: nnU-Net's multi-GPU path, for the POI trainers.

nnU-Net's own ``run_training`` spawns one process per GPU, joins them in an NCCL process group and builds
the trainer by name in each. Here the same happens with the trainer built by :mod:`poi_nnunet.trainer_factory`
(our classes, no name search), and the backend follows the device: NCCL on CUDA, gloo on the CPU. The CPU path
is what the tests run (two processes on tiny data); on a CPU it can also be faster than one process with as
many threads (``benchmarks/ddp_step.py``).

Inside each process nnU-Net's trainer sees an initialised process group and splits the plans' batch size
across the ranks, wraps the network in ``DistributedDataParallel`` (gradients averaged, weights identical on
every rank), and gathers losses and Dice counts at epoch ends; :class:`trainers.base.PoiTrainer` adds what a
POI trainer needs on top (CPU ranks, the method's loss terms gathered, validation on rank 0 only).

Everything a rank needs travels in a :class:`FoldRequest` (picklable: processes are spawned, not forked).
"""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Callable, Optional, Union

from .errors import PoiNnunetError


@dataclass(frozen=True)
class FoldRequest:
    """One fold's training, as ``poi_train`` was asked for it."""

    dataset: str
    configuration: str
    trainer: str
    fold: Union[int, str]
    plans: str
    device: str  # "cuda" or "cpu" (resolved, never "auto")
    continue_training: bool = False
    epochs: Optional[int] = None
    iterations_per_epoch: Optional[int] = None
    validation_only: bool = False
    validate: bool = True


def backend_for(device: str) -> str:
    """The process-group backend for a device: NCCL between GPUs, gloo between CPU processes."""
    return "nccl" if device == "cuda" else "gloo"


def build_fold_trainer(request: FoldRequest):
    """The request's trainer, with its schedule overrides (in the calling process)."""
    from .trainer_factory import build_trainer

    return build_trainer(request.dataset, request.configuration, request.trainer, request.fold, request.plans,
                         request.device, continue_training=request.continue_training, epochs=request.epochs,
                         iterations_per_epoch=request.iterations_per_epoch)


def train_fold(request: FoldRequest):
    """Train (or resume, or only validate) one fold in this process; return ``(trainer, summary)``.

    Under DDP every rank calls this; only rank 0 writes checkpoints, logs and the validation summary
    (``summary`` is None on the other ranks).
    """
    from .trainer_factory import run_fold

    trainer = build_fold_trainer(request)
    summary = run_fold(trainer, continue_training=request.continue_training,
                       validation_only=request.validation_only, validate=request.validate)
    return trainer, summary


RankFunction = Callable[[FoldRequest], object]


def check_world_size(request: FoldRequest, world_size: int, global_batch_size: int, batch_dice: bool) -> None:
    """Refuse, before anything is spawned, what would fail later in every process.

    With ``batch_dice`` (nnU-Net's 2d default) the Dice loss gathers each sample's counts from every rank
    with one fixed-size all-gather, which breaks (a gloo size mismatch, an NCCL hang) when the ranks hold
    different numbers of samples: the batch must then split evenly.
    """
    if world_size < 2:
        raise PoiNnunetError(f"-num_gpus must be at least 2 for distributed training, got {world_size}")
    if request.device not in ("cuda", "cpu"):
        raise PoiNnunetError(f"distributed training runs on cuda (NCCL) or cpu (gloo), not {request.device!r}")
    if request.device == "cuda":
        import torch

        available = torch.cuda.device_count()
        if world_size > available:
            raise PoiNnunetError(f"-num_gpus {world_size}: only {available} CUDA GPU(s) visible "
                                 "(CUDA_VISIBLE_DEVICES selects which)")
    if global_batch_size < world_size:
        raise PoiNnunetError(f"-num_gpus {world_size}: the plans' batch size is {global_batch_size}, and every "
                             "process needs at least one sample of it; use fewer processes or plans with a "
                             "larger batch size")
    if batch_dice and global_batch_size % world_size:
        even = [n for n in range(2, global_batch_size + 1) if global_batch_size % n == 0]
        raise PoiNnunetError(f"-num_gpus {world_size}: the plans' batch size {global_batch_size} does not split "
                             f"evenly over {world_size} processes, and this configuration computes its Dice over "
                             "the whole batch (batch_dice), which nnU-Net gathers across processes in equal parts; "
                             f"use {' or '.join(map(str, even[:4])) or 'one process'} processes, or plans whose "
                             "batch size they divide")


def check_request(request: FoldRequest, world_size: int):
    """Read the request's plans (clear errors for an unplanned dataset or configuration) and refuse what
    :func:`check_world_size` refuses; return nnU-Net's ``PlansManager``. Builds no trainer, so it leaves
    nothing in the results folder."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from .trainer_factory import read_plans

    plans, _ = read_plans(request.dataset, request.configuration, request.plans)
    manager = PlansManager(plans)
    config = manager.get_configuration(request.configuration)
    check_world_size(request, world_size, int(config.batch_size), bool(config.batch_dice))
    return manager


def free_port() -> int:
    """A TCP port nobody listens on now, for the processes' rendezvous on this machine."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("localhost", 0))
        return int(s.getsockname()[1])


def launch(request: FoldRequest, world_size: int, rank_function: RankFunction = train_fold) -> None:
    """Run ``rank_function(request)`` in ``world_size`` spawned processes joined in one process group.

    The rendezvous is on this machine (``MASTER_ADDR``/``MASTER_PORT``: taken from the environment when
    set, else localhost and a free port), as nnU-Net's ``-num_gpus`` does. A rank that fails ends the run;
    its error (a :class:`PoiNnunetError` for a user error) is raised here with the rank's message.
    """
    import torch.multiprocessing as mp

    os.environ.setdefault("MASTER_ADDR", "localhost")
    os.environ.setdefault("MASTER_PORT", str(free_port()))
    try:
        mp.spawn(_run_rank, args=(world_size, request, rank_function), nprocs=world_size, join=True)
    except mp.ProcessRaisedException as exc:  # the rank's traceback is in the message
        last = ([line for line in str(exc).strip().splitlines() if line.strip()] or [""])[-1]
        prefix = f"{PoiNnunetError.__module__}.{PoiNnunetError.__name__}: "
        if last.startswith(prefix):  # a user error: its message, as in one process
            raise PoiNnunetError(last[len(prefix):]) from None
        raise
    except mp.ProcessExitedException as exc:
        raise PoiNnunetError(f"distributed training failed: {exc}") from None


def _run_rank(rank: int, world_size: int, request: FoldRequest, rank_function: RankFunction) -> None:
    """One process: join the group, pin its GPU (or share the CPU cores), run, leave the group."""
    import torch
    import torch.distributed as dist

    dist.init_process_group(backend_for(request.device), rank=rank, world_size=world_size)
    try:
        if request.device == "cuda":
            torch.cuda.set_device(rank)
        else:  # N processes with all cores each would fight over them
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // world_size))
        rank_function(request)
    finally:
        dist.destroy_process_group()

"""Time per training step with 1 and more DDP processes on the same total batch (``poi_train -num_gpus N``).

Each process count trains the same POI trainer on the same plans: one process takes the plans' whole batch,
N processes take their shares of it (nnU-Net's split), and DDP averages the gradients every step. After
``--warmup`` steps, ``--steps`` steps are timed in every rank: the wait for the next augmented batch and the
step itself (forward, loss, backward with the gradient all-reduce, optimiser). The slowest rank sets the
pace, so the table reports per step the mean over steps of the slowest rank's time.

    python benchmarks/ddp_step.py --work /tmp/ddp --phantom demo_xray --processes 1 2 --steps 20 [--device cuda]

On the CPU the processes share the machine's cores (each gets cores / N threads); on GPUs each process
has its own GPU, so ``--device cuda --processes 1 2`` needs two GPUs.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.learning_speed import PHANTOMS, environment, prepare  # noqa: E402


def time_steps(out: Path, steps: int, warmup: int, request) -> None:
    """In each rank: build the trainer and its loaders, then time ``warmup + steps`` training steps."""
    import torch
    import torch.distributed as dist

    from poi_nnunet.distributed import build_fold_trainer

    trainer = build_fold_trainer(request)
    trainer.on_train_start()
    trainer.network.train()
    data_s: List[float] = []
    step_s: List[float] = []
    for i in range(warmup + steps):
        start = time.perf_counter()
        batch = next(trainer.dataloader_train)
        loaded = time.perf_counter()
        trainer.train_step(batch)
        if trainer.device.type == "cuda":
            torch.cuda.synchronize()
        done = time.perf_counter()
        if i >= warmup:
            data_s.append(loaded - start)
            step_s.append(done - loaded)
    record = {"batch_size": int(trainer.batch_size), "data_s": data_s, "step_s": step_s}
    ranks = [record]
    if dist.is_initialized():
        ranks = [None] * dist.get_world_size()
        dist.all_gather_object(ranks, record)
    if not dist.is_initialized() or dist.get_rank() == 0:
        out.write_text(json.dumps(ranks))
    for loader in (trainer.dataloader_train, trainer.dataloader_val):
        if hasattr(loader, "_finish"):
            loader._finish()


def summarise(processes: int, ranks: List[dict]) -> Dict[str, object]:
    data = np.array([r["data_s"] for r in ranks])  # (ranks, steps)
    step = np.array([r["step_s"] for r in ranks])
    total = (data + step).max(axis=0)  # the slowest rank sets each step's pace
    return {"processes": processes, "batch_per_process": "/".join(str(r["batch_size"]) for r in ranks),
            "step_s": float(total.mean()), "compute_s": float(step.max(axis=0).mean()),
            "data_wait_s": float(data.max(axis=0).mean())}


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True, help="folder for the phantom, plans and results")
    parser.add_argument("--phantom", default="demo_xray", choices=sorted(PHANTOMS))
    parser.add_argument("--trainer", default="heatmap")
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--da-workers", type=int, default=0, help="nnUNet_n_proc_DA per process (0: in-process)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    work = args.work.resolve()
    phantom = PHANTOMS[args.phantom]
    prepare(work, phantom, args.seed)
    os.environ.update({k: v for k, v in environment(work, os.cpu_count() or 1).items()
                       if k.startswith("nnUNet_") or k == "PYTHONPATH"})
    os.environ["nnUNet_n_proc_DA"] = str(args.da_workers)
    from poi_nnunet.distributed import FoldRequest, check_request, launch

    request = FoldRequest(str(phantom.dataset_id), phantom.configuration, args.trainer, 0, "poiPlans", args.device)
    rows = []
    for n in args.processes:
        out = work / f"ddp_step_{args.trainer}_{n}.json"
        rank_function = functools.partial(time_steps, out, args.steps, args.warmup)
        if n == 1:
            import torch

            torch.set_num_threads(os.cpu_count() or 1)
            rank_function(request)
        else:
            check_request(request, n)
            launch(request, n, rank_function)
        rows.append(summarise(n, json.loads(out.read_text())))
        print(json.dumps(rows[-1]), flush=True)
    lines = [f"{args.trainer} on {phantom.dataset} ({phantom.configuration}), {args.device}, {os.cpu_count()} cores, "
             f"{args.steps} timed steps after {args.warmup}", "",
             "| processes | batch per process | step s | compute s | data wait s |", "|---|---|---|---|---|"]
    lines += [f"| {r['processes']} | {r['batch_per_process']} | {r['step_s']:.3f} | {r['compute_s']:.3f} | "
              f"{r['data_wait_s']:.3f} |" for r in rows]
    (work / f"ddp_step_{args.trainer}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Training step time and peak memory: nnUNetTrainer, heatmap and coarse_refine on the same plans.

For each POI channel count (the plans' ``poi_channels`` replaced by that many: the dataset's own ids
first, then made-up ids without annotations, which cost the same compute), each trainer runs in its
own process (peak memory is per process): ``initialize``, its data loaders, one warm-up step, then
``--steps`` timed steps. Reported per step: augmentation (``next(loader)``, nnU-Net's transforms plus
the points) and forward + backward + optimiser step (``train_step``, which for the POI trainers
includes rendering targets), and the peak memory: ``torch.cuda.max_memory_allocated`` on a GPU,
else the process's peak RSS (``getrusage``) minus its RSS before the warm-up step (network, optimiser
and loaders built, no batch run). Measured from before the warm-up, not after it: the allocator may or
may not hand the warm-up's freed memory back to the system, so an RSS taken after it swung the figure
by more than a GB between runs of the same code.

    python benchmarks/train_step.py --work /tmp/cr_ablation --channels 20 100 500 --steps 5 [-device cuda] [--threads 1]

``--work`` is a folder with a planned ``Dataset501_*`` (e.g. the ablation's; it is planned there if missing).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TRAINERS = ("nnUNetTrainer", "heatmap", "coarse_refine")


def _rss_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def one(work: Path, trainer: str, channels: int, steps: int, device: str, plans_name: str, threads: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from trainers.registry import trainer_class

    os.environ["nnUNet_preprocessed"] = str(work / "preprocessed")
    os.environ["nnUNet_raw"] = str(work / "raw")
    os.environ["nnUNet_results"] = tempfile.mkdtemp(prefix="train_step_")
    os.environ.setdefault("nnUNet_n_proc_DA", "0")
    os.environ.setdefault("nnUNet_def_n_proc", "1")
    folder = next((work / "preprocessed").glob("Dataset501_*"))
    plans = json.loads((folder / f"{plans_name}.json").read_text())
    dataset_json = json.loads((folder / "dataset.json").read_text())
    block = plans["configurations"]["3d_fullres"]["poi"]
    own = block["poi_channels"]
    extra = [{"structure": None, "poi": 10000 + k, "name": f"extra_{k}"} for k in range(max(0, channels - len(own)))]
    block["poi_channels"] = (own + extra)[:channels]
    kept = {int(c["poi"]) for c in block["poi_channels"]}  # mirror pairs of channels left out go too
    dataset_json["poi_mirror_pairs"] = [p for p in dataset_json.get("poi_mirror_pairs") or []
                                        if int(p[0]) in kept and int(p[1]) in kept]
    plans["continue_training"] = False  # nnU-Net >= 2.8 pops this key
    cls = nnUNetTrainer if trainer == "nnUNetTrainer" else trainer_class(trainer)
    torch.manual_seed(0)
    t = cls(plans=plans, configuration="3d_fullres", fold="all", dataset_json=dataset_json,
            device=torch.device(device))
    return {"trainer": trainer, "channels": channels, **timed_steps(t, steps, device)}


def timed_steps(t, steps: int, device: str) -> dict:
    """``initialize`` the trainer ``t``, build its loaders, run one warm-up step and ``steps`` timed ones:
    median augmentation and step seconds, and the peak memory (see the module docstring)."""
    import numpy as np
    import torch

    t.initialize()
    dl_tr, _ = t.get_dataloaders()
    t.network.train()
    before = _rss_kb()
    t.train_step(next(dl_tr))  # warm-up
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    aug, step = [], []
    for _ in range(steps):
        a = time.perf_counter()
        batch = next(dl_tr)
        b = time.perf_counter()
        t.train_step(batch)
        if device == "cuda":
            torch.cuda.synchronize()
        c = time.perf_counter()
        aug.append(b - a)
        step.append(c - b)
    if device == "cuda":
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
        kind = "cuda max_memory_allocated"
    else:
        peak_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
        kind = "peak RSS above pre-warm-up RSS"
    return {"augmentation_s": float(np.median(aug)),
            "step_s": float(np.median(step)), "peak_mb": float(peak_mb), "memory": kind,
            "process_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "patch_size": list(t.configuration_manager.patch_size), "batch_size": t.batch_size,
            "parameters_m": sum(p.numel() for p in t.network.parameters()) / 1e6}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/coarse_refine_ablation"))
    parser.add_argument("--channels", type=int, nargs="+", default=[20, 100, 500])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--plans", default="poiPlans")
    parser.add_argument("-device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads per process (default 1)")
    parser.add_argument("--one", nargs=2, metavar=("TRAINER", "CHANNELS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        print("RESULT " + json.dumps(one(args.work, args.one[0], int(args.one[1]), args.steps, args.device,
                                         args.plans, args.threads)))
        return 0
    if not list((args.work / "preprocessed").glob("Dataset501_*")):
        from benchmarks.coarse_refine_ablation import setup

        setup(args.work, 6, 0, (48, 32, 32), 0)
    rows = []
    for channels in args.channels:
        for trainer in TRAINERS:
            if trainer == "nnUNetTrainer" and rows and any(r["trainer"] == trainer for r in rows):
                plain = next(r for r in rows if r["trainer"] == trainer)
                rows.append({**plain, "channels": channels})
                continue
            cmd = [sys.executable, __file__, "--work", str(args.work), "--steps", str(args.steps), "--plans",
                   args.plans, "-device", args.device, "--threads", str(args.threads), "--one", trainer,
                   str(channels)]
            out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
            line = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
            if not line:
                print(out.stdout[-2000:], out.stderr[-4000:])
                raise SystemExit(f"{trainer} with {channels} channels failed")
            rows.append(json.loads(line[0][len("RESULT "):]))
            r = rows[-1]
            print(f"{trainer:14s} C={channels:4d}  aug {r['augmentation_s']:.3f} s  step {r['step_s']:.3f} s  "
                  f"peak {r['peak_mb']:.0f} MB", flush=True)
    print(f"\npatch {rows[0]['patch_size']}, batch {rows[0]['batch_size']}, device {args.device}, "
          f"median of {args.steps} steps; memory: {rows[0]['memory']}")
    print(f"{'C':>4s} {'trainer':14s} {'aug s':>7s} {'step s':>7s} {'peak MB':>8s} {'params M':>8s} "
          f"{'step/plain':>10s} {'step/heatmap':>12s} {'mem/heatmap':>11s}")
    for r in rows:
        plain = next(x for x in rows if x["trainer"] == "nnUNetTrainer" and x["channels"] == r["channels"])
        heat = next(x for x in rows if x["trainer"] == "heatmap" and x["channels"] == r["channels"])
        print(f"{r['channels']:4d} {r['trainer']:14s} {r['augmentation_s']:7.3f} {r['step_s']:7.3f} "
              f"{r['peak_mb']:8.0f} {r['parameters_m']:8.2f} {r['step_s'] / plain['step_s']:10.2f} "
              f"{r['step_s'] / heat['step_s']:12.2f} {r['peak_mb'] / max(heat['peak_mb'], 1e-9):11.2f}")
    (args.work / "train_step.json").write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

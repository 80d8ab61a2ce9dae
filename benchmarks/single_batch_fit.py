"""Can a trainer fit one fixed batch? Its loss terms over ``--steps`` optimiser steps on the same batch.

A diagnosis of slow learning: a model that cannot even memorise one batch in a few hundred steps is held
back by its loss or its optimisation, not by the data's variety. The trainer is built as ``poi_train``
builds it (plans, configuration, fold ``all``), one batch is drawn from its training loader
(augmentation included), and ``train_step`` runs on that batch ``--steps`` times. Printed every
``--every`` steps: each loss term the trainer logs; at the end the mean seconds per step (forward,
backward and optimiser step; no data loading).

``--set NAME=VALUE`` overrides a class attribute of the trainer before it is built (e.g.
``heatmap_weight=16``), the way a ten-line variant would.

    python benchmarks/single_batch_fit.py 630 3d_coarse coarse_refine -p poiPlansW4 --steps 300 \\
        [--set coarse_weight=0 refine_weight=0] [--threads 1]

Needs ``nnUNet_preprocessed``. The trainer's output folder goes into a temporary ``nnUNet_results``, removed at
the end, so a model trained under the same name is never touched.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def overrides(pairs: Sequence[str]) -> Dict[str, float]:
    """``NAME=VALUE`` pairs as class attributes (numbers)."""
    out = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--set {pair}: expected NAME=VALUE")
        out[name] = float(value)
    return out


def fit(dataset: str, configuration: str, trainer: str, plans: str, steps: int, every: int,
        attributes: Dict[str, float]) -> List[Dict[str, float]]:
    """The logged terms every ``every`` steps (and after the last), with ``step`` and ``seconds_per_step``."""
    import torch

    from poi_nnunet.trainer_factory import build_trainer
    from trainers.registry import trainer_class

    cls = trainer_class(trainer)
    for name, value in attributes.items():
        if not hasattr(cls, name):
            raise SystemExit(f"--set {name}: {cls.__name__} has no attribute {name}")
        current = getattr(cls, name)
        setattr(cls, name, value if current is None else type(current)(value))
    torch.manual_seed(0)
    instance = build_trainer(dataset, configuration, trainer, "all", plans, device="cpu", epochs=1,
                             iterations_per_epoch=steps)
    instance.initialize()
    instance.on_train_start()
    batch = next(instance.dataloader_train)
    rows, start = [], time.perf_counter()
    for step in range(steps):
        terms = instance.train_step(batch)
        if step % every == 0 or step == steps - 1:
            elapsed = time.perf_counter() - start
            rows.append({"step": step, "seconds_per_step": elapsed / (step + 1),
                         **{k: float(v) for k, v in terms.items()}})
            print("  ".join(f"{k} {v:.4g}" for k, v in rows[-1].items()), flush=True)
    return rows


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset")
    parser.add_argument("configuration")
    parser.add_argument("trainer")
    parser.add_argument("-p", "--plans", default="poiPlans")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--every", type=int, default=25)
    parser.add_argument("--set", nargs="*", default=[], metavar="NAME=VALUE",
                        help="trainer class attributes to override")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args(argv)
    os.environ.setdefault("nnUNet_n_proc_DA", "0")  # the one batch is drawn in this process (no planning here)
    with tempfile.TemporaryDirectory(prefix="single_batch_fit_") as results:
        os.environ["nnUNet_results"] = results  # read by nnunetv2.paths when the trainer is imported, below
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        fit(args.dataset, args.configuration, args.trainer, args.plans, args.steps, args.every, overrides(args.set))
    return 0


if __name__ == "__main__":
    sys.exit(main())

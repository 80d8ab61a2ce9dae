"""How many training targets the cleaning rule masks after augmentation, with and without elastic deformation.

Seed 000 excluded POIs that elastic deformation pushed off their structure's surface. The loaders apply the
planner's rule to every augmented sample (:mod:`poi_nnunet.augmentation.surface_check`); this counts what it
masks. For each setting the trainer's own training loader (nnU-Net's augmentation with the points) draws
``--batches`` batches, once with ``p_elastic_deform`` 0 and once with 1 (every sample deformed), and the
masked points are counted against the points that were targets in view.

    python benchmarks/off_surface_targets.py --dataset 621 --configuration 3d_fullres --trainer coarse_refine \\
        --plans poiPlans_fov1 --batches 20

(needs ``nnUNet_preprocessed`` and ``nnUNet_results`` exported to a planned dataset's folders.)
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def count(dataset: str, configuration: str, trainer_name: str, plans: str, p_elastic: float, batches: int,
          seed: int) -> dict:
    """Masked points and points in view over ``batches`` training batches at ``p_elastic``."""
    import torch

    from poi_nnunet.trainer_factory import build_trainer

    trainer = build_trainer(dataset, configuration, trainer_name, "all", plans, device="cpu")
    trainer.p_elastic_deform = p_elastic
    np.random.seed(seed)
    torch.manual_seed(seed)
    trainer.initialize()  # the batch size and the loaders' settings
    loader, _ = trainer.get_dataloaders()
    masked = in_view = 0
    start = time.perf_counter()
    for _ in range(batches):
        batch = next(loader)
        masked += int(batch["off_surface"])
        in_view += int(batch["keypoints_inside"].sum())
    return {"p_elastic": p_elastic, "batches": batches, "masked": masked, "targets_in_view": in_view,
            "masked_percent": round(100.0 * masked / max(masked + in_view, 1), 3),
            "seconds": round(time.perf_counter() - start, 1)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--configuration", default="3d_fullres")
    parser.add_argument("--trainer", default="coarse_refine")
    parser.add_argument("--plans", default="poiPlans")
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    os.environ.setdefault("nnUNet_n_proc_DA", "0")
    for p in (0.0, 1.0):
        row = count(args.dataset, args.configuration, args.trainer, args.plans, p, args.batches, args.seed)
        print(row, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

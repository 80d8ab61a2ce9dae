"""``poi_plan_and_preprocess -d 501``: nnU-Net's plan-and-preprocess, with POIs.

Flags that nnU-Net's ``nnUNetv2_plan_and_preprocess`` has keep their meaning
there. The planner and preprocessor classes are built directly, never looked
up by name.
"""
from __future__ import annotations

import argparse
from typing import Optional, Sequence

from ..preprocessing.pipeline import DEFAULT_CONFIGURATIONS, plan_and_preprocess
from .common import reports_user_errors


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="poi_plan_and_preprocess",
        description="Validate a dataset in the unified raw format, extract nnU-Net's fingerprint plus the POI "
        "fingerprint, plan nnU-Net configurations with a 'poi' block each (plans file poiPlans.json) and "
        "preprocess images, labels and POIs into $nnUNet_preprocessed.",
    )
    parser.add_argument("-d", nargs="+", required=True, metavar="DATASET",
                        help="dataset id(s), names or folders in $nnUNet_raw, e.g. 501")
    parser.add_argument("-c", nargs="+", default=list(DEFAULT_CONFIGURATIONS), metavar="CONFIG",
                        help="configurations to preprocess (default: 2d 3d_fullres 3d_lowres; ones a dataset "
                        "does not have are skipped, as in nnU-Net)")
    parser.add_argument("-np", type=int, nargs="+", default=None, metavar="N",
                        help="processes for preprocessing: one number, or one per configuration "
                        "(nnU-Net's default: 8 for 2d, 4 for 3d_fullres, 8 for 3d_lowres)")
    parser.add_argument("-npfp", type=int, default=8, metavar="N",
                        help="processes for fingerprint extraction (nnU-Net's default: 8)")
    parser.add_argument("--verify_dataset_integrity", action="store_true",
                        help="also run nnU-Net's own integrity check (our validator always runs on a new or "
                        "changed dataset)")
    parser.add_argument("-gpu_memory_target", type=float, default=None, metavar="GB",
                        help="GPU memory budget in GB for nnU-Net's patch and batch size (default: 8)")
    parser.add_argument("--clean", action="store_true",
                        help="recompute the fingerprints even if the raw data did not change")
    parser.add_argument("--no_pp", action="store_true", help="only fingerprint and plan, do not preprocess")
    parser.add_argument("--no_pbar", action="store_true", help="hide progress bars")
    return parser


@reports_user_errors
def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    for dataset in args.d:
        plan_and_preprocess(dataset, configurations=args.c, num_processes=args.np,
                            num_processes_fingerprint=args.npfp, verify_dataset_integrity=args.verify_dataset_integrity,
                            gpu_memory_target=args.gpu_memory_target, clean=args.clean, preprocess=not args.no_pp,
                            progress=not args.no_pbar)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

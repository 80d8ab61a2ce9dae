"""``poi_augment -d D --registration N --output-id NEW``: registration-based augmentation (seed 000).

Argument parsing and the final report only; the work is :mod:`poi_nnunet.registration`.
"""
from __future__ import annotations

import argparse
import os
from typing import Optional, Sequence

from .common import reports_user_errors

DESCRIPTION = """\
Registration-based augmentation (seed 000): register training cases of dataset D to each other and write
a NEW raw dataset holding D's cases plus, for each case A, N samples <A>_reg_<B>: A's image channels,
labels and points carried into the shape of another case B.

How:
  pairs      B is drawn (--seed) from A's own fold of nnU-Net's default 5-fold split (seed 12345 on the
             sorted case ids), so a sample never trains where A or B validates. The new dataset's
             splits_final.json keeps D's folds and puts each sample in the train list of every split
             where its sources train, and in no val list; poi_plan_and_preprocess copies it into the
             preprocessed folder, where nnU-Net reads it.
  register   SimpleITK: affine (from matched centres of mass), then a cubic BSpline (control points every
             --grid-mm); compares label distance maps where D has label maps, else the first channel by
             mutual information (--similarity). Single-threaded and seeded: the same command gives the
             same dataset.
  carry      A's channels are resampled into B's grid (linear; 'noNorm' mask channels and labels nearest
             neighbour). A's points go through the inverse of the same transform (solved per point to
             0.001 mm), so image and points move exactly alike.
  clean      points outside B's grid, whose structure the resampling lost, or that the planner's rule
             finds far from their structure's surface (fences from D's original cases) are dropped from
             the sample and listed in augmentation.json.

Output: $nnUNet_raw/Dataset<NEW>_<Name>Reg (D's name; --name overrides), with augmentation.json (each
sample's moving/fixed case, fold, transform file, label Dice against B, dropped points) and
transforms/<sample>.tfm (ITK transforms, B-space point -> A-space point). Written in a hidden folder,
validated and renamed at the end: a failure leaves no dataset.

Then:  poi_plan_and_preprocess -d NEW  and  poi_train NEW CONFIG TRAINER -f FOLD
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="poi_augment", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-d", "--dataset", required=True, metavar="D",
                        help="source dataset: id (501), name or folder in $nnUNet_raw")
    parser.add_argument("--registration", type=int, required=True, metavar="N",
                        help="augmented samples per training case: A is registered onto N partners of its fold "
                        "(fewer where the fold is smaller)")
    parser.add_argument("--output-id", type=int, required=True, metavar="NEW",
                        help="id of the new dataset (must not be used by another dataset)")
    parser.add_argument("--name", default=None,
                        help="name of the new dataset (default: D's name + 'Reg', e.g. Dataset511_LegReg)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the pairing and the metric sampling (default 0)")
    parser.add_argument("--similarity", choices=("labels", "image"), default=None,
                        help="what registration compares: 'labels' (distance maps of the label maps, the default "
                        "where D has labelsTr) or 'image' (channel 0, mutual information; landmark-only default)")
    parser.add_argument("--grid-mm", type=float, default=None, metavar="MM",
                        help="BSpline control-point spacing in mm (default 50; 0: affine only)")
    parser.add_argument("-np", type=int, default=1, metavar="N",
                        help="pairs registered in parallel, one process each (default 1; the result does not "
                        "depend on it)")
    parser.add_argument("--threads", type=int, default=1, metavar="T",
                        help="ITK threads per pair (default 1: single-threaded; more is faster on large images, "
                        "but the result changes slightly with T, as ITK splits its sums by thread)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a dataset poi_augment made before under that name (only once the new one "
                        "is complete)")
    parser.add_argument("--no_pbar", action="store_true", help="hide progress bars")
    return parser


@reports_user_errors
def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    from dataclasses import replace

    from ..registration.dataset import AugmentOptions, augment_dataset
    from ..registration.register import RegistrationSettings

    settings = RegistrationSettings(seed=args.seed, threads=max(1, args.threads))
    if args.grid_mm is not None:
        settings = replace(settings, bspline_grid_mm=args.grid_mm)
    options = AugmentOptions(per_case=args.registration, output_id=args.output_id, seed=args.seed, name=args.name,
                             similarity=args.similarity, settings=settings,
                             num_processes=max(1, min(args.np, os.cpu_count() or 1)), overwrite=args.overwrite,
                             progress=not args.no_pbar)
    result = augment_dataset(args.dataset, options)
    print()
    print(f"wrote {result.path}: {result.num_samples} augmented sample(s), "
          f"{result.seconds_per_sample:.1f} s per pair (wall clock, -np {options.num_processes})")
    if result.num_dropped:
        reasons = ", ".join(f"{n} {r}" for r, n in sorted(result.dropped_by_reason.items()))
        print(f"points dropped from augmented samples: {result.num_dropped} ({reasons}); listed in augmentation.json")
    else:
        print("points dropped from augmented samples: none")
    return 0

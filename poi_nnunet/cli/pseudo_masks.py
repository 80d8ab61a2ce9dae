"""``poi_pseudo_masks -d D``: dense pseudo masks from a point-annotated dataset (seed 002's three-plane pipeline).

Argument parsing and the final report only; the stages are :mod:`poi_nnunet.pseudo_masks.pipeline`.
"""
from __future__ import annotations

import argparse
import math
import sys
from typing import Optional, Sequence

from ..pseudo_masks.fusion import FUSION_METHODS
from ..pseudo_masks.smoothing import DEFAULT_CLOSING_RADIUS_MM, DEFAULT_OPENING_RADIUS_MM
from .common import add_device_argument, reports_user_errors, resolve_device

DESCRIPTION = """\
Make dense pseudo masks for a point-annotated dataset D (sparse labelsTr with nnU-Net's "ignore" label, e.g.
from poi_convert clicks) and write them as a new raw dataset to train a fully supervised model on (seed 002).

Stages:
  1 plan     plans poiPlans_axial, poiPlans_coronal, poiPlans_sagittal (one slicing axis each: the array axis
             running S-I, A-P, L-R by the image direction; z, y, x for an identity direction) and preprocesses
             their 2d configuration. 2D images have one plane: poiPlans_image, one model, no fusion.
  2 train    one point_sup model per plane (poi_train D 2d point_sup -p poiPlans_<plane> -f FOLD)
  3 predict  every training case with every plane's model; softmax probabilities on the image's own grid
  4 fuse     fuses the planes (--fusion), smooths each label morphologically (radii in mm); with dense
             references in D/labelsTr_reference/, both fusions' Dice against them goes to dice.json
  5 write    Dataset<NEW>_<Name>PseudoMasks in $nnUNet_raw: D's images (hard links), the pseudo masks as
             labelsTr, D's labels without "ignore", poisTr copied; written whole or not at all, and validated

Resume: run the same command again. Every stage checks what it would produce and skips what exists (plans and
preprocessed data, final checkpoints, per-case probability and mask files, the new dataset), saying so; a model
with only checkpoint_latest.pth is continued. Files are written atomically, so a killed run loses at most the
file in progress. Delete a stage's outputs to redo it. Work files: $nnUNet_results/<D>/pseudo_masks/.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="poi_pseudo_masks", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-d", "--dataset", required=True, metavar="DATASET",
                        help="point-annotated dataset: id (701), name or folder in $nnUNet_raw")
    parser.add_argument("--output-id", type=int, default=None, metavar="NEW",
                        help="id of the new dataset (default: the one made from D before with the same settings, "
                        "else the first id after D's that no dataset uses); an existing other dataset is never "
                        "overwritten")
    parser.add_argument("--fusion", choices=FUSION_METHODS, default=None,
                        help="fuse the planes by probability mean or majority vote (default: mean, measured better; "
                        "see the README)")
    parser.add_argument("--closing-mm", type=float, default=DEFAULT_CLOSING_RADIUS_MM, metavar="MM",
                        help=f"closing radius of the smoothing (default {DEFAULT_CLOSING_RADIUS_MM} mm; 0: none)")
    parser.add_argument("--opening-mm", type=float, default=DEFAULT_OPENING_RADIUS_MM, metavar="MM",
                        help=f"opening radius of the smoothing (default {DEFAULT_OPENING_RADIUS_MM} mm; 0: none)")
    parser.add_argument("-f", "--fold", default="all", help="fold of the plane models (default all: every case)")
    add_device_argument(parser, "train and predict on")
    parser.add_argument("--epochs", type=int, default=None, help="override the plane models' number of epochs")
    parser.add_argument("--iterations_per_epoch", type=int, default=None,
                        help="override the plane models' training iterations per epoch")
    parser.add_argument("--disable_tta", action="store_true", help="predict without test-time mirroring")
    parser.add_argument("-np", type=int, default=8, metavar="N",
                        help="processes for preprocessing the 2d configurations (default 8, as nnU-Net)")
    parser.add_argument("-npfp", type=int, default=8, metavar="N",
                        help="processes for fingerprint extraction (default 8, as nnU-Net)")
    parser.add_argument("--no_pbar", action="store_true", help="hide progress bars")
    return parser


@reports_user_errors
def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    from ..pseudo_masks.pipeline import DEFAULT_FUSION, PseudoMaskOptions, run_pseudo_masks

    options = PseudoMaskOptions(fold=args.fold, device=resolve_device(args.device), epochs=args.epochs,
                                iterations_per_epoch=args.iterations_per_epoch, fusion=args.fusion or DEFAULT_FUSION,
                                closing_radius_mm=args.closing_mm, opening_radius_mm=args.opening_mm,
                                output_id=args.output_id, num_processes=args.np, num_processes_fingerprint=args.npfp,
                                use_mirroring=not args.disable_tta, progress=not args.no_pbar)
    result = run_pseudo_masks(args.dataset, options)
    print()
    print(f"stages run: {', '.join(result.ran) or 'none'}; skipped (already done): {', '.join(result.skipped) or 'none'}")
    print(f"plane models: {', '.join(f'{p.name} (array axis {p.array_axis})' for p in result.planes)}")
    print(f"work files: {result.work}")
    if result.dice is not None:
        print(f"Dice against {result.dice['reference']}/ ({result.dice['cases']} cases; inverse-frequency weighted):")
        for row, values in result.dice["rows"].items():
            print(f"  {row:<24} {_num(values['dice'])}  ({_num(values['weighted_dice'])})")
    print(f"pseudo-mask dataset: {result.dataset}")
    new = result.dataset.name.split("_")[0][len("Dataset"):].lstrip("0") or "0"
    config = "3d_fullres" if result.image_dim == 3 else "2d"
    print("next:")
    print(f"  poi_plan_and_preprocess -d {new} -c {config}")
    print(f"  poi_train {new} {config} nnunet")
    return 0


def _num(value: Optional[float]) -> str:
    return "  n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


if __name__ == "__main__":
    sys.exit(main())

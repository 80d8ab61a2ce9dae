"""``poi_evaluate``: score predicted points and/or masks against a reference folder."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import List, Optional, Sequence

from ..errors import PoiNnunetError
from ..evaluation import DEFAULT_ID_RADIUS_MM, DEFAULT_THRESHOLDS_MM, evaluate_folders, format_table
from .common import reports_user_errors

DESCRIPTION = """\
Compare predicted points of interest and/or masks with reference ones.

Folders (for -ref and -pred alike):
  poisTs, poisTr of a raw dataset    points <case>.json; masks from the sibling
                                     labelsTs/labelsTr; names from ../dataset.json
  labelsTs, labelsTr_reference       masks only; names from ../dataset.json,
  (poi_convert clicks' dense         whose "ignore" label is never scored
  references), labelsTr
  any other folder: what poi_predict <case>.json points and/or <case>.nii.gz
  writes, a folder of masks          masks; file ending and names from a
                                     dataset.json in the folder, if any
Cases match by file name, points by (structure, poi).

Points are scored when both sides have point files: TRE in mm (mean, median,
std, max) overall, per POI, per structure and per case; success rates (error <=
threshold, missing points count as failures); identification rate; counts of
missing and extra points and cases. Masks are compared wherever both sides have
one for a case: Dice and average surface distance per label, their means, and
the inverse-frequency-weighted Dice.

When one side has no point files (a masks-only reference, or the output of a
segmentation-only model such as -tr point_sup or -tr nnunet) only the masks are
evaluated: the table and summary.json say that points were not scored and why
("points": null), instead of counting every reference point as missing.
Reference cases without a predicted mask are listed and not scored.

Writes to OUT: summary.json, and when points are scored points.csv (one row per
reference or predicted point), error_per_poi.png and error_distribution.png.
"""


def _thresholds(text: str) -> List[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated millimetres like 2,2.5,3,4, got {text!r}")
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"thresholds must be positive millimetres, got {text!r}")
    return values


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="poi_evaluate", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-ref", "--ref", required=True, type=Path, metavar="DIR",
                        help="reference folder: poisTs, labelsTs or labelsTr_reference of a raw dataset, or a flat "
                             "folder of <case>.json points and/or <case>.nii.gz masks")
    parser.add_argument("-pred", "--pred", required=True, type=Path, metavar="DIR",
                        help="prediction folder (what poi_predict wrote: points and masks, or masks only)")
    parser.add_argument("-o", "--output", type=Path, default=None, metavar="OUT",
                        help="where to write the results (default: PRED/evaluation)")
    parser.add_argument("--thresholds", type=_thresholds, default=list(DEFAULT_THRESHOLDS_MM), metavar="MM,MM",
                        help="success-rate thresholds in mm, comma-separated (default: "
                        f"{','.join(f'{t:g}' for t in DEFAULT_THRESHOLDS_MM)}); success within 1 and 2 voxels of the "
                        "reference image is reported beside them")
    parser.add_argument("--id-radius", type=float, default=DEFAULT_ID_RADIUS_MM, metavar="MM",
                        help="a point is identified when its prediction is within this distance and closer to it "
                             "than to any other reference point of the case (default: %(default)s mm)")
    parser.add_argument("-q", "--quiet", action="store_true", help="do not print the table")
    return parser


@reports_user_errors
def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.id_radius <= 0:
        raise PoiNnunetError(f"--id-radius must be positive, got {args.id_radius}")
    out = args.output if args.output is not None else args.pred / "evaluation"
    summary = evaluate_folders(args.ref, args.pred, out, thresholds_mm=args.thresholds, id_radius_mm=args.id_radius)
    if not args.quiet:
        print(format_table(summary))
        print(f"results written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

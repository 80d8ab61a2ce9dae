"""``poi_convert``: write a dataset in the unified raw format from another tool's files, or validate one.

Each converter is a module in :mod:`dataset_conversion` exposing ``HELP``,
``add_arguments(parser)`` and ``run(args) -> Path``; this file only wires them up.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Optional, Sequence

from ..raw_dataset import resolve_raw_dataset
from ..raw_format_checks import validate_raw_dataset
from .common import reports_user_errors

# subcommand -> module in dataset_conversion
CONVERTERS = {
    "slicer": "dataset_conversion.slicer_markups",
    "labelme": "dataset_conversion.labelme",
    "csv": "dataset_conversion.csv_table",
    "tptbox": "dataset_conversion.tptbox_poi",
    "verse": "dataset_conversion.verse_centroids",
    "synthetic-spine": "dataset_conversion.synthetic_spine",
    "synthetic-xray": "dataset_conversion.synthetic_xray",
    "synthetic-polygons": "dataset_conversion.synthetic_polygons",
    "synthetic-wrist": "dataset_conversion.synthetic_wrist",
    "synthetic-leg": "dataset_conversion.synthetic_leg",
    "clicks": "dataset_conversion.clicks",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="poi_convert",
        description="Convert landmark data into the unified raw format (nnU-Net raw format plus poisTr/), "
        "or validate a dataset. Every converter validates what it wrote before the dataset appears.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    val = sub.add_parser("validate", help="check a dataset against the unified raw format and nnU-Net's rules",
                         description="Check every rule of the unified raw format and nnU-Net's own; report all "
                         "problems at once, each naming the file and point. Exit code 1 if any.")
    val.add_argument("dataset", help="dataset id (501), name (Dataset501_Spine) or folder path")
    for name, module_name in CONVERTERS.items():
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=module.HELP, description=module.__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(p)
        p.set_defaults(converter=module)
    return parser


@reports_user_errors
def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "validate":
        path = resolve_raw_dataset(args.dataset)  # an unknown id is one line (exit 2), said once
        problems = validate_raw_dataset(path)
        if problems:
            print(f"{path}: {len(problems)} problem(s)", file=sys.stderr)
            for p in problems:
                print(f"  - {p}", file=sys.stderr)
            return 1
        print(f"{path}: valid")
        return 0
    path = args.converter.run(args)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

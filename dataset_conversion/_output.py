"""Where every converter writes: the ``-d/-n/-o/--overwrite`` options and the folder they name.

The converters own these options; ``poi_convert`` (:mod:`poi_nnunet.cli.convert`)
only hands each converter its subparser, so nothing here imports the CLI.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from poi_nnunet.errors import PoiNnunetError
from poi_nnunet.raw_dataset import dataset_folder_name


def add_output_arguments(parser: argparse.ArgumentParser) -> None:
    """Where a converter writes: ``<raw root>/DatasetNNN_<name>``."""
    parser.add_argument("-d", "--dataset-id", type=int, required=True, help="nnU-Net dataset id (1-999), e.g. 501")
    parser.add_argument("-n", "--name", required=True, help="dataset name, e.g. Spine (gives Dataset501_Spine)")
    parser.add_argument("-o", "--output-root", default=None,
                        help="raw data root to write into (default: $nnUNet_raw)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing dataset of that name (only once the new one is complete)")


def output_folder(args: argparse.Namespace) -> Path:
    """The dataset folder that ``-d/-n/-o`` name (``-o`` defaults to ``$nnUNet_raw``)."""
    root = args.output_root or os.environ.get("nnUNet_raw")
    if not root:
        raise PoiNnunetError("no output folder: pass -o/--output-root or set nnUNet_raw")
    return Path(root) / dataset_folder_name(args.dataset_id, args.name)

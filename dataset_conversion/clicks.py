"""Write a point-annotated (sparse) segmentation dataset: a few labelled voxels per structure.

Every voxel that no click labels holds nnU-Net's ignore label: the highest
label value, named "ignore" in dataset.json (background clicks label 0,
structure clicks their class). nnU-Net trains on such a dataset as it is.
Two sources:

(a) Clicked points: --points FOLDER holds one <case>.json per case in the
    unified point format (docs/format.md: "coordinate_system": "LPS", world mm);
    a point's "structure" is the class clicked (0 = background), its "poi" only
    numbers the clicks. --images is a folder of <case>_0000.nii.gz (+ _0001 ...,
    nnU-Net naming) or <case>.nii.gz/.nrrd/.mha, or a raw dataset (id, name or
    folder), whose imagesTr (and poisTr, imagesTs/labelsTs/poisTs) are used.
    Class names: --labels liver=1 spleen=2 (simplest after exporting 3D Slicer
    markups: no file to write), or --labels-from a dataset.json (or dataset);
    without either, the --images dataset's labels. Values missing below the
    highest are declared as "label_<v>" (nnU-Net wants them consecutive). A
    point whose structure is not a class, that lies outside its image, or that
    shares its voxel with a click of another class is an error naming the file
    and the point.

(b) Simulated: --from-dataset 501 (id, name or folder) of densely labelled
    cases. Per case, --clicks-per-structure N clicks on every structure label
    present, drawn uniformly among its interior voxels: those at least
    --interior-fraction (0.5) x the structure's deepest distance from its
    border (mm, Euclidean with the voxel spacing; the image edge counts as
    border), so thin structures fall back to their deepest voxels (fewer than N
    clicks only when a structure has fewer such voxels). Then
    --background-clicks M background clicks at least --background-margin-mm
    from every structure (or, where no background is that far, in the
    deepest background). --seed decides everything; a case's clicks depend
    only on the seed and its name. Simulated clicks never mislabel: a click's
    ball is clipped to its own class in the dense labels.

--click-radius-mm R (both sources): a click labels the voxel that holds it and
every voxel whose centre is within R mm (0, the default: the one voxel);
where balls overlap, the nearer click wins.

The new dataset holds imagesTr (copied byte for byte), the sparse labelsTr,
poisTr (copied: the images are the same, so the POIs stay valid), the source's
imagesTs/labelsTs/poisTs if any, and two folders nnU-Net ignores:

  labelsTr_reference/<case>.nii.gz   the source's dense label of every training
                                     case (simulation only), for evaluation;
                                     never for training
  clicksTr/<case>.json               the clicks, in the unified point format
                                     (structure = class, poi = click number);
                                     usable as --points to rebuild the labels
                                     (exactly so for radius 0)

dataset.json gets the labels plus "ignore", and "click_annotation": the
options used and the labelling cost, "annotated_fraction" = labelled voxels
/ all voxels over the training cases (also printed).
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

from ._output import add_output_arguments
from .clicks_from_points import from_points
from .clicks_simulated import REFERENCE_FOLDER, SIMULATION_DEFAULTS, simulate
from .clicks_writing import CLICKS_FOLDER, option_error

__all__ = ["HELP", "CLICKS_FOLDER", "REFERENCE_FOLDER", "add_arguments", "run"]

HELP = "point-annotated (sparse) segmentation: clicked points, or clicks simulated from a dense dataset"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `poi_convert clicks`: one source (--from-dataset or --points), its options, the output."""
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--from-dataset", metavar="DATASET",
                        help="simulate clicks on this densely labelled dataset (id, name or folder)")
    source.add_argument("--points", type=Path, metavar="FOLDER", help="folder of <case>.json clicked points")
    clicked = parser.add_argument_group("clicked points (--points)")
    clicked.add_argument("--images", metavar="FOLDER_OR_DATASET",
                         help="folder of <case>_0000.nii.gz or <case>.nii.gz images, or a raw dataset")
    clicked.add_argument("--labels", nargs="+", metavar="NAME=VALUE",
                         help="class names and values, e.g. --labels liver=1 spleen=2 (background is 0)")
    clicked.add_argument("--labels-from", metavar="DATASET_JSON",
                         help="take the classes from this dataset.json (or dataset) instead")
    clicked.add_argument("--channel-names", nargs="+", metavar="NAME",
                         help="dataset.json channel names for an image folder, one per channel; nnU-Net "
                              "normalises 'CT' by CT statistics (default: image)")
    sim = parser.add_argument_group("simulation (--from-dataset)")
    sim.add_argument("--clicks-per-structure", type=int, metavar="N", help="clicks per structure present (default 5)")
    sim.add_argument("--background-clicks", type=int, metavar="M", help="background clicks per case (default 10)")
    sim.add_argument("--seed", type=int, help="random seed; the same seed gives the same clicks (default 0)")
    sim.add_argument("--interior-fraction", type=float, metavar="F",
                     help="click where the border distance is >= F x the structure's deepest (default 0.5)")
    sim.add_argument("--background-margin-mm", type=float, metavar="MM",
                     help="background clicks at least this far from any structure (default 5)")
    parser.add_argument("--click-radius-mm", type=float, default=0.0, metavar="R",
                        help="each click labels the voxels within R mm (default 0: the voxel clicked)")
    add_output_arguments(parser)


def run(args: argparse.Namespace) -> Path:
    """Check that the options fit the source, write the dataset, print the labelling cost; return the folder."""
    radius = float(args.click_radius_mm)
    if not (math.isfinite(radius) and radius >= 0):
        raise option_error("--click-radius-mm", f"must be a finite number >= 0, got {radius}")
    if args.from_dataset is not None:
        given = [f"--{k}" for k in ("images", "labels", "labels_from", "channel_names") if getattr(args, k)]
        if given:
            raise option_error(given[0].replace("_", "-"), "is for --points, not --from-dataset")
        target, cost = simulate(args, radius)
    else:
        given = [f"--{k}" for k in SIMULATION_DEFAULTS if getattr(args, k) is not None]
        if given:
            raise option_error(given[0].replace("_", "-"), "is for --from-dataset, not --points")
        target, cost = from_points(args, radius)
    print(f"labelled {cost['annotated_voxels']} of {cost['total_voxels']} voxels "
          f"({100 * cost['annotated_fraction']:.4g}%); every other voxel is 'ignore'")
    return target


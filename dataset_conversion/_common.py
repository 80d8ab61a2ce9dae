"""What the point-file converters share: options, case names, POI ids, pixel mapping, the write loop.

Every converter reads the users' files in two passes: point files first (cheap,
so POI ids can be assigned across all of them), then one case at a time with its
image. Problems are collected across all cases and raised together, each naming
the user's own file, never a file in the staging folder.
"""
from __future__ import annotations

import argparse
import re
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from poi_nnunet.errors import InvalidInputError, PathLike, PoiNnunetError, Problem
from poi_nnunet.geometry import ImageGeometry
from poi_nnunet.raw_dataset_writer import CaseData, DatasetWriter

from ._output import add_output_arguments, output_folder

# Pixel coordinate conventions -> offset to subtract to get ITK's continuous index,
# in which the first pixel's centre is 0.
PIXEL_CONVENTIONS = {
    "center": 0.0,     # 0-based pixel centres: numpy/ITK/OpenCV indices
    "corner": 0.5,     # the first pixel spans [0, 1]: LabelMe, Qt, most sub-pixel mouse positions
    "one-based": 1.0,  # 1-based pixel centres: MATLAB, ImageJ's 1-based tables
}


def add_common_arguments(parser: argparse.ArgumentParser, spacing: bool = True) -> None:
    add_output_arguments(parser)
    parser.add_argument("--channel-name", default="image",
                        help="dataset.json channel name; nnU-Net normalises 'CT' by CT statistics and anything "
                             "else per image (z-score) (default: image)")
    if spacing:
        parser.add_argument("--spacing", type=float, nargs="+", metavar="MM",
                            help="pixel spacing in mm for bitmaps (PNG, JPEG, ...), which carry none: one value, "
                                 "or column and row spacing; ignored for NIfTI/NRRD/MHA, which carry their own")


def fail(source: PathLike, message: str, point: Optional[str] = None) -> InvalidInputError:
    return InvalidInputError([Problem(str(source), message, point)], headline=f"cannot convert {source}")


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def case_ids(stems: Mapping[str, str]) -> Dict[str, str]:
    """source -> case id: the file stem with characters unsafe in file names replaced by '_'.

    Two files that end up with the same id are an error naming both.
    """
    out: Dict[str, str] = {}
    seen: Dict[str, str] = {}
    problems = []
    for source, stem in stems.items():
        case = _UNSAFE.sub("_", stem).strip("._") or "case"
        if case in seen:
            problems.append(Problem(source, f"gives case id {case!r}, as {seen[case]} does; rename one of them"))
        seen[case] = source
        out[source] = case
    if problems:
        raise InvalidInputError(problems, headline="conflicting case names")
    return out


def natural_key(text: str) -> List[object]:
    """Sort key that puts 'L2' before 'L10'."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", text) if part]


def poi_ids_from_labels(labels: Iterable[str]) -> Dict[str, int]:
    """Distinct labels in natural order, numbered 1..N: the POI ids of a dataset."""
    return {label: i + 1 for i, label in enumerate(sorted(set(labels), key=natural_key))}


def pixel_to_world(geo: ImageGeometry, pixel: Sequence[float], offset: float, source: PathLike,
                   point: str) -> Tuple[float, ...]:
    """Pixel coordinates (x = column, y = row[, z = slice]) to world mm; outside the image is an error."""
    index = np.asarray(pixel, dtype=np.float64) - offset
    return index_to_world(geo, index, source, point, shown=f"pixel position {list(pixel)}")


def index_to_world(geo: ImageGeometry, index: np.ndarray, source: PathLike, point: str,
                   shown: str) -> Tuple[float, ...]:
    if len(index) != geo.dim:
        raise fail(source, f"{len(index)} coordinates for a {geo.dim}D image", point)
    if not np.all(np.isfinite(index)):
        raise fail(source, f"non-finite coordinate in {shown}", point)
    if not geo.contains_index(index):
        raise fail(source, f"{shown} lies outside the image (size {list(geo.size)}, continuous index "
                           f"{np.round(index, 3).tolist()})", point)
    return tuple(float(c) for c in geo.index_to_world(index))


def world_inside(geo: ImageGeometry, world: Sequence[float], source: PathLike, point: str) -> Tuple[float, ...]:
    """A world position checked against the image; outside is an error naming the point."""
    if not geo.contains_world(world):
        index = np.round(geo.world_to_index(world), 3).tolist()
        raise fail(source, f"position {list(world)} mm lies outside the image (size {list(geo.size)}, "
                           f"continuous index {index})", point)
    return tuple(float(c) for c in world)


def add_cases(writer: DatasetWriter, loaders: Iterable[Tuple[str, Callable[[], CaseData]]]) -> None:
    """Load and write every case; collect every problem and raise them together."""
    problems: List[Problem] = []
    for source, load in loaders:
        try:
            writer.add_case(load())
        except InvalidInputError as exc:
            problems += exc.problems
        except PoiNnunetError as exc:
            problems.append(Problem(source, str(exc)))
    if problems:
        raise InvalidInputError(problems, headline=f"cannot convert into {writer.target}")


def write_dataset(args: argparse.Namespace, loaders: Iterable[Tuple[str, Callable[[], CaseData]]],
                  poi_names: Mapping[int, str], poi_source: str,
                  labels: Optional[Callable[[], Dict[str, int]]] = None) -> DatasetWriter:
    """Write the cases into ``-o/-d/-n``; ``labels`` is asked after all cases (masks decide it)."""
    writer = DatasetWriter(output_folder(args), {"0": args.channel_name}, {"background": 0},
                           pois=dict(poi_names), extra={"poi_source": poi_source}, overwrite=args.overwrite)
    with writer:
        add_cases(writer, loaders)
        if labels is not None:
            writer.labels = labels()
    return writer


def raise_if(problems: List[Problem], headline: str) -> None:
    if problems:
        raise InvalidInputError(problems, headline=headline)

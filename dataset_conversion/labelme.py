"""Convert LabelMe annotations (2D point shapes) into a landmark-only dataset.

Every ``*.json`` file in INPUT is one case, named after the file. Its image is
the embedded ``imageData`` when present (exactly what the annotator saw),
otherwise the file ``imagePath`` names, relative to the json. Shapes of type
"point" become POIs; other shapes (polygons, boxes) are not converted.

POI ids are the distinct point labels over all files in natural order
(L2 before L10), numbered 1..N, with the labels as names. A label used twice
in one file is an error. Without masks the dataset is landmark-only: no
labelsTr, "labels": {"background": 0} and structure 0 for every point.

Pixel convention: LabelMe draws pixel (column i, row j) over [i, i+1) x [j, j+1)
and stores the mouse position in that frame, so the centre of the first pixel
is (0.5, 0.5). Position (x, y) therefore maps to ITK's continuous index
(x - 0.5, y - 0.5), in which pixel centres sit on integers.

Images become 2D .nii.gz files with origin 0 and the spacing from --spacing
(required: PNG and JPEG carry none); colour becomes one grey channel, its
luminance (see dataset_conversion/_images.py).
"""
from __future__ import annotations

import argparse
import base64
import binascii
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import SimpleITK as sitk

from poi_nnunet.errors import InvalidInputError, Problem
from poi_nnunet.geometry import ImageGeometry
from poi_nnunet.pois import Poi, PoiSet
from poi_nnunet.raw_dataset_writer import CaseData

from ._common import (PIXEL_CONVENTIONS, add_common_arguments, case_ids, fail, pixel_to_world,
                      poi_ids_from_labels, raise_if, write_dataset)
from ._images import Spacing, parse_spacing, read_bitmap, read_image

HELP = "LabelMe json files with point shapes (2D, landmark-only)"


@dataclass
class LabelMeFile:
    """The parts of one LabelMe file a conversion needs."""

    path: Path
    points: Dict[str, Tuple[float, float]]
    image_data: Optional[str]
    image_path: Optional[str]
    size: Optional[Tuple[int, int]]  # (width, height) as LabelMe recorded it
    other_shapes: int


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", type=Path, help="folder of LabelMe .json files")
    add_common_arguments(parser)


def run(args: argparse.Namespace) -> Path:
    spacing = parse_spacing(args.spacing)
    files = sorted(Path(args.input).glob("*.json"))
    if not files:
        raise fail(args.input, "no LabelMe .json files found")
    parsed, problems = [], []
    for path in files:
        try:
            parsed.append(parse_labelme(path))
        except InvalidInputError as exc:
            problems += exc.problems
    raise_if(problems, f"cannot convert LabelMe files in {args.input}")
    ids = poi_ids_from_labels(label for f in parsed for label in f.points)
    if not ids:
        raise fail(args.input, "no point shapes in any LabelMe file")
    skipped = sum(f.other_shapes for f in parsed)
    if skipped:
        print(f"note: {skipped} non-point shape(s) were not converted", file=sys.stderr)
    names = case_ids({str(f.path): f.path.stem for f in parsed})
    loaders = [(str(f.path), lambda f=f: _case(f, names[str(f.path)], ids, spacing)) for f in parsed]
    writer = write_dataset(args, loaders, {i: label for label, i in ids.items()},
                           poi_source=f"LabelMe point shapes from {args.input}")
    return writer.target


def parse_labelme(path: Path) -> LabelMeFile:
    """Read one LabelMe file; every problem names the file (and the shape)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise fail(path, f"not a readable JSON file ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("shapes"), list):
        raise fail(path, "not a LabelMe file: expected an object with a 'shapes' list")
    points: Dict[str, Tuple[float, float]] = {}
    problems: List[Problem] = []
    other = 0
    for i, shape in enumerate(data["shapes"]):
        if not isinstance(shape, dict) or shape.get("shape_type") != "point":
            other += 1
            continue
        label = str(shape.get("label", ""))
        where = f"shape #{i} ({label!r})"
        xy = _one_point(shape.get("points"))
        if not label:
            problems.append(Problem(str(path), "point shape without a label", where))
        elif xy is None:
            problems.append(Problem(str(path), f"'points' must be one [x, y] pair of finite numbers, "
                                               f"got {shape.get('points')!r}", where))
        elif label in points:
            problems.append(Problem(str(path), "label used by more than one point in this file", where))
        else:
            points[label] = xy
    raise_if(problems, f"cannot convert LabelMe file {path}")
    width, height = data.get("imageWidth"), data.get("imageHeight")
    size = (width, height) if isinstance(width, int) and isinstance(height, int) else None
    return LabelMeFile(path, points, data.get("imageData") or None, data.get("imagePath") or None, size, other)


def _one_point(value: Any) -> Optional[Tuple[float, float]]:
    if not (isinstance(value, list) and len(value) == 1 and isinstance(value[0], list) and len(value[0]) == 2):
        return None
    x, y = value[0]
    numbers = all(isinstance(c, (int, float)) and not isinstance(c, bool) and math.isfinite(c) for c in (x, y))
    return (float(x), float(y)) if numbers else None


def _case(f: LabelMeFile, case_id: str, ids: Dict[str, int], spacing: Spacing) -> CaseData:
    image = _image(f, spacing)
    if image.GetDimension() != 2:
        raise fail(f.path, f"image is {image.GetDimension()}D; LabelMe annotates 2D images")
    if f.size is not None and tuple(image.GetSize()) != f.size:
        raise fail(f.path, f"image is {image.GetSize()[0]}x{image.GetSize()[1]} pixels, but the file says "
                           f"imageWidth x imageHeight = {f.size[0]}x{f.size[1]}")
    geo = ImageGeometry.from_image(image)
    offset = PIXEL_CONVENTIONS["corner"]
    pois = [Poi(0, ids[label], pixel_to_world(geo, xy, offset, f.path, f"point {label!r}"))
            for label, xy in f.points.items()]
    return CaseData(case_id, [image], None, PoiSet(sorted(pois, key=lambda p: p.poi)))


def _image(f: LabelMeFile, spacing: Spacing) -> sitk.Image:
    if f.image_data is not None:
        try:
            data = base64.b64decode(f.image_data, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise fail(f.path, f"'imageData' is not valid base64 ({exc})") from None
        return read_bitmap(data, f"{f.path} (embedded imageData)", spacing)
    if f.image_path is None:
        raise fail(f.path, "neither 'imageData' nor 'imagePath' names the image")
    image_path = f.path.parent / f.image_path.replace("\\", "/")
    if not image_path.is_file():
        raise fail(f.path, f"image {image_path} (from 'imagePath') not found")
    return read_image(image_path, spacing)

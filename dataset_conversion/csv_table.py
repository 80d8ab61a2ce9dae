"""Convert a landmark table (one row per image) into a landmark-only dataset.

The table has a column naming each row's image file (--image-column; by
default "image", or the only column that is not a coordinate) and, per
landmark i, columns x_i, y_i (2D) or x_i, y_i, z_i (3D), where i is a
landmark number or name. Image paths are relative to --images (default: the
table's folder); each image is one case, named after its file.

An empty cell, NaN or NA for every coordinate of a landmark means the point
is absent in that image; it is left out of the POI file, never written as
NaN. A landmark with only some coordinates filled is an error.

POI ids: when every i is a positive integer, i itself; otherwise 1..N in
column order. Names are the i as written.

Coordinates are pixels by default (x = column, y = row, z = slice), with
--pixel-convention saying where a pixel's centre lies: "center" (default;
0-based pixel centres, as numpy, OpenCV and ITK index pixels), "corner"
(the first pixel spans [0, 1], as LabelMe and most mouse positions) or
"one-based" (MATLAB). With --units mm they are world millimetres in the
space SimpleITK reports for the image (for a bitmap: origin 0 at the centre
of the first pixel, so mm = 0-based index x spacing).

Bitmaps need --spacing and become 2D .nii.gz files; colour becomes one grey
channel, its luminance (see dataset_conversion/_images.py). The dataset is
landmark-only: no labelsTr, "labels": {"background": 0}, structure 0.
"""
from __future__ import annotations

import argparse
import csv
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from poi_nnunet.errors import Problem
from poi_nnunet.geometry import ImageGeometry
from poi_nnunet.pois import Poi, PoiSet
from poi_nnunet.raw_dataset_writer import CaseData

from ._common import (PIXEL_CONVENTIONS, add_common_arguments, case_ids, fail, pixel_to_world, raise_if,
                      world_inside, write_dataset)
from ._images import Spacing, parse_spacing, read_image, strip_image_suffix

HELP = "a CSV table of landmark coordinates, one row per image (2D or 3D, landmark-only)"

_COORD = re.compile(r"^([xyzXYZ])_(.+)$")
_ABSENT = {"", "nan", "na", "n/a", "none", "null"}


@dataclass
class Row:
    """One table row: where it came from, its image, and each landmark's cells (None = absent)."""

    where: str
    image: Path
    points: Dict[str, Tuple[float, ...]]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("table", type=Path, help="CSV file (comma, semicolon or tab separated)")
    parser.add_argument("--images", type=Path, default=None, help="folder the image column is relative to "
                        "(default: the table's folder)")
    parser.add_argument("--image-column", default=None, help="column naming the image file (default: 'image', "
                        "or the only column that is not x_i/y_i/z_i)")
    parser.add_argument("--units", choices=("pixels", "mm"), default="pixels",
                        help="coordinate units (default: pixels)")
    parser.add_argument("--pixel-convention", choices=tuple(PIXEL_CONVENTIONS), default="center",
                        help="where pixel coordinates put a pixel's centre (default: center, 0-based)")
    add_common_arguments(parser)


def run(args: argparse.Namespace) -> Path:
    spacing = parse_spacing(args.spacing)
    table = Path(args.table)
    header, body = _read_table(table)
    image_col, landmarks = _columns(table, header, args.image_column)
    ids = _poi_ids(list(landmarks))
    folder = Path(args.images) if args.images else table.parent
    rows = _rows(table, header, body, image_col, landmarks, folder)
    names = case_ids({r.where: strip_image_suffix(r.image) or r.image.stem for r in rows})
    offset = PIXEL_CONVENTIONS[args.pixel_convention] if args.units == "pixels" else None
    loaders = [(r.where, lambda r=r: _case(r, names[r.where], ids, spacing, offset)) for r in rows]
    writer = write_dataset(args, loaders, {i: name for name, i in ids.items()},
                           poi_source=f"landmark table {table}")
    return writer.target


def _read_table(path: Path) -> Tuple[List[str], List[List[str]]]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise fail(path, "table not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise fail(path, f"cannot read the table ({exc})") from None
    lines = text.splitlines()
    if not lines:
        raise fail(path, "the table is empty")
    try:
        dialect = csv.Sniffer().sniff(lines[0], delimiters=",;\t")
    except csv.Error:
        dialect = csv.excel
    rows = list(csv.reader(lines, dialect))
    header = [h.strip() for h in rows[0]]
    return header, [r for r in rows[1:] if any(c.strip() for c in r)]


def _columns(path: Path, header: List[str], image_column: Optional[str]) -> Tuple[int, Dict[str, Dict[str, int]]]:
    """(image column index, landmark -> {axis: column index}) in column order."""
    landmarks: Dict[str, Dict[str, int]] = {}
    others = []
    for i, name in enumerate(header):
        match = _COORD.match(name)
        if match:
            landmarks.setdefault(match.group(2), {})[match.group(1).lower()] = i
        else:
            others.append(name)
    wanted = image_column or ("image" if "image" in header else (others[0] if len(others) == 1 else None))
    if wanted is None or wanted not in header:
        raise fail(path, f"no image column {wanted or ''!r}: pass --image-column (columns: {header})")
    problems = [Problem(str(path), f"landmark {name!r} has columns {sorted(axes)}; expected x, y or x, y, z")
                for name, axes in landmarks.items() if sorted(axes) not in (["x", "y"], ["x", "y", "z"])]
    raise_if(problems, f"cannot convert table {path}")
    if not landmarks:
        raise fail(path, f"no coordinate columns x_i, y_i[, z_i] (columns: {header})")
    return header.index(wanted), landmarks


def _poi_ids(names: List[str]) -> Dict[str, int]:
    numbers = [int(n) if n.isdigit() else 0 for n in names]
    if all(v > 0 for v in numbers) and len(set(numbers)) == len(numbers):
        return dict(zip(names, numbers))
    return {name: i + 1 for i, name in enumerate(names)}


def _rows(path: Path, header: List[str], body: List[List[str]], image_col: int,
          landmarks: Dict[str, Dict[str, int]], folder: Path) -> List[Row]:
    rows, problems = [], []
    for n, cells in enumerate(body, start=2):  # row 1 is the header
        where = f"{path} row {n}"
        cells = cells + [""] * (len(header) - len(cells))
        image = cells[image_col].strip()
        if not image:
            problems.append(Problem(str(path), "empty image cell", f"row {n}"))
            continue
        points: Dict[str, Tuple[float, ...]] = {}
        for name, axes in landmarks.items():
            raw = [cells[axes[a]].strip() for a in ("x", "y", "z") if a in axes]
            if all(v.lower() in _ABSENT for v in raw):
                continue
            values = [_number(v) for v in raw]
            if any(v is None for v in values):
                problems.append(Problem(str(path), f"landmark {name!r}: coordinates {raw} must all be finite "
                                                   "numbers, or all empty/NaN for an absent point", f"row {n}"))
                continue
            points[name] = tuple(values)
        rows.append(Row(where, folder / image, points))
    raise_if(problems, f"cannot convert table {path}")
    if not rows:
        raise fail(path, "the table has no rows")
    return rows


def _number(text: str) -> Optional[float]:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _case(row: Row, case_id: str, ids: Dict[str, int], spacing: Spacing, offset: Optional[float]) -> CaseData:
    if not row.image.is_file():
        raise fail(row.where, f"image {row.image} not found")
    image = read_image(row.image, spacing)
    geo = ImageGeometry.from_image(image)
    pois = []
    for name, coords in row.points.items():
        point = f"landmark {name!r}"
        if len(coords) != geo.dim:
            raise fail(row.where, f"{len(coords)} coordinates for the {geo.dim}D image {row.image}", point)
        if offset is None:
            position = world_inside(geo, coords, row.where, point)
        else:
            position = pixel_to_world(geo, coords, offset, row.where, point)
        pois.append(Poi(0, ids[name], position))
    return CaseData(case_id, [image], None, PoiSet(sorted(pois, key=lambda p: p.poi)))

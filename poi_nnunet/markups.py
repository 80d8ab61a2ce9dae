"""3D Slicer markups files: ``.mrk.json`` (markups schema v1) and ``.fcsv``, read and written.

Slicer is where people look at and correct points, so ``poi_predict`` writes
its points here and the Slicer converter reads them back. Two rules keep that
loop lossless:

* **Coordinates.** Files are written in LPS millimetres, the space of the
  unified raw format, so a position is copied, never transformed. On read,
  ``RAS`` files (and old ``.fcsv`` files with ``CoordinateSystem = 0`` or no
  such line) have x and y negated; ``um`` units are scaled to mm.
* **Identity.** A control point's ``label`` is the POI name (what a person
  reads in Slicer); its ``description`` carries ``structure S, poi P`` and,
  for predictions, ``, confidence C``. Slicer keeps the description through
  editing and saving, so a corrected file still says which point is which.
  :func:`decode_description` recovers the numbers; points without the
  encoding (annotations made in Slicer from scratch) return only their label.

Points whose ``positionStatus`` is not ``defined`` (placeholders Slicer shows
as "unplaced") are absent points and are not returned. A 2D point set is
written with z = 0, the plane in which Slicer shows a 2D image.
"""
from __future__ import annotations

import csv
import io
import json
import math
import re
from pathlib import Path
from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple

from .atomic import atomic_write_text
from .errors import InvalidInputError, PathLike, PoiNnunetError, Problem
from .pois import Poi, PoiSet

MARKUPS_SCHEMA = (
    "https://raw.githubusercontent.com/slicer/slicer/master/Modules/Loadable/Markups/"
    "Resources/Schema/markups-schema-v1.0.3.json#"
)
FCSV_COLUMNS = ("id", "x", "y", "z", "ow", "ox", "oy", "oz", "vis", "sel", "lock", "label", "desc", "associatedNodeID")
_UNITS_TO_MM = {"mm": 1.0, "um": 1e-3}
_FCSV_SYSTEMS = {"LPS": "LPS", "RAS": "RAS", "1": "LPS", "0": "RAS"}  # old Slicer: RAS = 0, LPS = 1
_ENCODING = re.compile(
    r"^\s*structure\s+(\d+)\s*,\s*poi\s+(\d+)\s*(?:,\s*confidence\s+([-+0-9.eE]+|nan|inf))?\s*$", re.IGNORECASE
)


class MarkupPoint(NamedTuple):
    """One placed control point: its label, its LPS position in mm, and what else the file says.

    ``extra`` holds ``description`` and ``id`` as written, plus ``structure``,
    ``poi`` and (where present) ``confidence`` when the description carries
    this project's encoding.
    """

    label: str
    position: Tuple[float, float, float]
    extra: Dict[str, Any]


# ---------------------------------------------------------------------------- identity encoding
def encode_description(poi: Poi) -> str:
    """``structure S, poi P[, confidence C]``: readable in Slicer's table, parsed back exactly."""
    text = f"structure {int(poi.structure)}, poi {int(poi.poi)}"
    if poi.confidence is not None:
        text += f", confidence {float(poi.confidence)!r}"
    return text


def decode_description(text: str) -> Optional[Dict[str, Any]]:
    """The ``structure``/``poi``/``confidence`` a description encodes, or None if it is free text."""
    match = _ENCODING.match(text or "")
    if not match:
        return None
    out: Dict[str, Any] = {"structure": int(match.group(1)), "poi": int(match.group(2))}
    if match.group(3) is not None:
        out["confidence"] = float(match.group(3))
    return out


def _control_points(pois: PoiSet, names: Optional[Mapping[int, str]], path: PathLike) -> List[Tuple[str, str, List[float]]]:
    """(label, description, LPS xyz) per point; refuses what Slicer could not show."""
    rows = []
    for p in pois:
        position = [float(c) for c in p.position]
        if len(position) not in (2, 3) or not all(math.isfinite(c) for c in position):
            raise PoiNnunetError(f"{path}: cannot write {p.label()}: position {position} is not 2 or 3 finite numbers")
        if len(position) == 2:
            position.append(0.0)
        label = (names or {}).get(p.poi) or f"POI {p.poi}"
        rows.append((str(label), encode_description(p), position))
    return rows


def _point_extra(description: str, point_id: str) -> Dict[str, Any]:
    extra: Dict[str, Any] = {"description": description, "id": point_id}
    extra.update(decode_description(description) or {})
    return extra


# ---------------------------------------------------------------------------- .mrk.json
def write_markups_json(path: PathLike, pois: PoiSet, names: Optional[Mapping[int, str]] = None,
                       node_name: str = "POIs") -> None:
    """Write one point list ("Fiducial" markup) in LPS mm, atomically."""
    control_points = [
        {"id": str(i + 1), "label": label, "description": description, "position": position,
         "positionStatus": "defined"}
        for i, (label, description, position) in enumerate(_control_points(pois, names, path))
    ]
    data = {
        "@schema": MARKUPS_SCHEMA,
        "markups": [{
            "type": "Fiducial",
            "name": node_name,
            "coordinateSystem": "LPS",
            "coordinateUnits": "mm",
            "controlPoints": control_points,
        }],
    }
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def read_markups_json(path: PathLike) -> List[MarkupPoint]:
    """Every defined control point of every markup in the file, in LPS mm."""
    source = str(path)
    data = _load_json(path)
    markups = data.get("markups") if isinstance(data, dict) else None
    if not isinstance(markups, list):
        raise _invalid(source, "not a Slicer markups file: expected an object with a 'markups' list")
    points: List[MarkupPoint] = []
    problems: List[Problem] = []
    for m, markup in enumerate(markups):
        if not isinstance(markup, dict):
            problems.append(Problem(source, f"markup #{m} must be an object"))
            continue
        system = markup.get("coordinateSystem", "LPS")
        scale = _units_scale(markup.get("coordinateUnits", "mm"))
        if system not in ("LPS", "RAS") or scale is None:
            problems.append(Problem(source, f"markup #{m}: unsupported coordinateSystem {system!r} or "
                                            f"coordinateUnits {markup.get('coordinateUnits')!r} (expected LPS/RAS, mm/um)"))
            continue
        cps = markup.get("controlPoints", [])
        if not isinstance(cps, list):
            problems.append(Problem(source, f"markup #{m}: 'controlPoints' must be a list"))
            continue
        for i, cp in enumerate(cps):
            where = f"markup #{m} control point #{i}"
            if not isinstance(cp, dict):
                problems.append(Problem(source, "must be an object", where))
                continue
            label = str(cp.get("label", ""))
            where += f" ({label!r})" if label else ""
            if cp.get("positionStatus", "defined") != "defined":
                continue
            xyz = _finite_xyz(cp.get("position"))
            if xyz is None:
                problems.append(Problem(source, f"'position' must be 3 finite numbers, got {cp.get('position')!r}", where))
                continue
            position = _to_lps([c * scale for c in xyz], system)
            points.append(MarkupPoint(label, position, _point_extra(str(cp.get("description", "")), str(cp.get("id", "")))))
    if problems:
        raise InvalidInputError(problems, headline=f"cannot read markups file {source}")
    return points


def _load_json(path: PathLike) -> Any:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise _invalid(str(path), "file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise _invalid(str(path), f"cannot read file ({exc})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise _invalid(str(path), f"not valid JSON ({exc})") from None


def _units_scale(units: Any) -> Optional[float]:
    if isinstance(units, list) and units:  # DICOM-style code triplet ["mm", "UCUM", "millimeter"]
        units = units[0]
    return _UNITS_TO_MM.get(units) if isinstance(units, str) else None


# ---------------------------------------------------------------------------- .fcsv
def write_fcsv(path: PathLike, pois: PoiSet, names: Optional[Mapping[int, str]] = None) -> None:
    """Write a Slicer fiducial CSV (format 4.11, LPS), atomically."""
    buffer = io.StringIO()
    buffer.write("# Markups fiducial file version = 4.11\n# CoordinateSystem = LPS\n")
    buffer.write("# columns = " + ",".join(FCSV_COLUMNS) + "\n")
    writer = csv.writer(buffer, lineterminator="\n")
    for i, (label, description, (x, y, z)) in enumerate(_control_points(pois, names, path)):
        writer.writerow([str(i + 1), repr(x), repr(y), repr(z), 0, 0, 0, 1, 1, 1, 0, label, description, ""])
    atomic_write_text(path, buffer.getvalue())


def read_fcsv(path: PathLike) -> List[MarkupPoint]:
    """Every point of a Slicer fiducial CSV, in LPS mm; rows without coordinates are absent points."""
    source = str(path)
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise _invalid(source, "file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise _invalid(source, f"cannot read file ({exc})") from None
    system, columns = "RAS", list(FCSV_COLUMNS)  # files older than Slicer 4.11 state no system: RAS
    for line in lines:
        key, _, value = line.lstrip("#").partition("=")
        if line.startswith("#") and key.strip() == "CoordinateSystem":
            if value.strip() not in _FCSV_SYSTEMS:
                raise _invalid(source, f"unsupported CoordinateSystem {value.strip()!r} (expected LPS, RAS, 0 or 1)")
            system = _FCSV_SYSTEMS[value.strip()]
        elif line.startswith("#") and key.strip() == "columns":
            columns = [c.strip() for c in value.split(",")]
    missing = [c for c in ("x", "y", "z") if c not in columns]
    if missing:
        raise _invalid(source, f"the '# columns' line lacks {missing}")
    col = {name: i for i, name in enumerate(columns)}
    points: List[MarkupPoint] = []
    problems: List[Problem] = []
    rows = csv.reader(line for line in lines if line.strip() and not line.startswith("#"))
    for r, row in enumerate(rows):
        cell = lambda name: row[col[name]].strip() if name in col and col[name] < len(row) else ""  # noqa: E731
        where = f"row #{r}" + (f" ({cell('label')!r})" if cell("label") else "")
        raw = [cell(axis) for axis in ("x", "y", "z")]
        if all(v == "" or v.lower() == "nan" for v in raw):
            continue  # an unplaced point
        xyz = _finite_xyz(_floats(raw))
        if xyz is None:
            problems.append(Problem(source, f"x, y, z must be 3 finite numbers, got {raw}", where))
            continue
        points.append(MarkupPoint(cell("label"), _to_lps(xyz, system), _point_extra(cell("desc"), cell("id"))))
    if problems:
        raise InvalidInputError(problems, headline=f"cannot read markups file {source}")
    return points


def _floats(values: Sequence[str]) -> Optional[List[float]]:
    try:
        return [float(v) for v in values]
    except ValueError:
        return None


# ---------------------------------------------------------------------------- either format
def read_markups(path: PathLike) -> List[MarkupPoint]:
    """Read ``.mrk.json`` or ``.fcsv``, chosen by the file name."""
    if Path(path).name.lower().endswith(".fcsv"):
        return read_fcsv(path)
    return read_markups_json(path)


def write_markups(path: PathLike, pois: PoiSet, names: Optional[Mapping[int, str]] = None) -> None:
    """Write ``.mrk.json`` or ``.fcsv``, chosen by the file name."""
    if Path(path).name.lower().endswith(".fcsv"):
        write_fcsv(path, pois, names)
    else:
        write_markups_json(path, pois, names)


def markup_points_to_poi_set(points: Sequence[MarkupPoint], source: PathLike, dim: int = 3) -> PoiSet:
    """Points this project wrote (every description encoded) back into a :class:`PoiSet`.

    ``dim=2`` drops z for points of a 2D image. Missing encodings and duplicate
    (structure, poi) pairs are errors naming the file and the point.
    """
    problems: List[Problem] = []
    out: Dict[Tuple[int, int], Poi] = {}
    for i, point in enumerate(points):
        where = f"point #{i} ({point.label!r})"
        if "poi" not in point.extra:
            problems.append(Problem(str(source), "description lacks 'structure S, poi P'", where))
            continue
        key = (point.extra["structure"], point.extra["poi"])
        if key in out:
            problems.append(Problem(str(source), f"duplicate structure {key[0]}, poi {key[1]}", where))
            continue
        out[key] = Poi(key[0], key[1], tuple(point.position[:dim]), point.extra.get("confidence"))
    if problems:
        raise InvalidInputError(problems, headline=f"cannot read POIs from {source}")
    return PoiSet(list(out.values()))


# ---------------------------------------------------------------------------- helpers
def _finite_xyz(value: Any) -> Optional[List[float]]:
    if not isinstance(value, (list, tuple)) or len(value) != 3:
        return None
    if not all(isinstance(c, (int, float)) and not isinstance(c, bool) and math.isfinite(c) for c in value):
        return None
    return [float(c) for c in value]


def _to_lps(xyz: Sequence[float], system: str) -> Tuple[float, float, float]:
    x, y, z = (float(c) for c in xyz)
    return (-x, -y, z) if system == "RAS" else (x, y, z)


def _invalid(source: str, message: str) -> InvalidInputError:
    return InvalidInputError([Problem(source, message)], headline=f"cannot read markups file {source}")

"""Points of interest in the unified raw format (``poisTr/<case>.json``).

This module owns the file syntax only: what a POI file must look like on its
own. Rules that need the dataset (known POI ids, existing labels, the image's
extent) live in :mod:`poi_nnunet.raw_format_checks`.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Optional, Tuple

import numpy as np

from .errors import InvalidInputError, PathLike, Problem
from .atomic import atomic_write_text

COORDINATE_SYSTEM = "LPS"


@dataclass(frozen=True)
class Poi:
    """One point: which structure it belongs to, which POI it is, and where (world mm)."""

    structure: int
    poi: int
    position: Tuple[float, ...]
    confidence: Optional[float] = None

    @property
    def key(self) -> Tuple[int, int]:
        return (self.structure, self.poi)

    def label(self) -> str:
        return f"structure {self.structure}, poi {self.poi}"

    def to_json(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {
            "structure": int(self.structure),
            "poi": int(self.poi),
            "position": [float(c) for c in self.position],
        }
        if self.confidence is not None:
            out["confidence"] = float(self.confidence)
        return out


@dataclass
class PoiSet:
    """All points of one case, in world millimetres (LPS)."""

    points: List[Poi] = field(default_factory=list)

    def __iter__(self) -> Iterator[Poi]:
        return iter(self.points)

    def __len__(self) -> int:
        return len(self.points)

    @property
    def dim(self) -> Optional[int]:
        return len(self.points[0].position) if self.points else None

    def keys(self) -> List[Tuple[int, int]]:
        return [p.key for p in self.points]

    def by_key(self) -> Dict[Tuple[int, int], Poi]:
        return {p.key: p for p in self.points}

    def positions(self) -> np.ndarray:
        """(N, D) world coordinates in file order."""
        if not self.points:
            return np.zeros((0, 0))
        return np.array([p.position for p in self.points], dtype=np.float64)

    def structures(self) -> List[int]:
        return sorted({p.structure for p in self.points})

    def to_json(self) -> Dict[str, Any]:
        return {"coordinate_system": COORDINATE_SYSTEM, "points": [p.to_json() for p in self.points]}

    @classmethod
    def from_arrays(
        cls,
        structures: Iterable[int],
        pois: Iterable[int],
        positions: np.ndarray,
        confidences: Optional[Iterable[float]] = None,
    ) -> "PoiSet":
        confs = list(confidences) if confidences is not None else None
        points = []
        for i, (s, p, pos) in enumerate(zip(structures, pois, np.asarray(positions, dtype=np.float64))):
            points.append(Poi(int(s), int(p), tuple(float(c) for c in pos), None if confs is None else float(confs[i])))
        return cls(points)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def parse_poi_json(data: Any, source: str) -> Tuple[PoiSet, List[Problem]]:
    """Check the syntax of a decoded POI file; return the points that are valid and every problem."""
    problems: List[Problem] = []
    if not isinstance(data, dict):
        return PoiSet(), [Problem(source, "top level must be a JSON object with 'coordinate_system' and 'points'")]
    cs = data.get("coordinate_system")
    if cs != COORDINATE_SYSTEM:
        problems.append(Problem(source, f"'coordinate_system' must be \"{COORDINATE_SYSTEM}\", got {cs!r}"))
    raw_points = data.get("points")
    if not isinstance(raw_points, list):
        problems.append(Problem(source, "'points' must be a list"))
        return PoiSet(), problems

    points: List[Poi] = []
    seen: Dict[Tuple[int, int], int] = {}
    dims: Dict[int, int] = {}
    for i, entry in enumerate(raw_points):
        where = f"point #{i}"
        if not isinstance(entry, dict):
            problems.append(Problem(source, "must be an object", where))
            continue
        structure, poi, position = entry.get("structure"), entry.get("poi"), entry.get("position")
        if _is_int(structure) and _is_int(poi):
            where = f"point #{i} (structure {structure}, poi {poi})"
        ok = True
        if not _is_int(structure) or structure < 0:
            problems.append(Problem(source, f"'structure' must be an integer >= 0, got {structure!r}", where))
            ok = False
        if not _is_int(poi) or poi <= 0:
            problems.append(Problem(source, f"'poi' must be a positive integer, got {poi!r}", where))
            ok = False
        if not isinstance(position, list) or len(position) not in (2, 3):
            problems.append(Problem(source, f"'position' must be a list of 2 or 3 numbers, got {position!r}", where))
            ok = False
        elif not all(isinstance(c, (int, float)) and not isinstance(c, bool) for c in position):
            problems.append(Problem(source, f"'position' must hold numbers, got {position!r}", where))
            ok = False
        elif not all(math.isfinite(c) for c in position):
            problems.append(Problem(source, f"non-finite coordinate in 'position' {position!r}", where))
            ok = False
        conf = entry.get("confidence")
        if conf is not None and (
            not isinstance(conf, (int, float)) or isinstance(conf, bool) or not (0.0 <= conf <= 1.0)
        ):
            problems.append(Problem(source, f"'confidence' must be a number in [0, 1], got {conf!r}", where))
            ok = False
        if not ok:
            continue
        dims[len(position)] = dims.get(len(position), 0) + 1
        key = (structure, poi)
        if key in seen:
            problems.append(Problem(source, f"duplicate (structure, poi) pair, first seen as point #{seen[key]}", where))
            continue
        seen[key] = i
        points.append(Poi(structure, poi, tuple(float(c) for c in position), None if conf is None else float(conf)))
    if len(dims) > 1:
        problems.append(Problem(source, f"points mix 2 and 3 coordinates ({dims})"))
    return PoiSet(points), problems


def read_poi_file_lenient(path: PathLike) -> Tuple[PoiSet, List[Problem]]:
    """Read a POI file, returning the valid points plus every problem (for validators)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return PoiSet(), [Problem(str(path), "file not found")]
    except (OSError, UnicodeDecodeError) as exc:
        return PoiSet(), [Problem(str(path), f"cannot read file ({exc})")]
    try:
        # NaN/Infinity are not JSON; parse them anyway so the message can say which point is wrong.
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        return PoiSet(), [Problem(str(path), f"not valid JSON ({exc})")]
    return parse_poi_json(data, str(path))


def read_poi_file(path: PathLike) -> PoiSet:
    """Read a POI file; raise :class:`InvalidInputError` listing every problem in it."""
    pois, problems = read_poi_file_lenient(path)
    if problems:
        raise InvalidInputError(problems, headline=f"invalid POI file {path}")
    return pois


def write_poi_file(path: PathLike, pois: PoiSet) -> None:
    """Write a POI file atomically; refuses non-finite or duplicate points."""
    _, problems = parse_poi_json(json.loads(json.dumps(pois.to_json())), str(path))
    if problems:
        raise InvalidInputError(problems, headline=f"refusing to write invalid POI file {path}")
    atomic_write_text(path, json.dumps(pois.to_json(), indent=2) + "\n")

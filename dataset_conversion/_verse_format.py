"""VerSe centroid files: ``[{"direction": ["P", "I", "R"]}, {"label": 20, "X": .., "Y": .., "Z": ..}, ...]``.

``X, Y, Z`` are continuous voxel coordinates of the image's own grid after it is
permuted and flipped to the axis codes of ``direction`` (see :mod:`._axis_codes`):
with ``["P", "I", "R"]``, X counts voxels toward Posterior, Y toward Inferior,
Z toward Right. ``label`` is the vertebra label (20 = L1). TPTBox writes the same
layout with ``label = location * 256 + vertebra`` to carry a Location id too;
:func:`split_label` undoes that.

This module knows the file's syntax only; the converter decides what a label becomes.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Optional, Tuple

import numpy as np

from poi_nnunet.errors import InvalidInputError, PathLike, Problem
from poi_nnunet.geometry import ImageGeometry

from ._axis_codes import oriented_voxels_to_index, parse_axis_codes

@dataclass(frozen=True)
class Centroid:
    label: int
    voxel: Tuple[float, float, float]  # X, Y, Z along the file's axis codes


@dataclass(frozen=True)
class CentroidFile:
    path: Path
    axis_codes: Tuple[str, str, str]
    centroids: List[Centroid]

    def world(self, geometry: ImageGeometry) -> np.ndarray:
        """(N, 3) world mm (LPS) of the centroids, in file order, on the image ``geometry``."""
        if not self.centroids:
            return np.zeros((0, 3))
        voxels = np.array([c.voxel for c in self.centroids], dtype=np.float64)
        return np.atleast_2d(geometry.index_to_world(oriented_voxels_to_index(voxels, self.axis_codes, geometry)))


def split_label(label: int) -> Tuple[int, Optional[int]]:
    """``(vertebra, location)``; location is None for a plain VerSe label."""
    from TPTBox.core.vert_constants import LABEL_MAX  # TPTBox's factor for combined labels

    location, vertebra = divmod(label, LABEL_MAX)
    return vertebra, (location or None)


def read_verse_centroids(path: PathLike) -> CentroidFile:
    """Parse a centroid file; every problem (each entry's, too) names the file."""
    path = Path(path)
    data = _load_json(path)
    if not isinstance(data, list) or not data:
        raise _fail([Problem(str(path), "a centroid file is a non-empty list: [{\"direction\": [...]}, {\"label\": .., \"X\": .., ...}]")], path)
    first = data[0]
    if not isinstance(first, dict) or "direction" not in first:
        raise _fail([Problem(str(path), "missing the direction entry: the first element must be "
                                        "{\"direction\": [three axis letters such as \"P\", \"I\", \"R\"]}")], path)
    codes = parse_axis_codes(first["direction"], path)
    problems: List[Problem] = []
    centroids: List[Centroid] = []
    seen = {}
    for i, entry in enumerate(data[1:], start=1):
        centroid = _centroid(entry, str(path), f"entry #{i}", problems)
        if centroid is None:
            continue
        if centroid.label in seen:
            problems.append(Problem(str(path), f"label {centroid.label} appears twice (first as entry #{seen[centroid.label]})",
                                    f"entry #{i} (label {centroid.label})"))
            continue
        seen[centroid.label] = i
        centroids.append(centroid)
    if problems:
        raise _fail(problems, path)
    return CentroidFile(path, codes, centroids)


def _centroid(entry: Any, source: str, where: str, problems: List[Problem]) -> Optional[Centroid]:
    if not isinstance(entry, dict):
        problems.append(Problem(source, f"must be an object with label, X, Y, Z, got {entry!r}", where))
        return None
    if "direction" in entry:
        problems.append(Problem(source, "only the first element may hold 'direction'", where))
        return None
    missing = [k for k in ("label", "X", "Y", "Z") if k not in entry]
    if missing:
        problems.append(Problem(source, f"missing {missing}", where))
        return None
    label = entry["label"]
    if isinstance(label, float) and label.is_integer():
        label = int(label)
    if not isinstance(label, int) or isinstance(label, bool) or label <= 0:
        problems.append(Problem(source, f"'label' must be a positive integer, got {entry['label']!r}", where))
        return None
    where = f"{where} (label {label})"
    coords = [entry[k] for k in ("X", "Y", "Z")]
    if not all(isinstance(c, (int, float)) and not isinstance(c, bool) and math.isfinite(c) for c in coords):
        problems.append(Problem(source, f"X, Y, Z must be finite numbers, got {coords!r}", where))
        return None
    return Centroid(label, tuple(float(c) for c in coords))  # type: ignore[arg-type]


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise _fail([Problem(str(path), "centroid file not found")], path) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise _fail([Problem(str(path), f"cannot read file ({exc})")], path) from None
    except json.JSONDecodeError as exc:
        raise _fail([Problem(str(path), f"not valid JSON ({exc})")], path) from None


def _fail(problems: List[Problem], path: Path) -> InvalidInputError:
    return InvalidInputError(problems, headline=f"cannot read centroid file {path}")

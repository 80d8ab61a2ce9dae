"""POIs of one preprocessed case: ``<data folder>_pois/<case>_pois.json`` beside nnU-Net's data folder.

Format (one JSON object)::

    {"case": "spine_000", "version": 1,
     "space": {...},            # PreprocessedSpace.to_json(): everything to map back to world mm
     "points": [{"structure": 20, "poi": 101,
                 "position": [z, y, x],   # continuous preprocessed voxel index (3 axes, also for 2D)
                 "world": [..],           # the raw file's LPS position in mm
                 "valid": true,           # false: leave out of training targets
                 "flags": []}]}           # why not valid: "far_from_surface", "outside_crop"

Trainers call :func:`load_preprocessed_pois` and use ``.valid`` to mask targets.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Set, Tuple

import numpy as np

from ..atomic import atomic_write_text
from ..errors import PathLike, PoiNnunetError
from ..geometry import PreprocessedSpace
from ..pois import PoiSet

SUFFIX = "_pois.json"
VERSION = 1
FAR_FROM_SURFACE = "far_from_surface"
OUTSIDE_CROP = "outside_crop"


@dataclass
class PreprocessedPois:
    """A case's POIs in its preprocessed voxel space, arrays aligned by point."""

    case: str
    space: PreprocessedSpace
    structures: np.ndarray
    pois: np.ndarray
    positions: np.ndarray
    world: np.ndarray
    valid: np.ndarray
    flags: List[List[str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.pois)

    def keys(self) -> List[Tuple[int, int]]:
        return [(int(s), int(p)) for s, p in zip(self.structures, self.pois)]

    def training_points(self) -> "PreprocessedPois":
        """Only the points that may become training targets."""
        keep = np.flatnonzero(self.valid)
        return PreprocessedPois(self.case, self.space, self.structures[keep], self.pois[keep], self.positions[keep],
                                self.world[keep], self.valid[keep], [self.flags[i] for i in keep])


def preprocessed_pois_file(folder: PathLike, case: str) -> Path:
    """``<data folder>_pois/<case>_pois.json``: a sibling of nnU-Net's data folder, not inside it.

    nnU-Net infers its dataset class from the file endings in the data folder and
    refuses a folder with any extra kind of file, so the POIs live next door.
    """
    folder = Path(folder)
    return folder.with_name(folder.name + "_pois") / f"{case}{SUFFIX}"


def build_preprocessed_pois(case: str, space: PreprocessedSpace, pois: PoiSet,
                            flagged: Set[Tuple[int, int]]) -> PreprocessedPois:
    """Map world POIs into ``space`` and mark those that must not be training targets."""
    dim = space.raw.dim
    world = pois.positions().reshape(-1, dim) if len(pois) else np.zeros((0, dim))
    positions = space.world_to_preprocessed(world) if len(pois) else np.zeros((0, 3))
    inside = space.contains_preprocessed(positions) if len(pois) else np.zeros(0, bool)
    flags = []
    for i, p in enumerate(pois):
        f = []
        if p.key in flagged:
            f.append(FAR_FROM_SURFACE)
        if not inside[i]:
            f.append(OUTSIDE_CROP)
        flags.append(f)
    return PreprocessedPois(case, space, np.array([p.structure for p in pois], dtype=int),
                            np.array([p.poi for p in pois], dtype=int), positions, world,
                            np.array([not f for f in flags], dtype=bool), flags)


def write_preprocessed_pois(path: PathLike, pois: PreprocessedPois) -> None:
    points = [
        {"structure": int(s), "poi": int(p), "position": pos.tolist(), "world": w.tolist(), "valid": bool(v),
         "flags": f}
        for s, p, pos, w, v, f in zip(pois.structures, pois.pois, pois.positions, pois.world, pois.valid, pois.flags)
    ]
    data = {"case": pois.case, "version": VERSION, "space": pois.space.to_json(), "points": points}
    atomic_write_text(path, json.dumps(data, separators=(",", ":")) + "\n")


def load_preprocessed_pois(folder: PathLike, case: Optional[str] = None) -> PreprocessedPois:
    """Read ``<folder>/<case>_pois.json`` (or the file itself when ``case`` is omitted)."""
    path = preprocessed_pois_file(folder, case) if case is not None else Path(folder)
    try:
        data: Dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PoiNnunetError(f"{path}: no preprocessed POI file; run poi_plan_and_preprocess first") from None
    except (OSError, ValueError) as exc:
        raise PoiNnunetError(f"{path}: unreadable preprocessed POI file ({exc})") from None
    if data.get("version") != VERSION:
        raise PoiNnunetError(f"{path}: version {data.get('version')!r}, expected {VERSION}; preprocess again")
    space = PreprocessedSpace.from_json(data["space"])
    pts = data["points"]
    dim = space.raw.dim
    return PreprocessedPois(
        case=data["case"], space=space,
        structures=np.array([p["structure"] for p in pts], dtype=int),
        pois=np.array([p["poi"] for p in pts], dtype=int),
        positions=np.array([p["position"] for p in pts], dtype=np.float64).reshape(-1, 3),
        world=np.array([p["world"] for p in pts], dtype=np.float64).reshape(-1, dim),
        valid=np.array([p["valid"] for p in pts], dtype=bool),
        flags=[list(p["flags"]) for p in pts],
    )

"""Checks every converter applies to the points it read, reported all at once against the user's file.

docs/format.md makes a point outside the image, a non-finite coordinate or a
structure missing from the mask an error; a converter reports them naming the
user's own point file (the validator, run later on the staging folder, could
only name a temporary file).
"""
from __future__ import annotations

from typing import Callable, Iterable, List, Optional, Set, Tuple

import numpy as np

from poi_nnunet.errors import InvalidInputError, PathLike, Problem
from poi_nnunet.geometry import ImageGeometry
from poi_nnunet.pois import Poi, PoiSet

Describe = Callable[[int, int], str]
Entry = Tuple[int, int, np.ndarray]  # structure, poi id, world position (LPS mm)


def checked_pois(entries: Iterable[Entry], geometry: ImageGeometry, source: PathLike, describe: Describe) -> PoiSet:
    """World points -> PoiSet; every non-finite, badly numbered or outside point is one problem naming ``source``."""
    problems: List[Problem] = []
    points: List[Poi] = []
    for structure, poi, world in entries:
        where = describe(structure, poi)
        world = np.asarray(world, dtype=np.float64)
        if poi <= 0:
            problems.append(Problem(str(source), f"POI id {poi} is not a positive integer", where))
        elif structure < 0:
            problems.append(Problem(str(source), f"structure {structure} is negative", where))
        elif world.shape != (geometry.dim,) or not np.all(np.isfinite(world)):
            problems.append(Problem(str(source), f"position {world.tolist()} is not {geometry.dim} finite numbers", where))
        elif not geometry.contains_world(world):
            index = np.round(geometry.world_to_index(world), 3).tolist()
            problems.append(Problem(str(source), f"lies outside the image (continuous voxel index {index}, "
                                                 f"image size {list(geometry.size)})", where))
        else:
            points.append(Poi(int(structure), int(poi), tuple(float(c) for c in world)))
    if problems:
        raise InvalidInputError(problems, headline=f"cannot convert {source}")
    return PoiSet(points)


def structures_missing_from_mask(pois: PoiSet, mask_labels: Optional[Set[int]], source: PathLike,
                                 mask: PathLike, describe: Describe) -> List[Problem]:
    """A point's structure must be a label that occurs in the case's mask (docs/format.md)."""
    if mask_labels is None:
        return []
    return [Problem(str(source), f"structure {p.structure} does not occur in the mask {mask}", describe(p.structure, p.poi))
            for p in pois if p.structure != 0 and p.structure not in mask_labels]

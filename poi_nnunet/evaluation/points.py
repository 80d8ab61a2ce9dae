"""Pairing reference and predicted points of one case, and deciding which were identified.

Points pair by their ``(structure, poi)`` key and nothing else: a prediction
that landed on the right spot under the wrong key is an error, not a match.
Every point ends up in exactly one row, so nothing is dropped silently.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Tuple

import numpy as np

from ..errors import PoiNnunetError
from ..pois import PoiSet

MATCHED, MISSING, EXTRA, EXTRA_CASE = "matched", "missing", "extra", "extra_case"

DEFAULT_ID_RADIUS_MM = 20.0


@dataclass(frozen=True)
class PointMatch:
    """One reference point, one predicted point, or a pair of them.

    ``status`` is ``matched`` (both sides), ``missing`` (reference only),
    ``extra`` (prediction only) or ``extra_case`` (a prediction for a case that
    has no reference: listed, never scored).
    """

    case: str
    structure: int
    poi: int
    ref: Optional[Tuple[float, ...]]
    pred: Optional[Tuple[float, ...]]
    status: str
    error_mm: float = float("nan")
    identified: bool = False
    error_voxels: float = float("nan")  # the error in the reference image's voxels (see voxel_errors)

    @property
    def key(self) -> Tuple[int, int]:
        return (self.structure, self.poi)


def match_points(case: str, ref: PoiSet, pred: PoiSet, id_radius_mm: float = DEFAULT_ID_RADIUS_MM) -> List[PointMatch]:
    """Pair the points of one case by key: matched rows first (reference order), then extras.

    A reference point counts as **identified** (the vertebra-labelling criterion
    of Glocker et al. and the VerSe challenge, applied to single POIs) when its
    prediction exists, lies within ``id_radius_mm`` of it, and is at least as
    close to it as to any other reference point of the case. It therefore
    catches predictions that are near enough in absolute terms but closer to a
    neighbouring landmark, such as the same POI put on the next vertebra.
    """
    if ref.dim is not None and pred.dim is not None and ref.dim != pred.dim:
        raise PoiNnunetError(f"case {case}: reference points have {ref.dim} coordinates, predicted points {pred.dim}")
    pred_by_key = pred.by_key()
    ref_positions = ref.positions()
    rows: List[PointMatch] = []
    for i, point in enumerate(ref):
        guess = pred_by_key.get(point.key)
        if guess is None:
            rows.append(PointMatch(case, point.structure, point.poi, point.position, None, MISSING))
            continue
        where = np.asarray(guess.position, dtype=np.float64)
        distances = np.linalg.norm(ref_positions - where, axis=1)
        error = float(distances[i])
        identified = error <= id_radius_mm and bool(np.all(error <= distances))
        rows.append(PointMatch(case, point.structure, point.poi, point.position, guess.position, MATCHED, error, identified))
    ref_keys = set(ref.keys())
    for guess in pred:
        if guess.key not in ref_keys:
            rows.append(PointMatch(case, guess.structure, guess.poi, None, guess.position, EXTRA))
    return rows


def unscored_points(case: str, pred: PoiSet) -> List[PointMatch]:
    """Rows for a predicted case that has no reference file: reported, never scored."""
    return [PointMatch(case, p.structure, p.poi, None, p.position, EXTRA_CASE) for p in pred]

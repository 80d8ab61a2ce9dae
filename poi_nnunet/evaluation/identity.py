"""Identity confusions: a predicted point that sits on *another* landmark's place.

A landmark model can localise well and name badly: four similar corners, and three channels put
their point on the same one. Mean error mixes that with imprecision; this measure isolates it.
A predicted point is an identity confusion when it lies within ``radius_mm`` of the reference
position of another landmark of the same case and nearer to that one than to its own reference
(so two landmarks that truly lie within the radius of each other do not count a right point as
confused).
"""
from __future__ import annotations

from typing import Dict, Tuple

import numpy as np

from ..pois import PoiSet

DEFAULT_CONFUSION_RADIUS_MM = 2.0


def identity_confusions(reference: PoiSet, predicted: PoiSet,
                        radius_mm: float = DEFAULT_CONFUSION_RADIUS_MM) -> Dict[Tuple[int, int], Tuple[int, int]]:
    """``{predicted key: reference key it sits on}`` for every confused point (keys are (structure, poi)).

    Only predicted points whose own key is in the reference are judged (an unknown key is not a
    confusion but an extra point).
    """
    ref = reference.by_key()
    keys = list(ref)
    if len(keys) < 2:
        return {}
    positions = np.array([ref[k].position for k in keys], dtype=np.float64)  # (N, D) mm
    index = {k: i for i, k in enumerate(keys)}
    confused: Dict[Tuple[int, int], Tuple[int, int]] = {}
    for key, point in predicted.by_key().items():
        if key not in index:
            continue
        distance = np.linalg.norm(positions - np.asarray(point.position, dtype=np.float64), axis=1)
        own = distance[index[key]]
        distance[index[key]] = np.inf
        nearest = int(np.argmin(distance))
        if distance[nearest] <= radius_mm and distance[nearest] < own:
            confused[key] = keys[nearest]
    return confused

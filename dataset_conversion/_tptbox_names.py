"""dataset.json names for spine data, taken from TPTBox so they match what its users see.

Structure labels are vertebra instance labels (``20`` is L1, ``v_idx2name``);
POI ids are TPTBox ``Location`` values (``50`` is Vertebra_Corpus).

nnU-Net requires the declared label values to be consecutive (0, 1, 2, ...),
so :func:`structure_labels` declares every value from 1 up to the largest one
present, named as TPTBox names it. A value no case uses costs the network one
output channel; in exchange the labels (and so the POI structures) stay the
real vertebra ids, which is what TPTBox files and users refer to.
"""
from __future__ import annotations

import functools
from typing import Dict, Iterable, List, Mapping


@functools.lru_cache(maxsize=1)
def vertebra_names() -> Dict[int, str]:
    """TPTBox's vertebra names by label (imported on first use: TPTBox takes a second to import)."""
    from TPTBox.core.vert_constants import subreg_idx2name, v_idx2name

    # v_idx2name also holds the Location names of subregion labels; keep only vertebrae.
    return {k: v for k, v in v_idx2name.items() if k not in subreg_idx2name}


def structure_name(value: int) -> str:
    return vertebra_names().get(int(value), f"label_{int(value)}")


def structure_labels(present: Iterable[int]) -> Dict[str, int]:
    """``{"background": 0, "C1": 1, ...}`` for every value 1..max(present) (nnU-Net wants them consecutive)."""
    values = [int(v) for v in present if int(v) > 0]
    labels = {"background": 0}
    for value in range(1, max(values, default=0) + 1):
        labels[structure_name(value)] = value
    return labels


def location_name(poi_id: int) -> str:
    from TPTBox.core.vert_constants import Location

    try:
        return Location(int(poi_id)).name
    except ValueError:
        return f"poi_{int(poi_id)}"


def poi_names(ids: Iterable[int]) -> Dict[int, str]:
    return {int(i): location_name(i) for i in sorted(set(ids))}


def left_right_pairs(names: Mapping[int, str]) -> List[List[int]]:
    """``[[left id, right id], ...]`` for the ``*_Left`` / ``*_Right`` names present (they swap when mirrored)."""
    by_name = {name: i for i, name in names.items()}
    pairs = []
    for name, left in sorted(by_name.items(), key=lambda kv: kv[1]):
        if name.endswith("_Left"):
            right = by_name.get(name[: -len("_Left")] + "_Right")
            if right is not None:
                pairs.append([left, right])
    return pairs

"""Where the heatmaps leave an assignment of channels to peaks ambiguous, the shape prior decides.

:mod:`.peak_assignment` assigns the channels of a component (channels linked by shared peaks) to
distinct peaks by their heatmap scores. Where that choice is ambiguous (an ambiguity factor below 1:
two channels with the same two peaks, several channels claiming one corner about equally) and the
plans have a shape prior (:mod:`poi_nnunet.shape_prior`) for the channels' structure group, each
feasible assignment of the component is scored in nats:

* heatmap: ``sum log(score)`` over the channels' chosen peaks (``score``: the voxel value above the
  channel's background; a channel left without a peak counts ``log(NONE_SCORE_FRACTION * best)``,
  ``best`` the component's highest score);
* shape: :meth:`~poi_nnunet.shape_prior.ShapeGroup.log_likelihood` of the group's anchors (its
  channels placed without ambiguity elsewhere: factor at least :data:`ANCHOR_MIN_FACTOR`, outside any
  ambiguous component) together with the component's channels at the peaks under test, in mm.

The best total wins. Assignments tried: every one that gives as many channels a peak as the heatmap
solution does, where there are at most :data:`MAX_ASSIGNMENTS`; otherwise the heatmap solution and
its single moves and pairwise swaps. A channel's confidence factor is its margin (best total minus
the best total in which the channel holds another peak or none) over ``log(1 / AMBIGUOUS_RATIO)``,
clipped to [0, 1]: on the heatmap term alone this is the same "an alternative half as high costs
nothing, an equal one gives 0" as the heatmap rule. With fewer than ``D + 1`` anchors (``D`` axes)
the prior is not used and the heatmap decision stands unchanged.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import numpy as np

from ..shape_prior import ShapeGroup

ANCHOR_MIN_FACTOR = 0.5
MAX_ASSIGNMENTS = 512
NONE_SCORE_FRACTION = 0.1  # below any candidate (candidates are at least a quarter of the channel's best)
NONE = -1


def _all_assignments(feasible: Sequence[np.ndarray], assigned: int, limit: int) -> Optional[List[Tuple[int, ...]]]:
    """Every assignment of distinct columns (or ``NONE``) to the rows, exactly ``assigned`` of them not
    ``NONE``; None where there are more than ``limit``."""
    rows = len(feasible)
    out: List[Tuple[int, ...]] = []

    def extend(prefix: Tuple[int, ...], used: frozenset, count: int) -> bool:
        if len(out) > limit:
            return False
        row = len(prefix)
        if row == rows:
            if count == assigned:
                out.append(prefix)
            return True
        if count + (rows - row) < assigned:
            return True
        for column in feasible[row]:
            if count < assigned and int(column) not in used:
                if not extend(prefix + (int(column),), used | {int(column)}, count + 1):
                    return False
        return extend(prefix + (NONE,), used, count)

    return out if extend((), frozenset(), 0) and len(out) <= limit else None


def _local_assignments(feasible: Sequence[np.ndarray], column: np.ndarray) -> List[Tuple[int, ...]]:
    """``column`` and every assignment one move or one swap away that keeps as many rows assigned."""
    base = tuple(int(c) for c in column)
    holder = {c: i for i, c in enumerate(base) if c != NONE}
    out = {base}
    for i, options in enumerate(feasible):
        for j in (int(c) for c in options):
            if j == base[i]:
                continue
            moved = list(base)
            moved[i] = j
            h = holder.get(j)
            if h is not None:  # a swap (h left without a peak where i had none)
                if base[i] != NONE and base[i] not in set(int(c) for c in feasible[h]):
                    continue
                moved[h] = base[i]
            elif base[i] == NONE:
                continue  # one more row assigned: not comparable
            out.add(tuple(moved))
    return [base] + sorted(out - {base})


def decide_with_prior(group: ShapeGroup, members: np.ndarray, score: np.ndarray, positions_mm: np.ndarray,
                      column: np.ndarray, anchors: np.ndarray, ambiguous_ratio: float) -> Optional[Tuple[np.ndarray, np.ndarray]]:
    """Column (peak, or ``NONE``) and confidence factor of each of a component's ``members``, or None
    where the prior cannot decide (fewer than ``D + 1`` anchors, or no member in the group).

    ``score`` ``(n, m)``: heatmap score of member ``i`` at peak ``j`` (``-inf`` where it has no candidate
    there); ``positions_mm`` ``(n, m, D)``: where that candidate lies; ``column`` ``(n,)``: the heatmap
    solution; ``anchors`` ``(P, D)``: the group's anchor points in mm (NaN where a group POI is no
    anchor); ``ambiguous_ratio``: see :mod:`.peak_assignment`.
    """
    dim = group.dim
    if positions_mm.shape[-1] != dim or int(np.isfinite(anchors).all(-1).sum()) < dim + 1:
        return None
    slot = group.index(members)
    if not (slot >= 0).any():
        return None
    feasible = [np.nonzero(np.isfinite(row))[0] for row in score]
    assigned = int((column != NONE).sum())
    tried = _all_assignments(feasible, assigned, MAX_ASSIGNMENTS)
    if tried is None:
        tried = _local_assignments(feasible, column)
    else:  # the heatmap solution first: it wins ties
        base = tuple(int(c) for c in column)
        tried = [base] + [t for t in tried if t != base]
    none_term = np.log(max(NONE_SCORE_FRACTION * float(score[np.isfinite(score)].max()), 1e-12))
    totals = np.empty(len(tried))
    for a, assignment in enumerate(tried):
        points = anchors.copy()
        heat = 0.0
        for i, j in enumerate(assignment):
            if j == NONE:
                heat += none_term
                continue
            heat += np.log(max(score[i, j], 1e-12))
            if slot[i] >= 0:
                points[slot[i]] = positions_mm[i, j]
        totals[a] = heat + group.log_likelihood(points)
    table = np.array(tried, dtype=int)
    best = int(np.argmax(totals))
    chosen = table[best]
    margin = np.full(len(members), np.inf)
    for i in range(len(members)):
        other = table[:, i] != chosen[i]
        if other.any():
            margin[i] = totals[best] - totals[other].max()
    factor = np.clip(margin / np.log(1.0 / ambiguous_ratio), 0.0, 1.0)
    return chosen, np.where(chosen == NONE, 0.0, factor)

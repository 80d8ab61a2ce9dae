"""Where the heatmaps leave an assignment of channels to peaks ambiguous, the shape prior decides.

:mod:`.peak_assignment` assigns the channels of a component (channels linked by shared peaks) to
distinct peaks by their heatmap scores. Where that choice is ambiguous (an ambiguity factor below 1:
two channels with the same two peaks, four channels each seeing all four corners of a square) and the
plans have a shape prior (:mod:`poi_nnunet.shape_prior`) for the channels' structure group, the
feasible assignments of the group's ambiguous components are scored in nats:

* heatmap: ``sum log(score)`` over the channels' chosen peaks (``score``: the voxel value above the
  channel's background; a channel left without a peak counts ``log(NONE_SCORE_FRACTION * best)``,
  ``best`` its component's highest score);
* shape: :meth:`~poi_nnunet.shape_prior.ShapeGroup.log_likelihood` of the group's anchors (its
  channels placed without ambiguity elsewhere: factor at least :data:`ANCHOR_MIN_FACTOR`, outside any
  ambiguous component) together with the components' channels at the peaks under test, in mm. The
  mean shape is fitted by translation and scale only, on the assignment under test itself: no anchor
  is needed, since the orientation the prior keeps is what tells a square's corners apart.

A component whose channels lie in several groups (a landmark-only dataset's rigid groups, a channel
of one polygon claiming another's corner) is scored with the sum of those groups' shape terms, each
group fitted on its own channels of the assignment and its anchors (:class:`CombinedPrior`); channels
in no group add nothing to the shape term.

The best total wins. A component is decided where its assigned channels and the anchors make at least
:data:`MIN_POINTS` points (translation and scale take 3 of a 2D configuration's degrees of freedom, 4
of a 3D one; with fewer the heatmap decision stands unchanged). Assignments tried, per component:
every one that gives as many channels a peak as the heatmap solution does, where there are at most
:data:`MAX_ASSIGNMENTS` (a pentagon's 5 channels on 5 peaks: 120); otherwise a local search from the
heatmap solution (single moves and pairwise swaps, moving to the best neighbour while it improves, at
most :data:`LOCAL_SEARCH_STEPS` steps). The components of one group are decided jointly where the
product of their assignment counts is at most :data:`MAX_ASSIGNMENTS`, otherwise one after another
(the larger first), each decided one's confident channels joining the anchors. A channel's confidence
factor is its margin (best total minus the best total in which the channel holds another peak or
none) over ``log(1 / AMBIGUOUS_RATIO)``, clipped to [0, 1]: on the heatmap term alone this is the
same "an alternative half as high costs nothing, an equal one gives 0" as the heatmap rule.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..shape_prior import ShapeGroup

ANCHOR_MIN_FACTOR = 0.5
MAX_ASSIGNMENTS = 5040  # 7 channels on 7 peaks; scored at once, a few milliseconds
MIN_POINTS = 3  # anchors + assigned channels a translation-and-scale fit needs to say anything
LOCAL_SEARCH_STEPS = 50
SEARCH_NODES_PER_ASSIGNMENT = 20  # enumeration gives up (local search instead) after this many nodes per allowed one
NONE_SCORE_FRACTION = 0.1  # below any candidate (candidates are at least a quarter of the channel's best)
NONE = -1


@dataclass(frozen=True)
class CombinedPrior:
    """Several shape groups scored as one, for a component whose channels lie in more than one of them (a
    landmark-only dataset's rigid groups: a triangle's channel claiming a corner of the quad).

    The POIs are the groups' channels one after another (whole-image groups are disjoint); the
    log-likelihood of a configuration ``(A, P, D)`` is the sum over the groups of each one's
    :meth:`~poi_nnunet.shape_prior.ShapeGroup.log_likelihoods` on its own POIs, each fitted by its own
    translation and scale (the groups lie anywhere relative to each other), so a group with fewer than two
    placed points adds 0, as does a channel in no group.
    """

    groups: Tuple[ShapeGroup, ...]

    @property
    def channels(self) -> Tuple[int, ...]:
        return tuple(c for g in self.groups for c in g.channels)

    @property
    def spacing_mm(self) -> Tuple[float, ...]:
        return self.groups[0].spacing_mm

    @property
    def dim(self) -> int:
        return self.groups[0].dim

    def index(self, channels: Sequence[int]) -> np.ndarray:
        """Position of each of ``channels`` among :attr:`channels`, -1 for a channel in no group."""
        where: Dict[int, int] = {}
        for i, c in enumerate(self.channels):
            where.setdefault(int(c), i)
        return np.array([where.get(int(c), -1) for c in channels], dtype=int)

    def log_likelihoods(self, points_mm: np.ndarray) -> np.ndarray:
        """``(A,)``: the sum over the groups of their log-likelihoods of ``points_mm`` ``(A, P, D)``."""
        total = np.zeros(len(points_mm))
        start = 0
        for group in self.groups:
            total += group.log_likelihoods(points_mm[:, start:start + len(group.channels)])
            start += len(group.channels)
        return total


Prior = Union[ShapeGroup, CombinedPrior]


def _all_assignments(feasible: Sequence[np.ndarray], assigned: int, limit: int) -> Optional[List[Tuple[int, ...]]]:
    """Every assignment of distinct columns (or ``NONE``) to the rows, exactly ``assigned`` of them not
    ``NONE``; None where there are more than ``limit``."""
    rows = len(feasible)
    out: List[Tuple[int, ...]] = []
    visits = [0]  # search nodes: dead-end prefixes (columns used up) can be exponentially many

    def extend(prefix: Tuple[int, ...], used: frozenset, count: int) -> bool:
        visits[0] += 1
        if len(out) > limit or visits[0] > SEARCH_NODES_PER_ASSIGNMENT * limit:
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


@dataclass
class PriorComponent:
    """One ambiguous component for the prior: ``members`` ``(n,)`` its channels; ``score`` ``(n, m)`` the
    heatmap score of member ``i`` at peak ``j`` (``-inf`` where it has no candidate there);
    ``positions_mm`` ``(n, m, D)`` where that candidate lies; ``column`` ``(n,)`` the heatmap solution
    (peak index or ``NONE``)."""

    members: np.ndarray
    score: np.ndarray
    positions_mm: np.ndarray
    column: np.ndarray

    @property
    def feasible(self) -> List[np.ndarray]:
        return [np.nonzero(np.isfinite(row))[0] for row in self.score]

    @property
    def assigned(self) -> int:
        return int((self.column != NONE).sum())

    def heat(self, table: np.ndarray) -> np.ndarray:
        """Heatmap term ``(A,)`` of the assignments ``table`` ``(A, n)`` (see the module docstring)."""
        none = np.log(max(NONE_SCORE_FRACTION * float(self.score[np.isfinite(self.score)].max()), 1e-12))
        rows = np.arange(table.shape[1])
        picked = self.score[rows, np.maximum(table, 0)]
        return np.where(table == NONE, none, np.log(np.maximum(picked, 1e-12))).sum(1)


def _total(group: Prior, parts: Sequence[PriorComponent], table: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    """Combined score ``(A,)`` of the joint assignments ``table`` ``(A, sum n)`` (columns: the parts'
    members in order) with ``anchors`` ``(P, D)`` (NaN: no anchor)."""
    points = np.repeat(anchors[None], len(table), axis=0)  # (A, P, D)
    heat = np.zeros(len(table))
    start = 0
    for part in parts:
        block = table[:, start:start + len(part.members)]
        start += len(part.members)
        heat += part.heat(block)
        for i, slot in enumerate(group.index(part.members)):
            if slot >= 0:
                column = block[:, i]
                points[:, slot] = np.where((column != NONE)[:, None],
                                           part.positions_mm[i, np.maximum(column, 0)], np.nan)
    return heat + group.log_likelihoods(points)


def _local_search(group: Prior, part: PriorComponent, anchors: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Assignments scored ``(A, n)`` and their totals ``(A,)``: from the heatmap solution, to the best
    neighbour (one move or one swap) while that improves, at most :data:`LOCAL_SEARCH_STEPS` steps."""
    scored: Dict[Tuple[int, ...], float] = {}
    current = tuple(int(c) for c in part.column)
    feasible = part.feasible
    for _ in range(LOCAL_SEARCH_STEPS):
        near = [t for t in _local_assignments(feasible, np.array(current)) if t not in scored]
        if near:
            totals = _total(group, [part], np.array(near, dtype=int), anchors)
            scored.update(zip(near, totals.tolist()))
        best = max(scored, key=lambda t: (scored[t], t == current))
        if best == current:
            break
        current = best
    table = list(scored)
    return np.array(table, dtype=int), np.array([scored[t] for t in table])


def _candidates(part: PriorComponent) -> Optional[np.ndarray]:
    """``(A, n)``: every assignment of the component, the heatmap solution first (it wins ties); None
    above :data:`MAX_ASSIGNMENTS`."""
    tried = _all_assignments(part.feasible, part.assigned, MAX_ASSIGNMENTS)
    if tried is None:
        return None
    base = tuple(int(c) for c in part.column)
    return np.array([base] + [t for t in tried if t != base], dtype=int)


def _decision(table: np.ndarray, totals: np.ndarray, ambiguous_ratio: float) -> Tuple[np.ndarray, np.ndarray]:
    """Best row of ``table`` ``(A, n)`` by ``totals`` ``(A,)`` and each column's confidence factor."""
    best = int(np.argmax(totals))
    chosen = table[best]
    margin = np.full(table.shape[1], np.inf)
    for i in range(table.shape[1]):
        other = table[:, i] != chosen[i]
        if other.any():
            margin[i] = totals[best] - totals[other].max()
    factor = np.clip(margin / np.log(1.0 / ambiguous_ratio), 0.0, 1.0)
    return chosen, np.where(chosen == NONE, 0.0, factor)


def _points(group: Prior, part: PriorComponent) -> int:
    """How many of the group's POIs the component places (its assigned channels of the group)."""
    return min(part.assigned, int((group.index(part.members) >= 0).sum()))


def decide_with_prior(group: Prior, parts: Sequence[PriorComponent], anchors: np.ndarray,
                      ambiguous_ratio: float) -> List[Optional[Tuple[np.ndarray, np.ndarray]]]:
    """Per component of ``parts`` (the ambiguous components of ``group``, one shape group or a
    :class:`CombinedPrior` of several): column (peak, or ``NONE``) and
    confidence factor of each member, or None where the prior cannot decide it (fewer than
    :data:`MIN_POINTS` points with the anchors, or no member in the group).

    ``anchors`` ``(P, D)``: the group's anchor points in mm (NaN where a group POI is no anchor);
    ``ambiguous_ratio``: see :mod:`.peak_assignment`.
    """
    out: List[Optional[Tuple[np.ndarray, np.ndarray]]] = [None] * len(parts)
    if not parts or parts[0].positions_mm.shape[-1] != group.dim:
        return out
    anchors = anchors.copy()
    known = int(np.isfinite(anchors).all(-1).sum())
    usable = [k for k, p in enumerate(parts) if _points(group, p) > 0]
    tables = {k: _candidates(parts[k]) for k in usable}
    size = 1
    for k in usable:
        size = size * len(tables[k]) if tables[k] is not None else MAX_ASSIGNMENTS + 1
    if len(usable) > 1 and size <= MAX_ASSIGNMENTS and known + sum(_points(group, parts[k]) for k in usable) >= MIN_POINTS:
        joint = np.array([np.concatenate(rows) for rows in itertools.product(*(tables[k] for k in usable))], dtype=int)
        chosen, factor = _decision(joint, _total(group, [parts[k] for k in usable], joint, anchors), ambiguous_ratio)
        start = 0
        for k in usable:
            n = len(parts[k].members)
            out[k] = chosen[start:start + n], factor[start:start + n]
            start += n
        return out
    for k in sorted(usable, key=lambda k: -_points(group, parts[k])):  # the larger first: more to fit on
        part = parts[k]
        if known + _points(group, part) < MIN_POINTS:
            continue
        table = tables[k]
        if table is None:
            table, totals = _local_search(group, part, anchors)
        else:
            totals = _total(group, [part], table, anchors)
        chosen, factor = _decision(table, totals, ambiguous_ratio)
        out[k] = chosen, factor
        slot = group.index(part.members)
        for i in np.nonzero((slot >= 0) & (chosen != NONE) & (factor >= ANCHOR_MIN_FACTOR))[0]:
            if not np.isfinite(anchors[slot[i]]).all():
                anchors[slot[i]] = part.positions_mm[i, chosen[i]]
                known += 1
    return out

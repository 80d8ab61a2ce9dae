"""Several peaks per heatmap channel: candidate peaks, channels assigned to distinct peaks, ambiguity.

A network that localises well but names badly (several similar corners) draws one landmark
channel's peak on each corner that looks like its own, and the highest one is not always the
right one: several channels then land on one place. Here every channel gets a few candidate
peaks, channels that compete are assigned to *distinct* peaks jointly, and the confidence says
how clear that choice was. Positions are voxel indices of the decoded array (a structure's crop
in structure mode, the whole preprocessed image in whole-image mode).

Rules:

* **Candidates** (:func:`find_candidates`): local maxima of a channel (at least their 3^D
  neighbours) that rise at least :data:`CANDIDATE_FRACTION` of the channel's best peak above its
  background (the channel's median), at most :data:`CANDIDATES_PER_CHANNEL` per channel, greedily
  from the highest, none within :data:`SUPPRESSION_SIGMAS` sigmas of a higher one. Candidate 0 is
  the channel's argmax (or, where the channel's search is bounded to a box, its best local maximum
  inside the box) and keeps exactly the fit :func:`~poi_nnunet.heatmaps.decode_heatmaps` gives;
  the others are told apart by a rough centre (a log-parabola through 3 voxels per axis) and only
  a chosen one is fitted, alike (:func:`~poi_nnunet.heatmaps.fit_peaks_at`: same background, same
  window, without the window voxels nearer to another candidate of the channel).
* **Joint assignment** (:func:`assign_peaks`): among the channels of one competition group,
  candidates of different channels at most ``same_peak_sigmas`` apart (distances in sigmas per
  axis; :data:`SAME_PEAK_SIGMAS` at most, less where the dataset's POIs lie closer than two
  sigmas, see :meth:`~poi_nnunet.plan.PoiPlan.same_peak_sigmas`) are one peak (greedily from the highest candidate, one per channel and peak).
  Channels linked through such shared peaks are assigned to distinct peaks (or to none) so that
  the sum of their scores (voxel value above the channel's background) is largest
  (``scipy.optimize.linear_sum_assignment``; every real peak is preferred over none). Where the
  channels' best candidates are already distinct peaks, nothing is solved: every channel keeps
  its best, bit for bit. A channel left without a peak of its own ("peak taken") keeps its best
  candidate with confidence 0, so it is dropped by any positive ``min_confidence``.
* **Ambiguity**: the margin ``m`` of a channel is how much the best total score drops when that
  channel may not have the peak it got (the others re-assigned optimally). Its confidence (the
  fitted height / amplitude of the chosen peak) is multiplied by
  ``clip(m / ((1 - AMBIGUOUS_RATIO) * s), 0, 1)``, ``s`` the chosen peak's score: an alternative up
  to half as high costs nothing (a clear single peak keeps its fitted-height confidence, bit for
  bit), an equal one (a tie: two channels with the same two peaks, or four claiming one corner
  equally) gives 0, so the default ``min_confidence`` drops such points as ambiguous rather than
  write a coin flip. In whole-image mode the alternatives are the channel's other candidates and
  the other channels' claims; in structure mode a channel's other peaks inside a structure's box
  are the neighbouring structures' peaks of the same POI (every structure in view is drawn in
  every channel), so only the other channels' claims count there.
* **Shape prior**: where a component's assignment is ambiguous (some factor below 1) and the plans
  have a shape prior for the channels' structure group, :mod:`.prior_assignment` re-decides it by
  heatmap score plus the prior's log-likelihood of the resulting configuration (the mean shape fitted
  by translation and scale, orientation kept, on the assignment under test and the group's
  unambiguous channels, if any), jointly for the group's ambiguous components where that is cheap,
  and the factor becomes the margin in that combined score. A component whose channels lie in several
  groups (a landmark-only dataset's rigid groups) adds the groups' log-likelihoods, each fitted on its
  own channels. Without a prior, with fewer than three
  points to fit on, or for a channel that shares no peak with another, nothing changes.
* Components of more than :data:`EXACT_MARGIN_CHANNELS` channels take each margin from the moves
  of at most two channels (:func:`_short_move_margins`) instead of a full re-assignment per channel.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from ..geometry import CropBox
from ..heatmaps import PeakFit, fit_peaks_at, rough_peak_centres
from ..shape_prior import ShapeGroup
from .prior_assignment import ANCHOR_MIN_FACTOR, NONE, CombinedPrior, Prior, PriorComponent, decide_with_prior

CANDIDATES_PER_CHANNEL = 6
CANDIDATE_FRACTION = 0.25
SUPPRESSION_SIGMAS = 2.0
SAME_PEAK_SIGMAS = 1.0
AMBIGUOUS_RATIO = 0.5
EXACT_MARGIN_CHANNELS = 16
DENSE_MAXIMA_FRACTION = 0.05  # above this share of voxels over the threshold, test local maxima densely
_FORBIDDEN = 1e12


@dataclass
class Candidates:
    """Candidate peaks of C channels, K slots each; slot 0 is the channel's best (see the module docstring).

    Only the argmax (slot 0 where it lies in the channel's region) comes fitted; the other slots have
    the rough centre :func:`~poi_nnunet.heatmaps.rough_peak_centres` gives (enough to tell peaks apart)
    until :meth:`refit` fits the ones a decision needs.
    """

    positions: np.ndarray  # (C, K, D) float64 voxel indices of the decoded array
    confidence: np.ndarray  # (C, K) fitted height / amplitude, clipped to [0, 1]; NaN where not fitted
    scores: np.ndarray  # (C, K) float64: voxel value above the channel's background
    valid: np.ndarray  # (C, K) bool; a channel with no valid slot 0 has no peak in its region
    voxels: np.ndarray  # (C, K, D) int: the integer peaks
    background: np.ndarray  # (C,) float64: the channel's median
    radius: np.ndarray  # (C,) int: the fit window radius of the channel's decoding group

    @property
    def num_channels(self) -> int:
        return self.valid.shape[0]

    @property
    def fitted(self) -> np.ndarray:
        return np.isfinite(self.confidence)

    @classmethod
    def concatenate(cls, parts: Sequence["Candidates"]) -> "Candidates":
        return cls(*(np.concatenate([getattr(p, f) for p in parts]) for f in
                     ("positions", "confidence", "scores", "valid", "voxels", "background", "radius")))

    def refit(self, maps: torch.Tensor, channels: np.ndarray, slots: np.ndarray, amplitude: float) -> None:
        """Fit slot ``slots[i]`` of channel ``channels[i]``, whose map is ``maps[i]`` (float, spatial axes
        as the candidates'), as the argmax was fitted (same background and window radius), but without the
        window voxels nearer to another candidate of the channel (a neighbouring peak's flank)."""
        # the channel's other candidates, whose flanks are kept out of the fit
        others = np.where(self.valid[channels][..., None], self.voxels[channels], np.nan)
        others[np.arange(len(channels)), slots] = np.nan
        for radius in np.unique(self.radius[channels]):
            same = np.nonzero(self.radius[channels] == radius)[0]
            c, k = channels[same], slots[same]
            coords, height = fit_peaks_at(maps[torch.from_numpy(same)], torch.arange(len(same)),
                                          torch.from_numpy(self.voxels[c, k]), torch.from_numpy(self.background[c]),
                                          int(radius), others=torch.from_numpy(others[same]))
            self.positions[c, k] = coords.cpu().numpy()
            self.confidence[c, k] = np.clip(height.cpu().numpy() / amplitude, 0.0, 1.0)


def _local_maxima(maps: torch.Tensor) -> torch.Tensor:
    """Where each ``(G, *spatial)`` map is at least its 3^D neighbours (a separable running maximum)."""
    pooled = maps
    for axis in range(1, maps.ndim):
        n = maps.shape[axis]
        if n < 2:
            continue
        out = pooled.clone()
        lower, upper = out.narrow(axis, 0, n - 1), out.narrow(axis, 1, n - 1)
        torch.maximum(lower, pooled.narrow(axis, 1, n - 1), out=lower)
        torch.maximum(upper, pooled.narrow(axis, 0, n - 1), out=upper)
        pooled = out
    return maps >= pooled


def _maxima_above(score: torch.Tensor, threshold: torch.Tensor) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Local maxima (at least their 3^D neighbours) of each ``(N, *spatial)`` map at or above its
    ``threshold`` ``(N,)``: map index, flat voxel index and value of each. Tested voxel by voxel where
    few pass the threshold (a peaked map), on the whole map otherwise."""
    n, *shape = score.shape
    above = score >= threshold.reshape(n, *([1] * len(shape)))
    index = above.nonzero()
    if len(index) > DENSE_MAXIMA_FRACTION * above.numel():
        index = (above & _local_maxima(score)).nonzero()
    else:
        value = score[tuple(index.T)]
        size = torch.tensor(shape)
        keep = torch.ones(len(index), dtype=torch.bool)
        for offset in itertools.product((-1, 0, 1), repeat=len(shape)):
            if any(offset):
                near = torch.minimum((index[:, 1:] + torch.tensor(offset)).clamp_min(0), size - 1)
                keep &= value >= score[(index[:, 0], *near.T)]  # a clamped neighbour is the voxel itself
        index = index[keep]
    value = score[tuple(index.T)].double().cpu().numpy()
    index = index.cpu().numpy()
    return index[:, 0], np.ravel_multi_index(tuple(index[:, 1:].T), shape), value


def find_candidates(maps: torch.Tensor, fit: PeakFit, sigma: Sequence[float], amplitude: float,
                    boxes: Optional[Sequence[Optional[CropBox]]] = None, k: int = CANDIDATES_PER_CHANNEL,
                    fraction: float = CANDIDATE_FRACTION) -> Candidates:
    """Candidate peaks of ``maps`` ``(G, *spatial)`` (float), whose argmax fit is ``fit`` (batch of one).

    ``sigma``: heatmap width per spatial axis (voxels); ``boxes``: per channel, the box (spatial
    axes) its peaks must lie in, or None for the whole map. Slot 0 is the baseline fit where the
    channel's argmax lies in its region.
    """
    g, *shape = maps.shape
    dim = len(shape)
    sigma = np.asarray(sigma, dtype=np.float64)
    background = fit.background[0].to(torch.float64)
    argmax = fit.peak[0].cpu().numpy()
    flat_argmax = np.ravel_multi_index(tuple(argmax.T), shape)
    argmax_inside = np.ones(g, dtype=bool)
    bounded = [c for c, box in enumerate(boxes or []) if box is not None]
    free = np.setdiff1d(np.arange(g), bounded)
    with torch.no_grad():
        score = maps - background.to(maps.dtype).reshape(g, *([1] * dim))  # in the maps' dtype, as ranked
        at_argmax = score.reshape(g, -1).gather(1, torch.from_numpy(flat_argmax).reshape(g, 1))[:, 0]
        threshold = torch.where(at_argmax > 0, fraction * at_argmax, at_argmax)
        rows, index, values = _maxima_above(score[torch.from_numpy(free)], threshold[torch.from_numpy(free)])
        found = [(free[rows], index, values)]
        for c in bounded:  # the best local maximum inside the box sets the threshold
            box = boxes[c]
            argmax_inside[c] = bool(np.all((argmax[c] >= box.start) & (argmax[c] < box.stop)))
            around = box.grown([1] * dim).clipped(shape)  # a box voxel's neighbours outside it count too
            crop = score[c][around.slices]
            maxima = _local_maxima(crop[None])[0]
            inner = torch.zeros_like(maxima)
            inner[CropBox(np.subtract(box.start, around.start), box.size).slices] = True
            where = (maxima & inner).nonzero()
            if not len(where):
                continue
            value = crop[tuple(where.T)]
            keep = value >= (fraction * value.max() if bool(value.max() > 0) else value.max())
            voxel = where[keep].cpu().numpy() + np.asarray(around.start)
            found.append((np.full(len(voxel), c), np.ravel_multi_index(tuple(voxel.T), shape),
                          value[keep].double().cpu().numpy()))
        at_argmax = at_argmax.double().cpu().numpy()
    rows, index, values = (np.concatenate(part) for part in zip(*found))
    order = np.lexsort((index, -values, rows))  # per channel, highest first
    rows, index, values = rows[order], index[order], values[order]
    first = np.searchsorted(rows, np.arange(g + 1))

    voxels = np.zeros((g, k, dim), dtype=np.int64)
    scores = np.zeros((g, k))
    valid = np.zeros((g, k), dtype=bool)
    baseline = argmax_inside.copy()  # slot 0 is the argmax fit
    voxels[baseline, 0] = argmax[baseline]
    scores[baseline, 0] = at_argmax[baseline]
    valid[baseline, 0] = True
    # a channel whose only candidate is its argmax (a clear single peak, the usual case) is done
    count = np.diff(first)
    for c in np.nonzero(~baseline | (count > 1))[0]:
        own = slice(first[c], min(first[c + 1], first[c] + 8 * k))  # enough to find k apart
        voxel = np.stack(np.unravel_index(index[own], shape), axis=1)
        value = values[own]
        if baseline[c]:
            voxel, value = np.concatenate([argmax[c][None], voxel]), np.concatenate([[at_argmax[c]], value])
        scaled = voxel / sigma
        apart = ((scaled[:, None] - scaled[None]) ** 2).sum(-1) >= SUPPRESSION_SIGMAS**2
        accepted: List[int] = []
        for e in range(len(voxel)):
            if len(accepted) == k:
                break
            if apart[e, accepted].all():
                accepted.append(e)
        voxels[c, :len(accepted)] = voxel[accepted]
        scores[c, :len(accepted)] = value[accepted]
        valid[c, :len(accepted)] = True

    positions = np.zeros((g, k, dim))
    confidence = np.full((g, k), np.nan)
    rough = valid.copy()
    rough[:, 0] &= ~baseline
    rows, slots = np.nonzero(rough)
    if len(rows):
        positions[rows, slots] = rough_peak_centres(maps, torch.from_numpy(rows), torch.from_numpy(voxels[rows, slots]),
                                                    background).cpu().numpy()
    positions[baseline, 0] = fit.coords[0][torch.from_numpy(baseline)].double().cpu().numpy()
    confidence[baseline, 0] = fit.confidence[0][torch.from_numpy(baseline)].double().cpu().numpy()
    return Candidates(positions, confidence, scores, valid, voxels, background.cpu().numpy(),
                      np.full(g, fit.radius))


# ---------------------------------------------------------------------------------------------- assignment
def _factor(margin, score):
    """The ambiguity factor (module docstring); 1 for a peak not above the background (its confidence is ~0)."""
    margin, score = np.asarray(margin, dtype=np.float64), np.asarray(score, dtype=np.float64)
    ratio = margin / np.where(score > 0, (1.0 - AMBIGUOUS_RATIO) * score, 1.0)
    return np.where(score > 0, np.clip(ratio, 0.0, 1.0), 1.0)


def _solve(cost: np.ndarray) -> Tuple[np.ndarray, float]:
    """Column of each row (``NONE`` for a "none" column) and the total cost, rows x (peaks + one none per row)."""
    n, m = cost.shape
    full = np.concatenate([cost, np.zeros((n, n))], axis=1)
    r, c = linear_sum_assignment(full)
    column = np.full(n, NONE)
    column[r] = np.where(c < m, c, NONE)
    return column, float(full[r, c].sum())


def _clusters(channel: np.ndarray, score: np.ndarray, distance: np.ndarray,
              same_peak_sigmas: float = SAME_PEAK_SIGMAS) -> np.ndarray:
    """Peak id of each candidate: greedily from the highest, a candidate joins the nearest peak whose first
    (highest) candidate is at most ``same_peak_sigmas`` away and that has none of its channel yet."""
    n = len(score)
    order = np.lexsort((np.arange(n), -score))
    peak = np.full(n, -1)
    heads = np.zeros(n, dtype=int)
    taken = np.zeros((n, int(channel.max()) + 1), dtype=bool)  # peak x channel
    count = 0
    for e in order:
        d = np.where(taken[:count, channel[e]], np.inf, distance[e, heads[:count]])
        j = int(np.argmin(d)) if count else -1
        if j < 0 or d[j] > same_peak_sigmas:
            j, heads[count] = count, e
            count += 1
        taken[j, channel[e]] = True
        peak[e] = j
    return peak


def _short_move_margins(cost: np.ndarray, column: np.ndarray, s: np.ndarray, own_alternatives: bool) -> np.ndarray:
    """Margins from the moves of at most two channels (large components; see the module docstring).

    Channel ``i`` leaves its peak ``c`` and goes to none (loss ``s_i``), or another channel ``d`` moves onto
    ``c`` from its own peak (loss ``s_i - (score[d, c] - s_d)``), or (``own_alternatives``) ``i`` moves to a
    free peak ``j`` (``s_i - score[i, j]``) or to ``j`` held by ``h``, who moves to ``c`` or to the best free
    peak or none (``s_i - score[i, j] + s_h - max(...)``). Each is a feasible assignment, so the margin is
    never below the exact one.
    """
    n, m = cost.shape
    score = np.where(cost < _FORBIDDEN, -cost, -np.inf)
    got = column != NONE
    c = np.maximum(column, 0)
    holder = np.full(m, -1)
    holder[column[got]] = np.nonzero(got)[0]
    free = holder < 0
    free_best = np.maximum(score[:, free].max(1, initial=-np.inf), 0.0)
    margin = s.copy()  # to none
    gain = score - s[:, None]  # channel d moving onto peak j
    if n > 1:
        order = np.argsort(-gain, axis=0, kind="stable")
        best, second = order[0], order[1]
        theirs = np.where(best[c] != np.arange(n), gain[best[c], c], gain[second[c], c])
        margin = np.minimum(margin, s - theirs)
    if own_alternatives:
        h = np.maximum(holder, 0)
        displaced = np.where(free[None, :], 0.0,
                             s[h][None, :] - np.maximum(free_best[h][None, :], score[h[None, :], c[:, None]]))
        loss = s[:, None] - score + displaced
        loss[np.arange(n), c] = np.inf
        margin = np.minimum(margin, loss.min(1))
    return margin


@dataclass
class _Ambiguous:
    """A component (channels with candidates on shared peaks) whose heatmap assignment was ambiguous (a
    factor below 1), for the shape prior: ``slot`` ``(n, m)`` the candidate slot of member ``i`` at peak ``j`` (``NONE``: none),
    ``score`` ``(n, m)`` its heatmap score (``-inf``: none), ``column`` ``(n,)`` the heatmap solution."""

    members: np.ndarray
    slot: np.ndarray
    score: np.ndarray
    column: np.ndarray


def _component(cands: Candidates, channels: np.ndarray, ent_c: np.ndarray, ent_k: np.ndarray,
               scaled: np.ndarray, own_alternatives: bool,
               same_peak_sigmas: float = SAME_PEAK_SIGMAS) -> Tuple[np.ndarray, np.ndarray, Optional[_Ambiguous]]:
    """Chosen slot and confidence factor of each of ``channels`` (linked by shared peaks), and the component
    for the shape prior where the choice was ambiguous; ``ent_c``, ``ent_k``: their candidates, at
    positions ``scaled`` (in sigmas)."""
    local = np.searchsorted(channels, ent_c)
    scores = cands.scores[ent_c, ent_k]
    distance = np.sqrt(((scaled[:, None] - scaled[None]) ** 2).sum(-1))
    peak = _clusters(local, scores, distance, same_peak_sigmas)
    n, m = len(channels), int(peak.max()) + 1
    slot = np.full((n, m), NONE)
    slot[local, peak] = ent_k
    cost = np.full((n, m), _FORBIDDEN)
    cost[local, peak] = -scores
    best_peak = np.full(n, NONE)
    best_peak[local[ent_k == 0]] = peak[ent_k == 0]
    if len(set(best_peak.tolist())) == n:  # no conflict: every channel keeps its best, as before
        column, total = best_peak, float(cost[np.arange(n), best_peak].sum())
    else:
        column, total = _solve(cost)
    chosen = np.where(column == NONE, NONE, slot[np.arange(n), np.maximum(column, 0)])
    got = column != NONE
    s = np.where(got, -cost[np.arange(n), np.maximum(column, 0)], 0.0)
    margin = np.zeros(n)
    if n <= EXACT_MARGIN_CHANNELS:
        for i in np.nonzero(got)[0]:
            without = cost.copy()
            if own_alternatives:
                without[i, column[i]] = _FORBIDDEN
            else:
                without[i, :] = _FORBIDDEN
            margin[i] = _solve(without)[1] - total
    else:
        margin = _short_move_margins(cost, column, s, own_alternatives)
    factor = np.where(got, _factor(margin, s), 0.0)
    ambiguous = None
    if (factor < 1.0).any():
        ambiguous = _Ambiguous(channels, slot, np.where(cost < _FORBIDDEN, -cost, -np.inf), column)
    return chosen, factor, ambiguous


def _decide_with_prior(cands: Candidates, prior: Prior, ambiguous: List[_Ambiguous],
                       chosen: np.ndarray, factor: np.ndarray) -> None:
    """Re-decide the ambiguous components of one prior group (or of several groups combined) with the shape
    prior (:mod:`.prior_assignment`), in place; anchors are the prior's channels placed with factor at
    least ``ANCHOR_MIN_FACTOR`` outside them."""
    spacing = np.asarray(prior.spacing_mm, dtype=np.float64)
    if cands.positions.shape[-1] != len(spacing):
        return  # e.g. a 2d configuration decoding a volume: the prior has the in-plane axes only
    undecided = np.zeros(cands.num_channels, dtype=bool)
    for a in ambiguous:
        undecided[a.members] = True
    channels = np.array([c for c in prior.channels if c < cands.num_channels], dtype=int)
    anchor = cands.valid[channels, 0] & (chosen[channels] != NONE) & (factor[channels] >= ANCHOR_MIN_FACTOR)
    anchor &= ~undecided[channels]
    anchors = np.full((len(prior.channels), len(spacing)), np.nan)
    where = prior.index(channels[anchor])
    anchors[where] = cands.positions[channels[anchor], chosen[channels[anchor]]] * spacing
    parts = [PriorComponent(a.members, a.score, cands.positions[a.members[:, None], np.maximum(a.slot, 0)] * spacing,
                            a.column) for a in ambiguous]
    for a, decided in zip(ambiguous, decide_with_prior(prior, parts, anchors, AMBIGUOUS_RATIO)):
        if decided is None:
            continue
        column, factor[a.members] = decided
        chosen[a.members] = np.where(column == NONE, NONE, a.slot[np.arange(len(column)), np.maximum(column, 0)])


def _prior_sets(priors: Sequence[ShapeGroup], ambiguous: Sequence[_Ambiguous]) -> List[Tuple[Prior, List[_Ambiguous]]]:
    """The ambiguous components each prior decides: groups linked by a component with channels in both
    are decided together (:class:`~.prior_assignment.CombinedPrior`, one group alone: itself), with every
    component that has a channel in one of them; a component with no channel in any group is left out.
    In the order of the groups' first appearance in ``priors``."""
    owner: Dict[int, int] = {}
    for g, prior in enumerate(priors):
        for c in prior.channels:
            owner.setdefault(int(c), g)
    parent = list(range(len(priors)))

    def root(g: int) -> int:
        while parent[g] != g:
            g = parent[g]
        return g

    touched = [sorted({owner[int(c)] for c in a.members if int(c) in owner}) for a in ambiguous]
    for groups in touched:
        for g in groups[1:]:
            parent[root(g)] = root(groups[0])
    sets: Dict[int, Tuple[set, List[_Ambiguous]]] = {}
    for a, groups in zip(ambiguous, touched):
        if groups:
            entry = sets.setdefault(root(groups[0]), (set(), []))
            entry[0].update(groups)
            entry[1].append(a)
    out: List[Tuple[Prior, List[_Ambiguous]]] = []
    for _, (groups, mine) in sorted(sets.items(), key=lambda item: min(item[1][0])):
        members = sorted(groups)
        out.append((priors[members[0]] if len(members) == 1 else CombinedPrior(tuple(priors[g] for g in members)), mine))
    return out


def assign_peaks(cands: Candidates, groups: Sequence[np.ndarray], sigma: Sequence[float],
                 own_alternatives: bool = True, same_peak_sigmas: float = SAME_PEAK_SIGMAS,
                 priors: Sequence[ShapeGroup] = ()) -> Tuple[np.ndarray, np.ndarray]:
    """Slot chosen for each channel (``NONE``: its peaks were all taken) and its confidence factor.

    ``groups``: channel indices that compete (each channel in at most one group; channels in none
    keep slot 0 with factor 1). ``sigma`` per axis of the positions; ``own_alternatives``: whether a
    channel's own other candidates count as alternatives (see the module docstring);
    ``same_peak_sigmas``: how close (in sigmas) candidates of two channels must be to be one peak;
    ``priors``: the shape prior's groups (channel indices as ``cands``'); an ambiguous component with
    channels in one or more of them is re-decided by their summed log-likelihoods
    (:func:`_prior_sets`, :mod:`.prior_assignment`; none: the heatmaps alone decide).
    """
    c_all = cands.num_channels
    chosen = np.zeros(c_all, dtype=int)
    factor = np.ones(c_all)
    sigma = np.asarray(sigma, dtype=np.float64)
    ambiguous: List[_Ambiguous] = []
    for group in groups:
        group = np.asarray(group, dtype=int)
        group = np.sort(group[cands.valid[group, 0]])
        if not len(group):
            continue
        ent_c, ent_k = np.nonzero(cands.valid[group])
        ent_c = group[ent_c]
        scaled = cands.positions[ent_c, ent_k] / sigma
        pairs = cKDTree(scaled).query_pairs(same_peak_sigmas, output_type="ndarray")
        pairs = pairs[ent_c[pairs[:, 0]] != ent_c[pairs[:, 1]]]
        local = np.searchsorted(group, ent_c)
        graph = coo_matrix((np.ones(len(pairs)), (local[pairs[:, 0]], local[pairs[:, 1]])),
                           shape=(len(group), len(group)))
        _, label = connected_components(graph, directed=False)
        sizes = np.bincount(label)
        alone = group[sizes[label] == 1]  # keeps its best; the margin is to its next candidate (or none)
        if own_alternatives:
            alternative = np.where(cands.valid[alone, 1:], cands.scores[alone, 1:], 0.0).max(1, initial=0.0)
        else:
            alternative = np.zeros(len(alone))
        factor[alone] = _factor(cands.scores[alone, 0] - alternative, cands.scores[alone, 0])
        for comp in np.nonzero(sizes > 1)[0]:
            members = group[label == comp]
            keep = label[local] == comp
            chosen[members], factor[members], unclear = _component(cands, members, ent_c[keep], ent_k[keep],
                                                                   scaled[keep], own_alternatives, same_peak_sigmas)
            if unclear is not None:
                ambiguous.append(unclear)
    for prior, mine in _prior_sets(priors, ambiguous):
        _decide_with_prior(cands, prior, mine, chosen, factor)
    return chosen, factor

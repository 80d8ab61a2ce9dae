"""Landmarks from a predicted uv(w) map: any template point, at sub-voxel precision (DenseSeg, seed Eq. 3).

A ``uv`` model predicts, per structure, a map ``(D, *S)`` holding at each voxel of the structure its
template coordinate normalised to [-1, 1]. A point of the template is found where the predicted map
takes its template coordinate. :func:`extract_template_points` does that for ``P`` points at once:

1. one :class:`scipy.spatial.cKDTree` over the uv values of the masked voxels (built once per call,
   ``O(N log N)``; never a dense ``P x N`` distance matrix);
2. per target the ``k`` voxels whose uv is nearest, weighted by a softmin of their uv distance
   ``w = softmax(-d / temperature)`` (seed Eq. 3 has no temperature, i.e. 1);
3. optionally (default) a sub-voxel refinement: the local affine map ``uv(x) = J x + b`` fitted by
   least squares on the masked voxels of the ``(2 r + 1)^D`` block (``refine_radius`` r, default 2)
   around the uv-nearest voxel, solved for ``uv(x) = target`` (one inverse-linear step, re-centred
   once when the solution leaves the centre voxel). It falls back to the softmin where the fit is
   ill-posed (fewer than ``D + 1`` usable voxels, collinear voxels, a singular ``J``) or lands more
   than one voxel from its block centre.

Why a spatial block and not the ``k`` uv-nearest voxels for the fit: the ``k`` nearest in uv can
lie on a line (a thin structure, an anisotropic map), where the affine fit is singular; a
block is well-posed wherever the mask is locally full.

Why the refinement: the softmin is a convex combination of voxel centres, so even on an exact
affine map it is biased toward the centroid of the ``k`` voxels (the seed's weights, temperature
1, are almost uniform because uv distances between neighbours are ~0.01-0.05). The affine solve is
exact on an affine map and averages noise over the block's voxels.

Measured with ``python benchmarks/uv_extraction_speed.py`` (CPU, 2 cores shared with a training
run, so times vary about 2x between runs). Mean error in voxels over 500 targets uniform in
the inner 80 % of the structure; maps ``uv = A (x - c + w(x))`` exact affine (``w = 0``) or warped
(sinusoid of slope 0.3), plus i.i.d. Gaussian noise (uv units); small = semi-axes 14 x 10 voxels
(~0.1 uv per voxel, a carpal bone), large = 90 x 70 (~0.013 uv per voxel), 3D = 40 x 34 x 30:

==================  =====  =====  ===========  ===========  ===========  ===========  ===========
map                 noise  T=1    T=0.03       T=0.01       refine r=1   refine r=2   refine r=3
                           (seed) (softmin)    (softmin)
==================  =====  =====  ===========  ===========  ===========  ===========  ===========
2D small affine     0      0.200  0.074        0.232        0.000        0.000        0.000
2D small affine     0.005  0.203  0.084        0.239        0.033        0.019        0.013
2D small warped     0      0.220  0.069        0.234        0.026        0.084        0.163
2D small warped     0.005  0.223  0.079        0.238        0.040        0.090        0.168
2D medium warped    0.005  0.231  0.172        0.147        0.091        0.054        0.065
2D large affine     0.005  0.327  0.303        0.270        0.183        0.102        0.074
2D large warped     0      0.219  0.184        0.117        0.004        0.013        0.028
2D large warped     0.01   0.514  0.503        0.500        0.423        0.221        0.141
3D warped           0      0.204  0.152        0.103        0.011        0.037        0.075
3D warped           0.005  0.259  0.222        0.201        0.063        0.045        0.076
3D warped           0.01   0.358  0.338        0.352        0.131        0.064        0.078
==================  =====  =====  ===========  ===========  ===========  ===========  ===========

(The uv-nearest voxel alone, ``temperature=0``: 0.38-1.09.) Over all 24 rows of the benchmark:

* **temperature 0.03 (default)**: the best mean of the softmin temperatures (0.210 voxel, the
  seed's 1: 0.272, 0.1: 0.247, 0.01: 0.231, 0.003: 0.360), never worse than the seed in any row,
  and at most 0.074 voxel behind the row's best temperature. The best temperature scales with the
  uv step per voxel (0.03 for small structures, 0.01 for large ones); 0.03 is the safe side,
  because a too-cold softmin degrades to the argmin (0.38 voxel) while a too-warm one only
  approaches the seed's uniform mean.
* **refinement on, radius 2 (default)**: mean 0.063 voxel (r=1: 0.099, r=3: 0.066), at most 0.080
  voxel behind the row's best radius (r=1: 0.282, r=3: 0.137): the ``5^D`` block averages noise
  (r=1 is 1.8x worse at noise 0.005 on large structures) while its curvature bias stays below 0.1
  voxel on strongly warped small structures (r=3: 0.17). Exact on affine maps (~1e-12 voxel).
  r=2 beats every softmin temperature in 22 of the 24 rows (not on the strongly warped small
  structure, 0.084-0.091 against T=0.03's 0.069-0.079; r=1 beats them in all 24).

Speed (same command; 256x256 map with a 30 % mask, 19787 voxels; 96^3 with a 30 % ellipsoid,
265381 voxels; best of 5 calls, peak = numpy allocations during a call):

===========  =====  =====  =====  =====  =====
P            20     100    500    720    5000
===========  =====  =====  =====  =====  =====
2D ms        5      4      7      12     73
2D MiB       1.4    1.4    1.6    2.0    3.0
3D ms        91     105    160    172    368
3D MiB       26.6   26.6   26.6   26.6   26.7
===========  =====  =====  =====  =====  =====

In 3D the KD-tree over the masked voxels (built once, independent of ``P``) dominates.

Positions are voxel coordinates in the map's array axes, voxel centres on integers (the
convention of the rest of :mod:`poi_nnunet.inference`). No returned position rounds to a voxel
outside the mask: a refined position that would is replaced by the softmin one, and a softmin one
that would (its ``k`` voxels straddling a gap) by the uv-nearest voxel itself.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

DEFAULT_K = 5
DEFAULT_TEMPERATURE = 0.03  # uv units; see the module's table
DEFAULT_REFINE_RADIUS = 2  # the affine fit's block is (2 r + 1)^D voxels; see the module's table
#: Targets refined together: the blocks' working memory is bounded by this, not by ``P``.
REFINE_CHUNK = 1024
#: A fitted ``J`` with a larger condition number is treated as singular (fallback to the softmin).
MAX_JACOBIAN_CONDITION = 1e4


@dataclass(frozen=True)
class UvExtraction:
    """Extracted points: ``positions`` ``(P, D)`` voxel coordinates (NaN where not found),
    ``distance`` ``(P,)`` uv distance from each target to the nearest masked voxel's uv (NaN where
    not found), ``found`` ``(P,)`` bool (False for an empty mask, no finite uv in it, or a
    non-finite target)."""

    positions: np.ndarray
    distance: np.ndarray
    found: np.ndarray


def extract_template_points(uv: np.ndarray, mask: np.ndarray, targets: np.ndarray, k: int = DEFAULT_K,
                            temperature: float = DEFAULT_TEMPERATURE, refine: bool = True,
                            refine_radius: int = DEFAULT_REFINE_RADIUS) -> UvExtraction:
    """Voxel positions where the predicted map ``uv`` takes each template coordinate of ``targets``.

    ``uv`` ``(D, *S)`` with ``len(S) == D`` (2D or 3D): one structure's predicted map; ``mask``
    ``(*S)`` bool: its predicted voxels (only these are searched); ``targets`` ``(P, D)``: template
    uv coordinates. ``k`` voxels enter the softmin with weights ``softmax(-d / temperature)`` (``d``
    the uv distance; ``temperature`` 0 means the uv-nearest voxel alone); ``refine`` adds the affine
    solve described in the module docstring. Memory and time are linear in ``P``.
    """
    uv, mask, targets = _checked(uv, mask, targets, k, temperature, refine_radius)
    dim, p = targets.shape[1], targets.shape[0]
    positions = np.full((p, dim), np.nan)
    distance = np.full(p, np.nan)
    found = np.zeros(p, dtype=bool)
    coords = np.argwhere(mask)  # (N, D)
    values = uv[(slice(None), *coords.T)].T.astype(np.float64)  # (N, D)
    usable = np.isfinite(values).all(axis=1)
    coords, values = coords[usable], values[usable]
    wanted = np.flatnonzero(np.isfinite(targets).all(axis=1))
    if len(coords) == 0 or len(wanted) == 0:
        return UvExtraction(positions, distance, found)
    kk = min(k, len(coords))
    tree = cKDTree(values, balanced_tree=False, compact_nodes=False)  # sliding midpoint: ~2x faster to build
    d, idx = tree.query(targets[wanted], k=kk)
    d, idx = d.reshape(len(wanted), kk), idx.reshape(len(wanted), kk)
    nearest = coords[idx[:, 0]]  # (W, D)
    soft = _softmin(d, coords[idx], temperature)
    soft = np.where(_inside(soft, mask)[:, None], soft, nearest)
    if refine:
        usable_mask = np.zeros_like(mask)
        usable_mask[tuple(coords.T)] = True
        for start in range(0, len(wanted), REFINE_CHUNK):  # bounded (CHUNK, (2r+1)^D, D) blocks
            part = slice(start, start + REFINE_CHUNK)
            refined, ok = _affine_refine(uv, usable_mask, nearest[part], targets[wanted[part]], int(refine_radius))
            ok &= _inside(refined, mask)
            soft[part] = np.where(ok[:, None], refined, soft[part])
    positions[wanted] = soft
    distance[wanted] = d[:, 0]
    found[wanted] = True
    return UvExtraction(positions, distance, found)


def _checked(uv: np.ndarray, mask: np.ndarray, targets: np.ndarray, k: int, temperature: float, refine_radius: int):
    """Validate shapes and parameters; ``targets`` as float64 ``(P, D)``."""
    uv, mask = np.asarray(uv), np.asarray(mask, dtype=bool)
    targets = np.asarray(targets, dtype=np.float64)
    dim = uv.ndim - 1
    if dim not in (2, 3) or uv.shape[0] != dim or mask.shape != uv.shape[1:]:
        raise ValueError(f"uv must be (D, *S) with D = len(S) in (2, 3) and mask S, "
                         f"got uv {uv.shape}, mask {mask.shape}")
    if targets.ndim != 2 or targets.shape[1] != dim:
        raise ValueError(f"targets must be (P, {dim}), got {targets.shape}")
    if int(k) < 1 or not temperature >= 0 or int(refine_radius) < 1:
        raise ValueError(f"k and refine_radius must be >= 1 and temperature >= 0, got k={k}, "
                         f"refine_radius={refine_radius}, temperature={temperature}")
    return uv, mask, targets


def _softmin(d: np.ndarray, points: np.ndarray, temperature: float) -> np.ndarray:
    """Seed Eq. 3: ``sum_i softmax(-d / T)_i * points_i``; ``d`` ``(W, k)``, ``points`` ``(W, k, D)`` -> ``(W, D)``."""
    shifted = d - d[:, :1]  # the query returns distances sorted: the first is the smallest
    if temperature == 0:
        w = (shifted == 0).astype(np.float64)
    else:
        w = np.exp(-shifted / temperature)
    w /= w.sum(axis=1, keepdims=True)
    return np.einsum("wk,wkd->wd", w, points.astype(np.float64))


def _inside(points: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``(W,)``: whether each point ``(W, D)`` rounds to a voxel of ``mask`` (False for NaN)."""
    finite = np.isfinite(points).all(axis=1)
    rounded = np.rint(np.where(finite[:, None], points, -1)).astype(np.int64)
    shape = np.asarray(mask.shape)
    inb = finite & (rounded >= 0).all(axis=1) & (rounded < shape).all(axis=1)
    out = np.zeros(len(points), dtype=bool)
    out[inb] = mask[tuple(rounded[inb].T)]
    return out


def _affine_refine(uv: np.ndarray, usable: np.ndarray, centres: np.ndarray, targets: np.ndarray, radius: int):
    """Solve ``uv(x) = target`` with ``uv`` affine on the ``(2 radius + 1)^D`` block around each centre.

    ``centres`` ``(W, D)`` int voxels, ``targets`` ``(W, D)``; ``usable`` ``(*S)``: voxels whose uv
    may enter a fit. Returns positions ``(W, D)`` and ``ok`` ``(W,)``. One re-centring: a solution
    more than half a voxel from its centre is fitted again around its rounded position.
    """
    offset, ok = _affine_step(uv, usable, centres, targets, radius)
    moved = ok & (np.abs(offset) > 0.5).any(axis=1)
    if moved.any():
        new_centres = centres[moved] + np.rint(offset[moved]).astype(np.int64)
        usable_centre = _inside(new_centres.astype(np.float64), usable)
        again, ok_again = _affine_step(uv, usable, new_centres, targets[moved], radius)
        ok_again &= usable_centre
        sub = np.flatnonzero(moved)
        centres = centres.copy()
        centres[sub[ok_again]] = new_centres[ok_again]
        offset[sub[ok_again]] = again[ok_again]
    ok &= (np.abs(offset) <= 1.0).all(axis=1)
    return centres + offset, ok


def _affine_step(uv: np.ndarray, usable: np.ndarray, centres: np.ndarray, targets: np.ndarray, radius: int):
    """One least-squares affine fit per centre and its inverse: offsets ``(W, D)`` from the centre, ok ``(W,)``."""
    dim = centres.shape[1]
    block = np.array(list(itertools.product(range(-radius, radius + 1), repeat=dim)), dtype=np.int64)  # (M, D)
    pos = centres[:, None, :] + block[None]  # (W, M, D)
    shape = np.asarray(usable.shape)
    inb = ((pos >= 0) & (pos < shape)).all(axis=2)
    pos = np.clip(pos, 0, shape - 1)
    index = tuple(np.moveaxis(pos, 2, 0))
    weight = (inb & usable[index]).astype(np.float64)  # (W, M)
    vals = np.moveaxis(uv[(slice(None), *index)], 0, 2).astype(np.float64)  # (W, M, D)
    vals = np.where(weight[..., None] > 0, vals, 0.0)
    design = np.concatenate([block, np.ones((len(block), 1), dtype=np.int64)], axis=1).astype(np.float64)  # (M, D+1)
    gram = np.einsum("md,wm,me->wde", design, weight, design)  # (W, D+1, D+1)
    rhs = np.einsum("md,wm,wme->wde", design, weight, vals)  # (W, D+1, D)
    eig = np.linalg.eigvalsh(gram)
    ok = (weight.sum(axis=1) >= dim + 1) & (eig[:, 0] > 1e-6 * np.maximum(eig[:, -1], 1e-300))
    gram[~ok] = np.eye(dim + 1)
    coef = np.linalg.solve(gram, rhs)  # (W, D+1, D): rows = [J^T; b]
    jac = np.swapaxes(coef[:, :dim, :], 1, 2)  # (W, D, D): d uv / d x
    bias = coef[:, dim, :]
    ok &= np.linalg.cond(jac) < MAX_JACOBIAN_CONDITION
    jac[~ok] = np.eye(dim)
    offset = np.linalg.solve(jac, (targets - bias)[..., None])[..., 0]
    ok &= np.isfinite(offset).all(axis=1)
    return np.where(ok[:, None], offset, 0.0), ok


def uv_confidence(distance_uv: np.ndarray, half_extent_mm: np.ndarray, sigma_mm: float) -> np.ndarray:
    """Confidence ``exp(-d_mm^2 / (2 sigma_mm^2))`` in [0, 1] (1 at distance 0, 0 for NaN), shape of ``distance_uv``.

    ``distance_uv``: :attr:`UvExtraction.distance` (uv units, NaN gives 0); ``half_extent_mm``
    ``(D,)``: the template's half bounding box per axis (uv 1 = that many mm); ``sigma_mm``: the
    heatmap sigma of the plan. ``d_mm = distance_uv * geometric_mean(half_extent_mm)``: the uv
    distance is a scalar whose direction is not kept, and the geometric mean is the scale of the
    isotropic template of the same volume (it lies between the smallest and largest half extent, so
    it misjudges an elongated template's mm by at most ``max / gmean``; the L2 norm of the scaled
    vector would need the residual vector, which a nearest-neighbour distance does not give).

    Same meaning as the heatmap trainers' confidence (a fitted peak height over the target
    amplitude): it is the height, relative to its amplitude, of the training Gaussian of width
    ``sigma_mm`` at ``d_mm`` from its centre. So ``poi_predict --min_confidence 0.1`` drops a point
    whose best uv match is more than ``sigma_mm * sqrt(2 ln 10) = 2.146 sigma_mm`` away, as it would
    drop a heatmap peak a tenth of its amplitude.
    """
    half = np.asarray(half_extent_mm, dtype=np.float64)
    if half.ndim != 1 or not (half > 0).all() or not sigma_mm > 0:
        raise ValueError(f"half_extent_mm must be (D,) positive and sigma_mm positive, got {half}, {sigma_mm}")
    scale = float(np.exp(np.log(half).mean()))
    d_mm = np.asarray(distance_uv, dtype=np.float64) * scale
    conf = np.exp(-d_mm**2 / (2.0 * sigma_mm**2))
    return np.where(np.isfinite(conf), conf, 0.0)

"""Shape prior: how the training POIs of one structure group lie relative to each other.

Decoding uses it where the heatmaps leave an assignment of channels to peaks ambiguous (two
channels with the same two peaks, several channels claiming every corner of a polygon alike):
the assignment whose configuration looks like the training cases wins
(:mod:`poi_nnunet.inference.prior_assignment`).

The prior keeps the orientation. Medical images are acquired in a standardised orientation (the
patient's axes are the image's, up to a few tens of degrees), and that orientation is exactly what
names the corners of a symmetric shape: a square's four corners are told apart by which one is
top left, not by their distances. A fit with free rotation would fit a square relabelled by 90
degrees as well as the right one, so decoding fits the mean shape onto the points by translation
and isotropic scale only, and the spread absorbs the pose variation of the training set.

* **Planning** (:func:`procrustes_mean`): a generalized Procrustes analysis with similarity
  transforms (scale, rotation, translation; no reflection) of the training cases' POIs in mm finds the
  shape robustly. A case missing some POIs is aligned on the ones it has; the scale is that of the
  case with the most POIs (each new mean is fitted back onto the previous one, so it does not drift).
  The mean is then turned into the cases' mean orientation (the rotations that carry it onto the
  cases, averaged: :func:`mean_rotation`), and the spread of a POI is the RMS length of its residual
  vector after fitting each case onto that mean by translation and scale alone (mm), so it holds the
  training set's rotations as well as its shape variation.
* **Decoding** (:meth:`ShapeGroup.log_likelihood`): the mean shape is fitted onto the points at
  hand by translation and isotropic scale (:func:`scale_shift_fit`, least squares weighted by
  ``1 / spread^2``, scale kept positive: a half turn is no fit); a point's residual ``r`` (mm) scores
  ``-D / 2 * (r / (s * spread))^2`` (``D`` axes, ``s`` the fit's scale): an isotropic Gaussian whose
  per-axis standard deviation is ``spread / sqrt(D)``, so the training residuals score about ``-D / 2``
  each.

The plans hold the prior as ``poi.shape_prior`` (see :meth:`ShapePrior.to_block`), in the
configuration's axes, marked ``"fit": "translation_scale"``; a block without that mark was planned
for a rotating fit (its mean has the reference case's orientation and its spread lacks the rotations)
and loads as no prior, so such plans decode as they did before (by the heatmaps alone).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

PROCRUSTES_ITERATIONS = 10
PROCRUSTES_TOLERANCE_MM = 1e-4
BLOCK_DECIMALS = 2  # 0.01 mm
FIT = "translation_scale"  # the block's mark: fitted without rotation (older blocks load as no prior)
MIN_FIT_SCALE = 1e-3  # a configuration that only a half turn would fit gets this scale, and a huge penalty


@dataclass(frozen=True)
class Similarity:
    """``x -> scale * rotation @ x + translation`` for points ``(N, D)``."""

    scale: float
    rotation: np.ndarray  # (D, D), a proper rotation
    translation: np.ndarray  # (D,)

    def apply(self, points: np.ndarray) -> np.ndarray:
        return self.scale * np.asarray(points, dtype=np.float64) @ self.rotation.T + self.translation


def similarity_fit(source: np.ndarray, target: np.ndarray) -> Similarity:
    """The similarity that maps ``source`` ``(N, D)`` onto ``target`` ``(N, D)`` best in least squares.

    Umeyama's closed form (the SVD of the cross-covariance, its last singular direction flipped where
    the best orthogonal map would be a reflection). Coincident source points give scale 1.
    """
    source, target = np.asarray(source, dtype=np.float64), np.asarray(target, dtype=np.float64)
    mu_s, mu_t = source.mean(0), target.mean(0)
    a, b = source - mu_s, target - mu_t
    u, singular, vt = np.linalg.svd(b.T @ a / len(source))
    flip = np.ones(source.shape[1])
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        flip[-1] = -1.0
    rotation = (u * flip) @ vt
    variance = float((a**2).sum() / len(source))
    scale = float((singular * flip).sum() / variance) if variance > 0 else 1.0
    return Similarity(scale, rotation, mu_t - scale * rotation @ mu_s)


@dataclass(frozen=True)
class ScaleShift:
    """``x -> scale * x + translation`` for points ``(N, D)``: a fit that keeps the orientation."""

    scale: float
    translation: np.ndarray  # (D,)

    def apply(self, points: np.ndarray) -> np.ndarray:
        return self.scale * np.asarray(points, dtype=np.float64) + self.translation


def scale_shift_fit(source: np.ndarray, target: np.ndarray, weights: Optional[np.ndarray] = None) -> ScaleShift:
    """The translation and isotropic scale that map ``source`` ``(N, D)`` onto ``target`` ``(N, D)`` best in
    (``weights`` ``(N,)``-weighted) least squares; see :func:`scale_shift_fit_batch`."""
    scale, translation = scale_shift_fit_batch(np.asarray(source, dtype=np.float64)[None],
                                               np.asarray(target, dtype=np.float64)[None],
                                               None if weights is None else np.asarray(weights, dtype=np.float64)[None])
    return ScaleShift(float(scale[0]), translation[0])


def scale_shift_fit_batch(source: np.ndarray, target: np.ndarray,
                          weights: Optional[np.ndarray] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Scale ``(A,)`` and translation ``(A, D)`` of A fits of ``source`` ``(A, N, D)`` onto ``target``
    ``(A, N, D)``, point ``n`` of fit ``a`` weighted ``weights[a, n]`` (0: left out; default 1).

    Closed form: weighted centroids ``mu``, ``scale = sum w (s - mu_s).(t - mu_t) / sum w |s - mu_s|^2``.
    The scale is kept at least :data:`MIN_FIT_SCALE`: a negative one would turn the shape by half a turn
    (the very relabelling the orientation must tell apart). Coincident source points give scale 1.
    """
    if weights is None:
        weights = np.ones(source.shape[:2])
    w = weights / np.maximum(weights.sum(1, keepdims=True), 1e-300)
    mu_s = (w[..., None] * source).sum(1)
    mu_t = (w[..., None] * target).sum(1)
    a, b = source - mu_s[:, None], target - mu_t[:, None]
    variance = (w * (a**2).sum(-1)).sum(1)
    covariance = (w * (a * b).sum(-1)).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        scale = np.where(variance > 0, np.maximum(covariance / variance, MIN_FIT_SCALE), 1.0)
    return scale, mu_t - scale[:, None] * mu_s


def mean_rotation(rotations: np.ndarray) -> np.ndarray:
    """The rotation ``(D, D)`` nearest (Frobenius) to the mean of ``rotations`` ``(N, D, D)``: in 2D the
    turn by the angle of the mean of the unit vectors ``(cos, sin)`` of the angles (their circular mean)."""
    u, _, vt = np.linalg.svd(np.asarray(rotations, dtype=np.float64).mean(0))
    flip = np.ones(u.shape[0])
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        flip[-1] = -1.0
    return (u * flip) @ vt


def _mean_of_present(shapes: np.ndarray) -> np.ndarray:
    """Per POI, the mean over the shapes ``(N, P, D)`` that have it (NaN where none has)."""
    present = np.isfinite(shapes).all(-1)
    count = present.sum(0)
    total = np.where(present[..., None], shapes, 0.0).sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count[:, None] > 0, total / count[:, None], np.nan)


Fit = Callable[[np.ndarray, np.ndarray], Any]  # (source, target) -> something with .apply(points)


def _aligned(shapes: np.ndarray, mean: np.ndarray, min_points: int, fit: Fit = similarity_fit) -> np.ndarray:
    """Each shape fitted onto ``mean`` by ``fit`` on the POIs both have (NaN: missing, or too few in common)."""
    out = np.full_like(shapes, np.nan)
    known = np.isfinite(mean).all(-1)
    for i, shape in enumerate(shapes):
        present = np.isfinite(shape).all(-1)
        common = present & known
        if common.sum() >= min_points:
            out[i, present] = fit(shape[common], mean[common]).apply(shape[present])
    return out


def _case_rotations(shapes: np.ndarray, mean: np.ndarray, min_points: int) -> np.ndarray:
    """``(M, D, D)``: for each case sharing ``min_points`` POIs with ``mean``, the rotation ``Q`` of the
    similarity that carries ``mean`` onto it (as row vectors, ``case ~ s * mean @ Q + t``)."""
    known = np.isfinite(mean).all(-1)
    out = []
    for shape in shapes:
        common = np.isfinite(shape).all(-1) & known
        if common.sum() >= min_points:
            out.append(similarity_fit(mean[common], shape[common]).rotation.T)
    return np.array(out).reshape(-1, mean.shape[1], mean.shape[1])


def procrustes_mean(shapes: np.ndarray, iterations: int = PROCRUSTES_ITERATIONS) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Generalized Procrustes mean of ``shapes`` ``(N, P, D)`` (mm, NaN for a missing POI), in the cases'
    mean orientation (see the module docstring).

    Returns the mean ``(P, D)`` (centred on the origin, turned by :func:`mean_rotation` of the cases'
    rotations), the spread ``(P,)`` (RMS residual length in mm after fitting each case onto the mean by
    translation and scale: rotations of the cases count as spread) and how many cases have each POI
    ``(P,)``. A case shares at least ``D + 1`` POIs with the mean or is left out; a POI no case used has
    NaN mean and spread.
    """
    shapes = np.asarray(shapes, dtype=np.float64)
    n, p, d = shapes.shape
    present = np.isfinite(shapes).all(-1)
    reference = int(np.argmax(present.sum(1)))
    mean = shapes[reference] - np.nanmean(shapes[reference], axis=0)
    for _ in range(iterations):
        new = _mean_of_present(_aligned(shapes, mean, d + 1))
        both = np.isfinite(new).all(-1) & np.isfinite(mean).all(-1)
        if both.sum() < d + 1:  # no case shares enough POIs with the reference
            break
        new = similarity_fit(new[both], mean[both]).apply(new)  # keep the reference's scale and orientation
        change = float(np.abs(new - mean)[both].max())
        mean = new
        if change < PROCRUSTES_TOLERANCE_MM:
            break
    mean = mean - np.nanmean(mean, axis=0)
    rotations = _case_rotations(shapes, mean, d + 1)
    if len(rotations):
        mean = mean @ mean_rotation(rotations)  # rows: the mean shape as the cases lie on average
    aligned = _aligned(shapes, mean, d + 1, fit=scale_shift_fit)
    used = np.isfinite(aligned).all(-1)
    squared = np.where(used, ((aligned - mean) ** 2).sum(-1), 0.0)
    count = used.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        spread = np.where(count > 0, np.sqrt(squared.sum(0) / count), np.nan)
    mean[count == 0] = np.nan
    return mean, spread, count


@dataclass(frozen=True)
class ShapeGroup:
    """The prior of one structure group: its channels' mean positions and spreads.

    ``structure``: the structure label in structure mode, None for the whole image's one group.
    ``channels``: output channel indices (of the plans' ``poi_channels``) the group's POIs are.
    Vectors are in the configuration's axes; ``spacing_mm`` turns decoded voxel positions into mm.
    """

    structure: Optional[int]
    channels: Tuple[int, ...]
    mean_mm: Tuple[Tuple[float, ...], ...]  # (P, D)
    spread_mm: Tuple[float, ...]  # (P,)
    spacing_mm: Tuple[float, ...]  # (D,)

    @property
    def dim(self) -> int:
        return len(self.spacing_mm)

    @property
    def mean(self) -> np.ndarray:
        return np.asarray(self.mean_mm, dtype=np.float64).reshape(-1, self.dim)

    def index(self, channels: Sequence[int]) -> np.ndarray:
        """Position of each of ``channels`` in the group, -1 for a channel not in it."""
        where = {c: i for i, c in enumerate(self.channels)}
        return np.array([where.get(int(c), -1) for c in channels], dtype=int)

    def log_likelihood(self, points_mm: np.ndarray) -> float:
        """Gaussian log-likelihood of ``points_mm`` ``(P, D)`` (NaN: not placed), with the mean fitted on
        the placed points by translation and scale (see the module docstring; the constant terms are
        left out)."""
        return float(self.log_likelihoods(np.asarray(points_mm, dtype=np.float64)[None])[0])

    def log_likelihoods(self, points_mm: np.ndarray) -> np.ndarray:
        """:meth:`log_likelihood` of each of A configurations ``points_mm`` ``(A, P, D)`` at once ``(A,)``;
        a configuration with fewer than two placed points scores 0 (nothing to fit a scale on)."""
        placed = np.isfinite(points_mm).all(-1)  # (A, P)
        spread = np.asarray(self.spread_mm, dtype=np.float64)  # (P,)
        weights = np.where(placed, 1.0 / spread**2, 0.0)
        mean = np.broadcast_to(self.mean, points_mm.shape)
        target = np.where(placed[..., None], points_mm, 0.0)
        scale, shift = scale_shift_fit_batch(mean, target, weights)
        residual = np.linalg.norm(scale[:, None, None] * mean + shift[:, None] - target, axis=-1)
        z = residual / (scale[:, None] * spread)
        total = -0.5 * self.dim * np.where(placed, z**2, 0.0).sum(1)
        return np.where(placed.sum(1) >= 2, total, 0.0)

    def to_block(self) -> Dict[str, Any]:
        return {"structure": self.structure, "channels": list(self.channels),
                "mean_mm": [[round(float(v), BLOCK_DECIMALS) for v in row] for row in self.mean_mm],
                "spread_mm": [round(float(v), BLOCK_DECIMALS) for v in self.spread_mm]}


@dataclass(frozen=True)
class ShapePrior:
    """The plans' shape prior: one :class:`ShapeGroup` per structure group (whole image: one)."""

    spacing_mm: Tuple[float, ...]
    groups: Tuple[ShapeGroup, ...]

    def group_for(self, structure: Optional[int]) -> Optional[ShapeGroup]:
        """The group of a structure label (structure mode), or of the whole image (``None``)."""
        for group in self.groups:
            if group.structure == structure:
                return group
        return None

    def to_block(self) -> Dict[str, Any]:
        return {"fit": FIT, "spacing_mm": [float(v) for v in self.spacing_mm],
                "groups": [g.to_block() for g in self.groups]}

    @classmethod
    def from_block(cls, block: Optional[Mapping[str, Any]]) -> Optional["ShapePrior"]:
        """The prior of a ``shape_prior`` block; None for plans that have none, and for blocks planned for
        the rotating fit (no ``"fit": "translation_scale"``; see the module docstring)."""
        if not block or block.get("fit") != FIT:
            return None
        spacing = tuple(float(v) for v in block["spacing_mm"])
        groups: List[ShapeGroup] = []
        for g in block["groups"]:
            structure = None if g["structure"] is None else int(g["structure"])
            groups.append(ShapeGroup(structure, tuple(int(c) for c in g["channels"]),
                                     tuple(tuple(float(v) for v in row) for row in g["mean_mm"]),
                                     tuple(float(v) for v in g["spread_mm"]), spacing))
        return cls(spacing, tuple(groups))

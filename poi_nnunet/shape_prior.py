"""Shape prior: how the training POIs of one structure group lie relative to each other.

Decoding uses it where the heatmaps leave an assignment of channels to peaks ambiguous (two
channels with the same two peaks, several channels claiming one corner): the assignment whose
configuration looks like the training cases wins (:mod:`poi_nnunet.inference.prior_assignment`).

* **Planning** (:func:`procrustes_mean`): a generalized Procrustes analysis with similarity
  transforms (scale, rotation, translation; no reflection) of the training cases' POIs in mm. A
  case missing some POIs is aligned on the ones it has; the mean's scale and orientation are those
  of the case with the most POIs (each new mean is fitted back onto the previous one, so they do
  not drift). The spread of a POI is the RMS length of its residual vector after alignment (mm).
* **Decoding** (:meth:`ShapeGroup.log_likelihood`): the mean shape is fitted onto the points at
  hand (similarity, least squares); a point's residual ``r`` (mm) scores ``-D / 2 * (r / (s *
  spread))^2`` (``D`` axes, ``s`` the fit's scale): an isotropic Gaussian whose per-axis standard
  deviation is ``spread / sqrt(D)``, so the training residuals score about ``-D / 2`` each.

The plans hold the prior as ``poi.shape_prior`` (see :meth:`ShapePrior.to_block`), in the
configuration's axes; the typed plan (:class:`~poi_nnunet.plan.PoiPlan`) reads it, and plans
without it have none (decoding then does without).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

PROCRUSTES_ITERATIONS = 10
PROCRUSTES_TOLERANCE_MM = 1e-4
BLOCK_DECIMALS = 2  # 0.01 mm


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


def _mean_of_present(shapes: np.ndarray) -> np.ndarray:
    """Per POI, the mean over the shapes ``(N, P, D)`` that have it (NaN where none has)."""
    present = np.isfinite(shapes).all(-1)
    count = present.sum(0)
    total = np.where(present[..., None], shapes, 0.0).sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count[:, None] > 0, total / count[:, None], np.nan)


def _aligned(shapes: np.ndarray, mean: np.ndarray, min_points: int) -> np.ndarray:
    """Each shape fitted onto ``mean`` on the POIs both have (NaN: missing, or too few in common)."""
    out = np.full_like(shapes, np.nan)
    known = np.isfinite(mean).all(-1)
    for i, shape in enumerate(shapes):
        present = np.isfinite(shape).all(-1)
        common = present & known
        if common.sum() >= min_points:
            out[i, present] = similarity_fit(shape[common], mean[common]).apply(shape[present])
    return out


def procrustes_mean(shapes: np.ndarray, iterations: int = PROCRUSTES_ITERATIONS) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Generalized Procrustes mean of ``shapes`` ``(N, P, D)`` (mm, NaN for a missing POI).

    Returns the mean ``(P, D)`` (centred on the origin), the spread ``(P,)`` (RMS residual length in mm
    after fitting each case onto the mean) and how many cases have each POI ``(P,)``. A case shares at
    least ``D + 1`` POIs with the mean or is left out; a POI no case used has NaN mean and spread.
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
    aligned = _aligned(shapes, mean, d + 1)
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
        the placed points (see the module docstring; the constant terms are left out)."""
        placed = np.isfinite(points_mm).all(-1)
        mean = self.mean[placed]
        fit = similarity_fit(mean, points_mm[placed])
        residual = np.linalg.norm(fit.apply(mean) - points_mm[placed], axis=1)
        spread = max(fit.scale, 1e-9) * np.asarray(self.spread_mm)[placed]
        return float(-0.5 * self.dim * ((residual / spread) ** 2).sum())

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
        return {"spacing_mm": [float(v) for v in self.spacing_mm], "groups": [g.to_block() for g in self.groups]}

    @classmethod
    def from_block(cls, block: Optional[Mapping[str, Any]]) -> Optional["ShapePrior"]:
        """The prior of a ``shape_prior`` block; None for plans that have none."""
        if not block:
            return None
        spacing = tuple(float(v) for v in block["spacing_mm"])
        groups: List[ShapeGroup] = []
        for g in block["groups"]:
            structure = None if g["structure"] is None else int(g["structure"])
            groups.append(ShapeGroup(structure, tuple(int(c) for c in g["channels"]),
                                     tuple(tuple(float(v) for v in row) for row in g["mean_mm"]),
                                     tuple(float(v) for v in g["spread_mm"]), spacing))
        return cls(spacing, tuple(groups))

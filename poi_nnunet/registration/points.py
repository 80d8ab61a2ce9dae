"""Carrying case A's points into case B's space through the registration transform.

The transform ``T`` of :mod:`poi_nnunet.registration.register` maps a B-space
point ``y`` to the A-space point ``x = T(y)`` whose content B's grid shows at
``y``. A point of A therefore lands where ``T(y) = x``: ``y = T^-1(x)``. An
affine ``T`` is inverted exactly (ITK's ``GetInverse``); a deformable one by
Newton's method on ``T(y) - x`` with a central finite-difference Jacobian of
``T`` itself (steps halved until the residual shrinks), started at the affine
part's exact inverse and stopped once the residual ``|T(y) - x|`` is below
``tolerance_mm`` (0.001 mm by default). The stopping test evaluates ``T``
itself, so the Jacobian's accuracy sets the speed, never the result. A point
whose iteration does not converge (a folded deformation, or a point beyond
B's padded domain, where ITK's BSpline jumps to the identity) is reported,
never silently approximated.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np
import SimpleITK as sitk

DEFAULT_TOLERANCE_MM = 1e-3
MAX_NEWTON_ITERATIONS = 50
MAX_HALVINGS = 10


@dataclass
class CarriedPoints:
    """``positions`` (N, D) in B's world mm; ``converged`` (N,) bool; ``residual_mm`` (N,) ``|T(y) - x|``."""

    positions: np.ndarray
    converged: np.ndarray
    residual_mm: np.ndarray


def apply_transform(transform: sitk.Transform, points: np.ndarray) -> np.ndarray:
    """``T`` applied to each row of ``points`` (N, D) world mm -> (N, D)."""
    return np.array([transform.TransformPoint(tuple(float(c) for c in p)) for p in np.atleast_2d(points)],
                    dtype=np.float64).reshape(np.shape(np.atleast_2d(points)))


def affine_part(transform: sitk.Transform) -> Optional[sitk.Transform]:
    """The outermost (last applied) linear transform: ``transform`` itself if it is linear, the first
    member of a composite ``[affine, bspline]`` otherwise; ``None`` if there is none."""
    if isinstance(transform, sitk.CompositeTransform):
        if transform.GetNumberOfTransforms() == 0:
            return None
        return affine_part(transform.GetNthTransform(0))
    return transform if transform.IsLinear() else None


def invert_points(transform: sitk.Transform, points: np.ndarray, tolerance_mm: float = DEFAULT_TOLERANCE_MM,
                  step_mm: float = 0.05) -> CarriedPoints:
    """Solve ``T(y) = x`` for every row ``x`` of ``points`` (N, D) A-space mm; see the module docstring.

    ``step_mm`` is the finite-difference step of the Jacobian (small against control points tens of mm apart).
    """
    x = np.atleast_2d(np.asarray(points, dtype=np.float64))
    if x.shape[0] == 0:
        return CarriedPoints(x.copy(), np.zeros(0, bool), np.zeros(0))
    if transform.IsLinear():
        inverse = transform.GetInverse()
        y = apply_transform(inverse, x)
        residual = np.linalg.norm(apply_transform(transform, y) - x, axis=1)
        return CarriedPoints(y, residual <= tolerance_mm, residual)
    start = affine_part(transform)
    y = apply_transform(start.GetInverse(), x) if start is not None else x.copy()
    residual_vec = apply_transform(transform, y) - x
    residual = np.linalg.norm(residual_vec, axis=1)
    for _ in range(MAX_NEWTON_ITERATIONS):
        active = np.flatnonzero(residual > tolerance_mm)
        if active.size == 0:
            break
        for i in active:
            y[i], residual_vec[i], residual[i] = _newton_step(transform, x[i], y[i], residual_vec[i], step_mm)
    return CarriedPoints(y, residual <= tolerance_mm, residual)


def _newton_step(transform: sitk.Transform, x: np.ndarray, y: np.ndarray, r: np.ndarray,
                 step_mm: float) -> Tuple[np.ndarray, np.ndarray, float]:
    """One damped Newton step for ``T(y) = x`` from ``y`` with residual ``r = T(y) - x``: the full step,
    halved until the residual shrinks (a few halvings at most near a kink); ``(y, r, |r|)`` after it."""
    try:
        delta = np.linalg.solve(_jacobian(transform, y, step_mm), r)
    except np.linalg.LinAlgError:
        return y, r, float(np.linalg.norm(r))
    norm = float(np.linalg.norm(r))
    for _ in range(MAX_HALVINGS):
        candidate = y - delta
        r_new = apply_transform(transform, candidate[None])[0] - x
        if np.linalg.norm(r_new) < norm:
            return candidate, r_new, float(np.linalg.norm(r_new))
        delta = delta / 2.0
    return y, r, norm


def _jacobian(transform: sitk.Transform, y: np.ndarray, step_mm: float) -> np.ndarray:
    """(D, D) central finite-difference Jacobian ``dT/dy`` at ``y``; column ``j`` is the derivative along axis ``j``."""
    dim = y.shape[0]
    probes = np.concatenate([y + step_mm * np.eye(dim), y - step_mm * np.eye(dim)])
    values = apply_transform(transform, probes)
    return ((values[:dim] - values[dim:]) / (2.0 * step_mm)).T

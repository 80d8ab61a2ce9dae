"""One augmented sample: register A onto B, resample A's channels and labels into B's grid, carry A's points.

Runs in worker processes, so a job holds only paths and plain settings, the
worker writes its files straight into the staging folder (images can be large;
nothing big crosses a pipe) and returns a small JSON-ready record.

Points that cannot be kept, each recorded with its reason:

* ``not_invertible``: Newton's method found no ``y`` with ``T(y) = x`` within tolerance;
* ``outside_image``: the carried point lies outside B's grid (A's anatomy reaches further than B's field);
* ``structure_lost``: its structure's label did not survive the resampling into B's grid;
* ``far_from_surface``: the planner's cleaning rule (:mod:`poi_nnunet.registration.cleaning`).

A pair whose registration mirrors or collapses the anatomy even after the deformable stage fell back to
the affine (:func:`~poi_nnunet.registration.register.register_pair`) writes nothing; its record says why.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from ..atomic import atomic_write, atomic_write_image
from ..errors import PoiNnunetError
from ..geometry import ImageGeometry
from ..pois import Poi, PoiSet, read_poi_file, write_poi_file
from .cleaning import far_from_surface
from .pairs import Pair
from .points import invert_points
from .register import (MIN_JACOBIAN_DETERMINANT, RegistrationSettings, comparison_image, register_pair,
                       resample_into)

TRANSFORM_FOLDER = "transforms"


@dataclass(frozen=True)
class SampleJob:
    """Everything one worker needs (paths as strings); ``nearest[c]``: channel ``c`` is a mask (``noNorm``)."""

    pair: Pair
    moving_images: Sequence[str]
    moving_label: Optional[str]
    moving_pois: Optional[str]
    fixed_image: str
    fixed_label: Optional[str]
    nearest: Sequence[bool]
    out_images: Sequence[str]
    out_label: Optional[str]
    out_pois: Optional[str]
    out_transform: str
    settings: RegistrationSettings
    fences: Dict[str, float] = field(default_factory=dict)


def make_sample(job: SampleJob) -> Dict[str, Any]:
    """Write one sample; return its record for ``augmentation.json``. Errors name the pair.

    Every ITK filter runs with ``settings.threads`` threads meanwhile: ITK splits its sums by thread, so
    the thread count (not only the registration's own) changes the result in the last digits, and those
    digits grow through the optimiser. With it fixed the sample does not depend on ``-np`` or the core count.
    """
    previous = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(max(1, int(job.settings.threads)))
    try:
        return _make_sample(job)
    except PoiNnunetError as exc:
        raise PoiNnunetError(f"sample {job.pair.name} (moving {job.pair.moving}, fixed {job.pair.fixed}): "
                             f"{exc}") from None
    except (RuntimeError, ValueError, OSError) as exc:
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise PoiNnunetError(f"sample {job.pair.name} (moving {job.pair.moving}, fixed {job.pair.fixed}): "
                             f"{type(exc).__name__}: {first}") from None
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(previous)


def _make_sample(job: SampleJob) -> Dict[str, Any]:
    started = time.perf_counter()
    moving = [sitk.ReadImage(p) for p in job.moving_images]
    fixed = sitk.ReadImage(job.fixed_image)
    moving_label = sitk.ReadImage(job.moving_label) if job.moving_label else None
    fixed_label = sitk.ReadImage(job.fixed_label) if job.fixed_label else None
    s = job.settings
    result = register_pair(comparison_image(fixed, fixed_label, s.similarity),
                           comparison_image(moving[0], moving_label, s.similarity), s)
    registration = {"kind": result.kind, "file": f"{TRANSFORM_FOLDER}/{Path(job.out_transform).name}",
                    "direction": "fixed (B) point -> moving (A) point", "bspline_grid_mm": result.grid_mm,
                    "min_jacobian_determinant": round(result.min_jacobian_determinant, 4),
                    "refused_folding": result.refused,
                    "metric": {k: round(v, 6) for k, v in result.metric.items()}, "iterations": result.iterations}
    if result.min_jacobian_determinant <= MIN_JACOBIAN_DETERMINANT:  # even the affine mirrors or collapses
        registration.pop("file")
        return {"moving": job.pair.moving, "fixed": job.pair.fixed, "fold": job.pair.fold, "transform": registration,
                "skipped": "the affine registration mirrors or collapses the anatomy (Jacobian determinant "
                           f"{result.min_jacobian_determinant:.3g}); nothing written",
                "seconds": round(time.perf_counter() - started, 2)}
    for image, path, nearest in zip(moving, job.out_images, job.nearest):
        atomic_write_image(path, resample_into(image, fixed, result.transform, nearest))
    carried_label = None
    if moving_label is not None and job.out_label:
        carried_label = resample_into(moving_label, fixed, result.transform, nearest=True)
        atomic_write_image(job.out_label, carried_label)
    atomic_write(job.out_transform, lambda p: sitk.WriteTransform(result.transform, str(p)), suffix_hint=".tfm")

    record: Dict[str, Any] = {"moving": job.pair.moving, "fixed": job.pair.fixed, "fold": job.pair.fold,
                              "transform": registration}
    if carried_label is not None and fixed_label is not None:
        record["label_dice"] = round(_foreground_dice(carried_label, fixed_label), 4)
    dropped: List[Dict[str, Any]] = []
    if job.moving_pois and job.out_pois:
        kept, dropped = _carry_pois(job, result.transform, fixed, carried_label)
        record["num_pois"] = len(kept)
    record["dropped_pois"] = dropped
    record["seconds"] = round(time.perf_counter() - started, 2)
    return record


def _carry_pois(job: SampleJob, transform: sitk.Transform, fixed: sitk.Image,
                carried_label: Optional[sitk.Image]) -> Tuple[List[Poi], List[Dict[str, Any]]]:
    """Carry A's points into B, drop what cannot be kept, write the points file; ``(kept, dropped)``."""
    pois = read_poi_file(job.moving_pois)
    if len(pois) == 0:
        write_poi_file(job.out_pois, pois)
        return [], []
    carried = invert_points(transform, pois.positions())
    geo = ImageGeometry.from_image(fixed)
    inside = geo.contains_world(carried.positions)
    present = set(np.unique(sitk.GetArrayViewFromImage(carried_label)).tolist()) if carried_label is not None else None
    kept: List[Poi] = []
    dropped: List[Dict[str, Any]] = []
    for i, p in enumerate(pois):
        position = tuple(float(c) for c in carried.positions[i])
        reason = None
        if not carried.converged[i]:
            reason = {"reason": "not_invertible", "residual_mm": round(float(carried.residual_mm[i]), 4)}
        elif not inside[i]:
            reason = {"reason": "outside_image"}
        elif present is not None and p.structure != 0 and p.structure not in present:
            reason = {"reason": "structure_lost"}
        if reason is None:
            kept.append(Poi(p.structure, p.poi, position, p.confidence))
        else:
            dropped.append({"structure": p.structure, "poi": p.poi, **reason})
    write_poi_file(job.out_pois, PoiSet(kept))
    if kept and job.out_label:
        far = far_from_surface(job.pair.name, job.out_images[0], job.out_label, job.out_pois, job.fences)
        if far:
            gone = {(int(f["structure"]), int(f["poi"])) for f in far}
            kept = [p for p in kept if p.key not in gone]
            write_poi_file(job.out_pois, PoiSet(kept))
            dropped += [{"structure": f["structure"], "poi": f["poi"], "reason": "far_from_surface",
                         "surface_distance_mm": f["surface_distance_mm"], "threshold_mm": f["threshold_mm"]}
                        for f in far]
    return kept, dropped


def _foreground_dice(a: sitk.Image, b: sitk.Image) -> float:
    """Dice of "any structure" between two label maps on one grid (how well A's anatomy fits B's shape)."""
    fa = sitk.GetArrayViewFromImage(a) > 0
    fb = sitk.GetArrayViewFromImage(b) > 0
    total = int(fa.sum()) + int(fb.sum())
    return 2.0 * int(np.count_nonzero(fa & fb)) / total if total else 1.0

"""Pairwise registration with SimpleITK's registration framework: an affine start, then a BSpline stage.

Why SimpleITK: it is already a dependency (no new install) and its
``ImageRegistrationMethod`` runs ITK's v4 metrics and optimisers; no optimiser
here is hand-written. Measured against itk-elastix 0.25 (its default affine and
BSpline parameter maps, the same 50 mm grid and compared images, one thread) on
four pairs of each phantom, it carried the labels as well (leg bone Dice
0.919-0.949 against 0.921-0.948; spine 0.76-0.89 against 0.73-0.88) in less
than half the time (leg 13.0 s against 30.8 s CPU per pair; spine 7.0 s
against 32.5 s). Full table: the README's ``poi_augment`` section.

Direction convention (ITK's): registering ``moving`` (case A) onto ``fixed``
(case B) yields a transform ``T`` that maps a **B-space** physical point to
the **A-space** point whose content it shows, because resampling A into B's
grid reads A at ``T(y)`` for every voxel centre ``y`` of B. Points of A
therefore go to B through ``T^-1`` (:mod:`poi_nnunet.registration.points`).

What is compared (``similarity``):

* ``"labels"`` (default where both cases have dense label maps): the signed
  distance (mm, positive inside, clamped to +-``SDF_CLIP_MM``) to the surface of
  the union of all structures, compared by mean squares. Measured on the leg
  phantom it aligns the bones far better than the intensities do (bone Dice
  0.92-0.95 against 0.68-0.93 on four pairs), because the intensities are
  dominated by the skin and fat outline, which the field of view crops
  differently per case, and it is faster (smooth images, a cheap metric).
* ``"image"``: the first image channel, compared by Mattes mutual
  information (for landmark-only datasets or sparse labels).

Stages (multi-resolution, random metric sampling with a fixed seed,
single-threaded by default: the same inputs, seed and thread count give the
same transform bit for bit):

1. affine, started by matching centres of mass (image moments of the
   compared images shifted to be non-negative: CT air at -1000 HU, or the far
   outside of a distance map, weighs nothing); regular-step gradient descent
   with scales from physical shift;
2. cubic BSpline over B's box (padded, :func:`bspline_on_domain`), control
   points every ``bspline_grid_mm``, L-BFGS-B, the affine as the moving
   initial transform. The result is ``CompositeTransform([affine, bspline])``:
   ``T(y) = affine(bspline(y))``. A BSpline that folds is refused for a
   coarser one, and at last for the affine alone (:func:`register_pair`).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

SIMILARITIES = ("labels", "image")
# Distance maps are clamped here: far enough out for the affine stage's capture range (a few voxels of the
# coarsest level), near enough that the far background (cropped differently per case) adds nothing.
SDF_CLIP_MM = 25.0
# Stage settings chosen on the phantoms (README): coarse levels catch the gross pose, the finest the rest;
# more iterations or a denser metric sample did not raise the carried-label Dice there, only the time.
AFFINE_SHRINK = (4, 2, 1)
AFFINE_SMOOTHING_VOXELS = (2.0, 1.0, 0.0)
BSPLINE_SHRINK = (2, 1)
BSPLINE_SMOOTHING_VOXELS = (1.0, 0.0)
# A deformation whose Jacobian determinant falls to this anywhere in B is refused: at 0 it folds (no inverse,
# a mirrored patch of anatomy); the margin covers folds between the sampled points. With label similarity at
# 50 mm it refused 5 of 10 pairs of the 2D X-ray phantom (kept at 100 or 200 mm), 1 of 10 spine pairs, no leg pair.
MIN_JACOBIAN_DETERMINANT = 0.1
MAX_GRID_DOUBLINGS = 2


@dataclass(frozen=True)
class RegistrationSettings:
    """How one pair is registered; recorded beside every augmented sample so it can be redone.

    ``bspline_grid_mm`` is the control-point spacing of the deformable stage; ``<= 0`` skips
    that stage (affine only). ``sampling_fraction`` of B's voxels are drawn at random (seeded by
    ``seed``) to evaluate the metric. ``threads`` is the number of ITK threads every filter of a
    sample runs with (:func:`~poi_nnunet.registration.sample.make_sample` sets it): more is faster, but
    ITK splits its sums by thread, so the result depends on this number (never on ``-np``).
    """

    similarity: str = "labels"
    affine_iterations: int = 100
    bspline_grid_mm: float = 50.0
    bspline_iterations: int = 30
    histogram_bins: int = 32
    sampling_fraction: float = 0.05
    seed: int = 0
    threads: int = 1
    affine_shrink: Tuple[int, ...] = AFFINE_SHRINK
    affine_smoothing_voxels: Tuple[float, ...] = AFFINE_SMOOTHING_VOXELS
    bspline_shrink: Tuple[int, ...] = BSPLINE_SHRINK
    bspline_smoothing_voxels: Tuple[float, ...] = BSPLINE_SMOOTHING_VOXELS

    def __post_init__(self) -> None:
        if self.similarity not in SIMILARITIES:
            raise ValueError(f"similarity must be one of {SIMILARITIES}, got {self.similarity!r}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        if not 0.0 < self.sampling_fraction <= 1.0:
            raise ValueError(f"sampling_fraction must be in (0, 1], got {self.sampling_fraction}")

    def to_json(self) -> Dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}


@dataclass
class RegistrationResult:
    """``transform`` maps B-space (fixed) points to A-space (moving) points; the rest is for the record."""

    transform: sitk.Transform
    affine: sitk.AffineTransform
    metric: Dict[str, float] = field(default_factory=dict)
    iterations: Dict[str, int] = field(default_factory=dict)
    grid_mm: float = 0.0                      # control-point spacing of the BSpline kept (0: affine only)
    refused: List[Dict[str, float]] = field(default_factory=list)  # BSplines refused for folding
    min_jacobian_determinant: float = 1.0

    @property
    def kind(self) -> str:
        return "affine+bspline" if isinstance(self.transform, sitk.CompositeTransform) else "affine"


def distance_image(label: sitk.Image, clip_mm: float = SDF_CLIP_MM) -> sitk.Image:
    """Float32 signed distance (mm, positive inside) to the surface of every structure (label > 0) together."""
    inside = sitk.Cast(label > 0, sitk.sitkUInt8)
    if not np.any(sitk.GetArrayViewFromImage(inside)):
        raise ValueError("label map holds no structure")
    distance = sitk.SignedMaurerDistanceMap(inside, insideIsPositive=True, squaredDistance=False, useImageSpacing=True)
    return sitk.Clamp(distance, sitk.sitkFloat32, -clip_mm, clip_mm)


def comparison_image(image: sitk.Image, label: Optional[sitk.Image], similarity: str) -> sitk.Image:
    """What the metric compares for one case: the label distance map or the first channel as float32."""
    if similarity == "labels":
        if label is None:
            raise ValueError("similarity 'labels' needs a label map")
        return distance_image(label)
    return sitk.Cast(image, sitk.sitkFloat32)


def _moments_start(fixed: sitk.Image, moving: sitk.Image) -> sitk.AffineTransform:
    """Affine identity with the centres of mass matched; intensities are shifted to start at 0 first,
    because ITK's moments weigh voxels by their (here possibly negative) values."""
    def shifted(image: sitk.Image) -> sitk.Image:
        return image - float(np.min(sitk.GetArrayViewFromImage(image)))

    start = sitk.CenteredTransformInitializer(shifted(fixed), shifted(moving),
                                              sitk.AffineTransform(fixed.GetDimension()),
                                              sitk.CenteredTransformInitializerFilter.MOMENTS)
    return sitk.AffineTransform(start)


def _levels(shrink: Sequence[int], size: Sequence[int]) -> List[int]:
    """Shrink factors that leave at least 4 voxels along the shortest axis."""
    smallest = min(size)
    return [max(1, min(int(s), smallest // 4)) for s in shrink]


def _method(settings: RegistrationSettings, shrink: Sequence[int], smoothing: Sequence[float],
            size: Sequence[int]) -> sitk.ImageRegistrationMethod:
    method = sitk.ImageRegistrationMethod()
    if settings.similarity == "labels":
        method.SetMetricAsMeanSquares()
    else:
        method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=settings.histogram_bins)
    method.SetMetricSamplingStrategy(method.RANDOM)
    # SimpleITK reads a seed of 0 as 'seed from the wall clock', so the user's seed is offset by one
    method.SetMetricSamplingPercentage(settings.sampling_fraction, settings.seed + 1)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetShrinkFactorsPerLevel(_levels(shrink, size))
    method.SetSmoothingSigmasPerLevel(list(smoothing))
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    method.SetNumberOfThreads(int(settings.threads))
    return method


def register_affine(fixed: sitk.Image, moving: sitk.Image,
                    settings: RegistrationSettings) -> Tuple[sitk.AffineTransform, float, int]:
    """The affine stage on comparison images: ``(transform B -> A, final metric value, iterations)``."""
    method = _method(settings, settings.affine_shrink, settings.affine_smoothing_voxels, fixed.GetSize())
    method.SetOptimizerAsRegularStepGradientDescent(learningRate=1.0, minStep=1e-4,
                                                    numberOfIterations=settings.affine_iterations,
                                                    relaxationFactor=0.5, gradientMagnitudeTolerance=1e-6)
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetInitialTransform(_moments_start(fixed, moving), inPlace=False)
    result = method.Execute(fixed, moving)
    if isinstance(result, sitk.CompositeTransform):  # Execute wraps the optimised transform; unwrap it
        result = result.GetNthTransform(result.GetNumberOfTransforms() - 1)
    return sitk.AffineTransform(result), float(method.GetMetricValue()), int(method.GetOptimizerIteration())


def bspline_on_domain(fixed: sitk.Image, grid_mm: float) -> sitk.BSplineTransform:
    """A zero cubic BSpline with control points about ``grid_mm`` apart on B's box, padded by one voxel.

    ITK's BSpline is the identity outside its domain, so ``BSplineTransformInitializer``'s domain (voxel
    centre to voxel centre) would make ``T`` jump at B's border: a point carried into B's outermost half
    voxel would then have no inverse. Padding the domain by B's largest voxel size keeps ``T`` smooth over
    all of B and a margin around it (room for Newton's iterates and finite-difference probes).
    """
    dim = fixed.GetDimension()
    spacing = np.array(fixed.GetSpacing())
    direction = np.array(fixed.GetDirection()).reshape(dim, dim)
    pad = float(spacing.max())
    corner = np.array(fixed.GetOrigin()) + direction @ (-0.5 * spacing - pad)
    extent = np.array(fixed.GetSize()) * spacing + 2 * pad
    bspline = sitk.BSplineTransform(dim, 3)
    bspline.SetTransformDomainOrigin(tuple(float(c) for c in corner))
    bspline.SetTransformDomainDirection(tuple(float(c) for c in direction.ravel()))
    bspline.SetTransformDomainPhysicalDimensions(tuple(float(e) for e in extent))
    bspline.SetTransformDomainMeshSize([max(1, int(round(e / grid_mm))) for e in extent])
    return bspline


def register_bspline(fixed: sitk.Image, moving: sitk.Image, affine: sitk.AffineTransform,
                     settings: RegistrationSettings, grid_mm: float) -> Tuple[sitk.BSplineTransform, float, int]:
    """The deformable stage on top of ``affine``: ``(bspline, final metric value, iterations)``."""
    bspline = bspline_on_domain(fixed, grid_mm)
    method = _method(settings, settings.bspline_shrink, settings.bspline_smoothing_voxels, fixed.GetSize())
    method.SetOptimizerAsLBFGSB(gradientConvergenceTolerance=1e-5, numberOfIterations=settings.bspline_iterations,
                                maximumNumberOfCorrections=5,
                                maximumNumberOfFunctionEvaluations=4 * settings.bspline_iterations,
                                costFunctionConvergenceFactor=1e7)
    method.SetMovingInitialTransform(affine)
    # SetInitialTransform, not SetInitialTransformAsBSpline: the latter resets the domain to B's voxel centres
    method.SetInitialTransform(bspline, inPlace=True)
    method.Execute(fixed, moving)
    return sitk.BSplineTransform(bspline), float(method.GetMetricValue()), int(method.GetOptimizerIteration())


def min_jacobian_determinant(transform: sitk.Transform, fixed: sitk.Image, grid_mm: float = 0.0) -> float:
    """Smallest ``det(dT/dy)`` over B's box: at most 0 where ``T`` folds (no inverse there, a mirrored patch).

    An affine's is its matrix's determinant. A deformable one is sampled from B's first to its last voxel
    centre every ``max(B's voxel, grid_mm / 8)`` mm or slightly less (a cubic spline with control points
    ``grid_mm`` apart cannot fold between samples that fine) and differentiated with numpy's central
    differences (one-sided on the border, where ITK's filter would assume a flat continuation).
    """
    dim = fixed.GetDimension()
    direction = np.array(fixed.GetDirection()).reshape(dim, dim)
    if transform.IsLinear():  # a constant Jacobian: central differences at B's centre are exact
        centre = np.array(fixed.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2.0 for n in fixed.GetSize()]))
        columns = [np.subtract(transform.TransformPoint(tuple(centre + e)),
                               transform.TransformPoint(tuple(centre - e))) / 2.0 for e in np.eye(dim)]
        return float(np.linalg.det(np.stack(columns, axis=1)))
    length = (np.array(fixed.GetSize()) - 1) * np.array(fixed.GetSpacing())  # first to last voxel centre, mm
    size = [max(2, int(np.floor(l / max(s, grid_mm / 8.0))) + 1) for l, s in zip(length, fixed.GetSpacing())]
    step = [max(l, 1e-6) / (n - 1) for l, n in zip(length, size)]
    field = sitk.TransformToDisplacementField(transform, sitk.sitkVectorFloat64, size, fixed.GetOrigin(),
                                              tuple(float(t) for t in step), fixed.GetDirection())
    displacement = sitk.GetArrayFromImage(field)  # numpy axes (z, y, x) + world components
    grads = np.gradient(displacement, *step[::-1], axis=tuple(range(dim)))
    per_index_axis = np.stack(grads[::-1], axis=-1)  # [..., component, ITK index axis], per mm along that axis
    jacobian = np.eye(dim) + per_index_axis @ direction.T  # d(T)/dy in world coordinates
    return float(np.min(np.linalg.det(jacobian)))


def register_pair(fixed: sitk.Image, moving: sitk.Image, settings: RegistrationSettings) -> RegistrationResult:
    """Register comparison image ``moving`` (A) onto ``fixed`` (B) (:func:`comparison_image`); see the module docstring.

    A BSpline that folds (:func:`min_jacobian_determinant` at most :data:`MIN_JACOBIAN_DETERMINANT`) is
    refused and the stage rerun with control points twice as far apart, up to :data:`MAX_GRID_DOUBLINGS`
    times; then the affine alone is kept. Every refusal is recorded.
    """
    affine, metric, iterations = register_affine(fixed, moving, settings)
    result = RegistrationResult(affine, affine, {"affine": metric}, {"affine": iterations})
    grid_mm = settings.bspline_grid_mm
    for _ in range(MAX_GRID_DOUBLINGS + 1 if grid_mm > 0 else 0):
        bspline, metric, iterations = register_bspline(fixed, moving, affine, settings, grid_mm)
        candidate = sitk.CompositeTransform([affine, bspline])
        determinant = min_jacobian_determinant(candidate, fixed, grid_mm)
        if determinant > MIN_JACOBIAN_DETERMINANT:
            result.transform = candidate
            result.metric["bspline"] = metric
            result.iterations["bspline"] = iterations
            result.grid_mm = grid_mm
            break
        result.refused.append({"grid_mm": grid_mm, "min_jacobian_determinant": round(determinant, 4)})
        grid_mm *= 2.0
    result.min_jacobian_determinant = min_jacobian_determinant(result.transform, fixed, result.grid_mm)
    return result


def resample_into(image: sitk.Image, reference: sitk.Image, transform: sitk.Transform, nearest: bool) -> sitk.Image:
    """``image`` (A's grid) read at ``transform(y)`` for every voxel centre ``y`` of ``reference`` (B's grid).

    Labels and mask channels (``nearest``) keep their values and get 0 outside A; intensities are
    interpolated linearly and get A's minimum outside A (air in a CT), in A's pixel type.
    """
    if nearest:
        return sitk.Resample(image, reference, transform, sitk.sitkNearestNeighbor, 0.0, image.GetPixelID())
    low = float(np.min(sitk.GetArrayViewFromImage(image)))
    return sitk.Resample(image, reference, transform, sitk.sitkLinear, low, image.GetPixelID())

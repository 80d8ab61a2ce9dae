"""The ``poi`` block of one nnU-Net configuration: every value derived from the fingerprint.

Each function computes one value and its docstring states the rule. Vectors
are in the configuration's axes: nnU-Net's transposed array axes, the last two
of them for a ``2d`` configuration (the same axes as its ``patch_size`` and
``spacing``). The fingerprint measures in the raw image's array axes;
:func:`fingerprint_axes` says which raw axis each configuration axis is.
"""
from __future__ import annotations

from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from nnunetv2.configuration import ANISO_THRESHOLD

from poi_nnunet.plan import COARSE_CONFIGURATION, STRUCTURE_MODE, WHOLE_IMAGE
from poi_nnunet.shape_groups import rigid_groups
from poi_nnunet.shape_prior import ShapeGroup, ShapePrior, procrustes_mean
from poi_nnunet.uv.template import UvTemplate, UvTemplates

from .cleaning import MIN_VOXEL_DIAGONALS
from .fields_of_view import overflow_axis, plan_fields_of_view

# 3: shape_prior; 4: its mean keeps the orientation, fitted by translation and scale; 5: uv_templates;
# 6: heatmap_deep_supervision; 7: point_sup_extent_mm; 8: fields_of_view (long scans)
POI_BLOCK_VERSION = 8
MAX_PRIOR_SPREAD_RATIO = 0.5  # median spread / RMS radius of the mean shape above which no prior is planned
# structure-centred crops pay off when POI ids repeat on several structures of a case (vertebrae)
SHARED_POI_FRACTION_FOR_STRUCTURE_MODE = 0.5
CROP_PERCENTILE = 95
CROP_MARGIN = 1.1  # 10% room for augmentation shifts and rotations
REFINE_DIVISOR = 8  # three 2x poolings in the refinement network
SIGMA_FLOOR_VOXELS = 2.0  # see heatmap_sigma_mm
PEAK_SUPPORT_SIGMAS = 3.0  # a heatmap's support; beyond 3 sigma it is below 1.2% of its peak
HEATMAP_AMPLITUDE = 10.0  # target peak height: squared error scales with amplitude^2 (see MaskedHeatmapLoss)
ELASTIC_FRACTION_OF_CROP = 0.05  # largest elastic displacement: 5% of the crop's smallest side ...
ELASTIC_MIN_VOXELS = 3.0  # ... but at least three voxels (see elastic_magnitude_voxels)
ELASTIC_SCALE = (0.1, 0.2)  # field smoothness, fraction of the patch edge (batchgeneratorsv2's elastic_deform_scale)
# a clicked structure's largest extent, as a multiple of its clicks' spread (see point_sup_extent_mm)
EXTENT_PER_CLICK_SPREAD = 5.0


def fingerprint_axes(transpose_forward: Sequence[int], n_config_axes: int, raw_dim: int) -> List[int]:
    """Raw array axis (of the fingerprint's ``raw_dim`` axes) behind each configuration axis.

    nnU-Net reads a 2D image as ``(1, y, x)``: its axis 0 does not exist in the fingerprint.
    """
    used = list(transpose_forward)[3 - n_config_axes:]
    return [a - (3 - raw_dim) for a in used]


def crop_mode(summary: Dict[str, Any]) -> str:
    """Structure-centred when POI ids repeat on several structures of most cases and none is on structure 0.

    Repeated ids (every vertebra has the same POIs) mean the structure must be named by the crop;
    distinct ids (X-ray landmarks, one bone's POIs) are all predicted from the whole image.
    """
    on_zero = "0" in summary["structures"]
    shared = summary["shared_poi_fraction"] >= SHARED_POI_FRACTION_FOR_STRUCTURE_MODE
    return STRUCTURE_MODE if shared and not on_zero else WHOLE_IMAGE


def long_scan_crop_mm(fingerprint: Dict[str, Any], configuration: Dict[str, Any],
                      transpose_forward: Sequence[int]) -> Optional[np.ndarray]:
    """What a long scan covers (mm, configuration axes) where the configuration needs fields of view: a 3D
    whole-image dataset whose scans (95th percentile) do not fit its patch at its spacing; None otherwise.

    The one rule for "this is a long scan": the planner plans a coarse pass where it holds, and
    :func:`poi_block` plans fields of view where it holds.
    """
    summary = fingerprint["summary"]
    mode = crop_mode(summary)
    spacing = np.asarray(configuration["spacing"], float)
    if mode != WHOLE_IMAGE or summary["dim"] != 3 or len(spacing) != 3:
        return None
    crop = crop_size_mm(fingerprint, mode)[fingerprint_axes(transpose_forward, 3, summary["dim"])]
    patch_mm = np.asarray(configuration["patch_size"], float) * spacing
    return crop if overflow_axis(crop, patch_mm) is not None else None


def crop_size_mm(fingerprint: Dict[str, Any], mode: str) -> np.ndarray:
    """Crop (raw axes, mm) that covers what one sample must show.

    Structure mode: the 95th percentile of the box centred on a structure that holds it and its
    neighbours, plus 10%. Whole-image mode: the 95th percentile of the field of view.
    """
    cases = fingerprint["cases"]
    if mode == STRUCTURE_MODE:
        sizes = [s["crop_with_neighbours_mm"] for c in cases for k, s in c["structures"].items() if k != "0"]
        crop = np.percentile(np.array(sizes), CROP_PERCENTILE, axis=0) * CROP_MARGIN
        fov = np.percentile(np.array([c["fov_mm"] for c in cases]), CROP_PERCENTILE, axis=0)
        return np.minimum(crop, fov)
    return np.percentile(np.array([c["fov_mm"] for c in cases]), CROP_PERCENTILE, axis=0)


def poi_separation_mm(fingerprint: Dict[str, Any], flagged: set) -> float:
    """How close two POIs of one structure come: the 5th percentile of nearest-neighbour distances.

    Flagged (cleaned) points are left out. Where no structure has two POIs, the median smallest
    side of the structures (or of the field of view) stands in: peaks must then stay within it.
    """
    values = [p["nearest_poi_mm"] for c in fingerprint["cases"] for p in c["points"]
              if p["nearest_poi_mm"] is not None and (c["case"], p["structure"], p["poi"]) not in flagged]
    if values:
        return float(np.percentile(values, 5))
    sides = [min(s["extent_mm"]) for c in fingerprint["cases"] for s in c["structures"].values()]
    return float(np.median(sides)) if sides else 1.0


def heatmap_sigma_mm(separation_mm: float, spacing: Sequence[float]) -> float:
    """Gaussian sigma: a quarter of the POI separation, but at least two (median) voxels.

    At 4 sigma apart a neighbour's peak is exp(-8) of its height, so where POIs are far apart the
    target is as wide as it can be without touching them. The floor wins on most grids: a peak of one
    voxel's sigma is a spike that nnU-Net's SGD learns slowly (one batch of the X-ray phantom overfit
    for 200 steps reached 0.79 of the all-zero loss at one pixel, 0.26 at two), and the sub-voxel fit
    needs the neighbours of the maximum well above the noise. Overlap with nearby POIs costs nothing:
    each POI has its own output channel (``peaks_separable`` in the plans records when they overlap).
    """
    return float(max(separation_mm / 4.0, SIGMA_FLOOR_VOXELS * float(np.median(spacing))))


def coarse_spacing(crop_mm: np.ndarray, spacing: np.ndarray, patch_size: np.ndarray) -> np.ndarray:
    """Spacing at which the whole crop fits the configuration's patch: ``max(spacing, crop / patch)``."""
    return np.maximum(spacing, crop_mm / patch_size)


def divisors(strides: Sequence[Sequence[int]], n_axes: int) -> np.ndarray:
    """Per axis, how far the configuration's network downsamples, capped at the refinement's 8."""
    total = np.prod(np.array(strides, dtype=int).reshape(-1, n_axes), axis=0)
    return np.minimum(total, REFINE_DIVISOR)


def refine_patch_size(sigma_mm: float, coarse: np.ndarray, spacing: np.ndarray, patch_size: np.ndarray,
                      divisor: np.ndarray) -> List[int]:
    """Full-resolution patch around a coarse estimate: ``2 * (3 sigma + one coarse voxel)`` per axis.

    One coarse voxel bounds the coarse stage's error; 3 sigma is the heatmap's support. Rounded up
    to the network's divisor, never larger than the configuration's own patch.
    """
    extent = 2 * (PEAK_SUPPORT_SIGMAS * sigma_mm + coarse)
    voxels = np.ceil(extent / spacing / divisor) * divisor
    return [int(v) for v in np.minimum(np.maximum(voxels, divisor), patch_size)]


def elastic_magnitude_voxels(crop_mm: np.ndarray, spacing: np.ndarray, patch_size: np.ndarray) -> List[float]:
    """Range of the elastic deformation's largest displacement, in voxels: ``[M / 2, M]``.

    ``M`` is 5% of the smallest side of what a sample shows (the crop, or the patch where the crop is
    larger), at least three voxels: shape variation of that order is what registration-like
    augmentation should add (seed 000), while batchgeneratorsv2's default of 0.2 voxel moves nothing.
    With the field smoothed over a tenth to a fifth of the patch (:data:`ELASTIC_SCALE`) such fields
    stay almost everywhere fold-free; points caught in a fold are masked by the loader.
    """
    shown = np.minimum(crop_mm / spacing, patch_size)
    if len(patch_size) == 3 and max(patch_size) / patch_size[0] > ANISO_THRESHOLD:
        shown = shown[1:]  # nnU-Net augments such patches in 2D: the first axis is never deformed
    top = max(ELASTIC_MIN_VOXELS, ELASTIC_FRACTION_OF_CROP * float(shown.min()))
    return [round(top / 2, 3), round(top, 3)]


def poi_channels(summary: Dict[str, Any], mode: str, names: Dict[str, str]) -> List[Dict[str, Any]]:
    """Output channels: one per POI id (structure mode), one per (structure, POI) pair otherwise."""
    if mode == STRUCTURE_MODE:
        return [{"structure": None, "poi": int(p), "name": names.get(p, p)} for p in sorted(summary["pois"], key=int)]
    pairs = sorted((tuple(int(x) for x in k.split(":")) for k in summary["pairs"]))
    return [{"structure": s, "poi": p, "name": names.get(str(p), str(p))} for s, p in pairs]


def _case_shapes(fingerprint: Dict[str, Any], keys: Sequence[Tuple[int, int]], axes: Sequence[int],
                 flagged: set) -> np.ndarray:
    """``(cases, len(keys), D)`` grid mm, in configuration axes, of the ``(structure, poi)`` ``keys``
    (NaN where a case lacks one or the cleaning flagged it)."""
    where = {k: i for i, k in enumerate(keys)}
    cases = fingerprint["cases"]
    out = np.full((len(cases), len(keys), len(axes)), np.nan)
    for n, case in enumerate(cases):
        for p in case["points"]:
            i = where.get((int(p["structure"]), int(p["poi"])))
            if i is not None and (case["case"], p["structure"], p["poi"]) not in flagged:
                out[n, i] = np.asarray(p["grid_mm"], dtype=np.float64)[list(axes)]
    return out


def _raw_dim(fingerprint: Dict[str, Any]) -> int:
    """Number of raw axes of the fingerprint's grid mm (3 where it has no point)."""
    for case in fingerprint["cases"]:
        for p in case["points"]:
            return len(p["grid_mm"])
    return 3


def shape_groups(fingerprint: Dict[str, Any], mode: str, channels: Sequence[Dict[str, Any]],
                 flagged: frozenset = frozenset()) -> List[Tuple[Optional[int], List[int], List[Tuple[int, int]]]]:
    """``(structure, channel indices, (structure, poi) keys)`` of each group of the shape prior.

    Whole-image mode: one group per structure label of the channels. Per structure, not one group of
    all channels, because a structure's own shape varies far less than where it lies beside the others
    (three polygons placed freely: 0.8 mm against 19 mm of spread), and it is the structure's own
    corners that a model confuses. The channels of structure 0 (landmark-only: no label says which POIs
    are one object) are split into rigid groups instead, the POIs whose pairwise distances hold across
    the training cases (:func:`poi_nnunet.shape_groups.rigid_groups`, on the raw grid mm without the
    ``flagged`` ``(case, structure, poi)`` points); each keeps structure 0 (whole-image decoding passes
    every group), and a lone POI is left out (:func:`shape_prior` drops groups below ``D + 1`` POIs of
    the configuration's ``D`` axes).
    Structure mode: one group per structure label, of the POI ids that structure carries in any case.
    """
    if mode != STRUCTURE_MODE:
        by_label: Dict[int, List[int]] = {}
        for i, c in enumerate(channels):
            by_label.setdefault(int(c["structure"]), []).append(i)
        out: List[Tuple[Optional[int], List[int], List[Tuple[int, int]]]] = []
        for label, members in sorted(by_label.items()):
            keys = [(label, int(channels[i]["poi"])) for i in members]
            if label != 0:
                out.append((label, members, keys))
                continue
            shapes = _case_shapes(fingerprint, keys, range(_raw_dim(fingerprint)), flagged)
            for group in rigid_groups(shapes, min_size=2):
                out.append((label, [members[i] for i in group], [keys[i] for i in group]))
        return out
    index = {int(c["poi"]): i for i, c in enumerate(channels)}
    carried: Dict[int, set] = {}
    for case in fingerprint["cases"]:
        for p in case["points"]:
            if int(p["poi"]) in index:
                carried.setdefault(int(p["structure"]), set()).add(int(p["poi"]))
    return [(label, [index[p] for p in sorted(pois)], [(label, p) for p in sorted(pois)])
            for label, pois in sorted(carried.items())]


def _group_means(fingerprint: Dict[str, Any], mode: str, channels: Sequence[Dict[str, Any]], axes: Sequence[int],
                 flagged: set) -> Iterator[Tuple[Optional[int], np.ndarray, List[Tuple[int, int]], np.ndarray, np.ndarray]]:
    """Procrustes mean of each group of :func:`shape_groups` that has enough POIs and cases, in the
    configuration's ``axes`` (mm, the cases' mean orientation; :func:`poi_nnunet.shape_prior.procrustes_mean`
    on :func:`_case_shapes`, without the ``flagged`` points).

    A group needs ``D + 1`` POIs, two cases that have ``D + 1`` of them, and ``D + 1`` POIs some case used.
    Yields ``(structure, channel indices, (structure, poi) keys, mean (K, D), spread (K,))`` of the ``K``
    POIs some case used (the shape prior and the uv templates both start here).
    """
    dim = len(axes)
    for structure, members, keys in shape_groups(fingerprint, mode, channels, frozenset(flagged)):
        shapes = _case_shapes(fingerprint, keys, axes, flagged)
        usable = np.isfinite(shapes).all(-1).sum(1) >= dim + 1
        if len(members) < dim + 1 or usable.sum() < 2:
            continue
        mean, spread, count = procrustes_mean(shapes[usable])
        keep = count > 0
        if keep.sum() < dim + 1:
            continue
        yield (structure, np.asarray(members)[keep], [k for k, kept in zip(keys, keep) if kept],
               mean[keep], spread[keep])


def shape_prior(fingerprint: Dict[str, Any], mode: str, channels: Sequence[Dict[str, Any]], axes: Sequence[int],
                spacing: Sequence[float], sigma_mm: float, flagged: set) -> Optional[ShapePrior]:
    """Procrustes mean shape and per-POI spread of each group (:func:`shape_groups`: per structure label,
    rigid groups for landmark-only channels; the maths
    in :mod:`poi_nnunet.shape_prior`), in the configuration's axes: the mean in the training cases' mean
    orientation, the spread after fitting by translation and scale (it includes their rotations), since
    the orientation is what names the POIs of a symmetric shape.

    A spread is at least the heatmap sigma (a rigid phantom would otherwise give 0 and make any decoding
    noise decisive). A group needs ``D + 1`` POIs and two cases that have ``D + 1`` of them
    (:func:`_group_means`), and a
    configuration that holds: a median spread of at most :data:`MAX_PRIOR_SPREAD_RATIO` times the mean
    shape's RMS radius. Where the POIs lie anywhere relative to each other (three polygons placed freely
    in a landmark-only image: spread 0.92 of the radius, against 0.26 for each polygon's own corners),
    the "prior" only adds noise to the heatmaps' choice: on that phantom it let 19% of the points written
    sit on another landmark, against none without it. None where no group qualifies.
    """
    groups: List[ShapeGroup] = []
    for structure, members, _, mean, spread in _group_means(fingerprint, mode, channels, axes, flagged):
        radius = float(np.sqrt(((mean - mean.mean(0)) ** 2).sum(1).mean()))
        if np.median(np.maximum(spread, sigma_mm)) > MAX_PRIOR_SPREAD_RATIO * radius:
            continue  # no configuration to speak of (see the docstring)
        groups.append(ShapeGroup(structure, tuple(int(m) for m in members),
                                 tuple(tuple(float(v) for v in row) for row in mean),
                                 tuple(float(max(v, sigma_mm)) for v in spread),
                                 tuple(float(v) for v in spacing)))
    return ShapePrior(tuple(float(v) for v in spacing), tuple(groups)) if groups else None


def uv_templates(fingerprint: Dict[str, Any], mode: str, channels: Sequence[Dict[str, Any]], axes: Sequence[int],
                 flagged: set) -> Optional[UvTemplates]:
    """The dense-correspondence templates (seed 001; :mod:`poi_nnunet.uv`): per structure label, the
    Procrustes mean of its POIs in mm, in the configuration's axes and the cases' mean orientation
    (:func:`_group_means`: whole-image mode, the structure labels of the channels; structure mode, each
    label with the POI ids it carries; ``D + 1`` POIs and two cases with ``D + 1`` of them; cleaned
    points left out). Unlike the shape prior no spread limit: a template only has to be a mean.

    Structure 0 gets none (no mask says which voxels it is). None where no structure qualifies, and for a
    configuration with fewer axes than the raw data (a ``2d`` configuration of 3D data: its slices cut
    the structures, and the POIs are not in the slice).
    """
    if len(axes) != _raw_dim(fingerprint):
        return None
    if mode != STRUCTURE_MODE:
        channels = [c for c in channels if int(c["structure"]) != 0]  # spare structure 0's rigid grouping
    templates = [UvTemplate(int(structure), tuple(p for _, p in keys), mean)
                 for structure, _, keys, mean, _ in _group_means(fingerprint, mode, channels, axes, flagged)
                 if structure]
    return UvTemplates(tuple(templates)) if templates else None


def point_sup_extent_mm(summary: Dict[str, Any], spacing: np.ndarray) -> Optional[Dict[str, float]]:
    """Per clicked class of a sparse-label dataset: how far (mm) the structure reaches at most, the radius
    of point supervision's prior-extent term (seed 002, Eq. 3; :mod:`poi_nnunet.click_extent`).

    Clicks are drawn from a structure's interior, so their spread (the largest box diagonal of one
    case's clicks over the cases) underestimates its size; the radius is
    ``EXTENT_PER_CLICK_SPREAD`` times that spread. Measured on the synthetic spine with 5 simulated
    clicks per vertebra (``poi_convert clicks`` defaults; ``benchmarks/click_extent_ratio.py``), the radius
    that keeps every voxel of a vertebra is 2.2-3.5 times that spread with 12 training cases and up to 5.2
    times with 6 (fewer cases, smaller largest spread): 5 covers both but the rarest draws. A radius too
    small teaches the network to erase the structure's far side; one too large only weakens the term. A class whose clicks never spread over more than two
    voxels (one click per case) gets the median radius of the classes that do. None for dense labels,
    or where no class has a spread; edit the plans' value to override it (the seed used 110 mm for
    lumbar vertebrae).
    """
    spreads = summary.get("annotated_extent_mm")
    if not spreads:
        return None
    floor = 2.0 * float(np.max(spacing))
    radii = {k: EXTENT_PER_CLICK_SPREAD * v for k, v in spreads.items() if v > floor}
    if not radii:
        return None
    fallback = float(np.median(list(radii.values())))
    return {k: round(radii.get(k, fallback), 2) for k in spreads}


def heatmap_deep_supervision(summary: Dict[str, Any]) -> bool:
    """Whether the heatmaps get heads and targets at the decoder's lower resolutions too.

    Always, in plans of this version (older plans lack the key and keep their models' single head). The
    lower decoder stages otherwise learn landmarks only through the full-resolution head, and in a
    landmark-only dataset nothing else teaches them (no segmentation deep supervision): on the
    landmark-only polygon phantom, 2000 CPU iterations gave a mean error over all points of 11.7 mm with
    41 % of the points on another landmark without it, 0.51 mm and 1 % with it (0.67 mm after 500). With
    masks it does no harm: on the polygon phantom with masks 0.43 mm mean / 0.23 mm median over all points
    after 2000 iterations against 0.44 / 0.26 without (p95 1.85 against 1.69 mm; Dice 0.980 and 0.979).
    """
    return True


def poi_block(fingerprint: Dict[str, Any], configuration: Dict[str, Any], transpose_forward: Sequence[int],
              thresholds: Dict[str, float], flagged: List[Dict[str, Any]], names: Dict[str, str],
              field_of_view: Optional[Dict[str, Any]] = None,
              coarse_pass_spacing: Optional[Sequence[float]] = None) -> Dict[str, Any]:
    """Assemble the ``poi`` block for one configuration of the plans.

    ``coarse_pass_spacing``: plan fields of view where the scans do not fit the patch, to be placed by a
    coarse pass at this spacing (the planner asks for them in ``3d_fullres`` only, the configuration whose
    models are trained per field of view, and plans the coarse pass first:
    :func:`planners.fields_of_view.plan_coarse_configuration`).
    ``field_of_view`` (one of a block's ``fields_of_view``): the block of that field of view's model instead:
    its channels only, crops of its extent, and the field of view recorded as ``field_of_view``.

    Keys (vectors in the configuration's axes, see the module docstring):

    * ``crop_mode``: ``structure_with_neighbours`` (one sample = one structure, centred, with its
      neighbours in view) or ``whole_image``; ``crop_size_mm``: what a sample must cover (structure mode:
      the loaders keep it in view when they shift the crop centre).
    * ``heatmap_sigma_mm`` / ``heatmap_sigma_voxels``: Gaussian target width; ``poi_separation_mm``
      the separation it was derived from; ``peaks_separable``: whether sigma stayed at or below
      separation / 2.5 (neighbouring peaks overlap by less than exp(-3.1)).
    * ``heatmap_amplitude``: the target's peak height; ``peak_support_sigmas``: how many sigmas a peak
      reaches (rendering, decoding and the refinement patch all use it).
    * ``refine_patch_size``: voxels, at the configuration's spacing, around each coarse estimate
      (sized for the coarse error at the spacing where the crop fits the patch).
    * ``elastic_magnitude_voxels`` / ``elastic_scale``: elastic deformation ranges for methods that
      deform (see :func:`elastic_magnitude_voxels`).
    * ``poi_channels``: output channel order, ``{"structure": int or None, "poi": int, "name": str}``.
    * ``heatmap_deep_supervision``: heatmap heads and targets at the decoder's lower resolutions too
      (:func:`heatmap_deep_supervision`).
    * ``shape_prior``: per structure group, the channels, the Procrustes mean shape (mm) and per-POI
      spread of the training POIs (:func:`shape_prior`), with the configuration's ``spacing_mm``;
      absent where no group has enough POIs and cases.
    * ``uv_templates``: per structure label, the POI ids and their Procrustes mean positions (mm), the
      template of dense correspondence (:func:`uv_templates`, :mod:`poi_nnunet.uv`); absent where no
      structure qualifies (landmark-only data, a ``2d`` configuration of 3D data).
    * ``point_sup_extent_mm``: per clicked class of a sparse-label dataset, how far its structure reaches
      (:func:`point_sup_extent_mm`); absent for dense labels.
    * ``fields_of_view``, ``coarse_configuration``, ``coarse_spacing``: where a 3D whole-image scan does not fit
      the patch, its fields of view (:mod:`planners.fields_of_view`; each POI's margin is its heatmap support
      plus one voxel of the coarse pass), the configuration of the whole-scan coarse pass that places them,
      and that pass's spacing; absent otherwise.
    * ``cleaning``: per-id surface-distance fences, the voxel-diagonal floor, and how many points the
      cleaning report lists.
    """
    summary = fingerprint["summary"]
    spacing = np.array(configuration["spacing"], float)
    patch = np.array(configuration["patch_size"], float)
    axes = fingerprint_axes(transpose_forward, len(spacing), summary["dim"])
    mode = crop_mode(summary)
    crop = crop_size_mm(fingerprint, mode)[axes]
    flagged_set = {(f["case"], f["structure"], f["poi"]) for f in flagged}
    separation = poi_separation_mm(fingerprint, flagged_set)
    sigma = heatmap_sigma_mm(separation, spacing)
    coarse = coarse_spacing(crop, spacing, patch)
    div = divisors(configuration["architecture"]["arch_kwargs"]["strides"], len(spacing))
    fraction = summary["poi_bearing_fraction"]
    channels = poi_channels(summary, mode, names)
    fovs: List[Dict[str, Any]] = []
    if field_of_view is not None:
        wanted = {(int(c["structure"]), int(c["poi"])) for c in field_of_view["channels"]}
        channels = [c for c in channels if (c["structure"], c["poi"]) in wanted]
        crop = np.asarray(field_of_view["extent_mm"], float)
    elif coarse_pass_spacing is not None and \
            long_scan_crop_mm(fingerprint, configuration, transpose_forward) is not None:
        shapes = _case_shapes(fingerprint, [(c["structure"], c["poi"]) for c in channels], axes, flagged_set)
        pass_spacing = np.asarray(coarse_pass_spacing, float)
        fovs = plan_fields_of_view(shapes, channels, crop, patch * spacing, PEAK_SUPPORT_SIGMAS * sigma + pass_spacing)
    prior = shape_prior(fingerprint, mode, channels, axes, spacing, sigma, flagged_set)
    templates = uv_templates(fingerprint, mode, channels, axes, flagged_set)
    block = {
        "version": POI_BLOCK_VERSION,
        "axes": "nnU-Net's transposed array axes, as patch_size and spacing",
        "crop_mode": mode,
        "crop_size_mm": _r(crop),
        "heatmap_sigma_mm": round(sigma, 4),
        "heatmap_sigma_voxels": _r(sigma / spacing),
        "poi_separation_mm": round(separation, 4),
        "peaks_separable": bool(separation >= 2.5 * sigma - 1e-9),
        "heatmap_amplitude": HEATMAP_AMPLITUDE,
        "peak_support_sigmas": PEAK_SUPPORT_SIGMAS,
        "refine_patch_size": refine_patch_size(sigma, coarse, spacing, patch, div),
        "elastic_magnitude_voxels": elastic_magnitude_voxels(crop, spacing, patch),
        "elastic_scale": list(ELASTIC_SCALE),
        "poi_bearing_fraction": None if fraction is None else round(fraction["p50"], 4),
        "poi_channels": channels,
        "heatmap_deep_supervision": heatmap_deep_supervision(summary),
        "cleaning": {"max_surface_distance_mm": {k: round(v, 3) for k, v in thresholds.items()},
                     "min_voxel_diagonals": MIN_VOXEL_DIAGONALS, "num_flagged": len(flagged),
                     "report": "poi_cleaning.json"},
    }
    if fovs:
        block.update(fields_of_view=fovs, coarse_configuration=COARSE_CONFIGURATION, coarse_spacing=_r(pass_spacing))
    if field_of_view is not None:
        block["field_of_view"] = dict(field_of_view)
    if prior is not None:
        block["shape_prior"] = prior.to_block()
    if templates is not None:
        block["uv_templates"] = templates.to_block()
    extent = point_sup_extent_mm(summary, spacing)
    if extent is not None:
        block["point_sup_extent_mm"] = extent
    return block


def _r(v: np.ndarray) -> List[float]:
    return [round(float(x), 4) for x in v]

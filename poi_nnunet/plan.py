"""The ``poi`` block of an nnU-Net configuration, read once into a typed, frozen :class:`PoiPlan`.

The planner (:mod:`planners.poi_plan`) writes the block into the plans; every
reader (trainers, loaders, predictor) goes through :meth:`PoiPlan.from_block`
so that a key is parsed, defaulted and checked in one place. Vectors are in
the configuration's axes (nnU-Net's transposed array axes; the last two for a
``2d`` configuration), like ``patch_size`` and ``spacing``.

Each value here is one the code uses; what the block records only for the
reader (the separation sigma was derived from, cleaning counts) stays in the
block and is not part of the typed plan.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional, Tuple

from .errors import PoiNnunetError
from .shape_prior import ShapePrior
from .uv.template import UvTemplates

# Crop modes, defined here once (the planner, the loaders and the predictor import them).
STRUCTURE_MODE = "structure_with_neighbours"
WHOLE_IMAGE = "whole_image"
CROP_MODES = (STRUCTURE_MODE, WHOLE_IMAGE)
# The configuration of the coarse pass over whole long scans (planned beside 3d_fullres where its block has
# fields of view; planners.fields_of_view).
COARSE_CONFIGURATION = "3d_coarse"
# The trainer of that coarse pass, whatever trainer the fields of view get: its points only centre the fields of
# view's crops, so it needs heatmap peaks and their confidence, not sub-voxel refinement.
# On the leg phantom the heatmap trainer learnt it where coarse_refine (its heatmap term weighted 1 / C beside
# the point terms) had not left the zero-heatmap plateau after 2400 CPU iterations, at a third of the step time.
COARSE_PASS_TRAINER = "heatmap"
# Fields of view are named fov1, fov2, ... along the scan; their plans are <plans>_fov1, ... (FieldOfView.plans_name)
FIELD_OF_VIEW_PREFIX = "fov"

# Values of version-1 blocks, which did not record them (the code then had them as constants).
DEFAULT_HEATMAP_AMPLITUDE = 10.0
DEFAULT_PEAK_SUPPORT_SIGMAS = 3.0
DEFAULT_ELASTIC_MAGNITUDE_VOXELS = (1.5, 3.0)
DEFAULT_ELASTIC_SCALE = (0.1, 0.2)
DEFAULT_MIN_VOXEL_DIAGONALS = 1.1  # planners.cleaning's floor


@dataclass(frozen=True)
class FieldOfView:
    """One field of view of a long scan (:mod:`planners.fields_of_view`): a group of POI channels that one
    patch shows. ``extent_mm``: the box (configuration axes) a crop centred on the group's POIs must show."""

    name: str
    channels: Tuple[Tuple[int, int], ...]  # (structure, poi) of each channel
    extent_mm: Tuple[float, ...]

    def plans_name(self, plans_name: str) -> str:
        """Plans identifier of this field of view's model (``poiPlans_fov1``, as ``poi_pseudo_masks`` names its
        planes' plans): its results folder is nnU-Net's ``<trainer>__poiPlans_fov1__3d_fullres``."""
        return f"{plans_name}_{self.name}"

    @staticmethod
    def is_plans_name(name: str, plans_name: str) -> bool:
        """Whether plans identifier ``name`` is the plans of some field of view of ``plans_name``
        (``poiPlans_fov3`` of ``poiPlans``; not ``poiPlans_fov1_tuned``)."""
        return re.fullmatch(rf"{re.escape(plans_name)}_{FIELD_OF_VIEW_PREFIX}[1-9][0-9]*", name) is not None

    @classmethod
    def from_block(cls, block: Mapping[str, Any]) -> "FieldOfView":
        return cls(str(block["name"]), tuple((int(c["structure"]), int(c["poi"])) for c in block["channels"]),
                   tuple(float(v) for v in block["extent_mm"]))


@dataclass(frozen=True)
class PoiPlan:
    """What a POI method needs from the plans' ``poi`` block.

    * ``crop_mode``: :data:`STRUCTURE_MODE` (a sample is one structure with its neighbours) or
      :data:`WHOLE_IMAGE`.
    * ``crop_size_mm``: what one structure-mode sample must show (the structure and its neighbours);
      the loaders bound the random shift of the crop centre so that it stays in the patch.
    * ``heatmap_sigma_voxels``: the Gaussian target's width (the block also records it in mm).
    * ``heatmap_amplitude``: the target's peak height (targets are ``amplitude * exp(-d^2 / 2 sigma^2)``;
      a prediction's confidence is its peak divided by it).
    * ``peak_support_sigmas``: how many sigmas a peak reaches: a point farther than this outside a
      patch renders nothing there, decoding fits a peak within this radius, and the refinement
      patch covers it.
    * ``refine_patch_size``: voxels at the configuration's spacing around each coarse point.
    * ``elastic_magnitude_voxels`` / ``elastic_scale``: ranges of the elastic deformation of methods
      that use it (maximum displacement in voxels; smoothness as a fraction of the patch edge).
    * ``poi_channels``: the output channel list, ``{"structure", "poi", "name"}`` each.
    * ``separation_sigmas``: how close two POIs of one structure come (the block's ``poi_separation_mm``,
      a 5th percentile) in heatmap sigmas; two channels' peaks closer than half of it cannot both be
      right (:meth:`same_peak_sigmas`).
    * ``shape_prior``: the training POIs' Procrustes mean shape and spread per structure group, which
      decides ambiguous peak assignments (:mod:`poi_nnunet.shape_prior`); None for plans made before
      it was planned (decoding then goes by the heatmaps alone).
    * ``heatmap_deep_supervision``: heatmap heads on the decoder's lower deep-supervision outputs too,
      trained at their resolutions (:class:`trainers.heatmap_loss.DeepSupervisedHeatmapLoss`); False for
      plans made before it was planned, whose models have no such heads.
    * ``uv_templates``: per structure label, the template (POI ids and mean positions in mm) that the
      dense-correspondence (uv) maps are normalised over (:mod:`poi_nnunet.uv`); None for plans made before
      it was planned, landmark-only datasets and ``2d`` configurations of 3D data.
    * ``point_sup_extent_mm``: per clicked class of a sparse-label dataset, how far (mm) its structure
      reaches at most: the radius of point supervision's prior-extent term (:mod:`poi_nnunet.click_extent`);
      None for dense labels.
    * ``surface_fences_mm`` / ``min_voxel_diagonals``: the planner's cleaning rule (the block's ``cleaning``): per
      POI id, how far from its structure's surface a point may lie, never below that many voxel diagonals;
      the loaders apply it to augmented samples (:mod:`poi_nnunet.augmentation.surface_check`).
    * ``fields_of_view``: the long scan's fields of view (:class:`FieldOfView`), each with a model of its own
      trained under its own plans identifier; empty where the scans fit the patch. ``coarse_configuration``:
      the configuration of the whole-scan coarse pass that places them in a new scan (None without them).
    * ``field_of_view``: in the plans of one field of view's model, that field of view: its channels are the
      block's ``poi_channels``, and training crops are centred on them (None otherwise).
    * ``loss_weights``: trainer loss weights by attribute name (``{"heatmap_weight": 0.3}``), written by
      ``poi_tune --apply``; the trainer sets each one it declares tunable and refuses any other name. Empty
      (the trainer's own defaults) for planned blocks.
    """

    crop_mode: str
    crop_size_mm: Tuple[float, ...]
    heatmap_sigma_voxels: Tuple[float, ...]
    heatmap_amplitude: float
    peak_support_sigmas: float
    refine_patch_size: Tuple[int, ...]
    elastic_magnitude_voxels: Tuple[float, float]
    elastic_scale: Tuple[float, float]
    poi_channels: Tuple[Mapping[str, Any], ...]
    separation_sigmas: float = float("inf")
    shape_prior: Optional[ShapePrior] = None
    heatmap_deep_supervision: bool = False
    uv_templates: Optional[UvTemplates] = None
    point_sup_extent_mm: Optional[Mapping[int, float]] = None
    loss_weights: Mapping[str, float] = field(default_factory=dict)
    surface_fences_mm: Mapping[int, float] = field(default_factory=dict)
    min_voxel_diagonals: float = DEFAULT_MIN_VOXEL_DIAGONALS
    fields_of_view: Tuple[FieldOfView, ...] = ()
    coarse_configuration: Optional[str] = None
    field_of_view: Optional[FieldOfView] = None

    @property
    def num_channels(self) -> int:
        return len(self.poi_channels)

    def same_peak_sigmas(self, most: float) -> float:
        """Within how many sigmas peaks of two channels are one peak: ``most``, but never more than half
        the POI separation (dense contour landmarks lie closer than a sigma apart, and their channels'
        distinct peaks must not be merged into one)."""
        return float(min(most, 0.5 * self.separation_sigmas))

    @property
    def structure_mode(self) -> bool:
        return self.crop_mode == STRUCTURE_MODE

    @property
    def centred_crops(self) -> bool:
        """Whether training crops are centred on POIs: one structure's (structure mode), or the field of view's."""
        return self.structure_mode or self.field_of_view is not None

    @classmethod
    def from_block(cls, block: Optional[Mapping[str, Any]], where: str = "the plans") -> "PoiPlan":
        """Parse a ``poi`` block; a missing block or key is an error that says how to fix it."""
        if block is None:
            raise PoiNnunetError(f"{where}: the configuration has no 'poi' block; plan it with "
                                 "poi_plan_and_preprocess")
        try:
            mode = str(block["crop_mode"])
            if mode not in CROP_MODES:
                raise PoiNnunetError(f"{where}: unknown crop_mode {mode!r} in the 'poi' block (known: {CROP_MODES})")
            return cls(
                crop_mode=mode,
                crop_size_mm=tuple(float(v) for v in block["crop_size_mm"]),
                heatmap_sigma_voxels=tuple(float(v) for v in block["heatmap_sigma_voxels"]),
                heatmap_amplitude=float(block.get("heatmap_amplitude", DEFAULT_HEATMAP_AMPLITUDE)),
                peak_support_sigmas=float(block.get("peak_support_sigmas", DEFAULT_PEAK_SUPPORT_SIGMAS)),
                refine_patch_size=tuple(int(v) for v in block["refine_patch_size"]),
                elastic_magnitude_voxels=_pair(block.get("elastic_magnitude_voxels", DEFAULT_ELASTIC_MAGNITUDE_VOXELS)),
                elastic_scale=_pair(block.get("elastic_scale", DEFAULT_ELASTIC_SCALE)),
                poi_channels=tuple(dict(c) for c in block["poi_channels"]),
                separation_sigmas=float(block.get("poi_separation_mm", float("inf")))
                / float(block["heatmap_sigma_mm"]),  # unknown separation: no limit
                shape_prior=ShapePrior.from_block(block.get("shape_prior")),
                heatmap_deep_supervision=bool(block.get("heatmap_deep_supervision", False)),
                uv_templates=UvTemplates.from_block(block.get("uv_templates")),
                point_sup_extent_mm=_extents(block.get("point_sup_extent_mm")),
                loss_weights=_loss_weights(block.get("loss_weights"), where),
                surface_fences_mm={int(k): float(v) for k, v in
                                   (block.get("cleaning") or {}).get("max_surface_distance_mm", {}).items()},
                min_voxel_diagonals=float((block.get("cleaning") or {}).get("min_voxel_diagonals",
                                                                            DEFAULT_MIN_VOXEL_DIAGONALS)),
                fields_of_view=tuple(FieldOfView.from_block(f) for f in block.get("fields_of_view") or ()),
                coarse_configuration=block.get("coarse_configuration"),
                field_of_view=(None if block.get("field_of_view") is None
                               else FieldOfView.from_block(block["field_of_view"])),
            )
        except KeyError as exc:
            raise PoiNnunetError(f"{where}: the 'poi' block has no {exc.args[0]!r}; plan again with "
                                 "poi_plan_and_preprocess") from None

    @classmethod
    def from_configuration(cls, configuration_manager: Any) -> "PoiPlan":
        """The plan of an nnU-Net ``ConfigurationManager``."""
        name = getattr(configuration_manager, "configuration_name", None) or "configuration"
        return cls.from_block(configuration_manager.configuration.get("poi"), f"plans ({name})")


# values of the block that poi_tune may set (trainers declare which, poi_nnunet.tuning.space)
TUNABLE_BLOCK_KEYS = ("heatmap_sigma_mm", "heatmap_amplitude")


def block_with_values(block: Mapping[str, Any], values: Mapping[str, float]) -> Dict[str, Any]:
    """A copy of a ``poi`` block with ``values`` (keys of :data:`TUNABLE_BLOCK_KEYS`) in place of the planned ones.

    The sigma is recorded twice, in mm and per axis in voxels (``sigma_mm / spacing``): a new sigma in mm
    scales the voxel sigmas by the same factor, so both stay one width. What the planner derived from the
    planned sigma for the reader only (``peaks_separable``) or as a floor (the shape prior's spreads, the
    ``coarse_refine`` patch) is left as planned.
    """
    out = dict(block)
    for key, value in values.items():
        if key not in TUNABLE_BLOCK_KEYS:
            raise PoiNnunetError(f"{key!r} is not a value of the 'poi' block that may be set (those are: "
                                 f"{', '.join(TUNABLE_BLOCK_KEYS)})")
        value = float(value)
        if not (math.isfinite(value) and value > 0):
            raise PoiNnunetError(f"'poi' block value {key} must be a positive number, got {value}")
        if key == "heatmap_sigma_mm":
            factor = value / float(block["heatmap_sigma_mm"])
            out["heatmap_sigma_voxels"] = [round(float(v) * factor, 6) for v in block["heatmap_sigma_voxels"]]
        out[key] = value
    return out


def _loss_weights(values: Any, where: str) -> Dict[str, float]:
    """``poi.loss_weights`` as ``{name: weight}``; anything but a mapping of names to finite weights >= 0 is an
    error naming the plans."""
    if values is None:
        return {}
    if not isinstance(values, Mapping):
        raise PoiNnunetError(f"{where}: 'poi.loss_weights' must map weight names to numbers, got {values!r}")
    weights = {}
    for name, value in values.items():
        try:
            weight = float(value)
        except (TypeError, ValueError):
            weight = float("nan")
        if isinstance(value, bool) or not (math.isfinite(weight) and weight >= 0):
            raise PoiNnunetError(f"{where}: 'poi.loss_weights' {name!r} must be a finite number >= 0, got {value!r}")
        weights[str(name)] = weight
    return weights


def _extents(values: Optional[Mapping[str, Any]]) -> Optional[Mapping[int, float]]:
    return None if values is None else {int(k): float(v) for k, v in values.items()}


def _pair(values: Any) -> Tuple[float, float]:
    lo, hi = (float(v) for v in values)
    return lo, hi

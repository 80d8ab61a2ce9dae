"""nnU-Net's experiment planner with a ``poi`` block added to every configuration it plans."""
from __future__ import annotations

import contextlib
import copy
import io
from typing import Any, Dict, List, Optional, Tuple, Union

from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner

from poi_nnunet.plan import COARSE_CONFIGURATION, FieldOfView

from .fields_of_view import coarse_configuration
from .poi_plan import crop_size_mm, crop_mode, fingerprint_axes, poi_block

PLANS_IDENTIFIER = "poiPlans"


class PoiExperimentPlanner(ExperimentPlanner):
    """nnU-Net's default planner (PlainConvUNet) plus ``plans['configurations'][c]['poi']``.

    Why the default preset and not a residual encoder: the seed methods compare against default
    nnU-Net and heatmap baselines, so 2d/3d_fullres/3d_lowres here are exactly nnU-Net's own
    (same spacing, patch and network, so results and the speed benchmark compare like with like);
    the plain network is also the cheaper one on the CPU, where tests and CI run. A residual variant
    is this class with ``UNet_class`` and the reference values of ``ResEncUNetPlanner``.

    The plans identifier is ``poiPlans`` (data in ``poiPlans_<config>``), so
    ``nnUNetv2_plan_and_preprocess`` can run beside it without either overwriting the other.
    Configuration names, keys and the preprocessor name stay nnU-Net's, so PlansManager and
    nnU-Net's predictor load these plans as they are.
    """

    def __init__(self, dataset_name_or_id: Union[str, int], gpu_memory_target_in_gb: float = 8,
                 preprocessor_name: str = "DefaultPreprocessor", plans_name: str = PLANS_IDENTIFIER,
                 overwrite_target_spacing: Union[List[float], Tuple[float, ...], None] = None,
                 suppress_transpose: bool = False, poi_fingerprint: Optional[Dict[str, Any]] = None,
                 cleaning_thresholds: Optional[Dict[str, float]] = None,
                 flagged: Optional[List[Dict[str, Any]]] = None):
        super().__init__(dataset_name_or_id, gpu_memory_target_in_gb, preprocessor_name, plans_name,
                         overwrite_target_spacing, suppress_transpose)
        if poi_fingerprint is None:
            raise ValueError("PoiExperimentPlanner needs the POI fingerprint")
        self.poi_fingerprint = poi_fingerprint
        self.cleaning_thresholds = cleaning_thresholds or {}
        self.flagged = flagged or []
        #: plans identifiers of the fields of view's models, saved beside the plans (see save_plans)
        self.field_of_view_plans: List[str] = []

    def _block(self, config: dict, transpose_forward, field_of_view: Optional[dict] = None,
               plan_fields: bool = False) -> dict:
        names = {str(k): str(v) for k, v in (self.dataset_json.get("pois") or {}).items()}
        return poi_block(self.poi_fingerprint, config, transpose_forward, self.cleaning_thresholds, self.flagged,
                         names, field_of_view, plan_fields)

    def save_plans(self, plans: dict) -> None:
        """Add the ``poi`` block to each planned configuration, then save as nnU-Net does.

        Where the ``3d_fullres`` block has fields of view (a long scan, :mod:`planners.fields_of_view`), the
        plans also get the coarse pass's configuration ``3d_coarse``, and each field of view gets plans of
        its own (``poiPlans_fov1``, ...): the ``3d_fullres`` configuration with that field of view's block,
        reading the same preprocessed data.
        """
        self.field_of_view_plans = []
        for name, config in plans["configurations"].items():
            if "spacing" in config:  # 3d_cascade_fullres only inherits from 3d_fullres
                config["poi"] = self._block(config, plans["transpose_forward"], plan_fields=name == "3d_fullres")
        fullres = plans["configurations"].get("3d_fullres")
        fovs = (fullres or {}).get("poi", {}).get("fields_of_view") or []
        if fovs:
            summary = self.poi_fingerprint["summary"]
            axes = fingerprint_axes(plans["transpose_forward"], 3, summary["dim"])
            crop = crop_size_mm(self.poi_fingerprint, crop_mode(summary))[axes]
            coarse = coarse_configuration(fullres, fullres["poi"]["coarse_spacing"], crop, self.plans_identifier)
            coarse["poi"] = self._block(coarse, plans["transpose_forward"])
            plans["configurations"][COARSE_CONFIGURATION] = coarse
        self._save(plans)
        if not fovs:
            self._drop_stale_coarse_pass(plans)
        main_identifier = self.plans_identifier
        try:
            for fov in fovs:
                fov_plans = copy.deepcopy(plans)
                config = fov_plans["configurations"]["3d_fullres"]
                config["poi"] = self._block(config, plans["transpose_forward"], fov)
                fov_plans["configurations"] = {"3d_fullres": config}
                self.plans_identifier = fov_plans["plans_name"] = FieldOfView.from_block(fov).plans_name(main_identifier)
                self._save(fov_plans)
                self.field_of_view_plans.append(self.plans_identifier)
        finally:
            self.plans_identifier = main_identifier
        if fovs:
            print(f"Long scans: {len(fovs)} field(s) of view ({', '.join(f['name'] for f in fovs)}), a coarse pass "
                  f"({COARSE_CONFIGURATION}) to place them, and plans per field of view "
                  f"({', '.join(self.field_of_view_plans)})")

    def _drop_stale_coarse_pass(self, plans: dict) -> None:
        """nnU-Net keeps configurations of the plans file it replaces (in the file and in ``plans``); a coarse
        pass planned before (the scans did not fit the patch then) would survive a re-plan that has no fields
        of view, and be preprocessed."""
        from batchgenerators.utilities.file_and_folder_operations import join, load_json, save_json
        from nnunetv2.paths import nnUNet_preprocessed

        if plans["configurations"].pop(COARSE_CONFIGURATION, None) is None:
            return
        path = join(nnUNet_preprocessed, self.dataset_name, self.plans_identifier + ".json")  # as nnU-Net saves it
        saved = load_json(path)
        saved["configurations"].pop(COARSE_CONFIGURATION, None)
        save_json(saved, path, sort_keys=False)

    def _save(self, plans: dict) -> None:
        """nnU-Net's ``save_plans``, without its line naming the staging folder."""
        said = io.StringIO()
        with contextlib.redirect_stdout(said):  # nnU-Net names the staging folder, gone once published
            super().save_plans(plans)
        for line in said.getvalue().splitlines():
            if not line.startswith("Plans were saved to"):
                print(line)

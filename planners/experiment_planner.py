"""nnU-Net's experiment planner with a ``poi`` block added to every configuration it plans."""
from __future__ import annotations

import contextlib
import copy
import io
from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np
from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner
from nnunetv2.utilities.json_export import recursive_fix_for_json_export

from poi_nnunet.plan import COARSE_CONFIGURATION, FieldOfView

from .fields_of_view import plan_coarse_configuration
from .poi_plan import long_scan_crop_mm, poi_block

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
               coarse_pass_spacing: Optional[List[float]] = None) -> dict:
        names = {str(k): str(v) for k, v in (self.dataset_json.get("pois") or {}).items()}
        return poi_block(self.poi_fingerprint, config, transpose_forward, self.cleaning_thresholds, self.flagged,
                         names, field_of_view, coarse_pass_spacing)

    def save_plans(self, plans: dict) -> None:
        """Add the ``poi`` block to each planned configuration, then save as nnU-Net does.

        Where a 3D whole-image scan does not fit ``3d_fullres``'s patch (a long scan), the coarse pass that
        will search new scans is planned first, as nnU-Net plans a configuration
        (:func:`planners.fields_of_view.plan_coarse_configuration`), and ``3d_fullres``'s block gets fields
        of view sized for that pass's error (:mod:`planners.fields_of_view`). Then the plans get the coarse
        pass's configuration ``3d_coarse``, and each field of view gets plans of its own (``poiPlans_fov1``,
        ...): the ``3d_fullres`` configuration with that field of view's block, reading the same
        preprocessed data.
        """
        self.field_of_view_plans = []
        fullres = plans["configurations"].get("3d_fullres")
        coarse = self._coarse_pass(fullres, plans["transpose_forward"]) if fullres else None
        for name, config in plans["configurations"].items():
            if "spacing" in config:  # 3d_cascade_fullres only inherits from 3d_fullres
                pass_spacing = coarse["spacing"] if coarse is not None and name == "3d_fullres" else None
                config["poi"] = self._block(config, plans["transpose_forward"], coarse_pass_spacing=pass_spacing)
        fovs = (fullres or {}).get("poi", {}).get("fields_of_view") or []
        if fovs:
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

    def _coarse_pass(self, fullres: dict, transpose_forward: List[int]) -> Optional[dict]:
        """The ``3d_coarse`` configuration where a 3D whole-image scan overflows ``fullres``'s patch, else None."""
        crop = long_scan_crop_mm(self.poi_fingerprint, fullres, transpose_forward)
        if crop is None:
            return None
        cache: dict = {}
        identifier = self.generate_data_identifier(COARSE_CONFIGURATION)

        def plan_at(at_spacing: np.ndarray, shape: Tuple[int, ...]) -> dict:
            n_voxels = float(np.prod(shape, dtype=np.float64) * self.dataset_json["numTraining"])
            return self.get_plans_for_configuration(at_spacing, shape, identifier, n_voxels, cache)

        config = plan_coarse_configuration(plan_at, np.asarray(fullres["spacing"], float), crop)
        recursive_fix_for_json_export(config)
        return config

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

"""nnU-Net's experiment planner with a ``poi`` block added to every configuration it plans."""
from __future__ import annotations

import contextlib
import io
from typing import Any, Dict, List, Optional, Tuple, Union

from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner

from .poi_plan import poi_block

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

    def save_plans(self, plans: dict) -> None:
        """Add the ``poi`` block to each planned configuration, then save as nnU-Net does."""
        names = {str(k): str(v) for k, v in (self.dataset_json.get("pois") or {}).items()}
        for config in plans["configurations"].values():
            if "spacing" in config:  # 3d_cascade_fullres only inherits from 3d_fullres
                config["poi"] = poi_block(self.poi_fingerprint, config, plans["transpose_forward"],
                                          self.cleaning_thresholds, self.flagged, names)
        said = io.StringIO()
        with contextlib.redirect_stdout(said):  # nnU-Net names the staging folder, gone once published
            super().save_plans(plans)
        for line in said.getvalue().splitlines():
            if not line.startswith("Plans were saved to"):
                print(line)

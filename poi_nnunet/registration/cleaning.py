"""The planner's cleaning rule (seed 000), applied to augmented samples before they are written.

A transform can push a point off its structure: a thin structure squashed
below the voxel size, a fold of the deformation, a label carried by nearest
neighbour that loses a pole. Such a point would teach the network a wrong
place, so it is dropped from the sample's points file (and recorded). The
rule is exactly the planner's (:mod:`planners.cleaning`): per POI id, Tukey's
fence of that id's distances to its structure's surface, but never below 1.1
voxel diagonals of the case's grid. The fences are measured on the source
dataset's *original* training cases, so augmented samples cannot widen them.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional

from ..raw_dataset import RawDataset


def surface_fences(ds: RawDataset, num_processes: int = 1, progress: bool = True) -> Dict[str, float]:
    """Per POI id (as a string): the planner's fence (mm) from ``ds``'s original training cases."""
    from planners.cleaning import surface_thresholds
    from planners.poi_fingerprint import measure_cases

    return surface_thresholds({"cases": measure_cases(ds, num_processes, progress=progress)})


def far_from_surface(case: str, image_file: str, label_file: Optional[str], poi_file: str,
                     fences: Dict[str, float]) -> List[Dict[str, Any]]:
    """The points of one written sample that the planner's rule flags: ``[{"structure", "poi",
    "surface_distance_mm", "threshold_mm", ...}]`` (empty without a label map or fences)."""
    if label_file is None or not fences:
        return []
    from planners.case_analysis import analyze_case
    from planners.cleaning import flag_far_pois

    record = analyze_case(case, image_file, label_file, poi_file)
    return flag_far_pois({"cases": [record]}, fences)

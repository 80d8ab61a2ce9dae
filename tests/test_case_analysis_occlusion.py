"""Surface distances of the POI fingerprint where structures overlap in projection (planners.case_analysis).

A 2D X-ray's label map gives each pixel one structure, so a lung's outline that runs on behind the heart
lies inside the heart's label: its POIs there are far from the lung's visible surface though placed right,
and cleaning flagged them on the phantom's own ground truth (98 of 16000 demo points). In 2D such a POI is
occluded and not measured; in 3D, where a label map shows every structure whole, the same arrangement is
a misplaced POI and keeps its distance. References: distances worked out by hand on the pixel grid.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from planners.case_analysis import analyze_case
from poi_nnunet.pois import Poi, PoiSet, write_poi_file


def _write(tmp_path: Path, label: np.ndarray, points: list) -> dict:
    """Image and label with spacing 1 and origin 0 (array index (.., y, x) is world (x, y, ..) reversed)."""
    image, mask = sitk.GetImageFromArray(np.zeros(label.shape, np.float32)), sitk.GetImageFromArray(label)
    sitk.WriteImage(image, str(tmp_path / "img.nii.gz"))
    sitk.WriteImage(mask, str(tmp_path / "lab.nii.gz"))
    write_poi_file(tmp_path / "pts.json", PoiSet(points))
    return analyze_case("c", str(tmp_path / "img.nii.gz"), str(tmp_path / "lab.nii.gz"), str(tmp_path / "pts.json"))


def test_a_2d_poi_under_another_structure_is_occluded_and_a_3d_one_is_measured(tmp_path: Path) -> None:
    # structure 1: rows 5-34 x columns 5-34; structure 2 covers its right part, columns 20-39 (painted over it)
    label = np.zeros((40, 40), np.uint8)
    label[5:35, 5:35] = 1
    label[5:35, 20:40] = 2
    # POI 1 of structure 1 at column 30, row 20: inside structure 2's label; POI 2 at column 10, row 20 in
    # its own label, 5 pixels from the boundary pixel at column 5 (boundary pixel centres are the reference)
    points = [Poi(1, 1, (30.0, 20.0)), Poi(1, 2, (10.0, 20.0))]
    flat = {p["poi"]: p for p in _write(tmp_path, label, points)["points"]}
    assert flat[1]["occluded"] is True and flat[1]["surface_distance_mm"] is None
    assert flat[2]["occluded"] is False and flat[2]["surface_distance_mm"] == 5.0

    volume = np.repeat(label[None], 3, axis=0)  # the same arrangement in 3D: 3 slices
    points_3d = [Poi(1, 1, (30.0, 20.0, 1.0)), Poi(1, 2, (10.0, 20.0, 1.0))]
    (tmp_path / "3d").mkdir()
    solid = {p["poi"]: p for p in _write(tmp_path / "3d", volume, points_3d)["points"]}
    # structure 1 ends at column 19, 11 voxels from the POI at column 30: a 3D label map hides nothing, so
    # the POI inside structure 2 is measured (and flaggable)
    assert solid[1]["occluded"] is False and solid[1]["surface_distance_mm"] == 11.0

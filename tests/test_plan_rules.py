"""The rules that turn a POI fingerprint into a configuration's ``poi`` block, on hand-made fingerprints."""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import pytest

from planners.cleaning import flag_far_pois, surface_thresholds
from planners.poi_fingerprint import summarize
from planners.poi_plan import crop_mode, fingerprint_axes, heatmap_sigma_mm, poi_block
from poi_nnunet.plan import STRUCTURE_MODE, WHOLE_IMAGE

Point = Tuple[int, int, Sequence[float], Optional[float]]  # structure, poi, grid mm, surface distance


def _case(name: str, fov: Sequence[float], spacing: Sequence[float], points: List[Point],
          structures: Dict[int, Tuple[Sequence[float], Sequence[float]]]) -> dict:
    """A per-case record shaped like :func:`planners.case_analysis.analyze_case`'s output."""
    stats = {}
    for s, (lo, hi) in structures.items():
        lo, hi = np.asarray(lo, float), np.asarray(hi, float)
        stats[str(s)] = {"extent_mm": (hi - lo).tolist(), "box_mm": [lo.tolist(), hi.tolist()],
                         "centre_mm": ((lo + hi) / 2).tolist(), "neighbours": [],
                         "crop_with_neighbours_mm": (3 * (hi - lo)).tolist()}
    pts = []
    for s, p, g, d in points:
        same = [np.asarray(q[2]) for q in points if q[0] == s and q[1] != p]
        nearest = float(min(np.linalg.norm(np.asarray(g) - q) for q in same)) if same else None
        pts.append({"structure": s, "poi": p, "grid_mm": list(g), "surface_distance_mm": d, "nearest_poi_mm": nearest})
    return {"case": name, "dim": len(fov), "spacing": list(spacing),
            "shape": [int(f / s) for f, s in zip(fov, spacing)],
            "fov_mm": list(fov), "structures": stats, "points": pts, "poi_bearing_fraction": 0.1}


def _fingerprint(cases: List[dict]) -> dict:
    return {"version": 1, "source_stamp": "x", "summary": summarize(cases, {}), "cases": cases}


def _config(spacing: Sequence[float], patch: Sequence[int]) -> dict:
    strides = [[1] * len(spacing)] + [[2] * len(spacing)] * 4
    return {"spacing": list(spacing), "patch_size": list(patch), "architecture": {"arch_kwargs": {"strides": strides}}}


def _spine_case(i: int) -> dict:
    """Three vertebrae along z, each carrying POIs 1 and 2 (ids repeat across structures)."""
    points, structures = [], {}
    for k, label in enumerate((20, 21, 22)):
        z = 30.0 + 30 * k
        structures[label] = ([z - 12, 20, 20], [z + 12, 60, 60])
        points += [(label, 1, [z, 30.0 + i, 40.0], 0.4), (label, 2, [z, 50.0, 40.0 + i], 0.6)]
    return _case(f"spine_{i}", [120, 80, 80], [1.0, 1.0, 1.0], points, structures)


def _leg_case(i: int) -> dict:
    """A 900 mm long leg: POI groups at hip, knee and ankle, nothing in between."""
    points = []
    for group, z in enumerate((100.0, 450.0, 820.0)):
        for j in range(3):
            points.append((0, 10 * group + j + 1, [z + 8 * j + i, 60.0 + 5 * j, 70.0], None))
    return _case(f"leg_{i}", [900, 150, 150], [1.5, 1.5, 1.5], points, {0: ([0, 0, 0], [900, 150, 150])})


def test_crop_mode_follows_whether_poi_ids_repeat_on_structures() -> None:
    assert crop_mode(_fingerprint([_spine_case(i) for i in range(3)])["summary"]) == STRUCTURE_MODE
    assert crop_mode(_fingerprint([_leg_case(i) for i in range(3)])["summary"]) == WHOLE_IMAGE


def test_sigma_keeps_neighbouring_peaks_apart_but_never_falls_below_two_voxels() -> None:
    assert heatmap_sigma_mm(16.0, [1.0, 1.0, 1.0]) == pytest.approx(4.0)  # a quarter of the separation
    assert heatmap_sigma_mm(8.0, [3.0, 3.0, 3.0]) == pytest.approx(6.0)   # at least two voxels ...
    assert heatmap_sigma_mm(2.0, [3.0, 4.0, 3.0]) == pytest.approx(6.0)   # ... even where peaks overlap


def test_structure_mode_block_on_a_spine_like_fingerprint() -> None:
    fp = _fingerprint([_spine_case(i) for i in range(4)])
    block = poi_block(fp, _config([1.0, 1.0, 1.0], [64, 64, 64]), (0, 1, 2), {}, [], {"1": "a", "2": "b"})
    assert block["crop_mode"] == STRUCTURE_MODE
    assert [c["poi"] for c in block["poi_channels"]] == [1, 2] and block["poi_channels"][0]["structure"] is None
    # crop: 3x the vertebra's 24 x 40 x 40 mm box, plus 10%
    np.testing.assert_allclose(block["crop_size_mm"], [79.2, 80.0, 80.0], rtol=1e-6)
    assert all(r % 8 == 0 and r <= 64 for r in block["refine_patch_size"])
    # elastic: the crop is cut to the 64-voxel patch, 5% of 64 = 3.2 voxels (above the 3-voxel floor)
    np.testing.assert_allclose(block["elastic_magnitude_voxels"], [1.6, 3.2])
    assert block["heatmap_amplitude"] == 10.0 and block["peak_support_sigmas"] == 3.0
    # structure crops fit the patch: no fields of view, no coarse pass (and no keys no code reads)
    assert not {"coarse_spacing", "coarse_patch_size", "coarse_to_fine", "fields_of_view"} & set(block)


def test_long_field_of_view_is_one_whole_image_block() -> None:
    fp = _fingerprint([_leg_case(i) for i in range(5)])
    block = poi_block(fp, _config([1.5, 1.5, 1.5], [128, 96, 96]), (0, 1, 2), {}, [], {})
    assert block["crop_mode"] == WHOLE_IMAGE
    assert [(c["structure"], c["poi"]) for c in block["poi_channels"]][:3] == [(0, 1), (0, 2), (0, 3)]
    # elastic magnitude: 5% of the smallest side shown, never below three voxels
    assert block["elastic_magnitude_voxels"][1] >= 3.0


def test_2d_configuration_uses_the_in_plane_axes_of_the_transposed_image() -> None:
    assert fingerprint_axes((2, 0, 1), 2, 3) == [0, 1]
    assert fingerprint_axes((2, 0, 1), 3, 3) == [2, 0, 1]
    assert fingerprint_axes((0, 1, 2), 2, 2) == [0, 1]  # a 2D image: nnU-Net's axis 0 is a dummy


def test_cleaning_flags_only_points_far_off_their_surface() -> None:
    cases = [_spine_case(i) for i in range(6)]
    cases[2]["points"][3]["surface_distance_mm"] = 9.0   # (21, 2) pushed off the bone
    fp = _fingerprint(cases)
    thresholds = surface_thresholds(fp)
    flagged = flag_far_pois(fp, thresholds)
    assert [(f["case"], f["structure"], f["poi"]) for f in flagged] == [("spine_2", 21, 2)]
    # the fence of tightly clustered distances is below a voxel: the 1.1 voxel diagonal floor applies
    assert thresholds["2"] < 1.0
    assert flagged[0]["threshold_mm"] == pytest.approx(1.1 * np.sqrt(3), abs=1e-3)


def test_elastic_range_of_a_dummy_2d_patch_uses_its_in_plane_axes_only() -> None:
    """A (32, 192, 160) patch is augmented in 2D by nnU-Net (192 / 32 > 3): its first axis is never
    deformed, so it must not shrink the range: 5% of min(192, 160) = 8 voxels, not the 3-voxel floor."""
    from planners.poi_plan import elastic_magnitude_voxels

    crop = np.array([400.0, 400.0, 400.0])
    np.testing.assert_allclose(elastic_magnitude_voxels(crop, np.ones(3), np.array([32, 192, 160])), [4.0, 8.0])
    # an isotropic-enough patch keeps every axis: 5% of 64 = 3.2
    np.testing.assert_allclose(elastic_magnitude_voxels(crop, np.ones(3), np.array([64, 96, 96])), [1.6, 3.2])

"""POIs follow nnU-Net's crop, transpose and resampling exactly: round trips and bright-voxel checks."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, Tuple

import blosc2
import numpy as np
import pytest
import SimpleITK as sitk

from poi_nnunet.geometry import ImageGeometry, PreprocessedSpace
from poi_nnunet.pois import Poi, PoiSet
from poi_nnunet.preprocessing import load_preprocessed_pois
from poi_nnunet.preprocessing.pipeline import plan_and_preprocess
from poi_nnunet.raw_dataset_writer import CaseData, DatasetWriter


def _rotation(axis, angle: float) -> np.ndarray:
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k


# ------------------------------------------------------------------------------------------ pure mapping
SPACES = {
    "identity": (np.eye(3), (1.0, 1.0, 1.0), (0, 1, 2), ((0, 20), (0, 22), (0, 24)), (20, 22, 24)),
    "transposed_anisotropic": (np.eye(3), (3.0, 0.7, 1.1), (2, 0, 1), ((1, 9), (2, 18), (0, 30)), (20, 14, 33)),
    "oblique_cropped_down": (_rotation([0.3, -0.5, 0.8], 0.7), (0.8, 1.3, 2.5), (0, 2, 1), ((3, 17), (2, 25), (4, 28)),
                             (9, 11, 30)),
}


@pytest.mark.parametrize("name", sorted(SPACES))
def test_world_preprocessed_round_trip_is_exact(name: str) -> None:
    direction, spacing, transpose, bbox, new_shape = SPACES[name]
    raw = ImageGeometry((12.0, -40.0, 7.5), spacing, direction, (30, 26, 24))
    after_crop = tuple(hi - lo for lo, hi in bbox)
    space = PreprocessedSpace(raw, transpose, bbox, after_crop, new_shape)
    world = raw.index_to_world(np.random.default_rng(0).uniform(-0.5, 20, size=(100, 3)))
    pre = space.world_to_preprocessed(world)
    assert np.max(np.abs(space.preprocessed_to_world(pre) - world)) < 1e-3
    again = PreprocessedSpace.from_json(space.to_json())
    np.testing.assert_allclose(again.world_to_preprocessed(world), pre, atol=1e-9)


def test_2d_image_gets_a_leading_axis_like_nnunet() -> None:
    raw = ImageGeometry((5.0, -8.0), (0.3, 1.7), np.array([[0.0, 1.0], [1.0, 0.0]]), (40, 30))
    space = PreprocessedSpace(raw, (0, 1, 2), ((0, 1), (2, 28), (3, 40)), (1, 26, 37), (1, 52, 37))
    world = raw.index_to_world([[10.0, 12.0], [3.5, 20.25]])
    pre = space.world_to_preprocessed(world)
    np.testing.assert_allclose(pre[:, 0], 0.0)
    # array row y=12 -> minus crop 2 -> upsampled x2 with edge alignment: (10 + 0.5) * 2 - 0.5
    assert pre[0, 1] == pytest.approx(20.5)
    assert np.max(np.abs(space.preprocessed_to_world(pre) - world)) < 1e-3


# ------------------------------------------------------------------------------------------ nnU-Net run
BRIGHT = 5000.0
# (spacing x, y, z), direction, ITK voxel indices of the POIs: x carries the coarsest spacing, so
# nnU-Net transposes; the cases' spacings differ, so every one of them is resampled.
CASES = {
    "plain": ((2.6, 1.0, 1.2), np.eye(3)),
    "oblique": ((3.0, 0.8, 1.0), _rotation([0.2, 0.9, -0.4], 0.5)),
    "coarse": ((3.4, 1.2, 1.5), np.diag([1.0, -1.0, 1.0])),
}
POI_INDICES = ((6, 9, 8), (10, 22, 20))
SHAPE_ZYX = (28, 32, 16)


def _case(name: str) -> Tuple[CaseData, Dict[int, Tuple[int, int, int]]]:
    spacing, direction = CASES[name]
    arr = np.zeros(SHAPE_ZYX, np.float32)
    arr[3:-3, 4:-4, 2:-2] = 100.0  # non-zero body with a zero border: nnU-Net crops it away
    label = np.zeros(SHAPE_ZYX, np.uint8)
    label[3:-3, 4:-4, 2:-2] = 1
    for x, y, z in POI_INDICES:
        arr[z, y, x] = BRIGHT
    image = sitk.GetImageFromArray(arr)
    image.SetSpacing(spacing)
    image.SetOrigin((-20.0, 15.0, 100.0))
    image.SetDirection(tuple(np.asarray(direction).ravel()))
    lab = sitk.GetImageFromArray(label)
    lab.CopyInformation(image)
    indices = {i + 1: idx for i, idx in enumerate(POI_INDICES)}
    # world positions from SimpleITK, not from the project's ImageGeometry
    points = [Poi(1, poi, image.TransformIndexToPhysicalPoint(idx)) for poi, idx in indices.items()]
    return CaseData(name, [image], lab, PoiSet(points)), indices


# nnU-Net crops to the non-zero body arr[3:-3, 4:-4, 2:-2] (z, y, x), then transposes (2, 0, 1): x, z, y
CROP_BOX = ((2, SHAPE_ZYX[2] - 2), (3, SHAPE_ZYX[0] - 3), (4, SHAPE_ZYX[1] - 4))


def _hand_mapped(index_xyz, shape_after_resampling) -> np.ndarray:
    """Where ITK voxel ``index_xyz`` lands in the preprocessed array, by hand: nnU-Net's array is
    (z, y, x), transposed to (x, z, y), cropped to ``CROP_BOX``, resampled with voxel edges aligned
    (cropped index ``c`` of ``n`` voxels goes to ``(c + 0.5) * new / n - 0.5``)."""
    x, y, z = index_xyz
    out = []
    for value, (lo, hi), new in zip((x, z, y), CROP_BOX, shape_after_resampling):
        out.append((value - lo + 0.5) * new / (hi - lo) - 0.5)
    return np.array(out)


@pytest.fixture(scope="module")
def preprocessed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("geometry")
    env = {"nnUNet_raw": base / "raw", "nnUNet_preprocessed": base / "pre", "nnUNet_results": base / "res"}
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            v.mkdir()
            mp.setenv(k, str(v))
        with DatasetWriter(env["nnUNet_raw"] / "Dataset971_Geometry", {"0": "MRI"}, {"background": 0, "body": 1},
                           pois={1: "a", 2: "b"}) as writer:
            for name in CASES:
                writer.add_case(_case(name)[0])
        plan_and_preprocess(971, configurations=("2d", "3d_fullres"), num_processes=[1], num_processes_fingerprint=1,
                            progress=False)
    return env["nnUNet_preprocessed"] / "Dataset971_Geometry"


def _bright_centroid(data: np.ndarray, around: np.ndarray) -> np.ndarray:
    """Intensity-weighted centre of the bright spot nearest ``around`` (sub-voxel)."""
    centre = np.round(around).astype(int)
    lo = np.maximum(centre - 3, 0)
    hi = np.minimum(centre + 4, data.shape)
    window = data[tuple(slice(a, b) for a, b in zip(lo, hi))]
    weights = np.clip(window - np.percentile(data, 99) , 0, None)
    weights[weights < 0.1 * weights.max()] = 0
    grids = np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi)], indexing="ij")
    return np.array([(g * weights).sum() / weights.sum() for g in grids])


@pytest.mark.parametrize("config", ["3d_fullres", "2d"])
def test_bright_voxel_lands_on_the_mapped_poi(preprocessed: Path, config: str) -> None:
    folder = preprocessed / f"poiPlans_{config}"
    for case in CASES:
        pois = load_preprocessed_pois(folder, case)
        indices = _case(case)[1]
        assert pois.space.transpose_forward == (2, 0, 1)
        assert pois.space.bbox == CROP_BOX
        data = blosc2.open(str(folder / f"{case}.b2nd"), mode="r")[0]
        assert pois.space.shape_after_resampling == data.shape
        assert sorted(indices) == sorted(int(p) for p in pois.pois)
        for poi, position in zip(pois.pois, pois.positions):
            expected = _hand_mapped(indices[int(poi)], data.shape)
            np.testing.assert_allclose(position, expected, atol=1e-6, err_msg=f"{config} {case} POI {poi}")
            # and nnU-Net's own resampling put that POI's bright voxel there
            found = _bright_centroid(np.asarray(data), expected)
            assert np.max(np.abs(found - expected)) <= 0.5, (config, case, poi, found, expected)


def test_round_trip_through_saved_space_on_every_case(preprocessed: Path) -> None:
    for config in ("2d", "3d_fullres"):
        for case in CASES:
            pois = load_preprocessed_pois(preprocessed / f"poiPlans_{config}", case)
            expected = _case(case)[0].pois.positions()
            np.testing.assert_allclose(pois.world, expected, atol=1e-9)
            assert np.max(np.abs(pois.space.preprocessed_to_world(pois.positions) - expected)) < 1e-3
            assert pois.valid.all()


def test_mapping_follows_nnunets_edge_aligned_resampling() -> None:
    """A bright voxel resampled by nnU-Net's own function sits where the space maps it, not centre-aligned."""
    from nnunetv2.preprocessing.resampling.default_resampling import resample_data_or_seg_to_shape

    data = np.ones((1, 10, 12, 9), np.float32)
    data[0, 8, 3, 4] = BRIGHT
    out = resample_data_or_seg_to_shape(data, (25, 12, 9), (2.5, 1.0, 1.0), (1.0, 1.0, 1.0),
                                        is_seg=False, order=3, order_z=0, force_separate_z=None)[0]
    raw = ImageGeometry((0.0, 0.0, 0.0), (1.0, 1.0, 2.5), np.eye(3), (9, 12, 10))
    space = PreprocessedSpace(raw, (0, 1, 2), ((0, 10), (0, 12), (0, 9)), (10, 12, 9), (25, 12, 9))
    expected = space.nnunet_array_to_preprocessed([8.0, 3.0, 4.0])
    assert expected[0] == pytest.approx(20.75)  # centre alignment would say 8 * 24 / 9 = 21.33
    assert np.max(np.abs(_bright_centroid(out, expected) - expected)) < 0.1

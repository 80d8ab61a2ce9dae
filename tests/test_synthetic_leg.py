"""The synthetic leg phantom: valid, long and anisotropic, POIs on their own bone at the joints only, reproducible.

Every check reads the written files back (SimpleITK for images and the
world <-> index mapping, the project's POI reader for points) and judges them
against facts written out here (the POI table, the left side in LPS, the
long-bone thirds), not with the generator's own helpers.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Dict, Tuple

import numpy as np
import pytest
import SimpleITK as sitk

from dataset_conversion.synthetic_leg import make_leg_case, write_leg_dataset
from poi_nnunet.cli.convert import main as poi_convert
from poi_nnunet.pois import read_poi_file
from poi_nnunet.raw_dataset import RawDataset
from poi_nnunet.raw_format_checks import validate_raw_dataset
from tests.factories import assert_deterministic_by_seed

SMALL = (64, 32, 32)   # numpy order (z, y, x)
FEMUR, PATELLA, TIBIA, FIBULA = 1, 2, 3, 4
# poi id -> (name, bone label, joint)
EXPECTED_POIS = {
    1: ("femoral_head_centre", FEMUR, "hip"), 2: ("greater_trochanter_tip", FEMUR, "hip"),
    3: ("lesser_trochanter_tip", FEMUR, "hip"), 4: ("medial_femoral_condyle", FEMUR, "knee"),
    5: ("lateral_femoral_condyle", FEMUR, "knee"), 6: ("intercondylar_notch", FEMUR, "knee"),
    7: ("patella_base", PATELLA, "knee"), 8: ("patella_apex", PATELLA, "knee"), 9: ("patella_centre", PATELLA, "knee"),
    10: ("medial_tibial_plateau", TIBIA, "knee"), 11: ("lateral_tibial_plateau", TIBIA, "knee"),
    12: ("tibial_tuberosity", TIBIA, "knee"), 13: ("tibial_plafond_centre", TIBIA, "ankle"),
    14: ("medial_malleolus_tip", TIBIA, "ankle"), 15: ("fibular_head_apex", FIBULA, "knee"),
    16: ("lateral_malleolus_tip", FIBULA, "ankle"),
}


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> RawDataset:
    target = tmp_path_factory.mktemp("leg") / "Dataset520_SyntheticLeg"
    write_leg_dataset(target, num_cases=3, num_test=1, seed=5, shape=SMALL)
    return RawDataset.open(target)


def _cases(ds: RawDataset):
    return [(c, "Tr") for c in ds.case_ids("Tr")] + [(c, "Ts") for c in ds.case_ids("Ts")]


def _label(ds: RawDataset, case: str, split: str) -> sitk.Image:
    return sitk.ReadImage(str(ds.path / f"labels{split}" / f"{case}.nii.gz"))


def _points(ds: RawDataset, case: str, split: str) -> Dict[int, Tuple[int, np.ndarray]]:
    """poi id -> (structure, world position)."""
    return {p.poi: (p.structure, np.array(p.position)) for p in read_poi_file(ds.poi_file(case, split))}


def _world_of_voxels(image: sitk.Image, array_indices: np.ndarray) -> np.ndarray:
    """World mm ``(N, 3)`` of voxel centres given in numpy (z, y, x) order, from the image's own header."""
    d = np.array(image.GetDirection()).reshape(3, 3)
    index = array_indices[:, ::-1] * np.array(image.GetSpacing())
    return np.array(image.GetOrigin()) + index @ d.T


# ---------------------------------------------------------------------------- the written dataset
def test_written_dataset_is_valid_with_four_bones_and_sixteen_named_pois(written: RawDataset):
    assert validate_raw_dataset(written.path, progress=False) == []
    assert written.labels == {"background": 0, "femur": 1, "patella": 2, "tibia": 3, "fibula": 4}
    assert written.poi_names == {i: name for i, (name, _, _) in EXPECTED_POIS.items()}
    assert written.case_ids("Tr") == ["leg_000", "leg_001", "leg_002"] and written.case_ids("Ts") == ["leg_003"]
    for case, split in _cases(written):
        pois = read_poi_file(written.poi_file(case, split))
        assert sorted(pois.keys()) == sorted((s, i) for i, (_, s, _) in EXPECTED_POIS.items())
        assert set(np.unique(sitk.GetArrayViewFromImage(_label(written, case, split)))) == {0, 1, 2, 3, 4}


def test_volume_is_long_narrow_anisotropic_and_ct_like(written: RawDataset):
    for case, split in _cases(written):
        image = sitk.ReadImage(str(written.image_files(case, split)[0]))
        size, spacing = np.array(image.GetSize()), np.array(image.GetSpacing())
        assert tuple(size) == SMALL[::-1]
        extent = size * spacing
        assert extent[2] >= 4 * extent[:2].max(), extent        # several times longer (z) than wide, in mm
        assert spacing[2] >= 2 * spacing[:2].max(), spacing      # anisotropic: thick slices
        hu = sitk.GetArrayFromImage(image).astype(np.float64)
        labels = sitk.GetArrayFromImage(_label(written, case, split))
        assert hu.min() < -900                                   # air outside the leg
        soft = np.median(hu[(labels == 0) & (hu > -300)])
        assert -150 < soft < 100 and np.percentile(hu[labels > 0], 90) > soft + 300   # bright cortex


def test_every_poi_lies_in_or_within_one_voxel_of_its_own_bone(written: RawDataset):
    for case, split in _cases(written):
        label = _label(written, case, split)
        labels = sitk.GetArrayFromImage(label)
        size = np.array(label.GetSize())
        for poi, (structure, position) in _points(written, case, split).items():
            assert structure == EXPECTED_POIS[poi][1], (case, poi)
            c = np.array(label.TransformPhysicalPointToContinuousIndex(tuple(float(v) for v in position)))
            assert np.all(c >= -0.5) and np.all(c <= size - 0.5), (case, poi, c)
            first = np.maximum(np.ceil(c - 1 - 1e-6).astype(int), 0)
            last = np.minimum(np.floor(c + 1 + 1e-6).astype(int), size - 1)
            near = labels[first[2]:last[2] + 1, first[1]:last[1] + 1, first[0]:last[0] + 1]
            assert (near == structure).any(), (case, poi, EXPECTED_POIS[poi][0])


def test_pois_only_at_hip_knee_and_ankle_none_on_a_shaft(written: RawDataset):
    """No POI in the middle third of the femur, tibia or fibula (their label's extent along z); hip points in
    the femur's top quarter, ankle points in the tibia's bottom quarter, knee points between the femur's bottom
    quarter and the tibia's top quarter. (The knee lies near the middle of the whole leg, at about 53 % of its
    length, so the thirds are taken per long bone.)"""
    for case, split in _cases(written):
        label = _label(written, case, split)
        labels = sitk.GetArrayFromImage(label)
        span = {}
        for bone in (FEMUR, TIBIA, FIBULA):
            z = _world_of_voxels(label, np.argwhere(labels == bone))[:, 2]
            span[bone] = (z.min(), z.max())
        assert span[FEMUR][0] > span[TIBIA][0] and span[FEMUR][1] - span[FEMUR][0] > 250  # femur above, long
        for poi, (_, position) in _points(written, case, split).items():
            z = position[2]
            for bone, (lo, hi) in span.items():
                third = (hi - lo) / 3
                assert not (lo + third < z < hi - third), (case, poi, EXPECTED_POIS[poi][0], bone)
            joint = EXPECTED_POIS[poi][2]
            (f_lo, f_hi), (t_lo, t_hi) = span[FEMUR], span[TIBIA]
            if joint == "hip":
                assert z > f_hi - 0.25 * (f_hi - f_lo), (case, poi)
            elif joint == "ankle":
                assert z < t_lo + 0.25 * (t_hi - t_lo), (case, poi)
            else:
                assert t_hi - 0.25 * (t_hi - t_lo) < z < f_lo + 0.25 * (f_hi - f_lo), (case, poi)


def test_a_left_leg_in_lps_with_plausible_joints_and_subjects_vary(written: RawDataset):
    """Lateral is +x (patient's left), anterior is -y; joint widths of an adult; the head centre deep in the
    femur, the patella centre between its poles; length, knee angle and rotation differ between subjects."""
    lengths, knee_angles, turns = [], [], []
    for case, split in _cases(written):
        p = {i: pos for i, (_, pos) in _points(written, case, split).items()}
        assert 25 < np.linalg.norm(p[5] - p[4]) < 45 and 25 < np.linalg.norm(p[11] - p[10]) < 45
        assert 30 < np.linalg.norm(p[16] - p[14]) < 60 and p[14][0] < p[13][0] < p[16][0]
        assert np.linalg.norm(p[9] - 0.5 * (p[7] + p[8])) < 3.0
        label = _label(written, case, split)
        labels = sitk.GetArrayFromImage(label)
        index = np.argwhere(np.ones(labels.shape, dtype=bool))
        near = np.linalg.norm(_world_of_voxels(label, index) - p[1], axis=1) <= 10.0
        values = labels[tuple(index[near].T)]
        assert len(values) >= 1 and set(values.tolist()) == {FEMUR}, case   # a ball of >= 10 mm round the centre
        assert p[5][0] > p[4][0] and p[11][0] > p[10][0] and p[16][0] > p[14][0]  # lateral vs medial
        assert p[2][0] > p[1][0] and p[15][0] > p[12][0]                          # trochanter, fibula lateral
        assert p[9][1] < p[6][1] and p[12][1] < p[13][1]                          # patella, tuberosity anterior
        lengths.append(np.linalg.norm(p[1] - p[13]))
        femur_axis, tibia_axis = p[6] - p[1], p[13] - 0.5 * (p[10] + p[11])
        cosine = femur_axis @ tibia_axis / np.linalg.norm(femur_axis) / np.linalg.norm(tibia_axis)
        knee_angles.append(np.degrees(np.arccos(np.clip(cosine, -1, 1))))
        condyles = p[5] - p[4]
        turns.append(np.degrees(np.arctan2(condyles[1], condyles[0])))
    assert 550 < min(lengths) and max(lengths) < 800 and np.ptp(lengths) > 5, lengths
    assert np.ptp(knee_angles) > 0.5 and max(knee_angles) < 15, knee_angles
    assert np.ptp(turns) > 2, turns


def test_same_seed_writes_the_same_bytes_and_another_seed_differs(tmp_path: Path):
    assert_deterministic_by_seed(write_leg_dataset, tmp_path, 7, shape=(48, 24, 24))


def test_poi_convert_synthetic_leg_writes_a_valid_dataset_at_the_default_shape(tmp_path: Path):
    code = poi_convert(["synthetic-leg", "-d", "521", "-n", "SyntheticLeg", "-o", str(tmp_path), "--cases", "2"])
    target = tmp_path / "Dataset521_SyntheticLeg"
    assert code == 0 and validate_raw_dataset(target, progress=False) == []
    ds = RawDataset.open(target)
    assert ds.case_ids() == ["leg_000", "leg_001"]
    image = sitk.ReadImage(str(ds.image_files("leg_000")[0]))
    assert image.GetSize() == (52, 52, 100)
    np.testing.assert_allclose(image.GetSpacing(), (2.5, 2.5, 8.0), rtol=1e-6)


def test_time_one_case_at_the_default_shape(tmp_path: Path):
    start = time.perf_counter()
    make_leg_case("leg_000", 0)
    made = time.perf_counter() - start
    start = time.perf_counter()
    write_leg_dataset(tmp_path / "Dataset522_One", num_cases=1, seed=0)
    print(f"\nsynthetic leg, default shape: {made:.3f} s to make one case, "
          f"{time.perf_counter() - start:.3f} s to write and validate a one-case dataset")

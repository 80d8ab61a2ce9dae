"""TPTBox POI files -> unified raw format -> TPTBox, on the real spine CT that ships with TPTBox.

POIs are computed by TPTBox itself on its sample CT, so the test checks our
reading of its files against TPTBox's own numbers and SimpleITK's geometry,
not against numbers we wrote down.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Dict, Tuple

import numpy as np
import pytest
import SimpleITK as sitk

import TPTBox
from TPTBox import NII, POI, POI_Global, Location, calc_poi_from_subreg_vert

from dataset_conversion.tptbox_poi import read_tptbox_poi, write_tptbox_poi
from poi_nnunet.cli.convert import main
from poi_nnunet.geometry import ImageGeometry
from poi_nnunet.pois import read_poi_file
from poi_nnunet.raw_dataset import RawDataset

SAMPLE = Path(TPTBox.__file__).parent / "tests" / "sample_ct"
CT = SAMPLE / "sub-ct_label-22_ct.nii.gz"
VERT = SAMPLE / "sub-ct_seg-vert_label-22_msk.nii.gz"
SUBREG = SAMPLE / "sub-ct_seg-subreg_label-22_msk.nii.gz"
CASE = "sub-ct_label-22"
# A few Locations keep TPTBox's computation to a few seconds; two of them are a left/right pair.
LOCATIONS = [Location.Vertebra_Corpus, Location.Spinosus_Process, Location.Costal_Process_Left, Location.Costal_Process_Right]


@pytest.fixture(scope="module")
def tptbox_poi() -> POI:
    vert, subreg = NII.load(VERT, seg=True), NII.load(SUBREG, seg=True)
    return calc_poi_from_subreg_vert(vert, subreg, subreg_id=LOCATIONS)


def _subject_folder(root: Path, poi: POI, with_ct: bool = True, **save_args) -> Path:
    """BIDS-style rawdata/derivatives split, files linked from the installed TPTBox (no copy is committed)."""
    raw, derived = root / "rawdata" / "sub-ct", root / "derivatives" / "sub-ct"
    raw.mkdir(parents=True)
    derived.mkdir(parents=True)
    if with_ct:
        (raw / CT.name).symlink_to(CT)
    (derived / VERT.name).symlink_to(VERT)
    (derived / SUBREG.name).symlink_to(SUBREG)
    poi.save(derived / f"{CASE}_poi.json", verbose=False, **save_args)
    return root


def _points(poi) -> Dict[Tuple[int, int], np.ndarray]:
    return {(int(a), int(b)): np.asarray(v, dtype=float) for a, b, v in poi.items()}


def test_local_poi_converts_to_sitk_world_and_back_to_tptbox(tmp_path: Path, tptbox_poi: POI) -> None:
    src = _subject_folder(tmp_path / "in", tptbox_poi)
    assert main(["tptbox", str(src), "-d", "501", "-n", "Spine"]) == 0

    ds = RawDataset.open("501")
    assert ds.case_ids() == [CASE]
    assert ds.channel_names == {"0": "CT", "1": "noNorm"}
    labels = ds.labels
    assert labels["L2"] == 21 and labels["L3"] == 22 and labels["L4"] == 23
    assert sorted(labels.values()) == list(range(24)), "nnU-Net needs consecutive label values"
    assert ds.poi_names == {50: "Vertebra_Corpus", 42: "Spinosus_Process",
                            43: "Costal_Process_Left", 44: "Costal_Process_Right"}
    assert ds.poi_mirror_pairs == [(43, 44)]
    subreg_in = sitk.GetArrayFromImage(sitk.ReadImage(str(ds.image_files(CASE)[1])))
    assert np.array_equal(subreg_in, sitk.GetArrayFromImage(sitk.ReadImage(str(SUBREG))))

    # Positions are what SimpleITK says TPTBox's voxel indices are, in the case's _0000 image.
    unified = read_poi_file(ds.poi_file(CASE))
    image = sitk.ReadImage(str(ds.image_files(CASE)[0]))
    expected = {k: np.array(image.TransformContinuousIndexToPhysicalPoint(tuple(map(float, v))))
                for k, v in _points(tptbox_poi).items()}
    got = {p.key: np.array(p.position) for p in unified}
    assert got and got.keys() == expected.keys()
    for key in expected:
        assert np.linalg.norm(got[key] - expected[key]) < 1e-3, key

    # Back to TPTBox: it reads the same points, local and global.
    geometry = ImageGeometry.from_image(image)
    write_tptbox_poi(tmp_path / "back_local.json", unified, geometry, form="local")
    back = POI.load(tmp_path / "back_local.json")
    zoom = np.asarray(tptbox_poi.zoom)
    original = _points(tptbox_poi)
    assert _points(back).keys() == original.keys()
    for key, value in _points(back).items():
        assert np.linalg.norm((value - original[key]) * zoom) < 1e-3, key
    assert np.allclose(back.affine, tptbox_poi.affine, atol=1e-4)

    write_tptbox_poi(tmp_path / "back_global.json", unified, form="global", coordinate_system="nib")
    back_global = _points(POI_Global.load(tmp_path / "back_global.json"))
    for key, value in _points(tptbox_poi.to_global()).items():
        assert np.linalg.norm(back_global[key] - value) < 1e-3, key


@pytest.mark.parametrize("itk_coords", [True, False], ids=["itk-LPS", "nib-RAS"])
def test_global_poi_gives_the_same_points_as_local(tmp_path: Path, tptbox_poi: POI, itk_coords: bool) -> None:
    geometry = ImageGeometry.from_file(CT)
    tptbox_poi.save(tmp_path / "local.json", verbose=False)
    tptbox_poi.to_global(itk_coords=itk_coords).save(tmp_path / "global.json", verbose=False)
    assert json.loads((tmp_path / "global.json").read_text())[0]["format"] == "POI_GLOBAL"
    local = read_tptbox_poi(tmp_path / "local.json", geometry).by_key()
    world = read_tptbox_poi(tmp_path / "global.json", geometry).by_key()
    assert local.keys() == world.keys()
    for key in local:
        assert np.allclose(local[key].position, world[key].position, atol=1e-4), key


def test_local_poi_without_grid_is_placed_by_its_axis_codes(tmp_path: Path, tptbox_poi: POI) -> None:
    """Older local files carry only direction/zoom/shape: TPTBox's own reorientation must land on the same points."""
    geometry = ImageGeometry.from_file(CT)
    reoriented = tptbox_poi.reorient(("L", "A", "S"))
    reoriented.save(tmp_path / "ras.json", verbose=False)
    data = json.loads((tmp_path / "ras.json").read_text())
    del data[0]["rotation"], data[0]["origin"]
    (tmp_path / "ras.json").write_text(json.dumps(data))
    got = read_tptbox_poi(tmp_path / "ras.json", geometry).by_key()
    tptbox_poi.save(tmp_path / "full.json", verbose=False)
    want = read_tptbox_poi(tmp_path / "full.json", geometry).by_key()
    assert got.keys() == want.keys()
    for key in want:
        assert np.allclose(got[key].position, want[key].position, atol=1e-3), key


def _convert_fails(src: Path, capsys: pytest.CaptureFixture) -> str:
    assert main(["tptbox", str(src), "-d", "502", "-n", "Bad"]) == 2
    assert not (Path(os.environ["nnUNet_raw"]) / "Dataset502_Bad").exists(), "nothing is published on failure"
    return capsys.readouterr().err


def test_missing_image_names_the_orphaned_files(tmp_path: Path, tptbox_poi: POI, capsys) -> None:
    err = _convert_fails(_subject_folder(tmp_path, tptbox_poi, with_ct=False), capsys)
    assert f"{CASE}_poi.json" in err and "no image matching '*_ct.nii.gz'" in err


def test_unreadable_and_wrong_format_poi_files_are_named(tmp_path: Path, tptbox_poi: POI, capsys) -> None:
    src = _subject_folder(tmp_path, tptbox_poi)
    poi_file = src / "derivatives" / "sub-ct" / f"{CASE}_poi.json"
    poi_file.write_text("[{\"format\": \"POI\"}, {")
    err = _convert_fails(src, capsys)
    assert str(poi_file) in err and "not valid JSON" in err

    poi_file.write_text(json.dumps([{"direction": ["P", "I", "R"]}, {"label": 20, "X": 1, "Y": 2, "Z": 3}]))
    err = _convert_fails(src, capsys)
    assert str(poi_file) in err and "poi_convert verse" in err


@pytest.mark.parametrize("vertebra, position, point, message", [
    (22, (500.0, 10.0, 10.0), "vertebra 22 (L3), location 50 (Vertebra_Corpus)", "lies outside the image"),
    (25, (20.0, 10.0, 30.0), "vertebra 25 (L6), location 50 (Vertebra_Corpus)", "structure 25 does not occur in the mask"),
], ids=["outside-grid", "not-in-mask"])
def test_bad_points_are_errors_naming_file_and_point(tmp_path: Path, tptbox_poi: POI, capsys, vertebra: int,
                                                     position, point: str, message: str) -> None:
    bad = tptbox_poi.copy()
    bad[vertebra, 50] = position
    src = _subject_folder(tmp_path, bad)
    err = _convert_fails(src, capsys)
    assert f"{src / 'derivatives' / 'sub-ct' / (CASE + '_poi.json')} [{point}]: {message}" in err

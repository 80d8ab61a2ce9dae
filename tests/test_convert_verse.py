"""VerSe centroid files -> unified raw format, on a synthetic oblique, flipped image.

The expected world points come from SimpleITK alone: the image is reoriented
with ``sitk.DICOMOrient`` to the file's axis codes, and the voxel coordinates
written into the centroid file are that reoriented grid's indices of known
world points. The converter must find the same world points on the original grid.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Dict

import numpy as np
import pytest
import SimpleITK as sitk

from poi_nnunet.cli.convert import main
from poi_nnunet.pois import read_poi_file
from poi_nnunet.raw_dataset import RawDataset

SIZE = (9, 11, 7)                    # ITK (x, y, z)
# Continuous ITK indices of the points, on the original grid; 21 gets two points.
INDEX = {20: (2.25, 3.5, 1.75), 21: (6.4, 7.1, 4.6), (21, 42): (5.5, 8.25, 4.0)}
LOCATION_X256 = 42 * 256             # TPTBox's combined label: location * 256 + vertebra


def _rotation(axis, degrees: float) -> np.ndarray:
    axis = np.asarray(axis, dtype=float) / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    a = np.radians(degrees)
    return np.eye(3) + np.sin(a) * k + (1 - np.cos(a)) * k @ k


def _oblique_image() -> sitk.Image:
    """Axes point roughly Inferior, Left, Anterior (a permutation with flips), tilted by 20 degrees."""
    permutation = np.array([[0, 1, 0], [0, 0, -1], [-1, 0, 0]], dtype=float)  # columns: -S, +L(x), -P
    image = sitk.Image(SIZE, sitk.sitkInt16)
    image.SetSpacing((0.7, 1.3, 2.1))
    image.SetOrigin((12.5, -40.0, 7.25))
    image.SetDirection(tuple((_rotation((1, 1, 0), 20) @ permutation).ravel()))
    return image


def _mask(image: sitk.Image) -> sitk.Image:
    array = np.zeros(SIZE[::-1], dtype=np.uint8)
    array[0:4, 1:6, 0:5] = 20
    array[3:7, 5:11, 4:9] = 21
    mask = sitk.GetImageFromArray(array)
    mask.CopyInformation(image)
    return mask


def _world(image: sitk.Image) -> Dict[object, np.ndarray]:
    return {k: np.array(image.TransformContinuousIndexToPhysicalPoint(v)) for k, v in INDEX.items()}


def _centroid_file(path: Path, image: sitk.Image, codes: str) -> None:
    """Voxel coordinates of the points on the image reoriented to ``codes``, as VerSe stores them."""
    reoriented = sitk.DICOMOrient(image, codes)
    entries = [{"direction": list(codes)}]
    for key, world in _world(image).items():
        label = key if isinstance(key, int) else LOCATION_X256 + key[0]
        x, y, z = reoriented.TransformPhysicalPointToContinuousIndex(tuple(world))
        entries.append({"label": label, "X": x, "Y": y, "Z": z})
    path.write_text(json.dumps(entries))


def _verse2020_subject(root: Path, image: sitk.Image, codes: str = "PIR", with_mask: bool = True) -> Path:
    raw, derived = root / "rawdata" / "sub-verse500", root / "derivatives" / "sub-verse500"
    raw.mkdir(parents=True)
    derived.mkdir(parents=True)
    sitk.WriteImage(image, str(raw / "sub-verse500_ct.nii.gz"))
    if with_mask:
        sitk.WriteImage(_mask(image), str(derived / "sub-verse500_seg-vert_msk.nii.gz"))
    _centroid_file(derived / "sub-verse500_seg-subreg_ctd.json", image, codes)
    return derived / "sub-verse500_seg-subreg_ctd.json"


@pytest.mark.parametrize("codes", ["PIR", "LAS", "SRA"])
def test_centroids_land_on_the_world_points_sitk_gives(tmp_path: Path, codes: str) -> None:
    image = _oblique_image()
    _verse2020_subject(tmp_path / "in", image, codes)
    assert main(["verse", str(tmp_path / "in"), "-d", "510", "-n", "Verse"]) == 0

    ds = RawDataset.open("510")
    assert ds.case_ids() == ["sub-verse500"]
    assert ds.labels["L1"] == 20 and ds.labels["L2"] == 21
    assert ds.poi_names == {42: "Spinosus_Process", 50: "Vertebra_Corpus"}
    got = {p.key: np.array(p.position) for p in read_poi_file(ds.poi_file("sub-verse500"))}
    written = sitk.ReadImage(str(ds.image_files("sub-verse500")[0]))
    want = _world(written)
    expected = {(20, 50): want[20], (21, 50): want[21], (21, 42): want[(21, 42)]}
    assert got.keys() == expected.keys()
    for key in expected:
        assert np.allclose(got[key], expected[key], atol=1e-4), (key, got[key], expected[key])


def test_without_masks_each_vertebra_is_its_own_landmark(tmp_path: Path) -> None:
    image = _oblique_image()
    (tmp_path / "in").mkdir()
    sitk.WriteImage(image, str(tmp_path / "in" / "verse501.nii.gz"))  # VerSe 2019 naming
    entries = [{"direction": ["P", "I", "R"]}]
    reoriented = sitk.DICOMOrient(image, "PIR")
    for label in (20, 21):
        x, y, z = reoriented.TransformPhysicalPointToContinuousIndex(tuple(_world(image)[label]))
        entries.append({"label": label, "X": x, "Y": y, "Z": z})
    (tmp_path / "in" / "verse501_ctd.json").write_text(json.dumps(entries))
    assert main(["verse", str(tmp_path / "in"), "-d", "511", "-n", "Landmarks"]) == 0

    ds = RawDataset.open("511")
    assert not ds.has_labels() and ds.labels == {"background": 0}
    assert ds.poi_names == {20: "L1", 21: "L2"}
    got = read_poi_file(ds.poi_file("verse501")).by_key()
    for label in (20, 21):
        assert np.allclose(got[(0, label)].position, _world(image)[label], atol=1e-4)


def _rewrite(path: Path, edit) -> None:
    data = json.loads(path.read_text())
    path.write_text(json.dumps(edit(data)))


@pytest.mark.parametrize("edit, message", [
    (lambda d: d[1:], "missing the direction entry"),
    (lambda d: [{"direction": ["P", "I", "X"]}] + d[1:], "unknown axis letter(s) ['X']"),
    (lambda d: [{"direction": ["P", "A", "R"]}] + d[1:], "name one world axis twice"),
    (lambda d: d + [{"label": 20, "X": 1, "Y": 1, "Z": 1}], "[entry #4 (label 20)]: label 20 appears twice"),
    (lambda d: d[:1] + [{**d[1], "X": 60.0}] + d[2:], "[label 20 (L1), poi 50]: lies outside the image"),
], ids=["no-direction", "unknown-letter", "axis-twice", "duplicate-label", "outside-image"])
def test_bad_centroid_files_are_errors_naming_the_file(tmp_path: Path, capsys, edit, message: str) -> None:
    ctd = _verse2020_subject(tmp_path / "in", _oblique_image())
    _rewrite(ctd, edit)
    assert main(["verse", str(tmp_path / "in"), "-d", "512", "-n", "Bad"]) == 2
    err = capsys.readouterr().err
    assert str(ctd) in err and message in err, err
    assert not (Path(os.environ["nnUNet_raw"]) / "Dataset512_Bad").exists()


def test_centroid_file_without_image_is_named(tmp_path: Path, capsys) -> None:
    ctd = _verse2020_subject(tmp_path / "in", _oblique_image())
    (tmp_path / "in" / "rawdata" / "sub-verse500" / "sub-verse500_ct.nii.gz").unlink()
    assert main(["verse", str(tmp_path / "in"), "-d", "513", "-n", "Bad"]) == 2
    err = capsys.readouterr().err
    assert f"{ctd}: no image for subject 'sub-verse500'" in err

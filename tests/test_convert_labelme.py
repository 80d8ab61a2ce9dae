"""poi_convert labelme: LabelMe point shapes on 2D images become a valid landmark-only dataset."""
from __future__ import annotations

import argparse
import base64
import io
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from dataset_conversion import labelme
from poi_nnunet.errors import PoiNnunetError
from poi_nnunet.pois import read_poi_file
from poi_nnunet.raw_dataset import RawDataset
from poi_nnunet.raw_format_checks import validate_raw_dataset


def convert(*argv: str) -> Path:
    """Run the converter as ``poi_convert labelme ARGV`` would."""
    parser = argparse.ArgumentParser()
    labelme.add_arguments(parser)
    return labelme.run(parser.parse_args(argv))


def _png(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array).save(out, format="PNG")
    return out.getvalue()


def _shape(label, x, y, kind="point"):
    return {"label": label, "points": [[x, y]], "group_id": None, "shape_type": kind, "flags": {}}


def _labelme(path: Path, shapes, image_path=None, image_data=None, size=(64, 64)) -> Path:
    path.write_text(json.dumps({"version": "5.4.1", "flags": {}, "shapes": shapes, "imagePath": image_path,
                                "imageData": image_data, "imageWidth": size[0], "imageHeight": size[1]}))
    return path


@pytest.fixture
def two_files(tmp_path) -> Path:
    """case_a: RGB png beside the json; case_b: grey png embedded as base64, one landmark absent."""
    folder = tmp_path / "labelme"
    folder.mkdir()
    rgb = np.zeros((64, 64, 3), dtype=np.uint8)
    rgb[10, 20] = (200, 100, 50)  # row 10, column 20
    (folder / "a.png").write_bytes(_png(rgb))
    _labelme(folder / "case_a.json", [_shape("tip", 20.5, 10.5), _shape("L10", 0.0, 0.0),
                                      _shape("L2", 63.75, 40.0), _shape("region", 1, 2, kind="polygon")],
             image_path="a.png")
    grey = np.arange(64 * 64, dtype=np.uint32).reshape(64, 64).astype(np.uint8)
    embedded = base64.b64encode(_png(grey)).decode()
    _labelme(folder / "case_b.json", [_shape("L2", 32.0, 16.0), _shape("tip", 1.5, 2.5)], image_data=embedded)
    return folder


def test_converts_to_valid_landmark_only_dataset(two_files):
    target = convert(str(two_files), "-d", "901", "-n", "Hands", "--spacing", "0.5")
    assert validate_raw_dataset(target, progress=False) == []
    ds = RawDataset.open(target)
    assert ds.meta["labels"] == {"background": 0}
    assert not ds.has_labels()
    assert ds.poi_names == {1: "L2", 2: "L10", 3: "tip"}  # natural order: L2 before L10
    assert ds.case_ids() == ["case_a", "case_b"]

    pois_a = read_poi_file(ds.poi_file("case_a")).by_key()
    # LabelMe's (20.5, 10.5) is the centre of column 20, row 10: index (20, 10), world = index * spacing.
    np.testing.assert_allclose(pois_a[(0, 3)].position, (10.0, 5.0), atol=1e-9)
    np.testing.assert_allclose(pois_a[(0, 2)].position, (-0.25, -0.25), atol=1e-9)  # the image's corner
    np.testing.assert_allclose(pois_a[(0, 1)].position, (31.625, 19.75), atol=1e-9)
    pois_b = read_poi_file(ds.poi_file("case_b"))
    assert sorted(pois_b.keys()) == [(0, 1), (0, 3)]  # L10 absent, not NaN


def test_images_become_one_grey_channel_with_the_spacing(two_files):
    target = convert(str(two_files), "-d", "902", "-n", "Hands", "--spacing", "0.5", "0.25")
    image = sitk.ReadImage(str(target / "imagesTr" / "case_a_0000.nii.gz"))
    assert image.GetDimension() == 2 and image.GetNumberOfComponentsPerPixel() == 1
    assert image.GetSpacing() == (0.5, 0.25)
    luminance = sitk.GetArrayFromImage(image)[10, 20]
    assert luminance == pytest.approx(0.299 * 200 + 0.587 * 100 + 0.114 * 50, abs=1e-3)
    grey = sitk.GetArrayFromImage(sitk.ReadImage(str(target / "imagesTr" / "case_b_0000.nii.gz")))
    assert grey.dtype == np.uint8 and grey[1, 3] == (64 + 3) % 256  # grey values kept exactly


def test_bitmaps_without_spacing_are_refused(two_files):
    with pytest.raises(PoiNnunetError, match=r"a\.png: a bitmap carries no pixel spacing: pass --spacing"):
        convert(str(two_files), "-d", "903", "-n", "Hands")


def _expect_error(folder: Path, pattern: str) -> None:
    with pytest.raises(PoiNnunetError, match=pattern):
        convert(str(folder), "-d", "904", "-n", "Bad", "--spacing", "1")


def test_missing_image_names_the_json(two_files):
    (two_files / "a.png").unlink()
    _expect_error(two_files, r"case_a\.json: image .*a\.png \(from 'imagePath'\) not found")


def test_unreadable_image_names_the_image(two_files):
    (two_files / "a.png").write_bytes(b"not a png at all")
    _expect_error(two_files, r"a\.png: cannot read as an image")


def test_malformed_json_names_the_file(two_files):
    (two_files / "case_c.json").write_text('{"shapes": [')
    _expect_error(two_files, r"case_c\.json: not a readable JSON file")


def test_point_outside_the_image_names_file_and_point(two_files):
    _labelme(two_files / "case_b.json", [_shape("tip", 64.5, 3.0)], image_path="a.png")
    _expect_error(two_files, r"case_b\.json \[point 'tip'\]: pixel position \[64\.5, 3\.0\] lies outside the image")


def test_wrong_number_of_coordinates_names_file_and_shape(two_files):
    shape = _shape("tip", 1.0, 2.0)
    shape["points"] = [[1.0, 2.0, 3.0]]
    _labelme(two_files / "case_b.json", [shape], image_path="a.png")
    _expect_error(two_files, r"case_b\.json \[shape #0 \('tip'\)\]: 'points' must be one \[x, y\] pair")


def test_size_mismatch_with_the_recorded_size_is_an_error(two_files):
    _labelme(two_files / "case_b.json", [_shape("tip", 1.0, 2.0)], image_path="a.png", size=(64, 32))
    _expect_error(two_files, r"case_b\.json: image is 64x64 pixels, but the file says")


def test_duplicate_label_in_one_file_is_an_error(two_files):
    _labelme(two_files / "case_b.json", [_shape("tip", 1.0, 2.0), _shape("tip", 3.0, 4.0)], image_path="a.png")
    _expect_error(two_files, r"case_b\.json \[shape #1 \('tip'\)\]: label used by more than one point")


def test_failed_conversion_leaves_no_dataset(two_files, nnunet_folders):
    (two_files / "a.png").unlink()
    _expect_error(two_files, "not found")
    assert list(nnunet_folders["raw"].iterdir()) == []

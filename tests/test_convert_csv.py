"""poi_convert csv: a landmark table with one row per image becomes a valid landmark-only dataset."""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from dataset_conversion import csv_table
from poi_nnunet.errors import PoiNnunetError
from poi_nnunet.pois import read_poi_file
from poi_nnunet.raw_dataset import RawDataset
from poi_nnunet.raw_format_checks import validate_raw_dataset


def convert(*argv: str) -> Path:
    """Run the converter as ``poi_convert csv ARGV`` would."""
    parser = argparse.ArgumentParser()
    csv_table.add_arguments(parser)
    return csv_table.run(parser.parse_args(argv))


@pytest.fixture
def pngs(tmp_path) -> Path:
    folder = tmp_path / "xrays"
    folder.mkdir()
    for name in ("p1", "p2"):
        Image.fromarray(np.full((64, 64), 7, dtype=np.uint8)).save(folder / f"{name}.png")
    return folder


def _table(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_pixel_table_with_absent_points(pngs):
    table = _table(pngs / "landmarks.csv", "image,x_1,y_1,x_2,y_2\n"
                                          "p1.png,10,20,0.5,63\n"
                                          "p2.png,,,NaN,nan\n")
    target = convert(str(table), "-d", "911", "-n", "Ceph", "--spacing", "0.1")
    assert validate_raw_dataset(target, progress=False) == []
    ds = RawDataset.open(target)
    assert ds.poi_names == {1: "1", 2: "2"} and ds.meta["labels"] == {"background": 0}
    p1 = read_poi_file(ds.poi_file("p1")).by_key()
    np.testing.assert_allclose(p1[(0, 1)].position, (1.0, 2.0), atol=1e-9)  # 0-based pixel centres * spacing
    np.testing.assert_allclose(p1[(0, 2)].position, (0.05, 6.3), atol=1e-9)
    assert len(read_poi_file(ds.poi_file("p2"))) == 0  # empty and NaN cells: absent, never NaN
    assert "NaN" not in ds.poi_file("p2").read_text()


@pytest.mark.parametrize("convention, expected", [("corner", (0.95, 1.95)), ("one-based", (0.9, 1.9))])
def test_pixel_conventions(pngs, convention, expected):
    table = _table(pngs / "t.csv", "file;x_tip;y_tip\np1.png;10;20\n")  # semicolons, other image column name
    target = convert(str(table), "-d", "912", "-n", "Ceph", "--spacing", "0.1", "--pixel-convention", convention)
    ds = RawDataset.open(target)
    assert ds.poi_names == {1: "tip"}
    np.testing.assert_allclose(read_poi_file(ds.poi_file("p1")).points[0].position, expected, atol=1e-9)


def test_millimetre_table_for_3d_images(tmp_path):
    image = sitk.GetImageFromArray(np.zeros((6, 8, 10), dtype=np.int16))
    image.SetSpacing((0.5, 1.0, 2.0))
    image.SetOrigin((-5.0, 3.0, 10.0))
    images = tmp_path / "ct"
    images.mkdir()
    sitk.WriteImage(image, str(images / "scan_01.nii.gz"))
    table = _table(tmp_path / "points.csv", "image,x_L2,y_L2,z_L2,x_L10,y_L10,z_L10\n"
                                            "scan_01.nii.gz,-4.75,5.5,12.0,,,\n")
    target = convert(str(table), "-d", "913", "-n", "Spine", "--images", str(images), "--units", "mm")
    assert validate_raw_dataset(target, progress=False) == []
    ds = RawDataset.open(target)
    assert ds.poi_names == {1: "L2", 2: "L10"}  # non-numeric names: column order
    pois = read_poi_file(ds.poi_file("scan_01"))
    assert pois.keys() == [(0, 1)]
    np.testing.assert_allclose(pois.points[0].position, (-4.75, 5.5, 12.0))


def _expect_error(table: Path, pattern: str, *extra: str) -> None:
    with pytest.raises(PoiNnunetError, match=pattern):
        convert(str(table), "-d", "914", "-n", "Bad", "--spacing", "1", *extra)


def test_missing_image_names_the_table_row(pngs):
    table = _table(pngs / "t.csv", "image,x_1,y_1\np1.png,1,2\ngone.png,1,2\n")
    _expect_error(table, r"t\.csv row 3: image .*gone\.png not found")


def test_unreadable_image_names_the_image(pngs):
    (pngs / "p2.png").write_bytes(b"\x89PNG broken")
    table = _table(pngs / "t.csv", "image,x_1,y_1\np2.png,1,2\n")
    _expect_error(table, r"p2\.png: cannot read as an image")


def test_point_outside_the_image_names_row_and_landmark(pngs):
    table = _table(pngs / "t.csv", "image,x_1,y_1\np1.png,64,2\n")
    _expect_error(table, r"t\.csv row 2 \[landmark '1'\]: pixel position \[64\.0, 2\.0\] lies outside the image")


def test_wrong_coordinate_count_for_the_image(pngs):
    table = _table(pngs / "t.csv", "image,x_1,y_1,z_1\np1.png,1,2,0\n")
    _expect_error(table, r"t\.csv row 2 \[landmark '1'\]: 3 coordinates for the 2D image")


def test_landmark_without_its_y_column(pngs):
    table = _table(pngs / "t.csv", "image,x_1,y_1,x_2\np1.png,1,2,3\n")
    _expect_error(table, r"t\.csv: landmark '2' has columns \['x'\]; expected x, y or x, y, z")


def test_partly_filled_or_non_numeric_cells(pngs):
    table = _table(pngs / "t.csv", "image,x_1,y_1,x_2,y_2\np1.png,1,,abc,2\n")
    with pytest.raises(PoiNnunetError) as info:
        convert(str(table), "-d", "915", "-n", "Bad", "--spacing", "1")
    message = str(info.value)
    assert "t.csv [row 2]: landmark '1'" in message and "t.csv [row 2]: landmark '2'" in message


def test_two_rows_for_one_image(pngs):
    table = _table(pngs / "t.csv", "image,x_1,y_1\np1.png,1,2\np1.png,3,4\n")
    _expect_error(table, r"t\.csv row 3: gives case id 'p1', as .*t\.csv row 2 does")

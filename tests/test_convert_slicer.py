"""poi_convert slicer: markups beside images (and masks) become a valid dataset; predictions written
as .mrk.json convert back to the same structure and POI ids."""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from dataset_conversion import slicer_markups
from poi_nnunet.errors import PoiNnunetError
from poi_nnunet.geometry import ImageGeometry
from poi_nnunet.markups import write_fcsv, write_markups_json
from poi_nnunet.pois import Poi, PoiSet, read_poi_file
from poi_nnunet.raw_dataset import RawDataset
from poi_nnunet.raw_format_checks import validate_raw_dataset


def convert(*argv: str) -> Path:
    """Run the converter as ``poi_convert slicer ARGV`` would."""
    parser = argparse.ArgumentParser()
    slicer_markups.add_arguments(parser)
    return slicer_markups.run(parser.parse_args(argv))


def _image(folder: Path, name: str) -> ImageGeometry:
    """An oblique 3D image (so LPS positions are not just scaled indices) and return its geometry."""
    image = sitk.GetImageFromArray(np.random.default_rng(0).normal(size=(8, 10, 12)).astype(np.float32))
    image.SetSpacing((0.8, 1.0, 1.5))
    image.SetOrigin((10.0, -20.0, 5.0))
    c, s = np.cos(0.3), np.sin(0.3)
    image.SetDirection((c, -s, 0.0, s, c, 0.0, 0.0, 0.0, 1.0))
    sitk.WriteImage(image, str(folder / name))
    return ImageGeometry.from_image(image)


def _mask(folder: Path, name: str, geo: ImageGeometry) -> None:
    arr = np.zeros((8, 10, 12), dtype=np.uint8)
    arr[:, :, :6], arr[:, :, 6:] = 3, 7
    mask = sitk.GetImageFromArray(arr)
    sitk.WriteImage(geo.apply_to(mask), str(folder / name))


def _world(geo: ImageGeometry, *index: float):
    return tuple(geo.index_to_world(index))


def test_predictions_with_masks_round_trip(tmp_path):
    folder = tmp_path / "slicer"
    folder.mkdir()
    expected = {}
    for case in ("s1", "s2"):
        geo = _image(folder, f"{case}.nii.gz")
        _mask(folder, f"{case}_seg.nii.gz", geo)
        expected[case] = PoiSet([Poi(3, 101, _world(geo, 2.25, 3.5, 1.0), 0.9),
                                 Poi(7, 101, _world(geo, 9.0, 4.75, 6.5), 0.8),
                                 Poi(7, 102, _world(geo, 8.0, 0.0, 7.0))])
    write_markups_json(folder / "s1.mrk.json", expected["s1"], {101: "tip", 102: "base"})
    write_fcsv(folder / "s2.fcsv", expected["s2"], {101: "tip", 102: "base"})
    target = convert(str(folder), "-d", "921", "-n", "Spine")
    assert validate_raw_dataset(target, progress=False) == []
    ds = RawDataset.open(target)
    assert ds.poi_names == {101: "tip", 102: "base"}
    assert ds.meta["labels"] == {"background": 0, **{f"structure_{v}": v for v in range(1, 8)}}  # consecutive
    assert ds.has_labels()
    for case, pois in expected.items():
        got = read_poi_file(ds.poi_file(case)).by_key()
        assert sorted(got) == sorted(pois.keys())
        for p in pois:
            np.testing.assert_allclose(got[p.key].position, p.position, rtol=0, atol=1e-6)
            assert got[p.key].confidence is None  # converted points are references


def test_labels_become_poi_ids_and_ras_is_read(tmp_path, capsys):
    folder = tmp_path / "slicer"
    folder.mkdir()
    geo = _image(folder, "c1.nii.gz")
    _image(folder, "unannotated.nii.gz")
    inside = _world(geo, 5.0, 5.0, 3.0)
    (folder / "c1.fcsv").write_text(
        "# Markups fiducial file version = 4.10\n# CoordinateSystem = 0\n"
        "# columns = id,x,y,z,ow,ox,oy,oz,vis,sel,lock,label,desc,associatedNodeID\n"
        f"a,{-inside[0]},{-inside[1]},{inside[2]},0,0,0,1,1,1,0,L10,,\n"
        f"b,{-inside[0]},{-inside[1]},{inside[2]},0,0,0,1,1,1,0,L2,hand-placed,\n")
    target = convert(str(folder), "-d", "922", "-n", "Manual")
    assert validate_raw_dataset(target, progress=False) == []
    ds = RawDataset.open(target)
    assert ds.poi_names == {1: "L2", 2: "L10"}
    assert ds.meta["labels"] == {"background": 0} and not ds.has_labels()
    pois = read_poi_file(ds.poi_file("c1"))
    assert sorted(pois.keys()) == [(0, 1), (0, 2)]
    np.testing.assert_allclose(pois.points[0].position, inside, atol=1e-9)
    assert "unannotated" in capsys.readouterr().err  # images without markups are reported, not silently dropped


def test_two_d_image_points_drop_z(tmp_path):
    folder = tmp_path / "slicer"
    folder.mkdir()
    image = sitk.GetImageFromArray(np.zeros((16, 20), dtype=np.uint8))
    image.SetSpacing((0.5, 0.5))
    sitk.WriteImage(image, str(folder / "x.nii.gz"))
    write_markups_json(folder / "x.mrk.json", PoiSet([Poi(0, 1, (3.0, 4.0))]), {1: "tip"})
    ds = RawDataset.open(convert(str(folder), "-d", "923", "-n", "Xray"))
    np.testing.assert_allclose(read_poi_file(ds.poi_file("x")).points[0].position, (3.0, 4.0))


def _expect_error(folder: Path, pattern: str, *extra: str) -> None:
    with pytest.raises(PoiNnunetError, match=pattern):
        convert(str(folder), "-d", "924", "-n", "Bad", *extra)


def test_missing_image_names_the_markups_file(tmp_path):
    write_fcsv(tmp_path / "lonely.fcsv", PoiSet([Poi(0, 1, (0.0, 0.0, 0.0))]))
    _expect_error(tmp_path, r"lonely\.fcsv: expected one image lonely\{.*\} beside it, found none")


def test_unreadable_image_names_the_image(tmp_path):
    (tmp_path / "c.nii.gz").write_bytes(b"garbage")
    write_fcsv(tmp_path / "c.fcsv", PoiSet([Poi(0, 1, (0.0, 0.0, 0.0))]))
    _expect_error(tmp_path, r"c\.nii\.gz: cannot read as an image")


def test_malformed_markups_names_the_file(tmp_path):
    _image(tmp_path, "c.nii.gz")
    (tmp_path / "c.mrk.json").write_text("{not json")
    _expect_error(tmp_path, r"c\.mrk\.json: not valid JSON")


def test_point_outside_the_image_names_file_and_point(tmp_path):
    geo = _image(tmp_path, "c.nii.gz")
    write_markups_json(tmp_path / "c.mrk.json", PoiSet([Poi(0, 4, _world(geo, 12.0, 0.0, 0.0))]), {4: "far"})
    _expect_error(tmp_path, r"c\.mrk\.json \['far' \(structure 0, poi 4\)\]: position .* lies outside the image")


def test_structure_without_a_mask_is_an_error(tmp_path):
    geo = _image(tmp_path, "c.nii.gz")
    write_markups_json(tmp_path / "c.mrk.json", PoiSet([Poi(5, 1, _world(geo, 1.0, 1.0, 1.0))]))
    _expect_error(tmp_path, r"c\.mrk\.json \[.*\]: structure 5 needs a mask c_seg")


def test_mixing_encoded_and_plain_points_is_an_error(tmp_path):
    geo = _image(tmp_path, "c.nii.gz")
    write_fcsv(tmp_path / "c.fcsv", PoiSet([Poi(0, 1, _world(geo, 1.0, 1.0, 1.0))]))
    with (tmp_path / "c.fcsv").open("a") as f:
        f.write("9,{},{},{},0,0,0,1,1,1,0,extra,,\n".format(*_world(geo, 2.0, 2.0, 2.0)))
    _expect_error(tmp_path, r"c\.fcsv: 1 control point\(s\) lack the description 'structure S, poi P'")


def test_masks_for_only_some_cases_and_off_grid_masks(tmp_path):
    for case in ("a", "b"):
        geo = _image(tmp_path, f"{case}.nii.gz")
        write_fcsv(tmp_path / f"{case}.fcsv", PoiSet([Poi(0, 1, _world(geo, 1.0, 1.0, 1.0))]), {1: "p"})
    _mask(tmp_path, "a_seg.nii.gz", geo)
    _expect_error(tmp_path, r"b\.fcsv: no mask <case>_seg beside it, but other cases have one")

    shifted = sitk.ReadImage(str(tmp_path / "a_seg.nii.gz"))
    shifted.SetOrigin((10.0, -20.0, 6.5))  # one slice off
    sitk.WriteImage(shifted, str(tmp_path / "b_seg.nii.gz"))
    _expect_error(tmp_path, r"b_seg\.nii\.gz: grid differs from its image b\.nii\.gz .*--resample-masks")
    target = convert(str(tmp_path), "-d", "925", "-n", "Resampled", "--resample-masks")
    assert validate_raw_dataset(target, progress=False) == []

"""Registration-based augmentation (``poi_augment``): points move exactly like the image, folds stay apart,
the dataset appears whole or not at all and passes the validator, and cleaning drops a point pushed off its bone.

Points are judged against independent references: coordinate channels (images whose voxels hold A's own
world coordinates, resampled with the same transform as the image) and, for an affine, the inverse worked
out by hand; never against the carrying code's own helpers.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import List

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from dataset_conversion.synthetic_leg import write_leg_dataset
from nnunetv2.utilities.crossval_split import generate_crossval_split
from poi_nnunet.cli.augment import main as poi_augment
from poi_nnunet.errors import PoiNnunetError
from poi_nnunet.pois import read_poi_file
from poi_nnunet.preprocessing.pipeline import _stage_raw_splits
from poi_nnunet.raw_dataset import RawDataset
from poi_nnunet.raw_format_checks import validate_raw_dataset
from poi_nnunet.registration import dataset as augment_module
from poi_nnunet.registration import register as register_module
from poi_nnunet.registration import sample as sample_module
from poi_nnunet.registration.dataset import AugmentOptions, augment_dataset
from poi_nnunet.registration.pairs import Pair, augmented_splits, choose_pairs, default_splits
from poi_nnunet.registration.points import invert_points
from poi_nnunet.registration.register import (RegistrationSettings, bspline_on_domain, comparison_image,
                                              register_pair, resample_into)

SMALL = (64, 32, 32)  # leg phantom, numpy order (z, y, x): 4 x 4 x 12.5 mm voxels


# ---------------------------------------------------------------------------- helpers
def rotation(axis: int, degrees: float) -> np.ndarray:
    t = np.radians(degrees)
    c, s = np.cos(t), np.sin(t)
    i, j = [a for a in range(3) if a != axis]
    m = np.eye(3)
    m[i, i], m[i, j], m[j, i], m[j, j] = c, -s, s, c
    return m


def grid(size, spacing, centre, direction: np.ndarray) -> sitk.Image:
    """A float64 image of ``size`` (ITK order) whose box is centred on ``centre`` (world mm)."""
    image = sitk.Image([int(s) for s in size], sitk.sitkFloat64)
    origin = np.asarray(centre) - direction @ (np.asarray(spacing) * (np.asarray(size) - 1) / 2)
    image.SetSpacing([float(s) for s in spacing])
    image.SetDirection(tuple(direction.ravel()))
    image.SetOrigin(tuple(origin))
    return image


def coordinate_channels(image: sitk.Image) -> List[sitk.Image]:
    """One image per world axis whose voxels hold their own world coordinate along it (A's coordinates)."""
    size = image.GetSize()
    index = np.stack(np.meshgrid(*[np.arange(n) for n in size], indexing="ij"), axis=-1).reshape(-1, 3)
    d = np.array(image.GetDirection()).reshape(3, 3)
    world = np.array(image.GetOrigin()) + (index * np.array(image.GetSpacing())) @ d.T
    out = []
    for axis in range(3):
        array = world[:, axis].reshape(size).transpose(2, 1, 0)  # ITK (x, y, z) -> numpy (z, y, x)
        channel = sitk.GetImageFromArray(np.ascontiguousarray(array))
        channel.CopyInformation(image)
        out.append(channel)
    return out


def read_linear(image: sitk.Image, world: np.ndarray) -> np.ndarray:
    """``image`` read at world points (N, 3) by linear interpolation (scipy, not ITK)."""
    d = np.array(image.GetDirection()).reshape(3, 3)
    index = (np.linalg.solve(d, (world - np.array(image.GetOrigin())).T).T) / np.array(image.GetSpacing())
    array = sitk.GetArrayFromImage(image)
    return ndimage.map_coordinates(array, index[:, ::-1].T, order=1, mode="nearest")


def carried_coordinates(transform: sitk.Transform, a: sitk.Image, b: sitk.Image, y: np.ndarray) -> np.ndarray:
    """A's coordinate channels resampled into B by ``transform``, read at B-space points ``y`` (N, 3)."""
    moved = [sitk.Resample(c, b, transform, sitk.sitkLinear, float("nan"), sitk.sitkFloat64)
             for c in coordinate_channels(a)]
    return np.stack([read_linear(m, y) for m in moved], axis=1)


def two_grids_and_affine() -> tuple:
    """Two different grids (A rotated about z, B about x) around one centre, an affine and a smooth BSpline."""
    centre = np.array([-12.0, 30.0, 140.0])
    a = grid((30, 28, 26), (1.6, 1.4, 2.0), centre, rotation(2, 20.0))
    b = grid((32, 30, 24), (1.5, 1.5, 2.2), centre + [1.0, -2.0, 0.5], rotation(0, -15.0))
    affine = sitk.AffineTransform(3)
    affine.SetCenter(tuple(centre))
    affine.SetMatrix(tuple((rotation(1, 6.0) @ np.diag([1.06, 0.95, 1.02])).ravel()))
    affine.SetTranslation((2.0, -1.5, 1.0))
    return a, b, affine



def interior_points(image: sitk.Image, count: int, margin: int, seed: int) -> np.ndarray:
    """Random world points at least ``margin`` voxels inside ``image``."""
    rng = np.random.default_rng(seed)
    size = np.array(image.GetSize())
    index = rng.uniform(margin, size - 1 - margin, size=(count, 3))
    return np.array([image.TransformContinuousIndexToPhysicalPoint(tuple(i)) for i in index])


# ---------------------------------------------------------------------------- points through transforms
def test_points_through_a_deformable_transform_land_where_the_coordinate_channels_say() -> None:
    a, b, affine = two_grids_and_affine()
    bspline = bspline_on_domain(b, grid_mm=20.0)
    rng = np.random.default_rng(7)
    bspline.SetParameters(tuple(rng.normal(0.0, 1.5, len(bspline.GetParameters()))))
    transform = sitk.CompositeTransform([affine, bspline])

    y_true = interior_points(b, 200, margin=3, seed=1)
    x = np.array([transform.TransformPoint(tuple(p)) for p in y_true])  # the A-space points to carry
    in_a = np.array([a.TransformPhysicalPointToContinuousIndex(tuple(p)) for p in x])
    keep = np.all((in_a > 3) & (in_a < np.array(a.GetSize()) - 4), axis=1)  # A's coordinates known around them
    y_true, x = y_true[keep][:40], x[keep][:40]
    assert len(x) == 40
    carried = invert_points(transform, x)
    assert carried.converged.all() and carried.residual_mm.max() < 1e-3

    # the reference: A's own coordinates, resampled like the image, read where the points landed
    seen = carried_coordinates(transform, a, b, carried.positions)
    assert not np.isnan(seen).any()
    error = np.linalg.norm(seen - x, axis=1)
    assert error.max() < 0.02, error.max()  # linear interpolation of a curved map inside one B voxel (0.008 seen)

    # the test has teeth: carrying by the affine alone (ignoring the BSpline) is visibly wrong
    affine_only = np.array([affine.GetInverse().TransformPoint(tuple(p)) for p in x])
    wrong = np.linalg.norm(carried_coordinates(transform, a, b, affine_only) - x, axis=1)
    assert wrong.max() > 1.0 and wrong.max() > 20 * error.max()


def test_affine_points_match_the_hand_computed_inverse() -> None:
    a, b, affine = two_grids_and_affine()
    m = np.array(affine.GetMatrix()).reshape(3, 3)
    c, t = np.array(affine.GetCenter()), np.array(affine.GetTranslation())
    x = interior_points(a, 25, margin=3, seed=2)
    by_hand = (np.linalg.inv(m) @ (x - c - t).T).T + c  # T(y) = M (y - c) + c + t, solved for y
    carried = invert_points(affine, x)
    assert carried.converged.all()
    np.testing.assert_allclose(carried.positions, by_hand, atol=1e-9)
    inside = np.array([b.TransformPhysicalPointToContinuousIndex(tuple(p)) for p in by_hand])
    keep = np.all((inside > 1) & (inside < np.array(b.GetSize()) - 2), axis=1)
    # coordinate channels are exact for an affine (linear interpolation of a linear map)
    np.testing.assert_allclose(carried_coordinates(affine, a, b, carried.positions[keep]), x[keep], atol=1e-6)


def test_registration_aligns_label_maps_and_repeats_bit_for_bit() -> None:
    """Two ellipsoid 'bones' of different size and place: the label stage aligns them, and the same seed
    gives the same transform."""
    def ellipsoid(centre, radii) -> sitk.Image:
        image = grid((40, 36, 32), (1.5, 1.5, 2.0), (0.0, 0.0, 0.0), np.eye(3))
        z, y, x = np.meshgrid(*[np.arange(n) for n in (32, 36, 40)], indexing="ij")
        world = np.stack([x * 1.5, y * 1.5, z * 2.0], -1) + np.array(image.GetOrigin())
        inside = (((world - centre) / radii) ** 2).sum(-1) <= 1
        label = sitk.GetImageFromArray(inside.astype(np.uint8))
        label.CopyInformation(image)
        return label

    fixed = ellipsoid(np.array([2.0, -3.0, 1.0]), np.array([14.0, 9.0, 16.0]))
    moving = ellipsoid(np.array([-4.0, 2.0, -2.0]), np.array([11.0, 10.0, 13.0]))
    settings = RegistrationSettings(bspline_grid_mm=30.0, seed=3)
    images = [comparison_image(i, i, "labels") for i in (fixed, moving)]
    first, second = register_pair(*images, settings), register_pair(*images, settings)
    assert first.kind == "affine+bspline"
    assert first.transform.GetNthTransform(1).GetParameters() == second.transform.GetNthTransform(1).GetParameters()
    assert first.affine.GetParameters() == second.affine.GetParameters()

    def dice(label: sitk.Image) -> float:
        a, b = sitk.GetArrayViewFromImage(label) > 0, sitk.GetArrayViewFromImage(fixed) > 0
        return 2 * np.count_nonzero(a & b) / (a.sum() + b.sum())

    assert dice(moving) < 0.6
    assert dice(resample_into(moving, fixed, first.transform, nearest=True)) > 0.9


@pytest.mark.parametrize("folds", [1, 3])
def test_a_folding_bspline_is_refused_for_a_coarser_grid_then_the_affine(monkeypatch: pytest.MonkeyPatch,
                                                                        folds: int) -> None:
    """The first ``folds`` BSplines fold (they mirror x: Jacobian determinant -0.5); the rest are zero."""
    fixed = grid((40, 36, 30), (1.5, 1.2, 2.0), (0.0, 0.0, 0.0), np.eye(3))
    grids = []

    def fake_bspline(fixed_image, moving_image, affine, settings, grid_mm):
        grids.append(grid_mm)
        bspline = bspline_on_domain(fixed_image, grid_mm)
        if len(grids) <= folds:  # x-displacement -1.5 (x - centre): the spline reproduces it, det = 1 - 1.5
            mesh = np.array(bspline.GetTransformDomainMeshSize())
            extent = bspline.GetTransformDomainPhysicalDimensions()[0]
            xs = bspline.GetTransformDomainOrigin()[0] + (np.arange(mesh[0] + 3) - 1) * extent / mesh[0]
            coefficients = np.zeros((3, mesh[2] + 3, mesh[1] + 3, mesh[0] + 3))
            coefficients[0] = -1.5 * (xs - xs.mean())
            bspline.SetParameters(tuple(coefficients.ravel()))
        return bspline, 0.0, 1

    monkeypatch.setattr(register_module, "register_affine", lambda f, m, s: (sitk.AffineTransform(3), 0.0, 1))
    monkeypatch.setattr(register_module, "register_bspline", fake_bspline)
    result = register_pair(fixed, fixed, RegistrationSettings(bspline_grid_mm=25.0))
    assert [r["grid_mm"] for r in result.refused] == [25.0, 50.0, 100.0][:folds]
    assert all(abs(r["min_jacobian_determinant"] + 0.5) < 1e-3 for r in result.refused)
    if folds < 3:
        assert grids == [25.0, 50.0] and result.kind == "affine+bspline" and result.grid_mm == 50.0
    else:
        assert grids == [25.0, 50.0, 100.0] and result.kind == "affine" and result.grid_mm == 0.0
    assert abs(result.min_jacobian_determinant - 1.0) < 1e-6


# ---------------------------------------------------------------------------- pairs and split
def test_pairs_stay_in_a_fold_and_the_split_keeps_relatives_apart() -> None:
    cases = [f"case_{i:02d}" for i in range(17)]
    splits = default_splits(cases[::-1])  # order does not matter: nnU-Net sorts
    reference = generate_crossval_split(sorted(cases), seed=12345, n_splits=5)
    assert [s["val"] for s in splits] == [list(map(str, s["val"])) for s in reference]
    assert [s["train"] for s in splits] == [list(map(str, s["train"])) for s in reference]

    pairs = choose_pairs(splits, per_case=2, seed=4)
    assert pairs == choose_pairs(splits, per_case=2, seed=4)
    fold_of = {c: f for f, s in enumerate(splits) for c in s["val"]}
    assert all(p.moving != p.fixed and fold_of[p.moving] == fold_of[p.fixed] == p.fold for p in pairs)
    assert len({p.name for p in pairs}) == len(pairs) == 2 * len(cases)  # every fold has >= 3 cases

    out = augmented_splits(splits, pairs)
    by_name = {p.name: p for p in pairs}
    for fold, split in enumerate(out):
        assert sorted(split["val"]) == sorted(splits[fold]["val"])  # no sample validates anywhere
        trained = [n for n in split["train"] if n in by_name]
        assert sorted(trained) == sorted(p.name for p in pairs if p.fold != fold)  # where its sources train
        for name in trained:  # no relative of a validation case trains
            assert by_name[name].moving not in split["val"] and by_name[name].fixed not in split["val"]
        assert sorted(n for n in split["train"] if n not in by_name) == sorted(splits[fold]["train"])

    with pytest.raises(PoiNnunetError, match="at least 5"):
        default_splits(cases[:4])


# ---------------------------------------------------------------------------- the dataset
@pytest.fixture(scope="module")
def leg_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six small leg phantoms (nnU-Net's split gives one fold two cases: one pair each way) and a test case."""
    return write_leg_dataset(tmp_path_factory.mktemp("source") / "Dataset530_Leg", num_cases=6, num_test=1, seed=2,
                             shape=SMALL)


def test_augmented_dataset_is_valid_records_its_origin_and_ships_the_split(leg_source: Path, nnunet_folders: dict,
                                                                          tmp_path: Path) -> None:
    quick = RegistrationSettings(affine_iterations=50, bspline_iterations=10)  # both stages, fewer steps
    result = augment_dataset(leg_source, AugmentOptions(per_case=1, output_id=531, seed=0, settings=quick,
                                                        progress=False))
    target = nnunet_folders["raw"] / "Dataset531_LegReg"
    assert result.path == target and result.num_samples == 2
    assert validate_raw_dataset(target, progress=False) == []
    assert sorted(p.name for p in nnunet_folders["raw"].iterdir()) == ["Dataset531_LegReg"]  # no staging left

    source, ds = RawDataset.open(leg_source), RawDataset.open(target)
    assert ds.meta["numTraining"] == 8 and ds.meta["poi_source"].startswith("registration")
    assert ds.case_ids("Ts") == source.case_ids("Ts")
    record = json.loads((target / "augmentation.json").read_text())
    samples = record["samples"]
    splits = default_splits(source.case_ids("Tr"))
    pair_fold = [f for f, s in enumerate(splits) if len(s["val"]) == 2][0]
    first, second = splits[pair_fold]["val"]
    assert sorted(samples) == sorted([f"{first}_reg_{second}", f"{second}_reg_{first}"])

    for name, info in samples.items():
        assert info["fold"] == pair_fold and info["transform"]["kind"] == "affine+bspline"
        assert info["label_dice"] > 0.6
        transform = sitk.ReadTransform(str(target / info["transform"]["file"]))
        original = read_poi_file(source.poi_file(info["moving"])).by_key()
        carried = read_poi_file(ds.poi_file(name))
        assert len(carried) + len(info["dropped_pois"]) == len(original)
        for p in carried:  # the written transform takes every carried point back to A's point
            back = np.array(transform.TransformPoint(p.position))
            assert np.linalg.norm(back - np.array(original[p.key].position)) < 1e-3
        assert sitk.ReadImage(str(ds.image_files(name)[0])).GetSize() == \
            sitk.ReadImage(str(source.image_files(info["fixed"])[0])).GetSize()

    written = json.loads((target / "splits_final.json").read_text())
    assert written == augmented_splits(splits, [Pair(v["moving"], v["fixed"], v["fold"])
                                                for v in samples.values()])
    for fold, split in enumerate(written):
        assert not set(split["val"]) & set(samples)
        if fold == pair_fold:
            assert not set(samples) & set(split["train"])
        else:
            assert set(samples) <= set(split["train"])

    # poi_plan_and_preprocess stages the raw split where the preprocessed folder has none, never over one
    staging, preprocessed = tmp_path / "staging", tmp_path / "preprocessed"
    staging.mkdir()
    preprocessed.mkdir()
    _stage_raw_splits(ds, staging, preprocessed)
    assert json.loads((staging / "splits_final.json").read_text()) == written
    (staging / "splits_final.json").unlink()
    (preprocessed / "splits_final.json").write_text(json.dumps([{"train": ["x"], "val": ["y"]}]))
    _stage_raw_splits(ds, staging, preprocessed)
    assert not (staging / "splits_final.json").exists()


def test_a_failure_midway_leaves_no_dataset(leg_source: Path, nnunet_folders: dict,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    def half_written(job):
        Path(job.out_images[0]).parent.mkdir(parents=True, exist_ok=True)
        Path(job.out_images[0]).write_bytes(b"half an image")
        raise PoiNnunetError(f"sample {job.pair.name}: simulated failure")

    monkeypatch.setattr(augment_module, "make_sample", half_written)
    with pytest.raises(PoiNnunetError, match="simulated failure"):
        augment_dataset(leg_source, AugmentOptions(per_case=1, output_id=532, progress=False))
    assert list(nnunet_folders["raw"].iterdir()) == []

    foreign = nnunet_folders["raw"] / "Dataset532_LegReg"
    foreign.mkdir()
    with pytest.raises(PoiNnunetError, match="not made by poi_augment"):
        augment_dataset(leg_source, AugmentOptions(per_case=1, output_id=532, overwrite=True, progress=False))
    assert list(foreign.iterdir()) == []


def test_cleaning_drops_a_point_the_transform_pushed_off_its_bone(leg_source: Path, nnunet_folders: dict,
                                                                  monkeypatch: pytest.MonkeyPatch,
                                                                  capsys: pytest.CaptureFixture) -> None:
    """The carried femoral head centre (poi 1, femur) is moved onto the carried lateral malleolus tip (poi 16,
    on the fibula at the ankle): inside the image, its structure present, but far from the femur's surface."""
    order = [p.poi for p in read_poi_file(RawDataset.open(leg_source).poi_file("leg_000"))]
    assert order[0] == 1 and order[-1] == 16
    real = sample_module.invert_points

    def pushed(transform, points, *args, **kwargs):
        carried = real(transform, points, *args, **kwargs)
        carried.positions[0] = carried.positions[-1]
        return carried

    monkeypatch.setattr(sample_module, "invert_points", pushed)
    code = poi_augment(["-d", str(leg_source), "--registration", "1", "--output-id", "533", "--grid-mm", "0",
                        "--no_pbar"])
    assert code == 0
    target = nnunet_folders["raw"] / "Dataset533_LegReg"
    assert validate_raw_dataset(target, progress=False) == []
    samples = json.loads((target / "augmentation.json").read_text())["samples"]
    assert len(samples) == 2
    for name, info in samples.items():
        assert info["transform"]["kind"] == "affine"
        far = [d for d in info["dropped_pois"] if d["reason"] == "far_from_surface"]
        assert [(d["structure"], d["poi"]) for d in far] == [(1, 1)]
        assert far[0]["surface_distance_mm"] > far[0]["threshold_mm"]
        keys = set(read_poi_file(target / "poisTr" / f"{name}.json").keys())
        assert (1, 1) not in keys and (4, 16) in keys
    assert "2 far_from_surface" in capsys.readouterr().out

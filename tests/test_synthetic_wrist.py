"""The synthetic wrist phantom: valid, 720 corresponding landmarks on 17 bones, reproducible, the overlap rule.

Every geometric check is made here from first principles (a similarity fit
written below, skimage's polygon fill, distances to label boundaries), not
with the generator's own helpers, so a bug in the generator cannot hide itself.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Tuple

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage
from scipy.spatial import cKDTree
from skimage.draw import polygon

from dataset_conversion.synthetic_wrist import (make_wrist_case, render_wrist, wrist_geometry, write_wrist_dataset,
                                               wrist_model)
from poi_nnunet.cli.convert import main as poi_convert
from poi_nnunet.geometry import ImageGeometry
from poi_nnunet.pois import read_poi_file
from poi_nnunet.raw_dataset import RawDataset
from poi_nnunet.raw_format_checks import validate_raw_dataset
from tests.factories import assert_deterministic_by_seed

BONE_NAMES = ["radius", "ulna", "radius_epiphysis", "ulna_epiphysis", "scaphoid", "lunate", "triquetrum", "pisiform",
              "trapezium", "trapezoid", "capitate", "hamate", "metacarpal_1", "metacarpal_2", "metacarpal_3",
              "metacarpal_4", "metacarpal_5"]
LABELS = list(range(1, 18))


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> RawDataset:
    target = tmp_path_factory.mktemp("wrist") / "Dataset510_SyntheticWrist"
    write_wrist_dataset(target, num_cases=3, num_test=1, seed=11)
    return RawDataset.open(target)


def _points(path: Path) -> Dict[int, np.ndarray]:
    """Structure -> ``(n, 2)`` world positions in POI id order, read from a written point file."""
    out: Dict[int, list] = {}
    for p in sorted(read_poi_file(path), key=lambda p: p.poi):
        out.setdefault(p.structure, []).append(p.position)
    return {s: np.array(v, dtype=np.float64) for s, v in out.items()}


def _similarity_fit(src: np.ndarray, dst: np.ndarray) -> Tuple[np.ndarray, float]:
    """Umeyama's least-squares similarity ``src -> dst`` (both ``(n, 2)``): fitted points, angle in degrees."""
    a, b = src - src.mean(axis=0), dst - dst.mean(axis=0)
    u, s, vt = np.linalg.svd(b.T @ a / len(a))
    d = np.diag([1.0, np.sign(np.linalg.det(u @ vt))])
    rotation = u @ d @ vt
    scale = np.trace(np.diag(s) @ d) / (a ** 2).sum(axis=1).mean()
    return scale * a @ rotation.T + dst.mean(axis=0), float(np.degrees(np.arctan2(rotation[1, 0], rotation[0, 0])))


def _rms(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sqrt(((a - b) ** 2).sum(axis=1).mean()))


# ---------------------------------------------------------------------------- the written dataset
def test_written_dataset_is_valid_with_17_named_bones_and_720_named_pois(written: RawDataset):
    assert validate_raw_dataset(written.path, progress=False) == []
    assert written.labels == {"background": 0, **{name: i + 1 for i, name in enumerate(BONE_NAMES)}}
    assert sorted(written.poi_names) == list(range(1, 721))
    assert written.case_ids("Ts") == ["wrist_003"] and written.poi_file("wrist_003", "Ts").is_file()
    image = sitk.ReadImage(str(written.image_files("wrist_000")[0]))
    assert image.GetDimension() == 2 and image.GetSize() == (256, 256)
    assert 0.3 <= image.GetSpacing()[0] <= 0.4 + 1e-6 and image.GetSpacing()[0] == image.GetSpacing()[1]


def test_every_case_has_the_same_720_pois_over_17_bones_more_on_larger_bones(written: RawDataset):
    keys = []
    for case, split in [(c, "Tr") for c in written.case_ids("Tr")] + [(c, "Ts") for c in written.case_ids("Ts")]:
        pois = read_poi_file(written.poi_file(case, split))
        assert len(pois) == 720 and sorted(p.poi for p in pois) == list(range(1, 721))
        keys.append(sorted(pois.keys()))
    assert all(k == keys[0] for k in keys)
    per_bone = np.bincount([s for s, _ in keys[0]], minlength=18)[1:]
    assert (per_bone >= 12).all() and sorted({s for s, _ in keys[0]}) == LABELS
    by_name = dict(zip(BONE_NAMES, per_bone))
    assert by_name["metacarpal_3"] > 2 * by_name["pisiform"] and by_name["radius"] > by_name["lunate"]
    for s in LABELS:  # one bone's ids are consecutive, in label order
        ids = sorted(i for t, i in keys[0] if t == s)
        assert ids == list(range(ids[0], ids[0] + len(ids)))


def test_poi_convert_synthetic_wrist_writes_a_valid_dataset(nnunet_folders: dict):
    code = poi_convert(["synthetic-wrist", "-d", "510", "-n", "SyntheticWrist", "--cases", "2", "--test-cases", "1",
                        "--seed", "4", "--shape", "128", "128"])
    target = nnunet_folders["raw"] / "Dataset510_SyntheticWrist"
    assert code == 0 and validate_raw_dataset(target, progress=False) == []
    assert poi_convert(["validate", str(target)]) == 0
    ds = RawDataset.open(target)
    assert ds.case_ids() == ["wrist_000", "wrist_001"] and ds.case_ids("Ts") == ["wrist_002"]
    assert sitk.ReadImage(str(ds.image_files("wrist_000")[0])).GetSize() == (128, 128)


def test_same_seed_writes_the_same_bytes_and_another_seed_differs(tmp_path: Path):
    assert_deterministic_by_seed(write_wrist_dataset, tmp_path, 7, shape=(96, 96))


# ---------------------------------------------------------------------------- correspondence
def test_the_same_index_is_the_same_anatomical_point_in_two_cases(written: RawDataset):
    """Per bone, a similarity maps one case's points onto the other's with a residual small against the bone's
    size and a rotation close to the whole hand's; shifting the index round the outline breaks both."""
    a, b = _points(written.poi_file("wrist_000")), _points(written.poi_file("wrist_001"))
    hand_a, hand_b = np.concatenate([a[s] for s in LABELS]), np.concatenate([b[s] for s in LABELS])
    fitted, hand_angle = _similarity_fit(hand_a, hand_b)
    assert _rms(fitted, hand_b) < 1.5  # mm: bones move only a little against each other
    for s in LABELS:
        size = _rms(b[s], b[s].mean(axis=0))
        fitted, angle = _similarity_fit(a[s], b[s])
        assert _rms(fitted, b[s]) / size < 0.15, s
        assert abs(angle - hand_angle) < 12.0, s
        for shift in (len(b[s]) // 4, len(b[s]) // 2):
            shifted = np.roll(b[s], -shift, axis=0)
            fitted, angle = _similarity_fit(a[s], shifted)
            assert _rms(fitted, shifted) / size > 0.3 or abs(angle - hand_angle) > 45.0, (s, shift)
    shifted_hand = np.concatenate([np.roll(b[s], -(len(b[s]) // 4), axis=0) for s in LABELS])
    fitted, _ = _similarity_fit(hand_a, shifted_hand)
    assert _rms(fitted, shifted_hand) > 5.0  # one pose for the hand cannot turn every bone on its own


# ---------------------------------------------------------------------------- landmarks, labels and overlaps
def _painted(model, shape: Tuple[int, int]) -> Tuple[np.ndarray, Dict[int, np.ndarray]]:
    """Independent raster of the model's outlines: label map painted in label order, and each bone's own mask."""
    labels, own = np.zeros(shape, dtype=np.uint8), {}
    for label, name in enumerate(BONE_NAMES, start=1):
        rows, cols = model.geometry.world_to_array(model.outlines[name]).T
        own[label] = np.zeros(shape, dtype=bool)
        own[label][polygon(rows, cols, shape)] = True
        labels[own[label]] = label
    return labels, own


def _points_of(case) -> Dict[int, np.ndarray]:
    """Structure -> ``(n, 2)`` world positions in POI id order, from a generated (unwritten) case."""
    out: Dict[int, list] = {}
    for p in sorted(case.pois, key=lambda p: p.poi):
        out.setdefault(p.structure, []).append(p.position)
    return {s: np.array(v, dtype=np.float64) for s, v in out.items()}


@pytest.mark.parametrize("seed", [0, 7])
def test_landmarks_on_outlines_higher_label_on_top_and_every_bone_visible(seed: int):
    case, model = make_wrist_case("w", seed), wrist_model(seed)
    labels = sitk.GetArrayFromImage(case.label)
    geo = ImageGeometry.from_image(case.label)
    assert geo.same_grid(model.geometry) and geo.contains_world(case.pois.positions()).all()
    painted, own = _painted(model, labels.shape)
    centres = geo.array_to_world(np.argwhere(np.ones(labels.shape, dtype=bool))).reshape(*labels.shape, 2)
    outlines = cKDTree(np.concatenate(list(model.outlines.values())))
    away = outlines.query(centres.reshape(-1, 2))[0].reshape(labels.shape) > 1.5 * geo.spacing[0]  # cut pixels: either
    np.testing.assert_array_equal(labels[away], painted[away])
    pixel, hidden, total = float(geo.spacing[0]), 0, 0
    points = _points_of(case)
    for s in LABELS:
        visible = labels == s
        assert visible.sum() >= 0.35 * own[s].sum() and visible.sum() * pixel ** 2 >= 5.0, s  # mm^2
        boundary = geo.array_to_world(np.argwhere(visible & ~ndimage.binary_erosion(visible)))
        under = labels[tuple(np.rint(geo.world_to_array(points[s])).astype(int).T)]
        covered = under > s  # under a bone drawn on top: on its own outline, but inside the other's label
        shown = points[s][~covered]
        assert len(shown) >= 0.4 * len(points[s]), s
        distance = np.linalg.norm(shown[:, None] - boundary[None], axis=2).min(axis=1) / pixel
        assert distance.max() <= 1.5, (s, distance.max())
        hidden, total = hidden + int(covered.sum()), total + len(points[s])
    assert hidden / total < 0.15


def test_overlapping_bones_add_up_in_the_image():
    """Projection: two overlapping bones rendered alone; deep inside the overlap (away from every cortex rim)
    the image is brighter than inside either bone alone by about what one bone adds to the soft tissue."""
    geo = wrist_geometry()
    rows, cols = np.indices(geo.size[::-1])
    disc_a = (((rows - 128) ** 2 + (cols - 100) ** 2) < 40 ** 2).astype(np.float32)
    disc_b = (((rows - 128) ** 2 + (cols - 156) ** 2) < 40 ** 2).astype(np.float32)
    image = render_wrist({"a": disc_a, "b": disc_b}, geo, np.eye(3), np.random.default_rng(0)).astype(np.float64)
    deep = lambda m: ndimage.binary_erosion(m, iterations=8)  # noqa: E731  (8 px = 3.2 mm, past the cortex rim)
    both = np.median(image[deep((disc_a > 0) & (disc_b > 0))])
    only = [np.median(image[deep((x > 0) & (y == 0))]) for x, y in ((disc_a, disc_b), (disc_b, disc_a))]
    union = (disc_a + disc_b) > 0
    around = ndimage.binary_dilation(union, iterations=12) & ~ndimage.binary_dilation(union, iterations=6)
    one_bone = min(only) - np.median(image[around])  # what a bone adds to the soft tissue next to it
    assert one_bone > 200
    assert both - max(only) > 0.4 * one_bone  # 0.64-1.4 over seeds 0-7; a bone drawn over another gives ~0

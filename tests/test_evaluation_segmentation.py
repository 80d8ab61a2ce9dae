"""Dice, ASD and inverse-frequency-weighted Dice on shapes whose answers are counted by hand."""
from __future__ import annotations

import math

import numpy as np
import pytest

from poi_nnunet.evaluation import average_surface_distance, dice, inverse_frequency_weighted_dice, label_metrics


def _cubes() -> tuple:
    """3x3x3 cubes, the second shifted by one voxel along x (numpy axis 2)."""
    a = np.zeros((8, 8, 8), bool)
    b = np.zeros_like(a)
    a[2:5, 2:5, 2:5] = True
    b[2:5, 2:5, 3:6] = True
    return a, b


def test_cubes_offset_by_one_voxel() -> None:
    a, b = _cubes()
    # overlap 3*3*2 = 18 of 27 + 27 voxels
    assert dice(a, b) == pytest.approx(2 / 3)
    # 26 surface voxels each. From A: its x=2 face (9 voxels) is 1 voxel from B's surface, and
    # A's surface voxel at B's centre is 1 voxel from B's surface; the other 16 lie on it.
    # Symmetrically from B, so (10 + 10) / (26 + 26).
    assert average_surface_distance(a, b, (1.0, 1.0, 1.0)) == pytest.approx(5 / 13)
    # 2 mm along x: the face voxels are 2 mm away, the centre one still 1 mm (along y or z).
    assert average_surface_distance(a, b, (1.0, 1.0, 2.0)) == pytest.approx(38 / 52)


def test_squares_offset_by_one_pixel_2d() -> None:
    a = np.zeros((9, 9), bool)
    b = np.zeros_like(a)
    a[2:6, 2:6] = True
    b[3:7, 2:6] = True
    assert dice(a, b) == pytest.approx(2 * 12 / 32)
    # 12 boundary pixels each; from A, its top row (4) and the 2 pixels over B's interior are 1 away
    assert average_surface_distance(a, b, (1.0, 1.0)) == pytest.approx(12 / 24)
    assert average_surface_distance(a, b, (0.5, 1.0)) == pytest.approx(6 / 24)


def test_identical_and_empty_masks() -> None:
    a, _ = _cubes()
    empty = np.zeros_like(a)
    assert dice(a, a) == 1.0 and average_surface_distance(a, a, (1, 1, 1)) == 0.0
    assert math.isnan(dice(empty, empty)) and math.isnan(average_surface_distance(empty, empty, (1, 1, 1)))
    assert dice(a, empty) == 0.0 and math.isnan(average_surface_distance(a, empty, (1, 1, 1)))


def test_inverse_frequency_weighting() -> None:
    # label 1: 100 voxels, Dice 0.5; label 2: 10 voxels, Dice 1.0 -> (0.5/100 + 1/10) / (1/100 + 1/10)
    expected = (0.005 + 0.1) / 0.11
    assert inverse_frequency_weighted_dice({1: 0.5, 2: 1.0}, {1: 100, 2: 10}) == pytest.approx(expected)
    # a label absent from the reference and a NaN Dice do not take part
    assert inverse_frequency_weighted_dice({1: 0.5, 2: 1.0, 3: 0.0, 4: float("nan")},
                                           {1: 100, 2: 10, 3: 0, 4: 5}) == pytest.approx(expected)
    assert math.isnan(inverse_frequency_weighted_dice({3: 0.0}, {3: 0}))


def test_label_maps_with_declared_absent_and_border_touching_labels() -> None:
    a, b = _cubes()
    ref = np.zeros((8, 8, 8), np.uint8)
    pred = np.zeros_like(ref)
    ref[a], pred[b] = 1, 1
    ref[5:8, 1:7, 0:4] = 2  # touches the image border (its faces there are surface) and has an inside
    pred[5:8, 1:7, 0:3] = 2
    pred[7, 7, 7] = 4       # predicted only
    metrics = label_metrics(ref, pred, (1.0, 1.0, 2.0), declared_labels=[1, 2, 3])
    assert sorted(metrics) == [1, 2, 3, 4]
    assert metrics[1].dice == pytest.approx(2 / 3) and metrics[1].asd_mm == pytest.approx(38 / 52)
    assert (metrics[1].ref_voxels, metrics[1].pred_voxels) == (27, 27)
    assert metrics[2].dice == pytest.approx(2 * 54 / (72 + 54))
    assert metrics[2].asd_mm == pytest.approx(average_surface_distance(ref == 2, pred == 2, (1.0, 1.0, 2.0)))
    assert math.isnan(metrics[3].dice) and metrics[3].ref_voxels == 0
    assert metrics[4].dice == 0.0 and math.isnan(metrics[4].asd_mm)


def test_ignore_label_is_left_out_of_dice_and_disables_asd() -> None:
    ref = np.zeros((6, 6), np.uint8)
    pred = np.zeros_like(ref)
    ref[0:2, :] = 9          # not annotated
    ref[3:5, 1:3] = 1
    pred[0:2, 0:2] = 1       # predicted where the reference has no annotation: not counted
    pred[3:5, 1:3] = 1
    metrics = label_metrics(ref, pred, (1.0, 1.0), ignore_label=9)
    assert sorted(metrics) == [1]
    assert metrics[1].dice == 1.0 and metrics[1].pred_voxels == 4
    assert math.isnan(metrics[1].asd_mm)

"""Fusion of per-plane predictions and smoothing of the pseudo mask, on arrays whose answers are worked out by hand."""
from __future__ import annotations

from pathlib import Path
from typing import List

import numpy as np
import pytest

from poi_nnunet.errors import PoiNnunetError
from poi_nnunet.pseudo_masks import (DEFAULT_CLOSING_RADIUS_MM, DEFAULT_OPENING_RADIUS_MM,
                                     ellipsoid_structuring_element, fuse, fuse_probabilities, fuse_votes,
                                     load_nnunet_probabilities, smooth_label_map, structuring_element_half_widths)

# ---------------------------------------------------------------------------------------------------- fusion


def _three_models() -> List[np.ndarray]:
    """(3 classes, 2x2) probabilities of three models, one voxel per situation.

    (0,0) all say 1.  (0,1) A and B say 2 weakly (0.40), C says 1 confidently (0.96): means 0.24 / 0.4867 /
    0.2733, so mean -> 1, vote -> 2.  (1,0) all say 0.  (1,1) A says 0, B 1, C 2 (a 1-1-1 tie); summed
    probabilities 0.7 / 1.1 / 1.2, so mean -> 2 and the vote's tie goes to 2 too (0 without probabilities).
    """
    voxels = {  # voxel: (model A, model B, model C), each (p0, p1, p2)
        (0, 0): ((0.1, 0.8, 0.1), (0.1, 0.8, 0.1), (0.1, 0.8, 0.1)),
        (0, 1): ((0.35, 0.25, 0.40), (0.35, 0.25, 0.40), (0.02, 0.96, 0.02)),
        (1, 0): ((0.7, 0.2, 0.1), (0.6, 0.3, 0.1), (0.5, 0.1, 0.4)),
        (1, 1): ((0.5, 0.3, 0.2), (0.1, 0.6, 0.3), (0.1, 0.2, 0.7)),
    }
    models = [np.zeros((3, 2, 2), np.float32) for _ in range(3)]
    for (y, x), per_model in voxels.items():
        for model, p in zip(models, per_model):
            model[:, y, x] = p
    return models


def test_mean_fusion_lets_a_confident_model_outvote_two_weak_ones() -> None:
    fused = fuse_probabilities(_three_models())
    assert fused.dtype == np.uint8
    np.testing.assert_array_equal(fused, [[1, 1], [0, 2]])
    np.testing.assert_array_equal(fuse(_three_models(), "mean"), fused)


def test_vote_fusion_follows_the_majority_where_mean_does_not() -> None:
    models = _three_models()
    maps = [np.argmax(m, axis=0) for m in models]
    np.testing.assert_array_equal(maps, [[[1, 2], [0, 0]], [[1, 2], [0, 1]], [[1, 1], [0, 2]]])
    # (0,1): two votes for 2 beat one confident vote for 1
    np.testing.assert_array_equal(fuse(models, "vote"), [[1, 2], [0, 2]])
    # without probabilities the 1-1-1 tie at (1,1) goes to the lowest class, background
    np.testing.assert_array_equal(fuse_votes(maps, num_classes=3), [[1, 2], [0, 0]])


def test_vote_majority_and_tie_rules() -> None:
    # voxels along the last axis; one row per model
    maps = [np.array([2, 0, 1, 3, 1, 4]), np.array([2, 3, 2, 0, 1, 4]), np.array([1, 3, 3, 2, 2, 4])]
    # 2-1 majorities -> 2, 3; 1-1-1 ties -> lowest class (1; 0, i.e. background when it is in the tie);
    # 2-1 -> 1; unanimous -> 4
    expected = [2, 3, 1, 0, 1, 4]
    np.testing.assert_array_equal(fuse_votes(maps, num_classes=5), expected)
    # the result does not depend on the order of the models
    np.testing.assert_array_equal(fuse_votes(maps[::-1], num_classes=5), expected)
    np.testing.assert_array_equal(fuse_votes([maps[1], maps[2], maps[0]], num_classes=5), expected)


def test_vote_tie_goes_to_the_highest_summed_probability() -> None:
    maps = [np.array([1, 1, 1]), np.array([2, 2, 2]), np.array([3, 3, 3])]  # 1-1-1 everywhere
    per_voxel = [  # (model A, B, C), each (p0, p1, p2, p3), consistent with the votes above
        # sums over models: class 1 0.7, class 2 0.8, class 3 1.5 -> 3
        ((0.0, 0.5, 0.2, 0.3), (0.0, 0.1, 0.5, 0.4), (0.0, 0.1, 0.1, 0.8)),
        # 0.8, 1.25, 0.95 -> 2
        ((0.0, 0.4, 0.35, 0.25), (0.0, 0.1, 0.6, 0.3), (0.0, 0.3, 0.3, 0.4)),
        # 1.0, 1.0, 1.0 (exact in binary) -> the lowest tied class, 1 (0 got no vote, so it is not in the tie)
        ((0.0, 0.5, 0.25, 0.25), (0.0, 0.25, 0.5, 0.25), (0.0, 0.25, 0.25, 0.5)),
    ]
    probs = [np.zeros((4, 3), np.float64) for _ in range(3)]
    for k, rows in enumerate(per_voxel):
        for model, row in zip(probs, rows):
            model[:, k] = row
    np.testing.assert_array_equal(fuse_votes(maps, num_classes=4, probabilities=probs), [3, 2, 1])
    np.testing.assert_array_equal(fuse_votes(maps[::-1], num_classes=4, probabilities=probs[::-1]), [3, 2, 1])


def test_fusion_rejects_inconsistent_inputs() -> None:
    models = _three_models()
    with pytest.raises(ValueError, match="shape"):
        fuse_probabilities([models[0], models[1][:, :1]])
    with pytest.raises(ValueError, match="outside 0..2"):
        fuse_votes([np.array([0, 3])], num_classes=3)
    with pytest.raises(ValueError, match="unknown fusion method"):
        fuse(models, "median")  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------- nnU-Net probabilities


def test_nnunet_probabilities_round_trip(tmp_path: Path) -> None:
    # what export_prediction_from_logits writes for a 2D image read by SimpleITKIO: (C, 1, y, x) float32
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 1, 4, 5))
    probs = (np.exp(logits) / np.exp(logits).sum(axis=0)).astype(np.float32)
    np.savez_compressed(tmp_path / "case_000.npz", probabilities=probs)
    loaded = load_nnunet_probabilities(tmp_path / "case_000.npz")
    assert loaded.dtype == np.float32 and loaded.shape == (3, 1, 4, 5)
    np.testing.assert_array_equal(loaded, probs)


@pytest.mark.parametrize("write, message", [
    (None, "no such file"),
    (lambda p: np.savez_compressed(p, softmax=np.full((2, 2, 2), 0.5, np.float32)), "no 'probabilities' array"),
    (lambda p: p.write_text("not a zip archive"), "cannot be read"),
    (lambda p: np.savez_compressed(p, probabilities=np.ones((2, 2, 2), np.float32)), "not probabilities"),
    (lambda p: np.savez_compressed(p, probabilities=np.full((2, 2), 0.5, np.float32)), "shape"),
    (lambda p: np.savez_compressed(p, probabilities=np.zeros((2, 2, 2), np.int64)), "dtype"),
])
def test_nnunet_probabilities_errors_name_the_file(tmp_path: Path, write, message: str) -> None:
    path = tmp_path / "case_001.npz"
    if write is not None:
        write(path)
    with pytest.raises(PoiNnunetError, match=message) as info:
        load_nnunet_probabilities(path)
    assert str(path) in str(info.value)


# ------------------------------------------------------------------------------------------------- smoothing


def _ball(shape, centre, radius) -> np.ndarray:
    grids = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    return sum((g - c) ** 2 for g, c in zip(grids, centre)) <= radius ** 2


def test_fill_holes_fills_a_cavity_inside_a_sphere() -> None:
    sphere = _ball((13, 13, 13), (6, 6, 6), 5)
    cavity = _ball((13, 13, 13), (6, 6, 6), 2)
    labels = np.where(sphere & ~cavity, 4, 0).astype(np.uint8)
    out = smooth_label_map(labels, (1.0, 1.0, 1.0), [4], closing_radius_mm=0, opening_radius_mm=0)
    np.testing.assert_array_equal(out, np.where(sphere, 4, 0))
    kept = smooth_label_map(labels, (1.0, 1.0, 1.0), [4], closing_radius_mm=0, opening_radius_mm=0,
                            fill_holes=False)
    np.testing.assert_array_equal(kept, labels)


def test_only_the_largest_face_connected_component_is_kept() -> None:
    labels = np.zeros((14, 14, 14), np.int16)
    labels[2:8, 2:8, 2:8] = 1  # 216 voxels
    labels[10:12, 10:12, 10:12] = 1  # detached 2x2x2 blob
    labels[8, 8, 8] = 1  # touches the box's corner (7,7,7) only at a corner: a separate component
    labels[8, 8, 4] = 1  # touches the box's edge voxel (7,7,4) only along an edge: separate as well
    out = smooth_label_map(labels, (1.0, 1.0, 1.0), [1], closing_radius_mm=0, opening_radius_mm=0)
    expected = np.zeros_like(labels)
    expected[2:8, 2:8, 2:8] = 1
    np.testing.assert_array_equal(out, expected)
    assert out.dtype == np.int16
    kept = smooth_label_map(labels, (1.0, 1.0, 1.0), [1], closing_radius_mm=0, opening_radius_mm=0,
                            keep_largest_component=False)
    np.testing.assert_array_equal(kept, labels)


def test_opening_removes_a_one_voxel_spur() -> None:
    labels = np.zeros((14, 12, 12), np.uint8)
    labels[3:9, 3:9, 3:9] = 2
    labels[9:11, 5, 5] = 2  # a 1-voxel-thick spur, 2 voxels long, out of the top face
    out = smooth_label_map(labels, (1.0, 1.0, 1.0), [2], closing_radius_mm=0, opening_radius_mm=1.5)
    # The 1.5 mm element is the 3x3x3 cube without its corners. It fits around every box voxel except the
    # 8 corners (a corner is sqrt(3) > 1.5 voxels from the nearest centre whose element stays in the box),
    # and around no spur voxel (the spur is 1 voxel thick).
    expected = np.zeros_like(labels)
    expected[3:9, 3:9, 3:9] = 2
    for z in (3, 8):
        for y in (3, 8):
            for x in (3, 8):
                expected[z, y, x] = 0
    np.testing.assert_array_equal(out, expected)
    unopened = smooth_label_map(labels, (1.0, 1.0, 1.0), [2], closing_radius_mm=0, opening_radius_mm=0)
    np.testing.assert_array_equal(unopened, labels)


def test_defaults_in_2d_give_back_a_clean_square() -> None:
    assert (DEFAULT_CLOSING_RADIUS_MM, DEFAULT_OPENING_RADIUS_MM) == (2.0, 1.5)
    square = np.zeros((24, 24), bool)
    square[3:17, 3:17] = True
    labels = square.astype(np.uint8)
    labels[_ball((24, 24), (10, 10), 3)] = 0  # a cavity too wide for the closing: only hole filling fills it
    labels[17, 9] = 1  # one-pixel bump on the bottom edge: the opening's 3x3 square fits nowhere around it
    labels[20:22, 20:22] = 1  # detached speck (removed by the opening, and by the largest component)
    out = smooth_label_map(labels, (1.0, 1.0), [1])
    # A square is closed under closing (it is convex) and under opening with the 3x3 element (which fits
    # into every corner), so nothing but the square is left.
    np.testing.assert_array_equal(out, square.astype(np.uint8))


def test_radius_in_mm_becomes_voxels_per_axis() -> None:
    # spacing (3, 1, 1.5) mm, radius 3 mm: half-widths floor(3/3), floor(3/1), floor(3/1.5) = 1, 3, 2 voxels.
    # Offsets (dz, dy, dx) with (3dz/3)^2 + (dy/3)^2 + (1.5dx/3)^2 <= 1: at dz = +-1 only the centre line;
    # at dz = 0: dy = 0 -> |dx| <= 2; |dy| = 1, 2 -> |dx| <= 1 (dx^2 <= 32/9, 20/9); |dy| = 3 -> dx = 0.
    centre_only = [[0, 0, 0, 0, 0]] * 3 + [[0, 0, 1, 0, 0]] + [[0, 0, 0, 0, 0]] * 3
    middle = [[0, 0, 1, 0, 0], [0, 1, 1, 1, 0], [0, 1, 1, 1, 0], [1, 1, 1, 1, 1],
              [0, 1, 1, 1, 0], [0, 1, 1, 1, 0], [0, 0, 1, 0, 0]]
    expected = np.array([centre_only, middle, centre_only], bool)
    element = ellipsoid_structuring_element(3.0, (3.0, 1.0, 1.5))
    np.testing.assert_array_equal(element, expected)
    assert structuring_element_half_widths(3.0, (3.0, 1.0, 1.5)) == (1, 3, 2)
    # smaller than every spacing: the centre alone, i.e. no smoothing along any axis
    np.testing.assert_array_equal(ellipsoid_structuring_element(0.9, (1.0, 1.0)), [[True]])
    # 2 mm on (3, 1, 3) mm voxels: a 5-voxel line along axis 1
    np.testing.assert_array_equal(ellipsoid_structuring_element(2.0, (3.0, 1.0, 3.0)), np.ones((1, 5, 1), bool))


def test_anisotropic_closing_bridges_gaps_only_along_fine_axes() -> None:
    labels = np.zeros((9, 12, 12), np.uint8)
    labels[1:8, 1:11, 1:11] = 1
    labels[1:8, 5, 1:6] = 0  # slit 1 voxel (1 mm) thin along axis 1, open at the top and bottom
    labels[4, 1:11, 6:11] = 0  # slit 1 voxel (3 mm) thin along axis 0, open at the sides
    out = smooth_label_map(labels, (3.0, 1.0, 3.0), [1], closing_radius_mm=2.0, opening_radius_mm=0)
    # The element is the 5-voxel line along axis 1: each axis-1 line of the box has at most a 1-voxel gap
    # (filled), the slit along axis 0 empties whole axis-1 lines (nothing to close).
    expected = np.zeros_like(labels)
    expected[1:8, 1:11, 1:11] = 1
    expected[4, 1:11, 6:11] = 0
    np.testing.assert_array_equal(out, expected)
    # On a 1 mm grid the same 2 mm ball reaches slices 3 and 5 from inside the second slit, which closes there.
    iso = smooth_label_map(labels, (1.0, 1.0, 1.0), [1], closing_radius_mm=2.0, opening_radius_mm=0)
    assert iso[4, 5, 7] == 1 and out[4, 5, 7] == 0


def test_other_labels_are_untouched_and_win_over_a_smoothed_label() -> None:
    labels = np.zeros((16, 20), np.uint8)
    labels[2:12, 2:12] = 1
    labels[2:4, 7] = 2  # label 2 fills a notch of label 1 that the closing would take (at (3,7))
    labels[14, 2] = 1  # a speck of label 1: removed
    labels[13:15, 14:18] = 3  # label 3, not smoothed, with its own speck and a spur: kept as they are
    labels[15, 19] = 3
    labels[12, 15] = 3
    before = labels.copy()
    out = smooth_label_map(labels, (1.0, 1.0), [1])
    expected = labels.copy()
    expected[14, 2] = 0
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(labels, before)  # the input is not changed


def test_claims_between_smoothed_labels() -> None:
    labels = np.zeros((18, 18), np.uint8)
    # nested rings: label 1 around label 2 around a background centre. Label 1's hole filling claims the
    # ring of 2 (2 keeps it: the original wins) and the centre; label 2 claims the centre as well, so the
    # contested centre stays background.
    labels[1:8, 1:8] = 1
    labels[2:7, 2:7] = 2
    labels[3:6, 3:6] = 0
    # label 3 ring around a stray pixel of label 2: label 2 loses it (not its largest component) and
    # label 3, the only claimant, gets it together with the background in the ring.
    labels[10:15, 10:15] = 3
    labels[11:14, 11:14] = 0
    labels[12, 12] = 2
    out = smooth_label_map(labels, (1.0, 1.0), [1, 2, 3, 7], closing_radius_mm=0, opening_radius_mm=0)
    expected = labels.copy()
    expected[10:15, 10:15] = 3
    np.testing.assert_array_equal(out, expected)

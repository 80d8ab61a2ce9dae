"""The four terms of point supervision (seed 002) on hand-made tensors with hand-computed values."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from poi_nnunet.augmentation.right_angles import RightAngleTransform, RotationPlane, rotation_plane
from poi_nnunet.batch import PoiBatch
from poi_nnunet.click_extent import outside_extent
from trainers.point_sup_loss import (PointSupervisionLoss, PointSupOutput, PointSupWeights, click_class_weights,
                                     extent_penalty, point_cross_entropy, rotation_consistency, separation)

IGNORE = 3  # classes 0, 1, 2; 3 = not clicked


def _batch(spacing, batch=1) -> PoiBatch:
    d = len(spacing)
    return PoiBatch(torch.zeros(batch, 0, d), torch.zeros(batch, 0, dtype=torch.bool),
                    torch.zeros(batch, 0, dtype=torch.bool), torch.zeros(batch, dtype=torch.long),
                    torch.tensor([spacing] * batch, dtype=torch.float32))


# ---------------------------------------------------------------- extent (Eq. 3)
def test_extent_mask_at_known_distances_on_an_anisotropic_grid():
    # clicks of class 1 at (2, 0) and (2, 2); 1 mm along axis 0, 2 mm along axis 1; radius 7 mm
    labels = torch.full((1, 5, 11), IGNORE)
    labels[0, 2, 0] = labels[0, 2, 2] = 1
    out = outside_extent(labels, [1], {1: 7.0}, torch.tensor([[1.0, 2.0]]))[0, 0]
    # row 2: the farthest click is max(x, |x - 2|) * 2 mm away: x = 3 -> 6 mm (inside), x = 4 -> 8 mm
    assert not out[2, :4].any() and out[2, 4:].all()
    # (0, 3): to (2, 0) sqrt(2^2 + 6^2) = 6.32 mm; (0, 4): sqrt(4 + 64) = 8.25 mm
    assert not out[0, 3] and out[0, 4]
    # (4, 3): the same by symmetry; and every voxel's verdict matches a direct computation
    zz, xx = np.meshgrid(np.arange(5), np.arange(11), indexing="ij")
    far = np.maximum(np.hypot(zz - 2, 2 * (xx - 0)), np.hypot(zz - 2, 2 * (xx - 2)))
    np.testing.assert_array_equal(out.numpy(), far > 7.0)


def test_extent_mask_is_empty_without_clicks_or_radius():
    labels = torch.full((2, 4, 4), IGNORE)
    labels[1, 0, 0] = 2
    out = outside_extent(labels, [1, 2], {1: 1.0}, torch.ones(2, 2))
    assert not out.any()  # class 1 has no clicks, class 2 no radius


def test_extent_penalty_is_minus_log_one_minus_p_where_impossible():
    p = torch.tensor([[0.2, 0.5, 0.3], [0.1, 0.1, 0.8]]).T.reshape(1, 3, 2)  # (B, C, X): two voxels
    outside = torch.tensor([[[True, False], [False, True]]])  # class 1 impossible at voxel 0, class 2 at voxel 1
    value = extent_penalty(torch.log(p), outside, [1, 2])  # logits whose softmax is p
    expected = (-math.log(1 - 0.5) - math.log(1 - 0.8)) / 2
    assert float(value) == pytest.approx(expected, rel=1e-6)


def test_extent_penalty_keeps_its_value_and_gradient_where_the_wrong_class_is_certain():
    # logits (0, 20, 0): p_1 = 1 - 2e-20 / (1 + 2e-20) rounds to 1 in float32; class 1 is impossible here
    logits = torch.tensor([0.0, 20.0, 0.0]).reshape(1, 3, 1).requires_grad_(True)
    value = extent_penalty(logits, torch.tensor([[[True]]]), [1])
    # by hand: -log(1 - p_1) = log(1 + 2 e^-20) - log(2 e^-20) = 20 - log 2 (+ 4e-9)
    assert float(value.detach()) == pytest.approx(20.0 - math.log(2.0), abs=1e-4)
    value.backward()
    # d/dz_1 = p_1 (about 1), d/dz_0 = d/dz_2 = p_0 - 1/2 ... = -1/2 (the other two share 1 - p_1 evenly)
    np.testing.assert_allclose(logits.grad.reshape(-1).numpy(), [-0.5, 1.0, -0.5], atol=1e-5)


# ---------------------------------------------------------------- point loss
def test_point_loss_is_blind_to_ignored_voxels_and_weights_classes_by_inverse_click_count():
    target = torch.full((1, 1, 6), IGNORE)
    target[0, 0, 0] = 0
    target[0, 0, 1] = 0
    target[0, 0, 2] = 1  # background clicked twice, class 1 once, class 2 never
    weights = click_class_weights(target, 3, IGNORE)
    np.testing.assert_allclose(weights.numpy(), [3 / (2 * 2), 3 / (2 * 1), 0.0])
    logits = torch.randn(1, 3, 6)
    value = point_cross_entropy(logits, target, IGNORE, weights)
    logp = torch.log_softmax(logits, 1)[0]
    expected = -(0.75 * logp[0, 0] + 0.75 * logp[0, 1] + 1.5 * logp[1, 2]) / (0.75 + 0.75 + 1.5)
    assert float(value) == pytest.approx(float(expected), rel=1e-5)
    changed = logits.clone()
    changed[:, :, 3:] = torch.randn(1, 3, 3) * 10  # ignored voxels
    assert float(point_cross_entropy(changed, target, IGNORE, weights)) == pytest.approx(float(value), rel=1e-6)


def test_unbalanced_point_loss_counts_each_clicked_voxel_once():
    target = torch.full((1, 1, 6), IGNORE)
    target[0, 0, :3] = 0
    target[0, 0, 3] = 1  # three background clicks, one of class 1
    logits = torch.randn(1, 3, 6)
    logp = torch.log_softmax(logits, 1)[0]
    expected = -(logp[0, 0] + logp[0, 1] + logp[0, 2] + logp[1, 3]) / 4
    loss = PointSupervisionLoss(3, IGNORE, {}, PointSupWeights(consistency=0.0, separation=0.0, extent=0.0,
                                                               balance_click_classes=False), [1.0])
    assert float(loss([logits], [target], _batch([1.0])).terms["point"]) == pytest.approx(float(expected), rel=1e-5)
    balanced = PointSupervisionLoss(3, IGNORE, {}, PointSupWeights(consistency=0.0, separation=0.0, extent=0.0),
                                    [1.0])
    # balanced: the lone class-1 click weighs as much as the three background clicks together
    expected_balanced = -(logp[0, :3].sum() / 3 + logp[1, 3]) / 2
    assert float(balanced([logits], [target], _batch([1.0])).terms["point"]) == \
        pytest.approx(float(expected_balanced), rel=1e-5)

def test_point_loss_without_clicks_is_zero_and_finite():
    logits = torch.randn(1, 3, 4, requires_grad=True)
    value = point_cross_entropy(logits, torch.full((1, 1, 4), IGNORE), IGNORE, torch.ones(3))
    value.backward()
    assert float(value.detach()) == 0.0 and torch.isfinite(logits.grad).all()


# ---------------------------------------------------------------- separation (Eq. 2)
@pytest.mark.parametrize("p, expected", [
    ([1.0, 0.0, 0.0], 0.0),  # one-hot
    ([1 / 3, 1 / 3, 1 / 3], 1.0),  # uniform
    ([0.5, 0.5, 0.0], 0.5),  # pairs 0 + 0.5 + 0.5 = 1, over C - 1 = 2
    ([0.6, 0.3, 0.1], 1 - (0.3 + 0.5 + 0.2) / 2),
])
def test_separation_by_hand(p, expected):
    probabilities = torch.tensor(p).reshape(1, 3, 1)
    assert float(separation(probabilities)) == pytest.approx(expected, abs=1e-6)


# ---------------------------------------------------------------- rotation consistency (Eq. 1)
def test_right_angle_transform_by_hand_and_its_inverse():
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).reshape(1, 1, 2, 2)
    t = RightAngleTransform(RotationPlane((0, 1), True), turns=1, flip=True)
    # flip axis 0: [[3, 4], [1, 2]]; then a quarter turn from axis 0 toward axis 1 (numpy's rot90): [[4, 2], [3, 1]]
    np.testing.assert_array_equal(t.apply(x)[0, 0].numpy(), [[4.0, 2.0], [3.0, 1.0]])
    y = torch.randn(2, 3, 4, 4, 5)
    t3 = RightAngleTransform(RotationPlane((0, 1), True), turns=3, flip=True)
    assert torch.equal(t3.invert(t3.apply(y)), y)


def test_a_quarter_turn_without_flip_is_not_its_own_inverse_and_consistency_follows_its_direction():
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).reshape(1, 1, 2, 2)
    t = RightAngleTransform(RotationPlane((0, 1), True), turns=1, flip=False)
    # numpy's rot90 by hand: [[2, 4], [1, 3]]; its inverse turns the other way: [[3, 1], [4, 2]]
    np.testing.assert_array_equal(t.apply(x)[0, 0].numpy(), [[2.0, 4.0], [1.0, 3.0]])
    np.testing.assert_array_equal(t.invert(x)[0, 0].numpy(), [[3.0, 1.0], [4.0, 2.0]])
    torch.manual_seed(3)
    p = torch.softmax(torch.randn(1, 3, 5, 5) * 3, 1)
    # the network's output on t(x) must equal t applied to its output on x, not the inverse turn
    assert float(rotation_consistency(p, t.apply(p), t)) == pytest.approx(0.0, abs=1e-7)
    assert float(rotation_consistency(p, t.invert(p), t)) > 0.1

def test_consistency_is_zero_for_an_equivariant_output_and_hand_valued_otherwise():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(2, 3, 1)  # voxel-wise: commutes with every voxel permutation
    x = torch.randn(1, 2, 6, 6)
    t = RightAngleTransform(rotation_plane([1.0, 1.0], [6, 6]), turns=1, flip=True)
    p = torch.softmax(conv(x), 1)
    p_t = torch.softmax(conv(t.apply(x)), 1)
    assert float(rotation_consistency(p, p_t, t)) == pytest.approx(0.0, abs=1e-7)
    # not equivariant: class 0 on the left half, class 1 on the right, whatever the input
    fixed = torch.zeros(1, 3, 6, 6)
    fixed[:, 0, :, :3] = 1
    fixed[:, 1, :, 3:] = 1
    half_turn = RightAngleTransform(RotationPlane((0, 1), True), turns=2, flip=False)
    # turned by 180 degrees the halves swap: every voxel differs by a full class (TV distance 1)
    assert float(rotation_consistency(fixed, fixed, half_turn)) == pytest.approx(1.0)
    flip_rows = RightAngleTransform(RotationPlane((0, 1), True), turns=0, flip=True)
    assert float(rotation_consistency(fixed, fixed, flip_rows)) == pytest.approx(0.0)  # rows flipped: halves stay


@pytest.mark.parametrize("spacing, patch, fixed, plane", [
    ([1.0, 1.0, 1.0], [32, 32, 32], {2}, RotationPlane((0, 1), True)),
    ([3.0, 1.0, 1.0], [16, 32, 32], {1}, RotationPlane((0, 2), False)),  # 3 mm against 1 mm: half turns
    ([0.8, 0.8], [112, 112], {1}, RotationPlane((0, 1), False, False)),  # 2D: a flip of axis 0 alone
    ([0.8, 0.8], [112, 112], {0, 1}, None),
])
def test_lateralised_labels_keep_the_left_right_axis_out_of_every_transform(spacing, patch, fixed, plane):
    got = rotation_plane(spacing, patch, fixed_axes=fixed)
    assert got == plane
    if got is None:
        return
    # channels holding each voxel's own coordinates: no drawn transform may move or reverse a fixed axis
    shape = [4] * len(spacing) if got.quarter_turns else [4 + a for a in range(len(spacing))]
    grids = torch.stack(torch.meshgrid(*[torch.arange(n, dtype=torch.float32) for n in shape], indexing="ij"))[None]
    for turns in got.turns:
        for flip in (False, True):
            moved = RightAngleTransform(got, turns, flip).apply(grids)
            for axis in fixed:
                assert torch.equal(moved[:, axis], grids[:, axis]), (turns, flip, axis)

def test_rotation_plane_prefers_isotropic_square_axes():
    assert rotation_plane([3.0, 1.0, 1.0], [16, 32, 32]) == RotationPlane((1, 2), True)
    assert rotation_plane([1.0, 1.0, 1.0], [32, 32, 48]) == RotationPlane((0, 1), True)
    assert rotation_plane([0.8, 0.8], [112, 128]) == RotationPlane((0, 1), False)  # half turns only
    assert RotationPlane((0, 1), False).turns == (0, 2)
    rng = np.random.default_rng(0)
    drawn = {(t.turns, t.flip) for t in (RightAngleTransform.random(RotationPlane((0, 1), False), rng)
                                         for _ in range(200))}
    assert drawn == {(0, True), (2, False), (2, True)}  # never the identity


# ---------------------------------------------------------------- the whole loss
def test_loss_sums_the_weighted_terms_and_switches_off_a_zero_weight():
    torch.manual_seed(1)
    target = torch.full((1, 1, 8, 8), IGNORE)
    target[0, 0, 1, 1] = 1
    target[0, 0, 6, 6] = 0
    logits = torch.randn(1, 3, 8, 8)
    transform = RightAngleTransform(RotationPlane((0, 1), True), 1, False)
    transformed = torch.randn(1, 3, 8, 8)
    output = PointSupOutput([logits], transformed, transform)
    weights = PointSupWeights(point=1.0, consistency=0.5, separation=0.1, extent=2.0)
    loss = PointSupervisionLoss(3, IGNORE, {1: 3.0}, weights, [1.0])
    result = loss(output, [target], _batch([1.0, 1.0]))
    p = torch.softmax(logits, 1)
    cw = click_class_weights(target, 3, IGNORE)
    outside = outside_extent(target[:, 0], [1], {1: 3.0}, torch.ones(1, 2))
    expected = (point_cross_entropy(logits, target, IGNORE, cw)
                + 0.5 * rotation_consistency(p, torch.softmax(transformed, 1), transform)
                + 0.1 * separation(p) + 2.0 * extent_penalty(logits, outside, [1]))
    assert float(result.total) == pytest.approx(float(expected), rel=1e-5)
    assert set(result.terms) == {"point", "consistency", "separation", "extent"}
    no_extent = PointSupervisionLoss(3, IGNORE, {1: 3.0}, PointSupWeights(extent=0.0), [1.0])
    assert "extent" not in no_extent(output, [target], _batch([1.0, 1.0])).terms
    # validation passes carry no transformed output: no consistency term
    assert "consistency" not in loss([logits], [target], _batch([1.0, 1.0])).terms

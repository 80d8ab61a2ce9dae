"""Landmark losses ignore absent points entirely and never turn an empty batch into NaN."""
from __future__ import annotations

import math

import pytest
import torch

from poi_nnunet.losses import MaskedHeatmapLoss, WingLoss, masked_point_loss


def _heatmaps(dim: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    shape = (2, 3, *((5, 6, 4)[:dim]))
    return torch.randn(shape, generator=g), torch.rand(shape, generator=g)


def _grad(loss_fn, pred: torch.Tensor) -> torch.Tensor:
    pred = pred.clone().requires_grad_()
    loss_fn(pred).backward()
    return pred.grad


VALID = torch.tensor([[True, False, True], [False, True, True]])


@pytest.mark.parametrize("dim", [2, 3])
def test_heatmap_loss_is_the_mse_of_valid_channels_only(dim: int) -> None:
    pred, target = _heatmaps(dim)
    loss = MaskedHeatmapLoss()
    expected = torch.stack([((pred[b, c] - target[b, c]) ** 2).mean() for b, c in VALID.nonzero()]).mean()
    torch.testing.assert_close(loss(pred, target, VALID), expected)

    changed_pred, changed_target = pred.clone(), target.clone()
    changed_pred[~VALID] = 1e3
    changed_target[~VALID] = float("nan")  # absent points may be rendered as anything, NaN included
    torch.testing.assert_close(loss(changed_pred, changed_target, VALID), expected)
    grad = _grad(lambda p: loss(p, changed_target, VALID), changed_pred)
    torch.testing.assert_close(grad, _grad(lambda p: loss(p, target, VALID), pred))
    assert torch.count_nonzero(grad[~VALID]) == 0


@pytest.mark.parametrize("dim", [2, 3])
def test_heatmap_loss_with_nothing_valid_is_zero_with_a_gradient(dim: int) -> None:
    pred, target = _heatmaps(dim)
    target[:] = float("nan")
    pred.requires_grad_()
    loss = MaskedHeatmapLoss(foreground_weight=5.0)(pred, target, torch.zeros(2, 3, dtype=torch.bool))
    loss.backward()
    assert loss.item() == 0.0
    assert pred.grad is not None and torch.equal(pred.grad, torch.zeros_like(pred))


@pytest.mark.parametrize("dim", [2, 3])
def test_heatmap_loss_in_peaks_costs_one_per_missed_poi_whatever_the_patch(dim: int) -> None:
    """Counted in peaks, predicting zero costs 1 per valid POI per sample, in any patch size and sigma."""
    from poi_nnunet.heatmaps import render_gaussian_heatmaps

    sigma = [2.0, 1.5, 2.5][:dim]
    for size in (24, 40):
        shape = (size,) * dim
        points = torch.full((2, 3, dim), size / 2 - 0.3, dtype=torch.float64)
        target = render_gaussian_heatmaps(points, torch.ones(2, 3, dtype=torch.bool), shape, sigma, 10.0).float()
        loss = MaskedHeatmapLoss(amplitude=10.0, sigma_voxels=sigma)
        zero = torch.zeros_like(target)
        torch.testing.assert_close(loss(zero, target, VALID), torch.tensor(VALID.sum().item() / 2.0), rtol=2e-3, atol=0)
        assert loss(target, target, VALID).item() == 0.0
        grad = _grad(lambda p: loss(p, target, VALID), zero)
        assert torch.count_nonzero(grad[~VALID]) == 0 and torch.count_nonzero(grad[VALID]) > 0


def test_heatmap_loss_rejects_bad_sigmas() -> None:
    with pytest.raises(ValueError, match="sigma_voxels"):
        MaskedHeatmapLoss(sigma_voxels=[1.0, 0.0])
    with pytest.raises(ValueError, match="fewer than 3 axes"):
        MaskedHeatmapLoss(sigma_voxels=[1.0, 1.0])(*_heatmaps(3), VALID)


def test_foreground_weight_emphasises_errors_on_the_peak() -> None:
    target = torch.zeros(1, 1, 8, 8)
    target[0, 0, 4, 4] = 44.0
    valid = torch.ones(1, 1, dtype=torch.bool)
    miss_peak, miss_background = target.clone(), target.clone()
    miss_peak[0, 0, 4, 4] -= 1.0
    miss_background[0, 0, 0, 0] += 1.0
    plain = MaskedHeatmapLoss(amplitude=44.0)
    weighted = MaskedHeatmapLoss(amplitude=44.0, foreground_weight=10.0)
    assert plain(miss_peak, target, valid) == plain(miss_background, target, valid) == 1.0 / 64
    assert weighted(miss_background, target, valid) == 1.0 / 64
    torch.testing.assert_close(weighted(miss_peak, target, valid), torch.tensor(10.0 / 64))


def test_wing_loss_matches_its_definition_and_is_continuous() -> None:
    w, eps = 10.0, 2.0
    wing = WingLoss(w, eps, reduction="none")
    x = torch.tensor([0.0, 1.0, -3.0, w - 1e-6, w + 1e-6, -25.0], dtype=torch.float64)
    c = w - w * math.log(1 + w / eps)
    expected = [0.0, w * math.log(1.5), w * math.log(2.5), w * math.log(1 + w / eps), w - c, 25.0 - c]
    torch.testing.assert_close(wing(x), torch.tensor(expected, dtype=torch.float64), atol=1e-5, rtol=0)
    # Small errors get a steeper gradient than L1 (w / eps = 5 at zero), large ones exactly L1's.
    x = torch.tensor([0.1, 30.0], requires_grad=True)
    wing(x).sum().backward()
    assert x.grad[0] > 4.0 and x.grad[1] == 1.0
    assert WingLoss()(torch.full((4, 3), 1.0)) == pytest.approx(10.0 * math.log(1.5))


@pytest.mark.parametrize("kind", ["wing", "l1", "l2"])
@pytest.mark.parametrize("dim", [2, 3])
def test_point_loss_ignores_absent_points(kind: str, dim: int) -> None:
    g = torch.Generator().manual_seed(3)
    pred, target = torch.randn(2, 3, dim, generator=g) * 5, torch.randn(2, 3, dim, generator=g) * 5
    reference = masked_point_loss(pred, target, VALID, kind)
    changed_pred, changed_target = pred.clone(), target.clone()
    changed_pred[~VALID] = 1e4
    changed_target[~VALID] = float("nan")
    torch.testing.assert_close(masked_point_loss(changed_pred, changed_target, VALID, kind), reference)
    grad = _grad(lambda p: masked_point_loss(p, changed_target, VALID, kind), changed_pred)
    torch.testing.assert_close(grad, _grad(lambda p: masked_point_loss(p, target, VALID, kind), pred))
    assert torch.count_nonzero(grad[~VALID]) == 0 and torch.isfinite(grad).all()


@pytest.mark.parametrize("kind", ["wing", "l1", "l2"])
def test_point_loss_with_nothing_valid_is_zero_not_nan(kind: str) -> None:
    pred = torch.randn(2, 3, 3, requires_grad=True)
    loss = masked_point_loss(pred, torch.full((2, 3, 3), float("nan")), torch.zeros(2, 3, dtype=torch.bool), kind)
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(pred.grad, torch.zeros_like(pred))


def test_point_loss_values_are_per_point_distances() -> None:
    pred = torch.tensor([[[0.0, 0.0, 0.0], [9.0, 9.0, 9.0]]])
    target = torch.tensor([[[3.0, 4.0, 0.0], [0.0, 0.0, 0.0]]])
    valid = torch.tensor([[True, False]])
    assert masked_point_loss(pred, target, valid, "l2").item() == pytest.approx(25.0)  # squared distance
    assert masked_point_loss(pred, target, valid, "l1").item() == pytest.approx(7.0)
    custom = WingLoss(w=1.0, epsilon=0.5, reduction="none")
    expected = (3.0 - custom.c) + (4.0 - custom.c)
    assert masked_point_loss(pred, target, valid, "wing", wing=custom).item() == pytest.approx(expected)
    with pytest.raises(ValueError):
        masked_point_loss(pred, target, valid, "wing", wing=WingLoss())  # a reducing WingLoss would average over points
    with pytest.raises(ValueError):
        masked_point_loss(pred, target, valid, "huber")

"""Heatmap targets render where the point is, decode back to sub-voxel precision,
and the soft-argmax the coarse stage trains through has correct gradients."""
from __future__ import annotations

import pytest
import torch

from poi_nnunet.heatmaps import (
    decode_heatmaps,
    expected_coordinates,
    pooled_features,
    render_gaussian_heatmaps,
    soft_argmax,
    spatial_softmax,
)

SHAPES = {2: (24, 20), 3: (14, 12, 16)}


def _points(n: int, shape, margin: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    size = torch.tensor(shape, dtype=torch.float32)
    return (torch.rand(1, n, len(shape), generator=g) * (size - 1 - 2 * margin) + margin).to(torch.float32)


@pytest.mark.parametrize("dim", [2, 3])
def test_rendered_values_follow_the_anisotropic_gaussian(dim: int) -> None:
    shape = SHAPES[dim]
    sigma = (1.5, 3.0, 2.0)[:dim]
    pts = _points(2, shape, 3.0, seed=dim)
    maps = render_gaussian_heatmaps(pts, torch.tensor([[True, False]]), shape, sigma, amplitude=44.0)
    assert maps.shape == (1, 2, *shape)
    assert torch.count_nonzero(maps[0, 1]) == 0  # invalid channel stays empty
    grids = torch.meshgrid(*[torch.arange(n, dtype=torch.float64) for n in shape], indexing="ij")
    expo = sum((g - float(pts[0, 0, d])) ** 2 / (2 * sigma[d] ** 2) for d, g in enumerate(grids))
    torch.testing.assert_close(maps[0, 0].double(), 44.0 * torch.exp(-expo), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dim", [2, 3])
def test_invalid_points_may_be_nan_without_poisoning_the_batch(dim: int) -> None:
    pts = torch.full((1, 2, dim), float("nan"))
    pts[0, 0] = 4.25
    maps = render_gaussian_heatmaps(pts, torch.tensor([[True, False]]), SHAPES[dim], 1.5)
    assert torch.isfinite(maps).all()
    assert maps[0, 0].max() > 0.9 and maps[0, 1].abs().max() == 0


@pytest.mark.parametrize("dim", [2, 3])
def test_decoding_recovers_sub_voxel_points_including_the_border(dim: int) -> None:
    shape = SHAPES[dim]
    pts = _points(12, shape, 0.0, seed=10 + dim)
    pts[0, 0] = 0.2  # on the low border in every axis
    pts[0, 1] = torch.tensor(shape, dtype=torch.float32) - 1.3  # near the high border
    pts[0, 2, 0] = -0.8  # just outside the patch: only the tail is visible
    sigma = (2.0, 1.5, 2.5)[:dim]  # anisotropic
    maps = render_gaussian_heatmaps(pts, torch.ones(1, 12, dtype=torch.bool), shape, sigma)
    coords, confidence = decode_heatmaps(maps)
    assert coords.shape == (1, 12, dim) and confidence.shape == (1, 12)
    assert (coords - pts).norm(dim=-1).max() < 0.05


@pytest.mark.parametrize("dim", [2, 3])
def test_decoding_beats_integer_argmax_on_noisy_maps(dim: int) -> None:
    shape = (18, 18, 18)[:dim] if dim == 3 else (40, 40)
    n = 40
    pts = _points(n, shape, 3.0, seed=20 + dim)
    g = torch.Generator().manual_seed(dim)
    clean = render_gaussian_heatmaps(pts, torch.ones(1, n, dtype=torch.bool), shape, 2.0)
    background = 0.2 * torch.rand(1, n, *([1] * dim), generator=g)
    noisy = clean + background + 0.05 * torch.randn(clean.shape, generator=g)
    flat = noisy.flatten(2).argmax(-1)
    argmax = torch.stack(torch.unravel_index(flat, shape), -1).float()
    ours = (decode_heatmaps(noisy, window=9)[0] - pts).norm(dim=-1).mean()
    baseline = (argmax - pts).norm(dim=-1).mean()
    assert ours < 0.1
    assert ours < baseline / 4


def test_confidence_is_peak_height_over_the_rendered_amplitude() -> None:
    shape = SHAPES[3]
    pts = _points(3, shape, 3.0, seed=5)
    maps = render_gaussian_heatmaps(pts, torch.tensor([[True, True, False]]), shape, 1.5, amplitude=10.0)
    maps[0, 1] *= 0.5
    maps = maps + 2.0  # a constant offset in the network output must not read as confidence
    coords, confidence = decode_heatmaps(maps, amplitude=10.0)
    torch.testing.assert_close(confidence[0, :2], torch.tensor([1.0, 0.5]), atol=1e-3, rtol=0)
    assert confidence[0, 2] == 0 and torch.isfinite(coords).all()


@pytest.mark.parametrize("dim", [2, 3])
def test_soft_argmax_gradients_match_finite_differences(dim: int) -> None:
    shape = (3, 4, 5)[-dim:]
    logits = torch.randn(2, 2, *shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    beta = torch.tensor([0.7, 1.9], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x, b: soft_argmax(x, b), (logits.requires_grad_(), beta.requires_grad_()))


def test_soft_argmax_is_stable_and_finds_a_sharp_peak() -> None:
    logits = torch.full((1, 1, 6, 7, 8), -1e4)
    logits[0, 0, 2, 5, 1] = 1e4  # extreme logits must not overflow
    torch.testing.assert_close(soft_argmax(logits, 3.0)[0, 0], torch.tensor([2.0, 5.0, 1.0]))
    # A symmetric blob between two voxels lands between them: sub-voxel, unlike argmax.
    flat = torch.zeros(1, 1, 5, 6)
    flat[0, 0, 2, 2:4] = 10.0
    torch.testing.assert_close(soft_argmax(flat, 2.0)[0, 0], torch.tensor([2.0, 2.5]), atol=1e-4, rtol=0)


def test_soft_argmax_gradient_steps_move_the_prediction_to_the_target() -> None:
    logits = torch.zeros(1, 1, 10, 12, requires_grad=True)
    target = torch.tensor([[[7.3, 2.6]]])
    opt = torch.optim.Adam([logits], lr=0.5)
    start = (soft_argmax(logits) - target).norm().item()
    for _ in range(30):
        opt.zero_grad()
        loss = ((soft_argmax(logits) - target) ** 2).sum()
        loss.backward()
        opt.step()
    assert (soft_argmax(logits) - target).norm().item() < 0.1 * start


def test_expected_coordinates_of_a_rendered_heatmap_is_its_centre() -> None:
    pts = torch.tensor([[[6.3, 7.8, 5.1]]])
    maps = render_gaussian_heatmaps(pts, torch.ones(1, 1, dtype=torch.bool), (14, 16, 12), 1.2)
    probs = maps / maps.sum()
    torch.testing.assert_close(expected_coordinates(probs), pts, atol=1e-3, rtol=0)
    torch.testing.assert_close(spatial_softmax(torch.zeros(1, 1, 2, 2)), torch.full((1, 1, 2, 2), 0.25))


def test_pooled_features_average_features_under_the_heatmap() -> None:
    features = torch.randn(2, 4, 5, 6, 7, generator=torch.Generator().manual_seed(1))
    weights = torch.zeros(2, 3, 5, 6, 7)
    weights[:, 0, 1, 2, 3] = 7.0  # one voxel, any amplitude
    weights[:, 1, 4, 5, 6] = 1.0
    weights[:, 1, 0, 0, 0] = 1.0  # two voxels, equal share
    pooled = pooled_features(features, weights)
    assert pooled.shape == (2, 3, 4)
    torch.testing.assert_close(pooled[:, 0], features[:, :, 1, 2, 3])
    torch.testing.assert_close(pooled[:, 1], 0.5 * (features[:, :, 4, 5, 6] + features[:, :, 0, 0, 0]))
    assert torch.equal(pooled[:, 2], torch.zeros(2, 4))  # empty heatmap: zeros, not NaN
    with pytest.raises(ValueError):
        pooled_features(features, weights[..., :-1])


def test_render_rejects_mismatched_inputs() -> None:
    with pytest.raises(ValueError):
        render_gaussian_heatmaps(torch.zeros(1, 2, 3), torch.ones(1, 2, dtype=torch.bool), (8, 8), 1.0)
    with pytest.raises(ValueError):
        render_gaussian_heatmaps(torch.zeros(1, 2, 2), torch.ones(1, 2, dtype=torch.bool), (8, 8), 0.0)

"""coarse_refine with many POIs: a training step refines ``refine_subset`` channels per sample (those with
a target first), evaluation refines every channel, and the refinement loss scores exactly the refined ones."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from poi_nnunet.coarse_refine_network import CoarseRefineNetwork, PointPrediction
from tests.test_coarse_refine import _batch, _layout, _plan, tiny_network
from trainers.coarse_refine import PoiCoarseRefineTrainer
from trainers.coarse_refine_loss import CoarseRefineLoss, point_targets

C = 7


def _subset_network(k: int) -> CoarseRefineNetwork:
    torch.manual_seed(0)
    net = tiny_network(channels=C)
    net.refine_subset = k
    with torch.no_grad():  # a trained-looking offset head: the refined point depends on the POI's token
        net.refiner.offset.weight.normal_(std=0.5)
        net.refiner.offset.bias.normal_(std=0.5)
    return net


def _without_attention(net: CoarseRefineNetwork) -> None:
    """Zero what each transformer layer adds to its input (pre-norm: x + attn(.) + ffn(.)), so a token's
    offset depends on that POI's own token alone, not on which other POIs are refined with it."""
    with torch.no_grad():
        for layer in net.refiner.transformer.layers:
            layer.self_attn.out_proj.weight.zero_()
            layer.self_attn.out_proj.bias.zero_()
            layer.linear2.weight.zero_()
            layer.linear2.bias.zero_()


def test_training_refines_k_channels_with_targets_first_and_eval_refines_every_channel() -> None:
    net = _subset_network(3)
    x = torch.randn(2, 1, 12, 12, 12)
    structure = torch.tensor([0, 1])
    preferred = torch.zeros(2, C, dtype=torch.bool)
    preferred[0, [1, 4]] = True  # fewer targets than slots: both, and one other channel
    preferred[1, [0, 2, 3, 5, 6]] = True  # more targets than slots: three of them
    net.train()
    seen = set()
    for _ in range(30):
        with torch.no_grad():  # still training mode
            out = net(x, structure, preferred)
        index = out.refined_channels
        assert index.shape == (2, 3) and out.refined.shape == out.centres.shape == (2, 3, 3)
        assert out.coarse.shape == (2, C, 3)  # the coarse stage still answers for every channel
        for row in index.tolist():
            assert len(set(row)) == 3 and row == sorted(row) and all(0 <= c < C for c in row)
        assert {1, 4} <= set(index[0].tolist())
        assert set(index[1].tolist()) <= {0, 2, 3, 5, 6}
        seen.update(index[1].tolist())
    assert seen == {0, 2, 3, 5, 6}  # a random draw among them, not always the same three
    net.eval()
    with torch.no_grad():
        out = net(x, structure, preferred)
    assert out.refined_channels is None and out.refined.shape == (2, C, 3)
    assert out.refined_index().tolist() == [list(range(C))] * 2
    # refine_subset 0, or at least C: every channel in training too (as before subsets existed)
    for k in (0, C):
        net.refine_subset = k
        out = net.train()(x, structure, preferred)
        assert out.refined_channels is None and out.refined.shape == (2, C, 3)


def test_a_refined_subset_gets_the_points_the_full_refinement_gives_those_channels() -> None:
    """Without attention a POI's refined point depends on its own patch, pooled feature, position and
    POI id only, so the training subset's points equal the eval pass's points of the same channels:
    the subset gathers the right channel's coarse point, features and id embedding."""
    net = _subset_network(3)
    net.refine_jitter_voxels = 0.0
    _without_attention(net)
    x = torch.randn(2, 1, 12, 12, 12)
    structure = torch.tensor([2, -1])
    preferred = torch.tensor([[0, 1, 0, 0, 1, 0, 0], [1, 0, 0, 0, 0, 1, 1]], dtype=torch.bool)
    with torch.no_grad():
        full = net.eval()(x, structure)
        part = net.train()(x, structure, preferred)  # instance norm only: train and eval compute alike
    assert not torch.allclose(full.refined, full.coarse)  # the offsets are not zero
    for b in range(2):
        for k, c in enumerate(part.refined_channels[b].tolist()):
            torch.testing.assert_close(part.refined[b, k], full.refined[b, c], rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(part.centres[b, k], full.coarse[b, c], rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(part.features[b, k], full.features[b, c], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(part.coarse, full.coarse, rtol=1e-5, atol=1e-5)


def test_the_refinement_loss_is_the_wing_mean_over_the_refined_valid_points() -> None:
    """By hand: Wing(w=10, eps=2) in mm, summed over axes, averaged over the refined channels with a target
    inside the patch; a valid channel left out of the subset costs nothing, however wrong its point."""
    layout = _layout(layers=(7, 8), channels=4)
    loss = CoarseRefineLoss(None, layout, _plan(channels=4), 2, 0.0, 0.0, 1.0)
    spacing = (1.5, 1.0, 2.0)
    rng = np.random.default_rng(0)
    keypoints = torch.tensor(rng.uniform(1, 9, (2, 8, 3)), dtype=torch.float32)  # 2 layers x 4 channels
    keypoints[0, 4 + 2] = float("nan")  # sample 0 is centred on layer 1, whose channel 2 is unknown
    inside = torch.ones(2, 8, dtype=torch.bool)
    inside[1, 3] = False  # sample 1 (layer 0): channel 3 left the patch
    batch = _batch(keypoints, inside, [1, 0], spacing)
    truth = torch.nan_to_num(torch.stack([keypoints[0, 4:], keypoints[1, :4]]))
    channels = torch.tensor([[0, 2], [1, 3]])
    refined = torch.tensor(rng.uniform(0, 10, (2, 2, 3)), dtype=torch.float32)
    coarse = truth.clone()
    coarse[1, 0, 0] += 50.0  # sample 1's channel 0 is valid but not refined: the refinement term ignores it
    output = PointPrediction(torch.zeros(2, 2 + 4, 10, 10, 10), torch.zeros(2, 4, 10, 10, 10), coarse,
                             refined, refined, torch.zeros(2, 2, 4), channels)
    result = loss(output, None, batch)

    def wing(mm: np.ndarray) -> np.ndarray:
        a = np.abs(mm)
        return np.where(a < 10, 10 * np.log1p(a / 2), a - (10 - 10 * np.log1p(5)))

    s = np.array(spacing)
    pairs = [(0, 0, 0), (1, 0, 1)]  # (sample, slot, channel) refined with a valid target: not (0, 1, 2), (1, 1, 3)
    per_point = [wing((refined[b, k].numpy() - truth[b, c].numpy()) * s).sum() for b, k, c in pairs]
    errors = [np.linalg.norm((refined[b, k].numpy() - truth[b, c].numpy()) * s) for b, k, c in pairs]
    assert result.terms["refine_loss"] == pytest.approx(np.mean(per_point), rel=1e-5)
    assert float(result.total) == pytest.approx(np.mean(per_point), rel=1e-5)
    assert result.terms["refined_mm"] == pytest.approx(np.mean(errors), rel=1e-5)
    # the coarse points are scored on every valid channel, the refined subset's or not
    assert result.terms["coarse_mm"] == pytest.approx(50.0 * 1.5 / 6, rel=1e-5)  # 6 valid points, one 50 voxels off


def test_the_trainer_asks_for_the_channels_the_loss_scores() -> None:
    """``forward_network`` passes the loss's valid mask (known and inside the patch) as the preferred channels."""
    layout = _layout(layers=(7, 8), channels=3)
    keypoints = torch.tensor([[[1.0, 2.0, 3.0], [float("nan")] * 3, [4.0, 4.0, 4.0],
                               [5.0, 5.0, 5.0], [6.0, 6.0, 6.0], [float("nan")] * 3]])
    inside = torch.tensor([[True, False, False, True, True, False]])
    batch = _batch(keypoints, inside, [0])
    calls = []
    fake = SimpleNamespace(network=lambda *args: calls.append(args), poi_layout=layout)
    PoiCoarseRefineTrainer.forward_network(fake, torch.zeros(1, 1, 4, 4, 4), batch)
    (_, structure, preferred), = calls
    assert structure.tolist() == [0] and preferred.tolist() == [[True, False, False]]
    assert preferred.tolist() == point_targets(batch, layout)[1].tolist()
    assert PoiCoarseRefineTrainer.refine_subset > 0

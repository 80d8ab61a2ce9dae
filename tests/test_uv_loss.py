"""The uv trainer's loss terms against hand-computed values, and its head's output range."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from poi_nnunet.heads import UvHead, add_uv_head
from trainers.uv_loss import landmark_l1, masked_l1, sample_at_points, total_variation


def test_masked_l1_counts_only_defined_voxels() -> None:
    target = torch.tensor([[[[0.5, float("nan")], [0.0, 1.0]]]])  # (1, 1, 2, 2)
    pred = torch.tensor([[[[0.0, 9.0], [0.0, 0.0]]]])
    assert masked_l1(pred, target).item() == pytest.approx((0.5 + 0.0 + 1.0) / 3)
    assert masked_l1(pred, torch.full_like(target, float("nan"))).item() == 0.0


@pytest.mark.parametrize("dim", [2, 3])
def test_sampling_at_points_reads_voxel_coordinates_linearly(dim: int) -> None:
    shape = (5, 6, 7)[:dim]
    coords = torch.stack(torch.meshgrid(*[torch.arange(s, dtype=torch.float32) for s in shape], indexing="ij"))
    points = torch.tensor(np.random.default_rng(0).uniform(0, np.asarray(shape) - 1, (9, dim)), dtype=torch.float32)
    read = sample_at_points(coords[None], points[None])  # (1, 9, dim)
    assert torch.allclose(read[0], points, atol=1e-5)


def test_landmark_term_averages_each_structure_first() -> None:
    # a constant prediction of 0; structure 1 has three POIs with error 0.3 each, structure 2 one with error 0.9
    pred = torch.zeros((1, 2, 8, 8))
    points = torch.full((1, 4, 2), 3.0)
    slot_uv = torch.tensor([[0.3, 0.3], [-0.3, 0.3], [0.3, -0.3], [0.9, -0.9]])
    structures = torch.tensor([1, 1, 1, 2])
    usable = torch.ones((1, 4), dtype=torch.bool)
    assert landmark_l1(pred, points, usable, slot_uv, structures).item() == pytest.approx((0.3 + 0.9) / 2)
    # a point outside the patch (not usable) and a slot without template do not count
    usable[0, 3] = False
    assert landmark_l1(pred, points, usable, slot_uv, structures).item() == pytest.approx(0.3)
    slot_uv[:3] = float("nan")
    assert landmark_l1(pred, points, usable, slot_uv, structures).item() == 0.0


def test_total_variation_only_within_one_structure() -> None:
    pred = torch.tensor([[[[0.0, 0.1, 0.5, 0.6]]]])  # (1, 1, 1, 4)
    labels = torch.tensor([[[[1, 1, 2, 2]]]])
    # neighbours 0-1 (label 1): 0.1; 2-3 (label 2): 0.1; 1-2 crosses structures and does not count
    assert total_variation(pred, labels).item() == pytest.approx(0.1)
    assert total_variation(pred, torch.zeros_like(labels)).item() == 0.0


@pytest.mark.parametrize("conv", [nn.Conv2d, nn.Conv3d])
def test_uv_head_is_bounded_and_has_d_channels(conv) -> None:
    dim = 2 if conv is nn.Conv2d else 3
    head = UvHead(conv, 8, dim)
    x = torch.randn((2, 8) + (6,) * dim) * 100
    out = head(x)
    assert out.shape == (2, dim) + (6,) * dim
    assert out.abs().max() <= 1.0


def test_add_uv_head_appends_d_channels_to_the_segmentation_output() -> None:
    class Decoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.seg_layers = nn.ModuleList([nn.Conv2d(4, 3, 1)])

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.decoder = Decoder()

    net = add_uv_head(Net(), 2)
    out = net.decoder.seg_layers[-1](torch.randn(1, 4, 5, 5))
    assert out.shape == (1, 5, 5, 5)

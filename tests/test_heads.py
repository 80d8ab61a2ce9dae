"""The heatmap head sits beside nnU-Net's last segmentation layer without disturbing its outputs."""
from __future__ import annotations

import pytest
import torch
from dynamic_network_architectures.architectures.unet import PlainConvUNet
from torch import nn

from poi_nnunet.heads import HeatmapHead, SegmentationAndHeatmaps, add_heatmap_head


def _unet(deep_supervision: bool) -> PlainConvUNet:
    torch.manual_seed(0)
    return PlainConvUNet(1, 3, (8, 16, 32), nn.Conv2d, 3, (1, 2, 2), 2, 4, (2, 2), conv_bias=True,
                         norm_op=nn.InstanceNorm2d, nonlin=nn.LeakyReLU, deep_supervision=deep_supervision)


@pytest.mark.parametrize("deep_supervision", [False, True])
def test_full_resolution_output_is_segmentation_then_heatmaps(deep_supervision: bool) -> None:
    plain = _unet(deep_supervision)
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        before = plain(x)
        network = add_heatmap_head(plain, 20)
        after = network(x)
    before = before if deep_supervision else [before]
    after = after if deep_supervision else [after]
    assert after[0].shape == (2, 4 + 20, 32, 32)
    torch.testing.assert_close(after[0][:, :4], before[0])  # segmentation logits unchanged
    for b, a in zip(before[1:], after[1:]):  # deep-supervision outputs stay segmentation-only
        torch.testing.assert_close(a, b)


def test_head_is_at_least_as_wide_as_the_poi_count() -> None:
    network = add_heatmap_head(_unet(False), 50)
    head = network.decoder.seg_layers[-1]
    assert isinstance(head, SegmentationAndHeatmaps) and isinstance(head.heatmaps, HeatmapHead)
    assert head.heatmaps.hidden.out_channels == 50 and head.heatmaps.hidden.in_channels == 8
    assert add_heatmap_head(_unet(False), 3).decoder.seg_layers[-1].heatmaps.hidden.out_channels == 8


def test_a_network_without_nnunet_decoder_is_refused() -> None:
    with pytest.raises(TypeError, match="decoder.seg_layers"):
        add_heatmap_head(nn.Conv2d(1, 1, 1), 4)

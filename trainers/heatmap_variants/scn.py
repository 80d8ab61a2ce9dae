"""``heatmap_scn``: spatial configuration (Payer et al., Med. Image Anal. 2019): final heatmaps are the
local heatmaps times a configuration map computed from all landmarks' local heatmaps at once.

The existing head sees only the decoder's features at a voxel, so "a corner" lights up at every
corner. The configuration branch sees every channel's local heatmap over a large part of the patch
and can learn where landmark ``c`` lies given where the others are, and so suppress the peaks of
channel ``c`` that sit where the others say it cannot be. It runs at low resolution (average-pooled
by ``pool`` per axis), through a few large-kernel convolutions across all channels, and is upsampled
back; the product is taken at full resolution, so the local head keeps its sub-voxel peak shape.

The configuration map is ``1 + tanh(z)``, in (0, 2): it can remove a peak (towards 0) or raise it,
and with its last convolution zero-initialised it starts as exactly 1, so the variant starts as the
``heatmap`` trainer and only departs from it as far as the loss asks (SCN's plain ``tanh`` product
starts at zero, where neither factor gets a gradient through the other). Trained with the same loss.
"""
from __future__ import annotations

from typing import Type

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from poi_nnunet.heads import SegmentationAndHeatmaps, add_heatmap_head
from poi_nnunet.plan import PoiPlan

from ..heatmap import PoiHeatmapTrainer


class SpatialConfiguration(nn.Module):
    """``(B, C, *S)`` local heatmaps -> ``(B, C, *S)`` multiplicative configuration map in (0, 2):
    average pool by ``pool`` -> ``layers`` convolutions (``kernel_size``, ``features`` wide, LeakyReLU between)
    -> linear upsampling to ``S`` -> ``1 + tanh``."""

    def __init__(self, conv_op: Type[nn.Module], channels: int, features: int, kernel_size: int, layers: int = 3,
                 pool: int = 4):
        super().__init__()
        if layers < 2:
            raise ValueError("the configuration branch needs at least two convolutions")
        self.pool = int(pool)
        widths = [int(channels)] + [int(features)] * (layers - 1) + [int(channels)]
        body: list = []
        for i, (cin, cout) in enumerate(zip(widths[:-1], widths[1:])):
            body.append(conv_op(cin, cout, kernel_size=kernel_size, padding=kernel_size // 2, bias=True))
            if i < layers - 1:
                body.append(nn.LeakyReLU(0.01, inplace=True))
        nn.init.zeros_(body[-1].weight)
        nn.init.zeros_(body[-1].bias)
        self.body = nn.Sequential(*body)

    def forward(self, local: Tensor) -> Tensor:
        size = local.shape[2:]
        pool = F.avg_pool2d if local.ndim == 4 else F.avg_pool3d
        low = pool(local, self.pool, self.pool, ceil_mode=True)
        z = F.interpolate(self.body(low), size=size, mode="bilinear" if local.ndim == 4 else "trilinear",
                          align_corners=False)
        return 1.0 + torch.tanh(z)


class SpatialConfigurationHeatmaps(nn.Module):
    """``local(x) * configuration(local(x))``: drop-in for :class:`~poi_nnunet.heads.HeatmapHead`."""

    def __init__(self, local: nn.Module, configuration: nn.Module):
        super().__init__()
        self.local = local
        self.configuration = configuration

    def forward(self, x: Tensor) -> Tensor:
        local = self.local(x)
        return local * self.configuration(local)


class PoiHeatmapScnTrainer(PoiHeatmapTrainer):
    """``heatmap`` with its heatmaps multiplied by a spatial-configuration map of all local heatmaps.

    Branch: pool 4, three convolutions 64 wide, kernels 7 (2D) / 5 (3D): their receptive field spans
    19 (13) low-resolution voxels, 76 (52) full-resolution voxels, most of a typical patch, at a cost
    of about 0.5M parameters per layer whatever the patch size.
    """

    deep_supervised_heatmaps = False  # the change alone, as compared (benchmarks/learning_speed.py)

    scn_pool: int = 4
    scn_features: int = 64
    scn_layers: int = 3
    scn_kernel_2d: int = 7
    scn_kernel_3d: int = 5

    @classmethod
    def add_poi_heads(cls, network: nn.Module, plan: PoiPlan, configuration_manager, num_input_channels: int,
                      num_segmentation_outputs: int) -> nn.Module:
        """The heatmap trainer's head, wrapped with the configuration branch (built from the plans alone)."""
        network = add_heatmap_head(network, plan.num_channels)
        last: SegmentationAndHeatmaps = network.decoder.seg_layers[-1]
        conv_op = type(last.segmentation)
        kernel = cls.scn_kernel_2d if conv_op is nn.Conv2d else cls.scn_kernel_3d
        configuration = SpatialConfiguration(conv_op, plan.num_channels, cls.scn_features, kernel, cls.scn_layers,
                                             cls.scn_pool)
        last.heatmaps = SpatialConfigurationHeatmaps(last.heatmaps, configuration)
        return network

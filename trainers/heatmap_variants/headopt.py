"""``heatmap_headopt``: the heatmap head learns at a multiple of the network's learning rate.

nnU-Net's SGD (lr 0.01, Nesterov momentum 0.99, poly decay to zero) is tuned for segmentation over
1000 epochs. The heatmap head (:class:`~poi_nnunet.heads.HeatmapHead`, or whatever a variant puts in
:class:`~poi_nnunet.heads.SegmentationAndHeatmaps`' ``heatmaps``) starts from scratch on gradients that
the peak-counted MSE keeps small (a peak's squared error is divided by its energy, amplitude^2 times
the peak's volume), and a short run decays the rate before the head has caught up. Here the head's
parameters form their own SGD group at ``head_lr_factor`` times the rate, and the poly schedule
scales every group by the same factor, so the head keeps its ratio to the rest throughout
(nnU-Net's :class:`PolyLRScheduler` would set every group to one rate at the first step).
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch
from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler
from torch import nn

from poi_nnunet.heads import SegmentationAndHeatmaps

from ..heatmap import PoiHeatmapTrainer


class ProportionalPolyLRScheduler(PolyLRScheduler):
    """nnU-Net's poly schedule applied to each parameter group's own initial rate:
    ``lr_g(step) = initial_lr_g * (1 - step / max_steps) ** exponent``."""

    def __init__(self, optimizer: torch.optim.Optimizer, max_steps: int, exponent: float = 0.9,
                 current_step: Optional[int] = None):
        super().__init__(optimizer, optimizer.param_groups[0]["lr"], max_steps, exponent, current_step)

    def step(self, current_step: Optional[int] = None) -> None:
        if current_step is None or current_step == -1:
            current_step = self.ctr
            self.ctr += 1
        factor = (1 - current_step / self.max_steps) ** self.exponent
        for group in self.optimizer.param_groups:
            group["lr"] = group["initial_lr"] * factor  # set by the base scheduler from each group's first lr
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]


def heatmap_head_parameters(network: nn.Module) -> List[nn.Parameter]:
    """The parameters of every heatmap branch beside the decoder's segmentation layers (through
    ``torch.compile`` and DDP wrappers, which keep the modules)."""
    return [p for m in network.modules() if isinstance(m, SegmentationAndHeatmaps) for p in m.heatmaps.parameters()]


class PoiHeatmapHeadOptTrainer(PoiHeatmapTrainer):
    """``heatmap`` with the heatmap head in its own SGD group at ``head_lr_factor`` x nnU-Net's rate.

    ``head_lr_factor`` 10 (0.1 against 0.01): the head's gradients are one to two orders below the
    backbone's under the peak-counted MSE, and its two 1x1 layers hold no normalisation to amplify a
    too-large step into the rest of the network; the global gradient clipping at 12 stays the guard.
    """

    deep_supervised_heatmaps = False  # the change alone, as compared (benchmarks/learning_speed.py)

    head_lr_factor: float = 10.0

    def configure_optimizers(self) -> Tuple[torch.optim.Optimizer, ProportionalPolyLRScheduler]:
        head = heatmap_head_parameters(self.network)
        ids = {id(p) for p in head}
        rest = [p for p in self.network.parameters() if id(p) not in ids]
        groups = [{"params": rest, "lr": self.initial_lr},
                  {"params": head, "lr": self.initial_lr * self.head_lr_factor}]
        optimizer = torch.optim.SGD(groups, self.initial_lr, weight_decay=self.weight_decay, momentum=0.99,
                                    nesterov=True)
        return optimizer, ProportionalPolyLRScheduler(optimizer, self.num_epochs)

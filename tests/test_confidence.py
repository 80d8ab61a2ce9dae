"""One confidence scale for every trainer (poi_nnunet.inference.confidence): a sharp single peak is near 1,
a flat channel near 0, a two-way tie near 0, in the heatmap trainer's decoder and in coarse_refine's
predictor alike; coarse_refine reports every point it does not write, with the reason."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from poi_nnunet.channels import ChannelLayout
from poi_nnunet.coarse_refine_network import PointPrediction
from poi_nnunet.heatmaps import expected_coordinates, render_gaussian_heatmaps, spatial_softmax
from poi_nnunet.inference.coarse_refine import CoarseRefinePredictor
from poi_nnunet.inference.confidence import soft_argmax_confidence
from poi_nnunet.inference.decoding import decode_whole_image
from poi_nnunet.plan import PoiPlan

SIGMA = 1.5
AMPLITUDE = 2000.0  # coarse_refine: crafted logits of 20 are 1 % of it, as weak as a short run leaves them
PATCH = (20, 20, 20)


def _gaussians(shape, centres, amplitude: float, sigma: float = SIGMA) -> torch.Tensor:
    """Sum of Gaussians of ``amplitude`` at ``centres`` (voxels), one map ``shape``."""
    pts = torch.tensor([centres], dtype=torch.float32)
    maps = render_gaussian_heatmaps(pts, torch.ones(1, len(centres), dtype=torch.bool), tuple(shape), sigma, amplitude)
    return maps[0].sum(0)


def _sharp_flat_tie(shape, amplitude: float) -> torch.Tensor:
    """``(3, *shape)``: one clear peak, a flat channel, two equal peaks far apart (a tie)."""
    mid = [s / 2 - 0.6 for s in shape]
    low, high = list(mid), list(mid)
    low[0], high[0] = shape[0] * 0.2, shape[0] * 0.75
    return torch.stack([_gaussians(shape, [mid], amplitude), torch.zeros(shape),
                        _gaussians(shape, [low, high], amplitude)])


def test_soft_argmax_confidence_is_the_mass_near_the_point() -> None:
    # hand-made: 0.6 on the point's voxel, 0.3 one voxel (under 2 sigma) away, 0.1 far away
    probs = torch.zeros(1, 1, 9, 9)
    probs[0, 0, 4, 4], probs[0, 0, 4, 5], probs[0, 0, 0, 8] = 0.6, 0.3, 0.1
    conf = soft_argmax_confidence(probs, torch.tensor([[[4.0, 4.0]]]), (1.0, 1.0), radius_sigmas=2.0)
    assert float(conf) == pytest.approx(0.9)
    # anisotropic: with sigma 0.4 voxel along x, the 0.3 voxel is 2.5 sigmas out
    conf = soft_argmax_confidence(probs, torch.tensor([[[4.0, 4.0]]]), (1.0, 0.4), radius_sigmas=2.0)
    assert float(conf) == pytest.approx(0.6)


def test_soft_argmax_confidence_sharp_flat_tie() -> None:
    logits = _sharp_flat_tie(PATCH, 20.0)[None]
    probs = spatial_softmax(logits, 1.0)
    conf = soft_argmax_confidence(probs, expected_coordinates(probs), (SIGMA,) * 3)[0].numpy()
    assert conf[0] > 0.95
    # flat: the share of the crop's voxels within 2 sigmas (3 voxels) of the centre, counted here
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in PATCH], indexing="ij"), -1)
    centre = (np.array(PATCH) - 1) / 2
    share = np.mean(np.sum((grid - centre) ** 2, -1) <= (2 * SIGMA) ** 2)
    assert conf[1] == pytest.approx(share, abs=1e-6) and conf[1] < 0.02
    assert conf[2] < 0.02


def test_heatmap_trainer_sharp_flat_tie() -> None:
    amplitude = 10.0
    shape = (40, 44)
    heatmaps = _sharp_flat_tie(shape, amplitude)[:, None]  # (3, 1, y, x)
    layout = ChannelLayout("whole_image", ((0, 1), (0, 2), (0, 3)), ("a", "b", "c"), (-1,))
    everything = decode_whole_image(heatmaps, layout, amplitude, min_confidence=0.0, sigma_voxels=(SIGMA, SIGMA))
    conf = dict(zip(everything.pois.tolist(), everything.confidence.tolist()))
    assert conf[1] > 0.95
    assert conf.get(2, 0.0) < 0.05 and conf.get(3, 0.0) < 0.05
    default = decode_whole_image(heatmaps, layout, amplitude, sigma_voxels=(SIGMA, SIGMA))
    assert default.pois.tolist() == [1]
    assert {d.poi: d.reason for d in default.dropped} == {2: "below_min_confidence", 3: "ambiguous"}


class _CraftedCrops(nn.Module):
    """A coarse_refine network whose every crop shows the same crafted heatmap logits ``(C, *patch)``; its
    coarse (and refined) points are their soft-argmax, as the real network's coarse stage."""

    beta = 1.0

    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.logits = logits

    def forward_points(self, x: torch.Tensor, structure: torch.Tensor) -> PointPrediction:
        heat = self.logits[None].expand(len(x), *self.logits.shape)
        coarse = expected_coordinates(spatial_softmax(heat, self.beta))
        return PointPrediction(heat, heat, coarse, coarse, coarse, torch.zeros(len(x), len(self.logits), 1))


def _crafted_predictor(logits: torch.Tensor, layers=(7, 8), min_confidence: float = 0.1) -> CoarseRefinePredictor:
    channels = len(logits)
    predictor = CoarseRefinePredictor(device=torch.device("cpu"), use_mirroring=False, allow_tqdm=False,
                                      min_confidence=min_confidence)
    predictor.network = _CraftedCrops(logits)
    predictor.list_of_parameters = [{}]
    predictor.configuration_manager = SimpleNamespace(patch_size=list(PATCH))
    predictor.layout = ChannelLayout("structure_with_neighbours", tuple((-1, 100 + c) for c in range(channels)),
                                     tuple(str(c) for c in range(channels)), tuple(layers))
    predictor.poi_plan = PoiPlan("structure_with_neighbours", (20.0,) * 3, (SIGMA,) * 3, AMPLITUDE, 3.0, (4, 4, 4),
                                 (1.5, 3.0), (0.1, 0.2),
                                 tuple({"structure": None, "poi": 100 + c, "name": str(c)} for c in range(channels)))
    return predictor


def test_coarse_refine_sharp_flat_tie_and_the_reasons_of_what_it_drops() -> None:
    # logits of 1 % of the amplitude (a short run) gave every point 0.01 under the old rule (logit peak /
    # amplitude); the soft-argmax's mass is what decides now
    predictor = _crafted_predictor(_sharp_flat_tie(PATCH, 20.0))
    _, conf = predictor.crop_points(torch.zeros(1, 1, *PATCH), torch.zeros(1, dtype=torch.long))
    assert conf[0, 0] > 0.95 and conf[0, 1] < 0.02 and conf[0, 2] < 0.02

    seg = np.zeros((30, 30, 30), dtype=int)
    seg[10:16, 12:18, 9:20] = 7  # structure 8 is not segmented
    points = predictor.predict_points(torch.zeros(1, 30, 30, 30), seg)
    assert list(zip(points.structures.tolist(), points.pois.tolist())) == [(7, 100)]
    dropped = {(d.structure, d.poi): d.reason for d in points.dropped}
    assert dropped == {(7, 101): "below_min_confidence", (7, 102): "below_min_confidence",
                       (8, 100): "structure_not_segmented", (8, 101): "structure_not_segmented",
                       (8, 102): "structure_not_segmented"}

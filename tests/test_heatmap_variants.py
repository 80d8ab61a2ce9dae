"""The heatmap trainer's training variants (issue 10, section 2): their losses on hand-made tensors,
and one training step of each on tiny planned datasets."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Dict, Sequence

import numpy as np
import pytest
import torch

from poi_nnunet.batch import PoiBatch
from poi_nnunet.channels import ChannelLayout
from poi_nnunet.heatmaps import render_gaussian_heatmaps
from poi_nnunet.plan import PoiPlan
from trainers.heatmap_variants import VARIANTS
from trainers.heatmap_variants.coord import HeatmapCoordinateLoss, js_divergence, peak_holding_beta
from trainers.heatmap_variants.scn import SpatialConfiguration, SpatialConfigurationHeatmaps
from trainers.heatmap_variants.sigma import AnnealedSigmaHeatmapLoss
from tests.factories import planned_xray_and_spine, use_nnunet_folders
from trainers.heatmap_loss import DeepSupervisedHeatmapLoss

AMPLITUDE = 10.0


def whole_image(channels: int, dim: int, sigma: float = 1.5) -> tuple:
    plan = PoiPlan("whole_image", (50.0,) * dim, (sigma,) * dim, AMPLITUDE, 3.0, (8,) * dim, (1.5, 3.0), (0.1, 0.2),
                   tuple({"structure": 1, "poi": c + 1, "name": str(c)} for c in range(channels)))
    layout = ChannelLayout.from_channels("whole_image", plan.poi_channels, {})
    return plan, layout


def structure(channels: int, layers: Sequence[int], dim: int, sigma: float = 1.5) -> tuple:
    plan = PoiPlan("structure_with_neighbours", (50.0,) * dim, (sigma,) * dim, AMPLITUDE, 3.0, (8,) * dim,
                   (1.5, 3.0), (0.1, 0.2),
                   tuple({"structure": None, "poi": c + 1, "name": str(c)} for c in range(channels)))
    layout = ChannelLayout("structure_with_neighbours", tuple((-1, c + 1) for c in range(channels)),
                           tuple(str(c) for c in range(channels)), tuple(layers))
    return plan, layout


def batch_of(keypoints: torch.Tensor, valid: torch.Tensor, spacing: Sequence[float], shape: Sequence[int],
             progress: float = 1.0) -> PoiBatch:
    """A batch whose ``inside`` is read off the points and ``shape`` (the patch)."""
    b, _, d = keypoints.shape
    size = torch.tensor(shape, dtype=keypoints.dtype)
    inside = torch.isfinite(keypoints).all(-1) & ((keypoints >= 0) & (keypoints <= size - 1)).all(-1)
    return PoiBatch(keypoints, inside, valid, torch.zeros(b, dtype=torch.long),
                    torch.tensor([list(spacing)] * b, dtype=torch.float32), progress)


def peaks(centres: Sequence[Sequence[float]], shape: Sequence[int], sigma: float = 1.5) -> torch.Tensor:
    """``(1, 1, *shape)``: the sum of target-shaped peaks at ``centres``."""
    pts = torch.tensor([list(c) for c in centres], dtype=torch.float32)[None]
    maps = render_gaussian_heatmaps(pts, torch.ones(1, len(centres), dtype=torch.bool), shape, sigma, AMPLITUDE)
    return maps.sum(1, keepdim=True)


# ----------------------------------------------------------------------------------------------- heatmap_coord
def test_inverse_temperature_follows_its_formula_and_puts_95_percent_on_a_target_peak() -> None:
    assert peak_holding_beta(10.0, (112, 128)) == pytest.approx(math.log(19 * 112 * 128) / 10.0)
    assert peak_holding_beta(10.0, (112, 128)) == pytest.approx(1.2515, abs=1e-4)  # ln(272384) = 12.515
    for shape in ((40, 48), (24, 20, 28)):
        centre = [s / 2 + 0.3 for s in shape]
        target = peaks([centre], shape)
        near = (torch.stack(torch.meshgrid(*[torch.arange(s, dtype=torch.float32) for s in shape], indexing="ij"))
                - torch.tensor(centre).reshape(-1, *([1] * len(shape)))).norm(dim=0) <= 3 * 1.5
        beta = peak_holding_beta(AMPLITUDE, shape)
        mass = torch.softmax(beta * target.flatten(), 0).reshape(shape)[near].sum()
        assert mass > 0.95
        half = torch.softmax(0.5 * beta * target.flatten(), 0).reshape(shape)[near].sum()
        assert half < 0.95  # the bound is not vacuous: a much cooler softmax leaks to the background


def test_js_divergence_against_hand_values() -> None:
    log = lambda *p: torch.tensor([[list(p)]], dtype=torch.float64).clamp_min(1e-300).log()
    assert float(js_divergence(log(1.0, 0.0), log(0.0, 1.0))) == pytest.approx(math.log(2.0))
    assert float(js_divergence(log(0.3, 0.7), log(0.3, 0.7))) == pytest.approx(0.0, abs=1e-12)
    # P = (1, 0), Q = (1/2, 1/2): M = (3/4, 1/4); KL(P|M) = ln 4/3, KL(Q|M) = (ln 2/3 + ln 2) / 2
    hand = 0.5 * (math.log(4 / 3) + 0.5 * (math.log(2 / 3) + math.log(2.0)))
    assert float(js_divergence(log(1.0, 0.0), log(0.5, 0.5))) == pytest.approx(hand, rel=1e-9)


@pytest.mark.parametrize("shape", [(32, 36), (20, 22, 24)])
def test_a_second_peak_costs_more_and_more_the_farther_it_is(shape) -> None:
    dim = len(shape)
    plan, layout = whole_image(1, dim)
    loss = HeatmapCoordinateLoss(None, layout, plan, 0, heatmap_weight=1.0, coordinate_weight=0.2,
                                 divergence_weight=1.0)
    right = [6.0] * dim
    batch = batch_of(torch.tensor([[right]]), torch.ones(1, 1, dtype=torch.bool), (1.0,) * dim, shape)

    def terms(*centres):
        return loss(peaks(centres, shape), None, batch).terms

    alone = terms(right)
    near = terms(right, [6.0] * (dim - 1) + [16.0])
    far = terms(right, [s - 4.0 for s in shape])
    assert alone["coord_loss"] < 1e-3 and alone["js_loss"] < 1e-3  # the target itself is the optimum
    for key in ("coord_loss", "js_loss"):
        assert near[key] > alone[key] + 0.1 and far[key] > alone[key] + 0.1
    assert far["coord_loss"] > near["coord_loss"] + 1.0  # the coordinate term grows with the distance
    assert far["js_loss"] == pytest.approx(near["js_loss"], abs=0.02)  # the divergence counts it wherever it is


def test_coordinate_term_is_an_l1_distance_in_the_samples_millimetres() -> None:
    """Peak and target on one row (y symmetric about the patch centre, so no y error), 3 voxels apart along x:
    the cost is that distance times the sample's mm per x step, shortened by at most the 5 % of mass the
    softmax leaves on the background; the y spacing does not enter."""
    shape = (32, 32)
    plan, layout = whole_image(1, 2)
    loss = HeatmapCoordinateLoss(None, layout, plan, 0, 1.0, coordinate_weight=0.2, divergence_weight=1.0)
    pred = peaks([[15.5, 15.5]], shape)
    one = torch.ones(1, 1, dtype=torch.bool)

    def run(spacing, weight_loss=loss):
        return weight_loss(pred, None, batch_of(torch.tensor([[[15.5, 18.5]]]), one, spacing, shape))

    half = run((1.0, 0.5))
    assert 0.95 * 1.5 <= half.terms["coord_loss"] <= 1.5
    assert run((1.0, 1.0)).terms["coord_loss"] == pytest.approx(2 * half.terms["coord_loss"], rel=1e-5)
    assert run((4.0, 0.5)).terms["coord_loss"] == pytest.approx(half.terms["coord_loss"], rel=1e-5)
    assert half.terms["coord_mm"] == pytest.approx(half.terms["coord_loss"], rel=1e-5)  # one axis: L1 = Euclidean
    no_coord = HeatmapCoordinateLoss(None, layout, plan, 0, 1.0, coordinate_weight=0.0, divergence_weight=1.0)
    assert float(half.total - run((1.0, 0.5), no_coord).total) == pytest.approx(0.2 * half.terms["coord_loss"],
                                                                                rel=1e-4)


@pytest.mark.parametrize("shape", [(24, 28), (12, 14, 16)])
def test_invalid_channels_get_exactly_zero_gradient_and_no_nan(shape) -> None:
    dim = len(shape)
    plan, layout = whole_image(3, dim)
    loss = HeatmapCoordinateLoss(None, layout, plan, 0, 1.0, 0.2, 1.0)
    keypoints = torch.tensor([[[5.0] * dim, [float("nan")] * dim, [-30.0] * dim]])  # known, unknown, far outside
    valid = torch.tensor([[True, False, True]])
    pred = torch.randn(1, 3, *shape, requires_grad=True)
    result = loss(pred, None, batch_of(keypoints, valid, (1.0,) * dim, shape))
    result.total.backward()
    assert torch.isfinite(result.total) and torch.isfinite(pred.grad).all()
    assert torch.count_nonzero(pred.grad[0, 1]) == 0
    assert torch.count_nonzero(pred.grad[0, 0]) > 0 and torch.count_nonzero(pred.grad[0, 2]) > 0
    nothing = loss(pred, None, batch_of(keypoints, torch.zeros(1, 3, dtype=torch.bool), (1.0,) * dim, shape))
    assert float(nothing.total.detach()) == 0.0


def test_structure_mode_uses_only_the_divergence_which_accepts_several_peaks() -> None:
    shape = (16, 18, 20)
    plan, layout = structure(1, (3, 4), 3)
    loss = HeatmapCoordinateLoss(None, layout, plan, 0, 1.0, 0.2, 1.0)
    two = torch.tensor([[[4.0, 5.0, 6.0], [11.0, 12.0, 13.0]]])  # slot (layer 0, channel 0), (layer 1, channel 0)
    batch = batch_of(two, torch.ones(1, 1, dtype=torch.bool), (1.0, 1.0, 1.0), shape)
    both = loss(peaks([[4.0, 5.0, 6.0], [11.0, 12.0, 13.0]], shape), None, batch).terms
    one = loss(peaks([[4.0, 5.0, 6.0]], shape), None, batch).terms
    assert "coord_loss" not in both
    assert both["js_loss"] < 0.01 and one["js_loss"] > both["js_loss"] + 0.1


# ----------------------------------------------------------------------------------------------- heatmap_sigma
@pytest.mark.parametrize("progress, sigma", [(0.0, 5.0), (0.25, 3.5), (0.5, 2.0), (1.0, 2.0)])
def test_annealed_targets_have_the_scheduled_width_and_amplitude(progress: float, sigma: float) -> None:
    """Planned sigma 2 voxels, start factor 2.5, narrowed by half-time: 5, 3.5, 2, 2. Read off the
    rendered target: the peak keeps the amplitude, and 3 voxels along x it is 10 exp(-9 / (2 sigma^2))
    (8.353, 6.926, 3.247, 3.247)."""
    plan, layout = whole_image(1, 2, sigma=2.0)
    loss = AnnealedSigmaHeatmapLoss(None, layout, plan, 0, 1.0, start_factor=2.5, until=0.5)
    batch = batch_of(torch.tensor([[[20.0, 20.0]]]), torch.ones(1, 1, dtype=torch.bool), (1.0, 1.0), (40, 40),
                     progress)
    target, _ = loss.heatmap_targets(batch, (40, 40))
    assert float(target[0, 0, 20, 20]) == pytest.approx(10.0)
    assert float(target[0, 0, 20, 23]) == pytest.approx(10.0 * math.exp(-9.0 / (2 * sigma ** 2)), rel=1e-5)
    assert float(target[0, 0, 17, 20]) == pytest.approx(10.0 * math.exp(-9.0 / (2 * sigma ** 2)), rel=1e-5)


def test_annealed_peak_normaliser_follows_the_sigma_in_use() -> None:
    """All-zero prediction: a whole peak costs 1 at any width, a peak cut in half by the border about half
    (0.556 for sigma 5: the half-Gaussian's voxel sum, centre column included, over a whole peak's energy),
    not the 1 it would cost against the planned, narrower peak's energy."""
    plan, layout = whole_image(1, 2, sigma=2.0)
    loss = AnnealedSigmaHeatmapLoss(None, layout, plan, 0, 1.0, start_factor=2.5, until=0.5)
    zero = torch.zeros(1, 1, 48, 48)
    one = torch.ones(1, 1, dtype=torch.bool)
    for progress in (0.0, 0.25, 1.0):
        whole = loss(zero, None, batch_of(torch.tensor([[[24.0, 24.0]]]), one, (1.0, 1.0), (48, 48), progress))
        assert whole.terms["poi_loss"] == pytest.approx(1.0, abs=1e-3)
    cut = loss(zero, None, batch_of(torch.tensor([[[24.0, 0.0]]]), one, (1.0, 1.0), (48, 48), 0.0))
    assert cut.terms["poi_loss"] == pytest.approx(0.556, abs=0.01)


# ----------------------------------------------------------------------------------------------- heatmap_scn
class Constant(torch.nn.Module):
    def __init__(self, value: float):
        super().__init__()
        self.value = value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.full_like(x, self.value)


@pytest.mark.parametrize("conv, shape", [(torch.nn.Conv2d, (22, 19)), (torch.nn.Conv3d, (10, 13, 9))])
def test_spatial_configuration_multiplies_the_local_heatmaps(conv, shape) -> None:
    """Sizes not divisible by the pooling factor come back whole; the product form: a zero configuration
    zeros the heatmaps, a configuration of 2 doubles them, and the untrained branch (last layer zero) is 1."""
    torch.manual_seed(0)
    local = conv(6, 3, kernel_size=1)
    x = torch.randn(2, 6, *shape)
    configuration = SpatialConfiguration(conv, 3, 8, kernel_size=3, layers=3, pool=4)
    heads = SpatialConfigurationHeatmaps(local, configuration)
    with torch.no_grad():
        out = heads(x)
        assert out.shape == (2, 3, *shape)
        torch.testing.assert_close(out, local(x))
        heads.configuration = Constant(0.0)
        assert torch.count_nonzero(heads(x)) == 0
        heads.configuration = Constant(2.0)
        torch.testing.assert_close(heads(x), 2 * local(x))
    with torch.no_grad():  # a trained branch: values in (0, 2), one map per channel at the input's size
        for p in configuration.parameters():
            p.normal_(0.0, 0.1)
        config = configuration(local(x))
    assert config.shape == (2, 3, *shape) and bool((config > 0).all() and (config < 2).all())
    assert float(config.std()) > 0.01


def test_spatial_configuration_suppresses_a_peak_its_branch_says_is_wrong() -> None:
    """The branch sees all channels: here it is wired to say 'channel 0 is not where channel 1 is'
    (a large negative weight from channel 1 to channel 0), and channel 0's peak there vanishes while its
    peak elsewhere stays."""
    configuration = SpatialConfiguration(torch.nn.Conv2d, 2, 2, kernel_size=1, layers=2, pool=4)
    with torch.no_grad():
        first, last = configuration.body[0], configuration.body[-1]
        first.weight.zero_(); first.bias.zero_(); last.bias.zero_()
        first.weight[1, 1] = 1.0  # feature 1 = channel 1 (pooled), passed by the LeakyReLU as it is
        last.weight.zero_()
        last.weight[0, 1] = -10.0  # configuration of channel 0 = 1 + tanh(-10 x channel 1)
    local = torch.zeros(1, 2, 32, 32)
    local[0, 0] = peaks([[8.0, 8.0], [24.0, 24.0]], (32, 32))[0, 0]  # channel 0: right (8, 8), wrong (24, 24)
    local[0, 1] = peaks([[24.0, 24.0]], (32, 32))[0, 0]  # channel 1 sits at (24, 24)
    heads = SpatialConfigurationHeatmaps(torch.nn.Identity(), configuration)
    with torch.no_grad():
        out = heads(local)
    assert float(out[0, 0, 8, 8]) == pytest.approx(10.0, rel=1e-3)
    assert float(out[0, 0, 24, 24]) < 0.1
    torch.testing.assert_close(out[0, 1], local[0, 1])


# ----------------------------------------------------------------------------------------------- heatmap_ds
def test_lower_resolution_targets_move_points_and_sigma_by_the_patch_ratio() -> None:
    """Full patch 32 x 32, point (10, 20), sigma 3. At 16 x 16 (ratio 1/2): point (4.75, 9.75), sigma 1.5, so
    voxel (5, 10) holds 10 exp(-(0.25^2 + 0.25^2) / (2 1.5^2)) = 9.727. At 8 x 8 (1/4): point (2.125, 4.625),
    sigma 0.75 floored to 1: voxel (2, 5) holds 10 exp(-(0.125^2 + 0.375^2) / 2) = 9.248."""
    plan, layout = whole_image(1, 2, sigma=3.0)
    loss = DeepSupervisedHeatmapLoss(None, layout, plan, 0, 1.0, min_sigma_voxels=1.0)
    batch = batch_of(torch.tensor([[[10.0, 20.0]]]), torch.ones(1, 1, dtype=torch.bool), (1.0, 1.0), (32, 32))
    half, sigma = loss.level_targets(batch, (32, 32), (16, 16))
    assert sigma == (1.5, 1.5)
    assert float(half[0, 0, 5, 10]) == pytest.approx(9.727, abs=1e-3)
    assert float(half[0, 0, 4, 10]) == pytest.approx(8.703, abs=1e-3)  # 10 exp(-(0.75^2 + 0.25^2) / 4.5)
    quarter, sigma = loss.level_targets(batch, (32, 32), (8, 8))
    assert sigma == (1.0, 1.0)
    assert float(quarter[0, 0, 2, 5]) == pytest.approx(9.248, abs=1e-3)


def test_the_plan_switches_lower_heatmap_heads_on_and_old_plans_keep_one_head() -> None:
    from dataclasses import replace

    from dynamic_network_architectures.architectures.unet import PlainConvUNet
    from torch import nn

    from poi_nnunet.heads import SegmentationAndHeatmaps
    from trainers.heatmap import PoiHeatmapTrainer
    from trainers.heatmap_variants.single import PoiHeatmapSingleTrainer

    old, _ = whole_image(3, 2)
    assert old.heatmap_deep_supervision is False  # a block without the key: the models trained on it
    new = replace(old, heatmap_deep_supervision=True)

    def lower_heads(cls, plan) -> int:
        net = PlainConvUNet(1, 3, (8, 16, 32), nn.Conv2d, 3, (1, 2, 2), 1, 2, 1, conv_bias=True,
                            norm_op=nn.InstanceNorm2d, nonlin=nn.LeakyReLU, deep_supervision=True)
        net = cls.add_poi_heads(net, plan, None, 1, 2)
        return sum(isinstance(layer, SegmentationAndHeatmaps) for layer in net.decoder.seg_layers[:-1])

    assert lower_heads(PoiHeatmapTrainer, old) == 0
    assert lower_heads(PoiHeatmapTrainer, new) == 1  # 3 stages: 2 decoder outputs, 1 below full resolution
    assert lower_heads(PoiHeatmapSingleTrainer, new) == 0


def test_deep_supervision_weights_halve_per_level_with_the_lowest_at_zero() -> None:
    """All-zero predictions at four levels, one whole peak each: 1 at full resolution (the heatmap trainer's
    term), then 1/2 + 1/4 + 0 from the lower levels."""
    plan, layout = whole_image(1, 2, sigma=2.0)
    loss = DeepSupervisedHeatmapLoss(None, layout, plan, 0, 1.0)
    batch = batch_of(torch.tensor([[[31.5, 31.5]]]), torch.ones(1, 1, dtype=torch.bool), (1.0, 1.0), (64, 64))
    outputs = [torch.zeros(1, 1, s, s, requires_grad=True) for s in (64, 32, 16, 8)]
    result = loss(outputs, None, batch)
    assert result.terms["poi_loss"] == pytest.approx(1.0, abs=1e-3)
    assert result.terms["poi_loss_ds"] == pytest.approx(0.75, abs=1e-3)
    assert float(result.total.detach()) == pytest.approx(1.75, abs=2e-3)
    result.total.backward()
    assert torch.count_nonzero(outputs[2].grad) > 0 and torch.count_nonzero(outputs[3].grad) == 0


# ----------------------------------------------------------------------------------------------- smoke
@pytest.fixture(scope="module")
def planned(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Path]:
    """Two tiny planned datasets: 506 X-ray (2D, whole image, with masks), 507 spine (3D, structure mode)."""
    return planned_xray_and_spine(tmp_path_factory.mktemp("variants"), 506, 507, xray_cases=3, spine_cases=3,
                                  spine_seed=3)


@pytest.fixture
def env(planned: Dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> Dict[str, Path]:
    use_nnunet_folders(planned, monkeypatch)
    return planned


@pytest.mark.parametrize("dataset, config", [("506", "2d"), ("507", "3d_fullres")])
@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_each_variant_builds_from_the_plans_and_takes_a_training_step(env, name: str, dataset: str,
                                                                      config: str) -> None:
    from poi_nnunet.trainer_factory import build_trainer

    torch.manual_seed(0)
    np.random.seed(0)
    trainer = build_trainer(dataset, config, name, "all", "poiPlans", device="cpu", epochs=4, iterations_per_epoch=1)
    trainer.initialize()
    dl_tr, _ = trainer.get_dataloaders()
    before = [p.detach().clone() for p in trainer.network.parameters()]
    out = trainer.train_step(next(dl_tr))
    assert np.isfinite(out["loss"]) and "poi_loss" in out
    expected = {"heatmap_coord": "js_loss", "heatmap_sigma": "sigma_voxels", "heatmap_ds": "poi_loss_ds"}
    assert name not in expected or expected[name] in out  # the variant's own term is in the step
    assert ("poi_loss_ds" in out) == (name == "heatmap_ds")  # the others are compared alone
    assert any(not torch.equal(a, p.detach()) for a, p in zip(before, trainer.network.parameters()))
    # the network poi_predict rebuilds from the plans takes the trained weights
    rebuilt = type(trainer).build_network_architecture(
        trainer.plans_manager, trainer.configuration_manager, trainer.num_input_channels,
        trainer.label_manager.num_segmentation_heads, enable_deep_supervision=False)
    rebuilt.load_state_dict(trainer.network.state_dict())


def test_headopt_head_group_keeps_ten_times_the_rate_through_the_poly_decay(env) -> None:
    from poi_nnunet.trainer_factory import build_trainer
    from trainers.heatmap_variants.headopt import heatmap_head_parameters

    trainer = build_trainer("506", "2d", "heatmap_headopt", "all", "poiPlans", device="cpu", epochs=4)
    trainer.initialize()
    rest, head = trainer.optimizer.param_groups
    assert {id(p) for p in head["params"]} == {id(p) for p in heatmap_head_parameters(trainer.network)}
    assert len(head["params"]) == 4  # HeatmapHead: two 1x1 convolutions with bias
    assert len(rest["params"]) + 4 == len(list(trainer.network.parameters()))
    trainer.lr_scheduler.step(2)  # what nnU-Net calls at the start of epoch 2 of 4
    assert rest["lr"] == pytest.approx(0.01 * 0.5 ** 0.9)  # 0.005359
    assert head["lr"] == pytest.approx(0.1 * 0.5 ** 0.9)
    trainer.lr_scheduler.step(0)
    assert (rest["lr"], head["lr"]) == (pytest.approx(0.01), pytest.approx(0.1))


def test_trainer_hands_the_loss_its_training_progress(env) -> None:
    from poi_nnunet.trainer_factory import build_trainer

    trainer = build_trainer("506", "2d", "heatmap_sigma", "all", "poiPlans", device="cpu", epochs=4)
    trainer.initialize()
    dl_tr, _ = trainer.get_dataloaders()
    batch = next(dl_tr)
    trainer.current_epoch = 1
    assert trainer._on_device(batch)[2].progress == pytest.approx(0.25)
    trainer.current_epoch = 3
    assert trainer.loss.sigma_voxels(trainer._on_device(batch)[2]) == pytest.approx(
        tuple(s for s in trainer.poi_plan.heatmap_sigma_voxels))


def test_new_plans_supervise_heatmaps_deeply_and_the_heatmap_trainer_follows(env) -> None:
    from poi_nnunet.trainer_factory import build_trainer

    trainer = build_trainer("506", "2d", "heatmap", "all", "poiPlans", device="cpu", epochs=1, iterations_per_epoch=1)
    assert trainer.poi_plan.heatmap_deep_supervision is True
    trainer.initialize()
    out = trainer.train_step(next(trainer.get_dataloaders()[0]))
    assert "poi_loss_ds" in out and np.isfinite(out["poi_loss_ds"])

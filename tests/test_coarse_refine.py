"""coarse_refine: the heads (soft-argmax gradient, border patches), the masked loss, the loader's centre
layer, and poi_plan_and_preprocess -> poi_train -> poi_predict -> poi_evaluate on a tiny synthetic spine."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Dict

import numpy as np
import pytest
import torch
from torch import nn

from poi_nnunet.batch import PoiBatch
from poi_nnunet.channels import ChannelLayout
from poi_nnunet.coarse_refine_network import CoarseRefineNetwork, extract_patches
from poi_nnunet.plan import PoiPlan
from trainers.coarse_refine_loss import CoarseRefineLoss
from tests.factories import use_nnunet_folders

SPINE = "Dataset501_SyntheticSpine"
MODEL = "PoiCoarseRefineTrainer__poiPlans__3d_fullres"


def tiny_network(num_seg: int = 2, channels: int = 3, structures: int = 4, refine=(4, 4, 4)) -> CoarseRefineNetwork:
    from dynamic_network_architectures.architectures.unet import PlainConvUNet

    backbone = PlainConvUNet(1, 3, (4, 8, 16), nn.Conv3d, 3, (1, 2, 2), 1, num_seg + channels, 1, True,
                             nn.InstanceNorm3d, {"affine": True}, None, None, nn.LeakyReLU, {"inplace": True},
                             deep_supervision=False)
    return CoarseRefineNetwork(backbone, num_seg, channels, structures, 1, list(refine))


# ----------------------------------------------------------------------------------------------- patches
def test_patches_inside_match_the_volume_and_are_zero_padded_at_and_beyond_the_border() -> None:
    volume = torch.randn(2, 3, 6, 7, 8, dtype=torch.float64) + 5.0  # no zeros inside the volume
    centres = torch.tensor([[[3.0, 3.0, 4.0], [0.0, 0.0, 0.0], [5.0, 6.0, 7.0], [-40.0, 100.0, 3.0]]] * 2,
                           dtype=torch.float64)
    patches = extract_patches(volume, centres, (3, 3, 3))
    assert patches.shape == (2, 4, 3, 3, 3, 3)
    assert torch.isfinite(patches).all()
    torch.testing.assert_close(patches[:, 0], volume[:, :, 2:5, 2:5, 3:6])
    # at the corner voxel: the part inside is the volume, the part outside is zero
    torch.testing.assert_close(patches[:, 1, :, 1:, 1:, 1:], volume[:, :, :2, :2, :2])
    assert patches[:, 1, :, 0].abs().max() < 1e-9 and patches[:, 1, :, :, 0].abs().max() < 1e-9
    torch.testing.assert_close(patches[:, 2, :, :2, :2, :2], volume[:, :, 4:, 5:, 6:])
    assert patches[:, 2, :, 2].abs().max() < 1e-9
    assert (patches[:, 3] == 0).all()  # entirely outside
    # even sizes: the centre lies between the middle voxels; 2D volumes work the same way
    even = extract_patches(volume, centres[:, :1] + 0.5, (4, 4, 4))
    torch.testing.assert_close(even[:, 0], volume[:, :, 2:6, 2:6, 3:7])
    flat = extract_patches(volume[:, :, 0], torch.tensor([[[0.0, 7.0]]] * 2, dtype=torch.float64), (4, 2))
    assert flat.shape == (2, 1, 3, 4, 2) and torch.isfinite(flat).all()


def test_refinement_patches_of_points_at_the_border_give_finite_points() -> None:
    torch.manual_seed(0)
    net = tiny_network().eval()
    x = torch.randn(1, 1, 8, 8, 8)
    with torch.no_grad():
        out = net.forward_points(x, torch.tensor([0]))
    assert torch.isfinite(out.refined).all() and out.refined.shape == (1, 3, 3)
    patches = extract_patches(torch.ones(1, 1, 8, 8, 8), torch.tensor([[[0.0, 0.0, 7.0]]]),
                              net.refiner.refine_patch_size)
    assert patches.shape == (1, 1, 1, 4, 4, 4)
    assert 0 < float(patches.sum()) < 64


# ----------------------------------------------------------------------------------------------- gradients
def test_coordinate_losses_reach_the_backbone_through_soft_argmax_and_the_refinement() -> None:
    torch.manual_seed(0)
    net = tiny_network()
    net.train()
    x = torch.randn(2, 1, 16, 16, 16)
    out = net.forward_points(x, torch.tensor([1, -1]))
    assert out.coarse.shape == out.refined.shape == (2, 3, 3)
    assert out.features.shape == (2, 3, 4)
    target = torch.full((2, 3, 3), 4.0)
    first_conv = net.backbone.encoder.stages[0][0].convs[0].conv.weight
    # coarse loss alone: gradient through the soft-argmax into the backbone and the temperature
    (out.coarse - target).abs().sum().backward(retain_graph=True)
    assert first_conv.grad is not None and float(first_conv.grad.abs().sum()) > 0
    assert net.log_beta.grad is not None and float(net.log_beta.grad.abs()) > 0
    assert net.refiner.offset.weight.grad is None or float(net.refiner.offset.weight.grad.abs().sum()) == 0
    net.zero_grad(set_to_none=True)
    # the offset head starts at zero (refined = coarse), so only it learns on the first step ...
    (out.refined - target).abs().sum().backward(retain_graph=True)
    assert float(net.refiner.offset.weight.grad.abs().sum()) > 0 and float(first_conv.grad.abs().sum()) == 0
    net.zero_grad(set_to_none=True)
    with torch.no_grad():  # ... as after that step
        net.refiner.offset.weight.normal_(std=0.1)
    out = net.forward_points(x, torch.tensor([1, -1]))
    # refined loss alone: the offset head, and (through patches of decoder features and pooled features)
    # the backbone
    (out.refined - target).abs().sum().backward()
    assert float(net.refiner.offset.weight.grad.abs().sum()) > 0
    assert float(first_conv.grad.abs().sum()) > 0
    decoder_last = net.backbone.decoder.stages[-1]
    assert any(float(p.grad.abs().sum()) > 0 for p in decoder_last.parameters() if p.grad is not None)
    for p in net.parameters():
        assert p.grad is None or torch.isfinite(p.grad).all()


def test_offset_head_starts_as_identity_and_forward_is_nnunet_compatible() -> None:
    net = tiny_network().eval()
    x = torch.randn(1, 1, 8, 8, 8)
    with torch.no_grad():
        out = net.forward_points(x, torch.tensor([0]))
        torch.testing.assert_close(out.refined, out.coarse)
        plain = net(x)
        assert plain.shape == (1, 5, 8, 8, 8)
        with_points = net(x, torch.tensor([0]))  # what the trainer calls, through DDP or not
        torch.testing.assert_close(with_points.output, plain)
        torch.testing.assert_close(with_points.refined, out.refined)
    net.decoder.deep_supervision = True  # what nnU-Net's trainer toggles
    with torch.no_grad():
        assert isinstance(net(x), (list, tuple))


# ----------------------------------------------------------------------------------------------- masking
def _layout(layers=(7, 8), channels=3) -> ChannelLayout:
    return ChannelLayout("structure_with_neighbours", tuple((-1, 100 + c) for c in range(channels)),
                         tuple(str(c) for c in range(channels)), tuple(layers))


def _plan(channels: int = 3, sigma=(1.0, 1.0, 1.0)) -> PoiPlan:
    return PoiPlan("structure_with_neighbours", (20.0,) * 3, tuple(sigma), 10.0, 3.0, (4, 4, 4), (1.5, 3.0),
                   (0.1, 0.2), tuple({"structure": None, "poi": 100 + c, "name": str(c)} for c in range(channels)))


def _batch(keypoints, inside, centre, spacing=(1.5, 1.0, 2.0)) -> PoiBatch:
    b, s, d = keypoints.shape
    return PoiBatch(keypoints, inside, torch.ones(b, 3, dtype=torch.bool), torch.as_tensor(centre),
                    torch.tensor([list(spacing)] * b, dtype=torch.float32))


def test_targets_are_the_centre_structures_pois_and_absent_ones_are_masked() -> None:
    layout = _layout()
    loss = CoarseRefineLoss(None, layout, _plan(), 2, 1.0, 0.02, 0.02)
    keypoints = torch.tensor([[[2.0, 3.0, 4.0], [np.nan] * 3, [5.0, 5.0, 5.0],      # layer 0 (label 7)
                               [9.0, 9.0, 9.0], [1.0, 1.0, 1.0], [30.0, 3.0, 3.0]]])  # layer 1 (label 8)
    inside = torch.tensor([[True, False, True, True, True, False]])
    heat, valid = loss.heatmap_targets(_batch(keypoints, inside, [1]), (12, 12, 12))
    _, points_valid = loss.point_targets(_batch(keypoints, inside, [1]))
    assert valid.tolist() == [[True, True, True]]
    assert points_valid.tolist() == [[True, True, False]]  # the third left the patch
    peak = np.unravel_index(int(heat[0, 0].argmax()), (12, 12, 12))
    assert tuple(int(v) for v in peak) == (9, 9, 9)  # the centre's peak, not the neighbour's (2, 3, 4)
    heat0, valid0 = loss.heatmap_targets(_batch(keypoints, inside, [0]), (12, 12, 12))
    _, points_valid0 = loss.point_targets(_batch(keypoints, inside, [0]))
    assert valid0.tolist() == [[True, False, True]] and points_valid0.tolist() == [[True, False, True]]
    assert float(heat0[0, 1].abs().sum()) == 0
    none_valid = loss.heatmap_targets(_batch(keypoints, inside, [-1]), (12, 12, 12))[1]
    assert not none_valid.any() and not loss.point_targets(_batch(keypoints, inside, [-1]))[1].any()


def test_an_absent_poi_gets_no_gradient_and_leaves_the_loss_alone() -> None:
    """The loader marks an absent (or cleaned) POI as NaN: its heatmap channel, coarse and refined points
    get exactly zero gradient, and whatever the network predicts there does not change the loss."""
    torch.manual_seed(0)
    net = tiny_network().eval()  # eval: no jitter, deterministic
    x = torch.randn(1, 1, 12, 12, 12)
    loss = CoarseRefineLoss(None, _layout(layers=(7,)), _plan(), 2, 1.0, 0.02, 0.02)
    batch = _batch(torch.tensor([[[5.0, 6.0, 4.0], [float("nan")] * 3, [2.0, 2.0, 9.0]]]),
                   torch.tensor([[True, False, True]]), [0])
    out = net(x, torch.tensor([0]))
    value = loss(out, None, batch).total
    d_output, d_coarse, d_refined = torch.autograd.grad(value, [out.output, out.coarse, out.refined])
    assert float(d_output[0, 2 + 1].abs().sum()) == 0  # heatmap channel of the absent POI (after 2 seg channels)
    assert float(d_output[0, 2 + 0].abs().sum()) > 0 and float(d_output[0, 2 + 2].abs().sum()) > 0
    assert float(d_coarse[0, 1].abs().sum()) == 0 and float(d_refined[0, 1].abs().sum()) == 0
    assert float(d_coarse[0, 0].abs().sum()) > 0
    # whatever the network predicts for the absent POI, the loss is the same
    changed = type(out)(out.output.detach().clone(), out.heatmaps, out.coarse.detach().clone(), out.centres,
                        out.refined.detach().clone(), out.features)
    changed.output[0, 3] += 5.0
    changed.coarse[0, 1] += 7.0
    changed.refined[0, 1] -= 3.0
    assert float(loss(changed, None, batch).total) == pytest.approx(float(value.detach()), abs=1e-5)
    # and the known ones do matter
    moved = _batch(torch.tensor([[[0.0, 0.0, 0.0], [float("nan")] * 3, [2.0, 2.0, 9.0]]]),
                   torch.tensor([[True, False, True]]), [0])
    assert float(loss(out, None, moved).total.detach()) != pytest.approx(float(value.detach()), abs=1e-6)


def test_wing_loss_counts_millimetres_of_the_sample_after_scaling() -> None:
    """The same one-voxel error costs what its millimetres cost: twice the patch spacing, the larger loss."""
    torch.manual_seed(0)
    net = tiny_network().eval()
    x = torch.randn(1, 1, 12, 12, 12)
    layout = _layout(layers=(7,))
    loss = CoarseRefineLoss(None, layout, _plan(), 2, 0.0, 1.0, 0.0)
    out = net(x, torch.tensor([0]))
    truth = out.coarse.detach() + torch.tensor([1.0, 0.0, 0.0])  # one voxel off along axis 0
    inside = torch.ones(1, 3, dtype=torch.bool)
    fine = loss(out, None, _batch(truth, inside, [0], spacing=(1.0, 1.0, 1.0))).terms
    coarse = loss(out, None, _batch(truth, inside, [0], spacing=(3.0, 1.0, 1.0))).terms
    assert fine["coarse_mm"] == pytest.approx(1.0, abs=1e-5) and coarse["coarse_mm"] == pytest.approx(3.0, abs=1e-5)
    wing = lambda mm: 10.0 * np.log1p(mm / 2.0)  # Wing(w=10, epsilon=2) below w, summed over axes
    assert fine["coarse_loss"] == pytest.approx(wing(1.0), rel=1e-4)
    assert coarse["coarse_loss"] == pytest.approx(wing(3.0), rel=1e-4)


# ----------------------------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Path]:
    from dataset_conversion.synthetic_spine import write_spine_dataset
    from poi_nnunet.cli.plan_and_preprocess import main as plan_main
    from poi_nnunet.cli.train import main as train_main

    base = tmp_path_factory.mktemp("coarse_refine")
    env = {"nnUNet_raw": base / "raw", "nnUNet_preprocessed": base / "pre", "nnUNet_results": base / "res"}
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            v.mkdir()
            mp.setenv(k, str(v))
        write_spine_dataset(env["nnUNet_raw"] / SPINE, num_cases=3, num_test=1, seed=3, shape=(40, 24, 24))
        assert plan_main(["-d", "501", "-c", "3d_fullres", "-np", "1", "--no_pbar"]) == 0
        mp.setenv("nnUNet_n_proc_DA", "0")
        mp.setenv("nnUNet_def_n_proc", "1")
        torch.manual_seed(0)
        np.random.seed(0)  # the loaders' crops and augmentation (no worker processes with nnUNet_n_proc_DA=0)
        assert train_main(["501", "3d_fullres", "coarse_refine", "-device", "cpu", "-f", "all", "--epochs", "2",
                           "--iterations_per_epoch", "2", "--no_validation"]) == 0
    return env


@pytest.fixture
def env(trained: Dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> Dict[str, Path]:
    use_nnunet_folders(trained, monkeypatch)
    return trained


def test_checkpoint_loads_into_the_network_rebuilt_from_plans(env) -> None:
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from trainers.coarse_refine import PoiCoarseRefineTrainer

    model = env["nnUNet_results"] / SPINE / MODEL
    plans = PlansManager(json.loads((model / "plans.json").read_text()))
    dataset_json = json.loads((model / "dataset.json").read_text())
    config = plans.get_configuration("3d_fullres")
    network = PoiCoarseRefineTrainer.build_network_architecture(
        plans, config, determine_num_input_channels(plans, config, dataset_json),
        plans.get_label_manager(dataset_json).num_segmentation_heads, enable_deep_supervision=False)
    checkpoint = torch.load(model / "fold_all" / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert checkpoint["trainer_name"] == "PoiCoarseRefineTrainer"
    network.load_state_dict(checkpoint["network_weights"])  # strict
    assert any(k.startswith("refiner.transformer") for k in checkpoint["network_weights"])
    assert "log_beta" in checkpoint["network_weights"]


def test_loader_centres_crops_on_a_structure_and_names_its_layer(env) -> None:
    from poi_nnunet.trainer_factory import build_trainer

    trainer = build_trainer("501", "3d_fullres", "coarse_refine", "all", "poiPlans", device="cpu")
    trainer.initialize()
    dl_tr, _ = trainer.get_dataloaders()
    batch = next(dl_tr)
    layers = batch["centre_layer"]
    assert layers.shape == (trainer.batch_size,) and (layers >= 0).all()
    centre = np.array(trainer.configuration_manager.patch_size) // 2
    for j, layer in enumerate(layers.tolist()):
        label = trainer.poi_layout.layers[layer]
        seg = batch["target"][0][j, 0].numpy()
        assert (seg == label).any()  # the centre structure is in view
        pts = batch["keypoints"][j].reshape(trainer.poi_layout.num_layers, -1, 3)[layer]
        mean = np.nanmean(pts.numpy(), axis=0)
        assert np.all(np.abs(mean - centre) < np.array(trainer.configuration_manager.patch_size) / 2)
    # the end-of-training validation builds the coarse_refine predictor from the trainer
    from poi_nnunet.inference.coarse_refine import CoarseRefinePredictor

    assert isinstance(trainer.predictor_class.from_trainer(trainer), CoarseRefinePredictor)


def test_poi_predict_and_poi_evaluate_with_coarse_refine(env, tmp_path: Path) -> None:
    import SimpleITK as sitk

    from poi_nnunet.cli.evaluate import main as evaluate_main
    from poi_nnunet.cli.predict import main as predict_main
    from poi_nnunet.geometry import ImageGeometry
    from poi_nnunet.markups import read_markups_json
    from poi_nnunet.pois import read_poi_file

    raw = env["nnUNet_raw"] / SPINE
    out = tmp_path / "out"
    assert predict_main(["-i", str(raw / "imagesTs"), "-o", str(out), "-d", "501", "-c", "3d_fullres",
                         "-tr", "coarse_refine", "-device", "cpu", "--no_pbar", "--disable_tta",
                         "--min_confidence", "0"]) == 0
    case = sorted(p.name[: -len("_0000.nii.gz")] for p in (raw / "imagesTs").glob("*_0000.nii.gz"))[0]
    geo = ImageGeometry.from_file(raw / "imagesTs" / f"{case}_0000.nii.gz")
    pois = read_poi_file(out / f"{case}.json")
    assert all(geo.contains_world(p.position) for p in pois)
    assert len(read_markups_json(out / f"{case}.mrk.json")) == len(pois)
    assert ImageGeometry.from_file(out / f"{case}.nii.gz").same_grid(geo)
    # without --labels the model segments the case itself and finds structures to crop (nnU-Net's nonzero
    # mask was once taken for the labels, and no point was ever written); each structure contributes at
    # most one point per POI id (its own crop's)
    segmented = set(np.unique(sitk.GetArrayFromImage(sitk.ReadImage(str(out / f"{case}.nii.gz")))).tolist())
    assert len(pois) > 0 and len(segmented - {0}) > 0
    # most of them are in the written segmentation too (a structure of a few voxels in the preprocessed
    # prediction can vanish when nnU-Net resamples the logits back onto the raw grid)
    structures = {p.structure for p in pois}
    assert len(structures & segmented) >= 0.5 * len(structures)
    keys = [(p.structure, p.poi) for p in pois]
    assert len(keys) == len(set(keys))
    assert evaluate_main(["-ref", str(raw / "poisTs"), "-pred", str(out), "-o", str(tmp_path / "ev"), "-q"]) == 0
    assert (tmp_path / "ev" / "summary.json").is_file()


def test_provided_labels_and_coarse_stage(env) -> None:
    from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor

    from poi_nnunet.geometry import ImageGeometry, PreprocessedSpace
    from poi_nnunet.trained_models import load_poi_model
    from poi_nnunet.inference.coarse_refine import CoarseRefinePredictor

    predictor = load_poi_model("501", "3d_fullres", "coarse_refine", device="cpu", use_mirroring=False,
                               min_confidence=0.0)
    assert isinstance(predictor, CoarseRefinePredictor)
    raw = env["nnUNet_raw"] / SPINE
    image = sorted((raw / "imagesTs").glob("*_0000.nii.gz"))[0]
    case = image.name[: -len("_0000.nii.gz")]
    files = [str(image), str(image).replace("_0000", "_0001")]
    data, seg, props = DefaultPreprocessor(verbose=False).run_case(
        files, str(raw / "labelsTs" / f"{case}.nii.gz"), predictor.plans_manager, predictor.configuration_manager,
        predictor.dataset_json)
    space = PreprocessedSpace.from_nnunet_properties(props, predictor.plans_manager.transpose_forward,
                                                     data.shape[1:], raw=ImageGeometry.from_file(image))
    labels = np.asarray(seg[0])
    refined = predictor.predict_case(data, space, segmentation=labels)
    present = sorted(set(np.unique(labels).tolist()) - {0, -1})
    assert sorted(set(refined.points.structures.tolist())) == present
    assert refined.points.positions.shape[1] == 3 and np.isfinite(refined.points.positions).all()
    predictor.point_stage = "coarse"
    coarse = predictor.predict_case(data, space, segmentation=labels)
    assert len(coarse.points) == len(refined.points)
    assert not np.allclose(coarse.points.positions, refined.points.positions)  # trained offsets are not zero


def test_poi_predict_with_provided_labels_finds_points_of_exactly_those_structures(env, tmp_path: Path) -> None:
    import SimpleITK as sitk

    from poi_nnunet.cli.evaluate import main as evaluate_main
    from poi_nnunet.cli.predict import main as predict_main
    from poi_nnunet.pois import read_poi_file

    raw = env["nnUNet_raw"] / SPINE
    out = tmp_path / "out"
    args = ["-i", str(raw / "imagesTs"), "-d", "501", "-c", "3d_fullres", "-tr", "coarse_refine", "-device", "cpu",
            "--no_pbar", "--disable_tta", "--min_confidence", "0"]
    assert predict_main(args + ["-o", str(out), "--labels", str(raw / "labelsTs")]) == 0
    for label_file in sorted((raw / "labelsTs").glob("*.nii.gz")):
        case = label_file.name[: -len(".nii.gz")]
        present = set(np.unique(sitk.GetArrayFromImage(sitk.ReadImage(str(label_file)))).tolist()) - {0}
        pois = read_poi_file(out / f"{case}.json")
        assert len(pois) > 0 and {p.structure for p in pois} == present
    summary = tmp_path / "ev"
    assert evaluate_main(["-ref", str(raw / "poisTs"), "-pred", str(out), "-o", str(summary), "-q"]) == 0
    overall = json.loads((summary / "summary.json").read_text())["points"]["overall"]
    # every structure is given and every channel answered (confidence 0): no reference point goes missing
    assert overall["n_missing"] == 0 and np.isfinite(overall["tre_mm"]["mean"])
    # a folder without the cases' label maps is named, and nothing is predicted
    empty = tmp_path / "no_labels"
    empty.mkdir()
    assert predict_main(args + ["-o", str(tmp_path / "out2"), "--labels", str(empty)]) != 0
    assert not (tmp_path / "out2").exists()

"""``poi_train -num_gpus N``: nnU-Net's DDP path with the POI trainers, run as 2 gloo processes on the CPU.

The assertion that matters is the one DDP exists for: each rank draws its own batches (its share of the
plans' batch size), yet both end with the same weights, because gradients are averaged every step. Without
the averaging the ranks' weights part after the first step, so the comparison can fail. Every POI trainer
is run (its heads, loss and second forward passes must all be DDP-safe), two iterations each on tiny data.
"""
from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Dict, List

import pytest
import torch

from poi_nnunet.cli.train import main as train_main
from poi_nnunet.distributed import FoldRequest, launch, train_fold
from tests.factories import planned_xray_and_spine, use_nnunet_folders

XRAY, SPINE, CLICKS = 541, 542, 543


@pytest.fixture(scope="module")
def planned(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Path]:
    from poi_nnunet.cli.convert import main as convert_main
    from poi_nnunet.cli.plan_and_preprocess import main as plan_main

    env = planned_xray_and_spine(tmp_path_factory.mktemp("ddp"), XRAY, SPINE, xray_cases=6, spine_cases=5,
                                 num_test=0, xray_shape=(64, 64), spine_shape=(32, 24, 24))
    with pytest.MonkeyPatch.context() as mp:
        for key, path in env.items():
            mp.setenv(key, str(path))
        assert convert_main(["clicks", "--from-dataset", str(SPINE), "-d", str(CLICKS), "-n", "Clicks",
                             "--clicks-per-structure", "4", "--background-clicks", "6"]) == 0
        assert plan_main(["-d", str(CLICKS), "-c", "3d_fullres", "-np", "1", "-npfp", "1", "--no_pbar"]) == 0
    return env


@pytest.fixture
def env(planned: Dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> Dict[str, Path]:
    use_nnunet_folders(planned, monkeypatch)
    return planned


def _request(dataset: int, configuration: str, trainer: str, validate: bool = False) -> FoldRequest:
    return FoldRequest(str(dataset), configuration, trainer, 0, "poiPlans", "cpu", epochs=1, iterations_per_epoch=2,
                       validate=validate)


def _train_each_and_save_weights(requests: List[FoldRequest], out: Path, _: FoldRequest) -> None:
    """Rank function: train every request in turn, then save this rank's weights and batch share."""
    import torch.distributed as dist

    rank = dist.get_rank()
    for request in requests:
        trainer, _summary = train_fold(request)
        weights = {k: v.detach().cpu() for k, v in trainer.network.module.state_dict().items()}
        torch.save({"weights": weights, "batch_size": trainer.batch_size, "steps": trainer.current_epoch},
                   out / f"{request.trainer}_rank{rank}.pt")


def test_every_poi_trainer_ends_with_identical_weights_on_two_gloo_ranks(env: Dict[str, Path],
                                                                       tmp_path: Path) -> None:
    requests = [_request(XRAY, "2d", "heatmap", validate=True), _request(XRAY, "2d", "uv"),
                _request(SPINE, "3d_fullres", "coarse_refine"), _request(CLICKS, "3d_fullres", "point_sup")]
    launch(requests[0], 2, functools.partial(_train_each_and_save_weights, requests, tmp_path))
    for request in requests:
        ranks = [torch.load(tmp_path / f"{request.trainer}_rank{r}.pt") for r in (0, 1)]
        plans = json.loads(next(env["nnUNet_preprocessed"].glob(f"Dataset{request.dataset}_*/poiPlans.json"))
                           .read_text())
        batch = plans["configurations"][request.configuration]["batch_size"]
        assert ranks[0]["batch_size"] + ranks[1]["batch_size"] == batch, request.trainer
        first, second = ranks[0]["weights"], ranks[1]["weights"]
        assert first.keys() == second.keys()
        for name in first:
            assert torch.equal(first[name], second[name]), f"{request.trainer}: {name} differs between ranks"
    # the weights moved (two optimiser steps), so equal weights are not equal initial weights
    results = env["nnUNet_results"] / f"Dataset{XRAY}_Xray" / "PoiHeatmapTrainer__poiPlans__2d" / "fold_0"
    saved = torch.load(results / "checkpoint_final.pth", map_location="cpu", weights_only=False)["network_weights"]
    trained = torch.load(tmp_path / "heatmap_rank0.pt")["weights"]
    assert all(torch.equal(saved[k], trained[k]) for k in trained)
    # rank 0 alone validated: one summary for all the fold's validation cases
    summary = json.loads((results / "validation" / "evaluation" / "summary.json").read_text())
    splits = json.loads((env["nnUNet_preprocessed"] / f"Dataset{XRAY}_Xray" / "splits_final.json").read_text())
    assert set(summary["points"]["per_case"]) == set(splits[0]["val"])


def test_num_gpus_refuses_more_processes_than_the_batch_holds(env: Dict[str, Path],
                                                              capsys: pytest.CaptureFixture) -> None:
    plans = json.loads((env["nnUNet_preprocessed"] / f"Dataset{SPINE}_Spine" / "poiPlans.json").read_text())
    batch = plans["configurations"]["3d_fullres"]["batch_size"]
    code = train_main([str(SPINE), "3d_fullres", "heatmap", "-device", "cpu", "-num_gpus", str(batch + 1)])
    assert code == 2
    assert f"batch size is {batch}" in capsys.readouterr().err



def test_an_uneven_split_is_refused_only_where_the_dice_spans_the_batch() -> None:
    from poi_nnunet.distributed import check_world_size
    from poi_nnunet.errors import PoiNnunetError

    request = _request(XRAY, "2d", "heatmap")
    check_world_size(request, 2, 4, batch_dice=True)  # 2 + 2
    check_world_size(request, 2, 5, batch_dice=False)  # 3 + 2: per-sample Dice, nothing gathered
    with pytest.raises(PoiNnunetError, match="batch size 5 does not split evenly over 2 processes"):
        check_world_size(request, 2, 5, batch_dice=True)

"""nnU-Net's own nnUNetv2_plan_and_preprocess still runs on our data, beside our plans."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from dataset_conversion.synthetic_spine import write_spine_dataset
from poi_nnunet.cli.plan_and_preprocess import main


def test_nnunet_plans_the_same_dataset_unchanged_and_alongside(nnunet_folders) -> None:
    write_spine_dataset(nnunet_folders["raw"] / "Dataset501_Spine", num_cases=3, shape=(32, 24, 24))
    assert main(["-d", "501", "-c", "3d_fullres", "-np", "1", "-npfp", "1", "--no_pbar"]) == 0
    pre = nnunet_folders["preprocessed"] / "Dataset501_Spine"
    ours = sorted((pre / "poiPlans_3d_fullres").iterdir())

    script = Path(sys.executable).with_name("nnUNetv2_plan_and_preprocess")
    done = subprocess.run([str(script), "-d", "501", "-c", "3d_fullres", "-np", "1", "-npfp", "1", "--no_pbar"],
                          env={**os.environ, "nnUNet_n_proc_DA": "1"}, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]

    theirs = json.loads((pre / "nnUNetPlans.json").read_text())
    mine = json.loads((pre / "poiPlans.json").read_text())
    for name, config in theirs["configurations"].items():
        own = {k: v for k, v in mine["configurations"][name].items() if k not in ("poi", "data_identifier")}
        assert own == {k: v for k, v in config.items() if k != "data_identifier"}
    assert mine["transpose_forward"] == theirs["transpose_forward"]
    assert sorted((pre / "poiPlans_3d_fullres").iterdir()) == ours  # our data untouched
    assert any((pre / "nnUNetPlans_3d_fullres").glob("*.b2nd"))

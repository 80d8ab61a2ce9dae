"""Bad input to poi_plan_and_preprocess: a clear message, a non-zero exit, nothing half-written."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from poi_nnunet.cli.plan_and_preprocess import main
from tests.factories import write_tiny_dataset, write_verse_ids_dataset

FAST = ["-c", "3d_fullres", "-np", "1", "-npfp", "1", "--no_pbar"]


def _preprocessed_entries(folder: Path) -> list:
    return sorted(p.name for p in folder.iterdir())


def test_unknown_dataset_id(nnunet_folders, capsys) -> None:
    assert main(["-d", "599"] + FAST) == 2
    err = capsys.readouterr().err
    assert "unknown dataset '599'" in err and "Traceback" not in err
    assert _preprocessed_entries(nnunet_folders["preprocessed"]) == []


def test_pois_on_a_label_that_does_not_exist(nnunet_folders, capsys) -> None:
    folder = write_tiny_dataset(nnunet_folders["raw"], "Dataset991_Tiny", cases=2)
    poi_file = folder / "poisTr" / "case_001.json"
    data = json.loads(poi_file.read_text())
    data["points"][0]["structure"] = 7
    poi_file.write_text(json.dumps(data))
    assert main(["-d", "991"] + FAST) == 2
    err = capsys.readouterr().err
    assert "case_001.json" in err and "structure 7 is not a label" in err
    assert _preprocessed_entries(nnunet_folders["preprocessed"]) == []


def test_label_values_with_gaps_stop_before_planning(nnunet_folders, capsys) -> None:
    """{0, 20, 21} (VerSe ids) would plan, then crash nnU-Net's Dice loss in training: stop at validation."""
    folder = write_verse_ids_dataset(nnunet_folders["raw"], "Dataset996_VerseIds")
    assert main(["-d", "996"] + FAST) == 2
    err = capsys.readouterr().err
    assert f"{folder / 'dataset.json'}: 'labels' values must be consecutive" in err
    assert "1-19 are missing" in err and "Traceback" not in err
    assert _preprocessed_entries(nnunet_folders["preprocessed"]) == []


def test_invalid_raw_data_lists_every_problem(nnunet_folders, capsys) -> None:
    folder = write_tiny_dataset(nnunet_folders["raw"], "Dataset992_Tiny", cases=2)
    (folder / "labelsTr" / "case_000.nii.gz").unlink()
    data = json.loads((folder / "poisTr" / "case_001.json").read_text())
    data["points"][1]["position"] = [1e4, 0.0, 0.0]
    (folder / "poisTr" / "case_001.json").write_text(json.dumps(data))
    assert main(["-d", "Dataset992_Tiny"] + FAST) == 2
    err = capsys.readouterr().err
    assert "2 problem(s)" in err and "case_000.nii.gz: missing" in err and "outside the image" in err
    assert _preprocessed_entries(nnunet_folders["preprocessed"]) == []


def test_output_folder_that_cannot_be_written(nnunet_folders, monkeypatch, capsys, tmp_path) -> None:
    write_tiny_dataset(nnunet_folders["raw"], "Dataset993_Tiny", cases=2)
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("nnUNet_preprocessed", str(blocker / "preprocessed"))
    assert main(["-d", "993"] + FAST) == 2
    assert "cannot be written" in capsys.readouterr().err


def test_wrong_number_of_process_counts(nnunet_folders, capsys) -> None:
    write_tiny_dataset(nnunet_folders["raw"], "Dataset994_Tiny", cases=2)
    assert main(["-d", "994", "-c", "2d", "3d_fullres", "-np", "1", "2", "3"]) == 2
    assert "-np takes one number or one per configuration" in capsys.readouterr().err


def test_a_crash_midway_publishes_nothing(nnunet_folders, monkeypatch) -> None:
    from poi_nnunet.preprocessing.preprocessor import PoiPreprocessor

    write_tiny_dataset(nnunet_folders["raw"], "Dataset995_Tiny", cases=2)

    def crash(self, *args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(PoiPreprocessor, "run", crash)
    with pytest.raises(RuntimeError, match="disk full"):
        main(["-d", "995"] + FAST)
    # fingerprint and plans were made, but only in the staging folder, which is gone
    assert _preprocessed_entries(nnunet_folders["preprocessed"]) == []

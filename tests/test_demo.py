"""`poi_demo` makes both phantoms, validates them and tells the user where they are."""
from __future__ import annotations

from pathlib import Path

import pytest

from poi_nnunet.cli.demo import main as demo_main
from poi_nnunet.raw_dataset import RawDataset


def test_demo_generates_valid_datasets(nnunet_folders: dict, capsys: pytest.CaptureFixture) -> None:
    assert demo_main(["--cases-3d", "2", "--cases-2d", "3", "--test-cases", "1", "--train", "none"]) == 0
    out = capsys.readouterr().out
    spine = RawDataset.open(nnunet_folders["raw"] / "Dataset501_SyntheticSpine")
    xray = RawDataset.open(nnunet_folders["raw"] / "Dataset502_SyntheticXray")
    assert (len(spine.case_ids("Tr")), len(spine.case_ids("Ts"))) == (2, 1)
    assert (len(xray.case_ids("Tr")), len(xray.case_ids("Ts"))) == (3, 1)
    assert "Dataset501_SyntheticSpine" in out
    # each dataset's own verdict line: a bare "valid" would also match "invalid"
    lines = [line.strip() for line in out.splitlines()]
    for label in ("3D spine", "2D X-ray"):
        assert any(line.startswith(f"[{label}] valid. ") for line in lines), out
    assert "invalid" not in out.lower()
    assert str(nnunet_folders["raw"]) in out
    # a second run reuses what is there instead of failing or overwriting
    assert demo_main(["--cases-3d", "2", "--cases-2d", "3", "--test-cases", "1", "--train", "none"]) == 0
    assert "reusing" in capsys.readouterr().out


def test_demo_uses_its_workspace_when_nnunet_is_not_configured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.delenv(var)
    assert demo_main(["-w", str(tmp_path / "ws"), "--cases-3d", "1", "--cases-2d", "1", "--test-cases", "0", "--train", "none"]) == 0
    assert (tmp_path / "ws" / "nnUNet_raw" / "Dataset502_SyntheticXray" / "dataset.json").is_file()

"""Shared fixtures: every test gets its own nnU-Net folders, so nothing leaks between tests."""
from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def nnunet_folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    """Point nnUNet_raw / nnUNet_preprocessed / nnUNet_results at fresh folders under tmp_path."""
    folders = {}
    for var, name in (("nnUNet_raw", "raw"), ("nnUNet_preprocessed", "preprocessed"), ("nnUNet_results", "results")):
        path = tmp_path / "nnunet" / name
        path.mkdir(parents=True)
        monkeypatch.setenv(var, str(path))
        folders[name] = path
    return folders

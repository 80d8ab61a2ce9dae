"""Shared fixtures: every test gets its own nnU-Net folders, so nothing leaks between tests."""
from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def nnunet_folders(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> dict:
    """Point nnUNet_raw / nnUNet_preprocessed / nnUNet_results at fresh folders (outside tmp_path,
    so a test's own tmp_path starts empty)."""
    base = tmp_path_factory.mktemp("nnunet")
    folders = {}
    for var, name in (("nnUNet_raw", "raw"), ("nnUNet_preprocessed", "preprocessed"), ("nnUNet_results", "results")):
        path = base / name
        path.mkdir(parents=True)
        monkeypatch.setenv(var, str(path))
        folders[name] = path
    return folders

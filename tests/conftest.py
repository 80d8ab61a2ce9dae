"""Shared fixtures: every test gets its own nnU-Net folders and the same random state, so nothing leaks between
tests and none passes or fails by the tests that ran before it."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch

SEED = 0


def _seed_every_generator() -> None:
    """Python's, NumPy's global and torch's generators (nnU-Net's augmentation draws from the first two,
    network initialisation from torch's)."""
    random.seed(SEED)
    np.random.seed(SEED)
    torch.manual_seed(SEED)


@pytest.hookimpl(tryfirst=True)
def pytest_fixture_setup(fixturedef: pytest.FixtureDef, request: pytest.FixtureRequest) -> None:
    """Before every module- or session-scoped fixture (a model trained once for all of a module's tests, say):
    pytest sets one up when the first test that needs it runs, before that test's own autouse fixtures, so it
    would otherwise start from whatever state the tests before left (and differ under ``-k``)."""
    if fixturedef.scope != "function":
        _seed_every_generator()


@pytest.fixture(autouse=True)
def same_random_state_per_test() -> None:
    _seed_every_generator()


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

"""Shared fixtures: tiny configs that train in well under a second."""

from __future__ import annotations

pytest_plugins = ["tests.fixtures_mlflow", "tests.fixtures_data", "tests.fixtures_ray"]

import os

import pytest

os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
# Tiny models on 2 shared cores: one intra-op thread each is faster than two fighting
# (subprocesses inherit it through the environment).
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """This process too: one intra-op thread (two made the vision tests ~3x slower here)."""
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

TINY = {
    "data": {"name": "xor", "k": 2, "p": 6, "n_train": 256, "n_val": 128, "n_test": 128},
    "model": {"name": "mlp", "hidden": [16]},
    "train": {"duration": "3ep", "batch_size": 64},
}


@pytest.fixture
def tiny_layers() -> dict:
    import copy
    return copy.deepcopy(TINY)


@pytest.fixture
def local_store(tmp_path, monkeypatch):
    """Run in a fresh folder with MLflow's local store (no server)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path

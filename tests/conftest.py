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


@pytest.fixture(autouse=True)
def mlflow_uris_do_not_leak():
    """mlflow.set_tracking_uri/set_registry_uri also export MLFLOW_*_URI to os.environ, where
    every later subprocess (a user's training script, the CLI) would inherit them: a test that
    calls them must not move the next test's registry."""
    keys = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
    saved = {k: os.environ.get(k) for k in keys}
    yield
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    import sys
    if "mlflow" in sys.modules:  # and the module-level URIs mlflow keeps
        import mlflow
        mlflow.set_tracking_uri(saved["MLFLOW_TRACKING_URI"] or "")
        mlflow.set_registry_uri(saved["MLFLOW_REGISTRY_URI"] or "")
        for k, v in saved.items():  # set_*_uri just re-exported them
            if v is None:
                os.environ.pop(k, None)


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

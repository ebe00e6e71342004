"""train.device: where fit() trains. CUDA cannot run here; what can be checked on the CPU is."""

from __future__ import annotations

import pytest
import torch

from compress.core.loop import fit, model_device, training_device
from compress.errors import UserError
from tests.e2e.helpers import TINY_SETS, assert_user_error, compress, sets


def test_cpu_and_auto_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert training_device("cpu") == torch.device("cpu")
    assert training_device("auto") == torch.device("cpu")
    with pytest.raises(UserError, match="train.device=cuda.*--set train.device=cpu"):
        training_device("cuda")


def test_cuda_under_torchrun_is_the_local_ranks_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert training_device("cuda") == torch.device("cuda", 1)
    assert training_device("auto") == torch.device("cuda", 1)
    monkeypatch.delenv("LOCAL_RANK")
    assert training_device("cuda") == torch.device("cuda", 0)


def test_fit_leaves_the_model_where_it_was(tiny_layers):
    from compress.config import resolve
    from compress.stages.runner import build, load_data
    cfg = resolve(tiny_layers, {"train": {"device": "cpu", "duration": "1ep"}})
    data = load_data(cfg)
    model = build(cfg, data)
    fit(model, data, cfg.train, seed=0)
    assert model_device(model) == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
@pytest.mark.parametrize("command", [["pretrain"], ["prune", "--method", "magnitude"]])
def test_cuda_without_a_gpu_is_one_line_and_writes_nothing(tmp_path, command):
    r = compress(*command, *sets(*TINY_SETS, "train.device=cuda"), "--no-track", "--out", "x",
                 cwd=tmp_path)
    assert_user_error(r, "train.device=cuda")
    assert not (tmp_path / "x").exists()

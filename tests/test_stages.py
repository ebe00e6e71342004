"""Stage functions in-process: rewind exactness, atomic outputs, the parity gate."""

import json

import pytest
import torch

from compress.config import resolve
from compress.errors import UserError
from compress.stages.artifacts import read_stage
from compress.stages.pipeline import run_one
from compress.stages.runner import StageEnv

TINY = {
    "data": {"name": "xor", "k": 2, "p": 6, "n_train": 256, "n_val": 64, "n_test": 64},
    "model": {"name": "mlp", "hidden": [16]},
    "train": {"duration": "2ep", "batch_size": 64},
    "method": {"name": "magnitude", "density": 0.3, "finetune": "1ep"},
}


@pytest.fixture
def pruned(tmp_path):
    env = StageEnv(root=tmp_path, progress=False)
    cfg = resolve(TINY)
    pre = read_stage(run_one("pretrain", cfg, env, None, tmp_path / "pre")["out_dir"])
    pr = read_stage(run_one("prune", cfg, env, pre, tmp_path / "pr")["out_dir"])
    return env, cfg, pre, pr


def test_rewind_restores_exactly_the_init_of_survivors(pruned, tmp_path):
    env, cfg, pre, pr = pruned
    no_training = resolve(TINY, {"retrain": {"mode": "rewind", "train": {"duration": "0ep"}}})
    re = read_stage(run_one("retrain", no_training, env, pr, tmp_path / "re")["out_dir"])
    init, weights, masks = pre.state("init"), re.state("weights"), pr.masks()
    for name, m in masks.items():
        assert torch.equal(weights[name][m], init[name][m])
        assert torch.all(weights[name][~m] == 0)
    # biases (never masked) are back at their initial values too
    assert torch.equal(weights["layers.0.bias"], init["layers.0.bias"])


def test_reinit_is_a_fresh_init_with_the_same_mask(pruned, tmp_path):
    env, cfg, pre, pr = pruned
    no_training = resolve(TINY, {"retrain": {"mode": "reinit", "train": {"duration": "0ep"}}})
    re = read_stage(run_one("retrain", no_training, env, pr, tmp_path / "re")["out_dir"])
    init, weights = pre.state("init"), re.state("weights")
    m = pr.masks()["layers.0.weight"]
    assert not torch.equal(weights["layers.0.weight"][m], init["layers.0.weight"][m])
    assert re.masks().equal(pr.masks())


def test_stage_record_lists_verified_files(pruned):
    _, _, pre, pr = pruned
    assert {"weights", "init", "masks", "density_plot"} <= set(pr.record["files"])
    assert pr.record["source"]["id"] == pre.id
    assert (pr.dir / "density.png").read_bytes()[:4] == b"\x89PNG"
    hist = json.loads((pr.dir / "history.json").read_text())
    assert hist and {"epoch", "train_loss", "val_auc"} <= set(hist[0])
    (pr.dir / "weights.safetensors").write_bytes(b"junk")
    with pytest.raises(UserError, match="sha256"):
        read_stage(pr.dir)


def test_failed_stage_leaves_no_folder(pruned, tmp_path, monkeypatch):
    env, cfg, pre, pr = pruned
    import compress.export.onnx as onnx_mod

    def broken_parity(*a, **k):
        raise onnx_mod.ExportError("parity: relative error 3.1e-02 exceeds rtol 1e-05")
    monkeypatch.setattr(onnx_mod, "check_parity", broken_parity)
    with pytest.raises(UserError, match="relative error"):
        run_one("export", cfg, env, pr, tmp_path / "ex")
    assert not (tmp_path / "ex").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".ex")]


def test_source_with_other_data_is_refused(pruned, tmp_path):
    env, cfg, pre, pr = pruned
    other = resolve(TINY, {"data": {"p": 7}})
    with pytest.raises(UserError, match="data differs"):
        run_one("prune", other, env, pre, tmp_path / "x")


def test_export_refuses_shrink_of_unsupported_model(pruned, tmp_path):
    from compress.stages.export_stage import _deployable
    env, cfg, pre, pr = pruned
    other = torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.LayerNorm(4), torch.nn.Linear(4, 1))
    x = torch.randn(2, 6)
    dead = {"0.weight": torch.ones(4, 6, dtype=torch.bool), "2.weight": torch.ones(1, 4, dtype=torch.bool)}
    dead["2.weight"][0, 1] = False  # unit 1 of layer 0 is read by nobody, but LayerNorm counts it
    with pytest.raises(UserError, match=r"dead channels of '0': LayerNorm '1' normalises over "
                                        r"them.*export.shrink=false"):
        _deployable(resolve(TINY, {"export": {"shrink": True}}), other, dead, x)
    assert _deployable(cfg, other, dead, x)[0] is other  # auto: masks only where shrink can't go
    masked_only = resolve(TINY, {"export": {"shrink": False}})
    assert _deployable(masked_only, other, None, x)[0] is other
    rec = run_one("export", masked_only, env, pr, tmp_path / "ex2")
    assert rec["metrics"]["parity_rel_error"] <= 1e-5


def test_scratch_b_scales_the_budget_by_flops_and_random_prune_keeps_counts(pruned, tmp_path):
    env, cfg, pre, pr = pruned
    b = run_one("retrain", resolve(TINY, {"retrain": {"mode": "scratch_b"}}), env, pr, tmp_path / "b")
    assert b["flops_ratio"] > 2.5  # density 0.3 on every layer: ~1/0.3 fewer MACs
    assert b["duration"] == f"{int(-(-2 * b['flops_ratio'] // 1))}ep"
    rp = run_one("retrain", resolve(TINY, {"retrain": {"mode": "random_prune",
                                                       "train": {"duration": "0ep"}}}),
                 env, pr, tmp_path / "rp")
    masks = read_stage(rp["out_dir"]).masks()
    assert masks.kept() == pr.masks().kept() and not masks.equal(pr.masks())


def test_retrain_rewind_point_after_training_is_refused(pruned, tmp_path):
    env, cfg, pre, pr = pruned
    with pytest.raises(UserError, match="after the end of dense training"):
        run_one("retrain", resolve(TINY, {"retrain": {"mode": "rewind", "rewind": "50ep"}}),
                env, pr, tmp_path / "r")
    assert not (tmp_path / "r").exists()

"""Deployment precision (fp16 / int8), execution providers and the export table, in-process."""

from __future__ import annotations

import json

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from compress.config import resolve  # noqa: E402
from compress.errors import UserError  # noqa: E402
from compress.export import onnx as export_onnx  # noqa: E402
from compress.export import precision  # noqa: E402
from compress.export.bench_table import LATENCY_BATCHES  # noqa: E402
from compress.stages.artifacts import read_stage  # noqa: E402
from compress.stages.pipeline import run_one  # noqa: E402
from compress.stages.runner import StageEnv  # noqa: E402

FAST = {"latency_rounds": 3}
# Small enough to train in ~2 s each; big enough that int8 weights outweigh the Q/DQ overhead.
MODELS = {
    "mlp": {"data": {"name": "digits"}, "model": {"name": "mlp", "hidden": [64]},
            "train": {"duration": "3ep", "batch_size": 64},
            "method": {"name": "magnitude", "density": 0.3, "finetune": "1ep"}},
    "cnn": {"data": {"name": "mnist5k", "n_train": 1000, "n_val": 100, "n_test": 300},
            "model": {"name": "conv2", "width": 0.125},
            "train": {"duration": "3ep", "batch_size": 50},
            "method": {"name": "magnitude", "density": 0.3, "finetune": "1ep"}},
}
REDUCED = ("fp16", "int8-dynamic", "int8-static")


@pytest.fixture(scope="module")
def pruned(tmp_path_factory):
    """One pruned stage per model kind (trained once for all the export tests)."""
    root = tmp_path_factory.mktemp("precision")
    env = StageEnv(root=root, progress=False)
    out = {}
    for kind, layers in MODELS.items():
        cfg = resolve(layers, seed=2)
        pre = read_stage(run_one("pretrain", cfg, env, None, root / kind / "pre")["out_dir"])
        out[kind] = read_stage(run_one("prune", cfg, env, pre, root / kind / "pr")["out_dir"])
    return env, out


def export(pruned, tmp_path, kind: str, **options):
    env, stages = pruned
    cfg = resolve(MODELS[kind], {"export": {**FAST, **options}}, seed=2)
    return run_one("export", cfg, env, stages[kind], tmp_path / "ex")


def interface(path) -> list:
    session = export_onnx.ort_session(path)
    return [(v.name, v.type) for v in session.get_inputs() + session.get_outputs()]


@pytest.mark.parametrize("kind", sorted(MODELS))
@pytest.mark.parametrize("prec", REDUCED)
def test_each_precision_deploys_with_the_fp32_interface(pruned, tmp_path, kind, prec):
    rec = export(pruned, tmp_path, kind, precision=prec)
    out = tmp_path / "ex"
    deployed, fp32 = out / "model.onnx", out / "model.fp32.onnx"
    assert rec["files"]["onnx"] == "model.onnx" and rec["files"]["onnx_fp32"] == "model.fp32.onnx"
    assert interface(deployed) == interface(fp32) == [("input", "tensor(float)"),
                                                      ("logits", "tensor(float)")]
    meta = export_onnx.onnx_metadata(deployed)
    assert meta["compress.precision"] == prec
    assert export_onnx.onnx_metadata(fp32)["compress.precision"] == "fp32"
    # onnxruntime runs it at any batch, on float32 input, with finite outputs close to fp32's.
    _, stages = pruned
    x = _test_inputs(stages[kind], 5)
    got = export_onnx.ort_session(deployed).run(None, {"input": x})[0]
    want = export_onnx.ort_session(fp32).run(None, {"input": x})[0]
    assert got.dtype == np.float32 and got.shape == want.shape and np.isfinite(got).all()
    assert export_onnx.relative_error(got, want) < 0.2
    m = rec["metrics"]
    change = m["onnx_test_accuracy"] - m["onnx_fp32_test_accuracy"]
    assert m["precision_accuracy_change"] == pytest.approx(change)
    assert -change <= rec["config"]["export"]["max_accuracy_drop"] + 1e-12
    assert m["onnx_bytes"] == deployed.stat().st_size
    # fp16 halves the weights, int8 quarters them (plus scales and Q/DQ nodes: ~50% here for
    # the 4.5k-parameter MLP, ~30% for the CNN).
    assert deployed.stat().st_size < 0.6 * fp32.stat().st_size
    assert rec["deployment"] == {"precision": prec, "providers": ["CPUExecutionProvider"],
                                 "checked_on": "CPUExecutionProvider", "unavailable_here": []}


def _test_inputs(stage, n: int) -> np.ndarray:
    from compress.stages.runner import load_data
    return load_data(resolve(stage.record["config"])).test.x[:n].numpy()


def test_fp32_default_writes_one_model_and_the_table(pruned, tmp_path):
    rec = export(pruned, tmp_path, "mlp")
    files = sorted(p.name for p in (tmp_path / "ex").iterdir())
    assert files == ["export_table.json", "export_table.md", "model.onnx", "stage.json",
                     "structure.json"]
    assert export_onnx.onnx_metadata(tmp_path / "ex" / "model.onnx")["compress.precision"] == "fp32"
    assert not any(k.startswith("precision_") for k in rec["metrics"])


def test_export_table_compares_dense_and_shrunk_in_one_run(pruned, tmp_path):
    rec = export(pruned, tmp_path, "mlp", precision="int8-static")
    table = rec["export_table"]
    assert table == json.loads((tmp_path / "ex" / "export_table.json").read_text())
    assert table["columns"] == ["dense", "shrunk", "int8-static"]
    rows = table["rows"]
    assert list(rows) == ["params", "macs", "onnx_bytes", "latency_b1_ms", "latency_b16_ms",
                          "test_accuracy"]
    dense, shrunk, int8 = (dict(zip(rows, col)) for col in zip(*rows.values()))
    spec = rec["structure"]
    # The shrink removed dead units and unread inputs: fewer params and MACs, a smaller file,
    # the same accuracy; MACs agree with the shrink's own count.
    assert (shrunk["macs"], dense["macs"]) == (spec["macs"]["shrunk"], spec["macs"]["dense"])
    assert shrunk["macs"] < dense["macs"]
    assert shrunk["params"] < dense["params"] and shrunk["onnx_bytes"] < dense["onnx_bytes"]
    assert dense["test_accuracy"] == shrunk["test_accuracy"] == rec["metrics"]["onnx_fp32_test_accuracy"]
    assert int8["params"] == shrunk["params"] and int8["onnx_bytes"] < shrunk["onnx_bytes"]
    for col in (dense, shrunk, int8):
        assert 0 < col["latency_b1_ms"] < 1000 and 0 < col["latency_b16_ms"] < 1000
    assert table["timing"]["rounds"] == FAST["latency_rounds"]
    m = rec["metrics"]
    assert m["table.dense.macs"] == dense["macs"] and m["table.int8-static.params"] == int8["params"]
    for b in LATENCY_BATCHES:
        assert m[f"shrink_speedup_b{b}"] == pytest.approx(
            dense[f"latency_b{b}_ms"] / shrunk[f"latency_b{b}_ms"])
        assert m[f"precision_speedup_b{b}"] == pytest.approx(
            shrunk[f"latency_b{b}_ms"] / int8[f"latency_b{b}_ms"])
    md = (tmp_path / "ex" / "export_table.md").read_text()
    assert md.startswith("| | dense | shrunk | int8-static |") and "latency b=16 (ms)" in md


def test_benchmark_off_skips_the_dense_export_and_the_timing(pruned, tmp_path):
    rec = export(pruned, tmp_path, "mlp", benchmark=False)
    table = rec["export_table"]
    assert table["columns"] == ["shrunk"] and table["timing"] is None
    assert not any(r.startswith("latency") for r in table["rows"])
    assert not any("speedup" in k for k in rec["metrics"])


def test_accuracy_gate_refuses_a_badly_calibrated_model_and_writes_nothing(pruned, tmp_path):
    # The same model and limit: calibrated on 8 x 32 training images it passes, on one it fails.
    limit = {"precision": "int8-static", "max_accuracy_drop": 0.005}
    ok = export(pruned, tmp_path, "cnn", **limit)
    assert -ok["metrics"]["precision_accuracy_change"] <= 0.005
    with pytest.raises(UserError, match="drops test accuracy by .* more than "
                                        "export.max_accuracy_drop=0.005"):
        export(pruned, tmp_path / "bad", "cnn", calibration_batches=1, calibration_batch_size=1,
               **limit)
    assert list((tmp_path / "bad").iterdir()) == []  # no stage folder, no staging folder


def test_providers_are_recorded_even_when_not_available_here(pruned, tmp_path):
    rec = export(pruned, tmp_path, "mlp",
                 providers=["TensorrtExecutionProvider", "CUDAExecutionProvider",
                            "CPUExecutionProvider"])
    meta = export_onnx.onnx_metadata(tmp_path / "ex" / "model.onnx")
    assert json.loads(meta["compress.providers"]) == ["TensorrtExecutionProvider",
                                                      "CUDAExecutionProvider",
                                                      "CPUExecutionProvider"]
    missing = [p for p in ("TensorrtExecutionProvider", "CUDAExecutionProvider")
               if p not in ort.get_available_providers()]
    assert rec["deployment"]["unavailable_here"] == missing
    assert rec["deployment"]["checked_on"] == "CPUExecutionProvider"


def test_provider_and_precision_config_errors_are_one_line():
    with pytest.raises(UserError) as info:
        resolve({"export": {"providers": ["CPUExecutionProvider", "GPUExecutionProvider"]}})
    msg = str(info.value)
    assert "\n" not in msg and "'GPUExecutionProvider'" in msg
    assert "CUDAExecutionProvider" in msg and "TensorrtExecutionProvider" in msg
    with pytest.raises(UserError, match="export.providers.*empty"):
        resolve({"export": {"providers": []}})
    with pytest.raises(UserError, match="export.precision.*'int8-static'"):
        resolve({"export": {"precision": "int4"}})
    one = resolve({"export": {"providers": "CUDAExecutionProvider"}})  # --set NAME
    assert one.export.providers == ["CUDAExecutionProvider"]
    dup = resolve({"export": {"providers": ["CPUExecutionProvider"] * 2}})
    assert dup.export.providers == ["CPUExecutionProvider"]


def test_accuracy_gate_edges():
    assert precision.accuracy_gate(0.9, 0.89, 0.01, "fp16") == pytest.approx(-0.01)
    assert precision.accuracy_gate(0.9, 0.95, 0.0, "fp16") == pytest.approx(0.05)
    with pytest.raises(UserError, match="0.9000 -> 0.8800"):
        precision.accuracy_gate(0.9, 0.88, 0.01, "int8-static")
    with pytest.raises(UserError):
        precision.accuracy_gate(0.9, float("nan"), 1.0, "fp16")


def test_calibration_batches_are_a_seeded_sample_of_the_training_split():
    import torch

    from compress.data.base import Split
    x = torch.arange(100.0).reshape(50, 2)
    split = Split(x, torch.zeros(50, dtype=torch.long))
    batches = precision.calibration_batches(split, 3, 8, seed=0)
    assert [b.shape for b in batches] == [(8, 2)] * 3 and batches[0].dtype == np.float32
    rows = {tuple(r) for b in batches for r in b}
    assert len(rows) == 24 and rows <= {tuple(r) for r in x.numpy()}
    again = precision.calibration_batches(split, 3, 8, seed=0)
    assert all(np.array_equal(a, b) for a, b in zip(batches, again))
    assert len(precision.calibration_batches(split, 10, 8, seed=0)) == 7  # 50 rows: 6 x 8 + 2


def test_latencies_are_timed_round_robin(tmp_path, monkeypatch):
    import torch
    from compress.models.mlp import MLP
    paths = [export_onnx.export_onnx(MLP(4, [h], 2), torch.randn(2, 4), tmp_path / f"{h}.onnx")
             for h in (3, 5)]
    calls = []
    real = export_onnx._run
    monkeypatch.setattr(export_onnx, "_run",
                        lambda s, x: calls.append(s._model_path) or real(s, x))
    seconds = export_onnx.ort_latencies(paths, batch=2, in_features=4, repeats=4, warmup=1)
    assert len(seconds) == 2 and all(0 < s < 1 for s in seconds)
    timed = calls[2:]  # after one warm-up run each
    assert timed == [str(p) for p in paths] * 4

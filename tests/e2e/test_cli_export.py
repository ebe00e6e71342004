"""`compress export` deployment options through the CLI: precision, providers, the table, MLflow."""

import json
import os

import pytest
import yaml

from tests.e2e.helpers import TINY_CPNA, TINY_SETS, assert_user_error, compress, compress_json, sets

pytest.importorskip("onnxruntime")

# A small CNN whose int8-static export loses accuracy when calibrated on a single image.
CNN = [*sets("data.name=mnist5k", "data.n_train=1000", "data.n_val=100", "data.n_test=300",
             "model.name=conv2", "model.width=0.125", "train.duration=3ep",
             "train.batch_size=50", "export.latency_rounds=3"), "--seed", "2"]
MAGNITUDE = ["--method", "magnitude", *sets("method.density=0.3", "method.finetune=1ep")]
GPU = "export.providers=[CUDAExecutionProvider,CPUExecutionProvider]"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A local MLflow store holding a pruned CNN (its export stage ran at fp32)."""
    root = tmp_path_factory.mktemp("export-cli")
    old = os.environ.pop("MLFLOW_TRACKING_URI", None)
    try:
        out = compress_json("prune", *MAGNITUDE, *CNN, "--out", "cnn", cwd=root)
    finally:
        if old is not None:
            os.environ["MLFLOW_TRACKING_URI"] = old
    return root, out, f"sqlite:///{root}/mlflow.db"


def _client(uri):
    from mlflow.tracking import MlflowClient
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def test_prune_summary_carries_the_export_table(store):
    _, out, _ = store
    table = out["export_table"]
    assert table["columns"][-1] in ("shrunk", "dense")
    assert {"params", "macs", "onnx_bytes", "latency_b1_ms", "latency_b16_ms",
            "test_accuracy"} <= set(table["rows"])
    assert out["deployment"]["precision"] == "fp32"
    assert out["stages"]["export"]["export_table"] == table


def test_int8_static_registers_with_its_providers(store):
    root, out, uri = store
    ex = compress_json("export", "--from", out["run_id"], "--register", "cnn-int8", "--out", "q",
                       *CNN, *sets("export.precision=int8-static", GPU), cwd=root)
    assert ex["deployment"]["providers"] == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert ex["export_table"]["columns"][-1] == "int8-static"
    assert ex["metrics"]["precision_accuracy_change"] >= -0.01
    client = _client(uri)
    mv = client.get_model_version_by_alias("cnn-int8", "candidate")
    assert mv.tags["precision"] == "int8-static"
    assert mv.tags["providers"] == "CUDAExecutionProvider,CPUExecutionProvider"
    import mlflow.artifacts
    mlflow.set_registry_uri(uri)
    local = mlflow.artifacts.download_artifacts(artifact_uri="models:/cnn-int8@candidate",
                                                dst_path=str(root / "dl"), tracking_uri=uri)
    mlmodel = yaml.safe_load(open(os.path.join(local, "MLmodel")))
    assert mlmodel["flavors"]["onnx"]["providers"] == [
        "CUDAExecutionProvider", "CPUExecutionProvider"]
    import onnx
    registered = onnx.load(os.path.join(local, "model.onnx"))
    meta = {p.key: p.value for p in registered.metadata_props}
    assert meta["compress.precision"] == "int8-static"
    assert any(n.op_type == "QuantizeLinear" for n in registered.graph.node)
    # The export run logged the table as metrics and as Markdown / JSON artifacts.
    run = client.get_run(ex["run_id"])
    assert run.data.metrics["table.int8-static.onnx_bytes"] == ex["metrics"]["onnx_bytes"]
    names = {a.path for a in client.list_artifacts(ex["run_id"], "stage")}
    assert {"stage/export_table.md", "stage/export_table.json", "stage/model.fp32.onnx"} <= names


def test_failed_accuracy_gate_writes_and_registers_nothing(store):
    root, out, uri = store
    r = compress("export", "--from", out["run_id"], "--register", "never-int8", "--out", "bad",
                 *CNN, *sets("export.precision=int8-static", "export.max_accuracy_drop=0.005",
                             "export.calibration_batches=1", "export.calibration_batch_size=1"),
                 cwd=root)
    assert_user_error(r, "drops test accuracy", "export.max_accuracy_drop=0.005")
    assert not (root / "bad").exists()
    assert [m.name for m in _client(uri).search_registered_models()
            if m.name == "never-int8"] == []


def test_the_table_is_printed(store):
    root, out, _ = store
    r = compress("export", "--from", out["artifacts"]["prune_dir"], "--out", "fp16", "--no-track",
                 *CNN,
                 *sets("export.precision=fp16", GPU), cwd=root)
    assert r.returncode == 0, r.stderr
    for words in ("params", "MACs / sample", "file bytes", "latency b=1 (ms)",
                  "latency b=16 (ms)", "test accuracy", "fp16", "speedup",
                  "checks ran on CPUExecutionProvider"):
        assert words in r.stdout, words


@pytest.mark.parametrize("setting, words", [
    ("export.providers=[CUDAExecutionProvider,NpuExecutionProvider]",
     ["export.providers", "'NpuExecutionProvider'", "valid:", "CPUExecutionProvider"]),
    ("export.precision=int4", ["export.precision", "'int8-static'"]),
    ("export.max_accuracy_drop=-0.1", ["export.max_accuracy_drop"]),
])
def test_bad_deployment_options_are_one_line_and_exit_2(tmp_path, setting, words):
    common = [*sets(*TINY_SETS), "--no-track"]
    pre = compress_json("pretrain", *common, "--out", "pre", cwd=tmp_path)
    assert pre["stage"] == "pretrain"
    r = compress("export", "--from", "pre", "--out", "ex", *common, "--set", setting, cwd=tmp_path)
    assert_user_error(r, *words)
    assert not (tmp_path / "ex").exists()
    r = compress("prune", "--method", "cpna", *common, *sets(*TINY_CPNA), "--set", setting,
                 "--out", "p", cwd=tmp_path)
    assert_user_error(r, *words)
    assert not (tmp_path / "p").exists()  # refused before any stage ran


def test_json_summary_of_export_is_parseable_with_every_key(store):
    root, out, _ = store
    ex = compress_json("export", "--from", out["artifacts"]["prune_dir"], "--out", "dyn",
                       "--no-track", *CNN, *sets("export.precision=int8-dynamic"), cwd=root)
    assert json.loads(json.dumps(ex))["deployment"]["precision"] == "int8-dynamic"
    assert set(ex["artifacts"]) >= {"onnx", "onnx_fp32", "export_table", "export_table_md"}
    assert ex["artifacts"]["onnx"].endswith("model.onnx")
    assert ex["artifacts"]["onnx_fp32"].endswith("model.fp32.onnx")

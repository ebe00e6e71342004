"""MlflowTracker against the local sqlite store, an unreachable URI and a real server."""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("mlflow")
onnx = pytest.importorskip("onnx")

from compress.errors import UserError  # noqa: E402
from compress.tracking.mlflow_tracker import OUT_DIR_TAG, MlflowTracker  # noqa: E402
from tests.fixtures_mlflow import (assert_signature_matches_onnx, free_port,  # noqa: E402
                                    registered_model_folder)

WEIGHT = np.array([[1.0], [2.0], [3.0], [4.0]], dtype=np.float32)
BIAS = np.array([0.5], dtype=np.float32)


# --- helpers and fixtures ----------------------------------------------------------------

@pytest.fixture(autouse=True)
def restore_mlflow_state():
    """The tracker sets MLFLOW_* env defaults and mlflow's global URIs; undo both per test."""
    saved = {k: v for k, v in os.environ.items() if k.startswith(("MLFLOW_", "GIT_PYTHON"))}
    yield
    import mlflow

    while mlflow.active_run() is not None:
        mlflow.end_run()
    for key in [k for k in os.environ if k.startswith(("MLFLOW_", "GIT_PYTHON"))]:
        del os.environ[key]
    os.environ.update(saved)


@pytest.fixture
def empty_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh cwd and no MLFLOW_TRACKING_URI: the tracker's local default applies."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    return tmp_path


@pytest.fixture(scope="session")
def migrated_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty, fully migrated mlflow.db (creating one runs ~130 migrations, 2-4 s)."""
    from compress.tracking.mlflow_tracker import _import_mlflow

    path = tmp_path_factory.mktemp("template") / "mlflow.db"
    _import_mlflow().MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def local_store(empty_cwd: Path, migrated_db: Path) -> Path:
    """Like empty_cwd, with the migrated empty mlflow.db already in place (faster)."""
    shutil.copy(migrated_db, empty_cwd / "mlflow.db")
    return empty_cwd


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """y = x @ WEIGHT + BIAS for x of shape (n, 4), built directly with onnx.helper."""
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Add", ["h", "b"], ["y"])],
        "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 1])],
        [numpy_helper.from_array(WEIGHT, "W"), numpy_helper.from_array(BIAS, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    path = tmp_path_factory.mktemp("onnx") / "linear.onnx"
    onnx.save(model, str(path))
    return path


def stage_folder(root: Path) -> Path:
    """What a stage writes: stage.json plus a nested file."""
    folder = root / "stage_out"
    (folder / "plots").mkdir(parents=True)
    (folder / "stage.json").write_text(json.dumps({"stage": "prune", "density": 0.25}))
    (folder / "plots" / "curve.txt").write_text("0.1 0.2\n")
    return folder


def client_for(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def count_calls(monkeypatch: pytest.MonkeyPatch, obj, method: str) -> list:
    """Record each call of obj.method (still calling through)."""
    calls: list = []
    original = getattr(obj, method)

    def spy(*args, **kwargs):
        calls.append((args, kwargs))
        return original(*args, **kwargs)

    monkeypatch.setattr(obj, method, spy)
    return calls


def predict(model_uri: str, tracking_uri: str) -> np.ndarray:
    """Load a registered model through pyfunc and run it on a fixed batch."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    out = mlflow.pyfunc.load_model(model_uri).predict(np.ones((2, 4), dtype=np.float32))
    return np.asarray(out["y"])


# --- local store -------------------------------------------------------------------------

def test_local_store_nested_runs(empty_cwd: Path, capfd: pytest.CaptureFixture) -> None:
    local_store = empty_cwd  # nothing there yet: the tracker creates mlflow.db and mlruns/
    assert not (local_store / "mlflow.db").exists()
    tracker = MlflowTracker(experiment="t-nested")
    stage = stage_folder(local_store)
    history = [{"epoch": e, "train_loss": 1.0 / (e + 1), "val_auc": 0.5 + e / 10}
               for e in range(5)]
    with tracker.run("pipeline", tags={"kind": "pipeline"}) as parent:
        tracker.log_params({"model": {"name": "mlp", "hidden": [8, 4]}, "seed": 0,
                            "lr@end": 0.1})
        with tracker.run("prune") as child1:
            tracker.log_history(history)
            tracker.log_metrics({"final_auc": 0.9, "missing": None, "blowup": float("inf"),
                                 "diverged": float("nan")})
            tracker.log_artifacts(stage, artifact_path="stage")
            tracker.set_tags({OUT_DIR_TAG: str(stage), "density": 0.25})
        with tracker.run("export") as child2:
            tracker.log_metrics({"density": 0.25}, step=3)
    # No DB-migration INFO lines, git warnings or "View run" lines reach the CLI's output.
    assert capfd.readouterr() == ("", "")

    uri = f"sqlite:///{local_store / 'mlflow.db'}"
    assert tracker.describe() == uri
    assert (local_store / "mlflow.db").is_file()
    assert list((local_store / "mlruns").rglob("stage.json")), "artifacts must land in ./mlruns"
    # The local URI must not leak into the environment for later trackers/processes.
    assert "MLFLOW_TRACKING_URI" not in os.environ

    client = client_for(uri)
    runs = {rid: client.get_run(rid) for rid in (parent, child1, child2)}
    assert {r.info.status for r in runs.values()} == {"FINISHED"}
    assert runs[child1].data.tags["mlflow.parentRunId"] == parent
    assert runs[child2].data.tags["mlflow.parentRunId"] == parent
    assert "mlflow.parentRunId" not in runs[parent].data.tags
    assert runs[parent].info.run_name == "pipeline" and runs[child1].info.run_name == "prune"
    assert runs[parent].data.tags["kind"] == "pipeline"
    assert runs[parent].data.params == {"model.name": "mlp", "model.hidden": "[8, 4]",
                                        "seed": "0", "lr_end": "0.1"}

    losses = client.get_metric_history(child1, "train_loss")
    assert [(m.step, round(m.value, 4)) for m in sorted(losses, key=lambda m: m.step)] == \
        [(e, round(1.0 / (e + 1), 4)) for e in range(5)]
    metrics = runs[child1].data.metrics
    assert metrics["final_auc"] == 0.9 and np.isnan(metrics["diverged"])
    assert "missing" not in metrics and "blowup" not in metrics
    assert [m.step for m in client.get_metric_history(child2, "density")] == [3]

    top = {a.path for a in client.list_artifacts(child1, "stage")}
    assert top == {"stage/stage.json", "stage/plots"}
    assert runs[child1].data.tags[OUT_DIR_TAG] == str(stage)
    assert tracker.fetch_run(child1, local_store / "dl") == stage  # still on disk: no download


def test_params_and_history_are_batched(local_store: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    tracker = MlflowTracker(experiment="t-batch")
    batches = count_calls(monkeypatch, tracker._client, "log_batch")
    params = {f"p{i:03d}": i for i in range(250)}
    params["long"] = "x" * 7000
    rows = [{"epoch": e, "a": float(e), "b": 2.0 * e} for e in range(600)]
    with tracker.run("batched") as run_id:
        tracker.log_params(params)
        assert len(batches) == 3  # 251 params -> 100 + 100 + 51
        tracker.log_history(rows)
        assert len(batches) == 5  # 1200 metrics -> 1000 + 200
        tracker.log_params({"p000": 0})  # same value again: accepted, nothing sent
        assert len(batches) == 5
        with pytest.raises(UserError, match="cannot change"):
            tracker.log_params({"p000": 1})

    client = client_for(tracker.describe())
    logged = client.get_run(run_id).data.params
    assert len(logged) == 251 and len(logged["long"]) == 6000
    assert len(client.get_metric_history(run_id, "b")) == 600


def test_failing_run_is_marked_failed(local_store: Path) -> None:
    tracker = MlflowTracker(experiment="t-fail")
    seen: dict[str, str] = {}
    with pytest.raises(ValueError, match="boom"):
        with tracker.run("outer") as outer:
            seen["outer"] = outer
            with tracker.run("inner") as inner:
                seen["inner"] = inner
                raise ValueError("boom")

    client = client_for(tracker.describe())
    assert client.get_run(seen["inner"]).info.status == "FAILED"
    assert client.get_run(seen["outer"]).info.status == "FAILED"
    # The stack unwound: the next run is top level again.
    with tracker.run("after") as after:
        pass
    assert "mlflow.parentRunId" not in client.get_run(after).data.tags


def test_resume_and_unknown_run_ids(local_store: Path) -> None:
    tracker = MlflowTracker(experiment="t-resume")
    with tracker.run("first") as first:
        tracker.log_metrics({"x": 1.0}, step=0)
    with tracker.run("ignored", run_id=first, tags={"resumed": "yes"}) as again:
        tracker.log_metrics({"x": 2.0}, step=1)
    assert again == first
    run = client_for(tracker.describe()).get_run(first)
    assert run.info.status == "FINISHED" and run.data.tags["resumed"] == "yes"
    assert run.data.metrics["x"] == 2.0

    with pytest.raises(UserError, match=f"MLflow run {first} has no"):
        tracker.fetch_run(first, local_store / "dl")  # a run without stage artifacts

    missing = uuid.uuid4().hex
    with pytest.raises(UserError, match=f"no MLflow run {missing}"):
        tracker.fetch_run(missing, local_store / "dl")
    with pytest.raises(UserError, match="no MLflow run"):
        with tracker.run("resume", run_id=missing):
            pass


def test_register_onnx_local(local_store: Path, onnx_file: Path) -> None:
    tracker = MlflowTracker(experiment="t-register")
    tags = {"method": "cpna", "density": 0.25, "dataset": "xor", "val_auc": 0.97}
    with tracker.run("export") as run_id:
        result = tracker.register_onnx(onnx_file, "linear-net", tags=tags, alias="champion",
                                       input_example=np.ones((1, 4), dtype=np.float32))
    assert result["name"] == "linear-net" and result["version"] == 1
    assert result["model_uri"] == "models:/linear-net@champion"

    uri = tracker.describe()
    client = client_for(uri)
    version = client.get_model_version_by_alias("linear-net", "champion")
    assert str(version.version) == "1" and version.run_id == run_id and version.status == "READY"
    assert version.tags == {k: str(v) for k, v in tags.items()}
    expected = np.ones((2, 4), dtype=np.float32) @ WEIGHT + BIAS
    np.testing.assert_allclose(predict(result["model_uri"], uri), expected, rtol=1e-6)
    import mlflow.onnx

    loaded = mlflow.onnx.load_model(result["model_uri"])
    assert [o.name for o in loaded.graph.output] == ["y"]
    folder = registered_model_folder(result["model_uri"], uri, local_store / "dl")
    example, predicted = assert_signature_matches_onnx(folder)  # x: float32 (-1, 4); y (-1, 1)
    np.testing.assert_allclose(predicted["y"], np.ones((1, 4), dtype=np.float32) @ WEIGHT + BIAS)


def test_register_onnx_rejects_bad_names_before_logging(local_store: Path,
                                                         onnx_file: Path) -> None:
    tracker = MlflowTracker(experiment="t-badname")
    with tracker.run("export") as run_id:
        for bad in ("team/model", "a:b", "", "../up"):
            with pytest.raises(UserError, match="invalid registered model name"):
                tracker.register_onnx(onnx_file, bad, tags={}, alias="champion")
        with pytest.raises(UserError, match="invalid model alias"):
            tracker.register_onnx(onnx_file, "fine", tags={}, alias="latest")
    client = client_for(tracker.describe())
    assert client.search_registered_models() == []
    assert client.get_run(run_id).outputs.model_outputs == []  # no model was logged either


def test_register_onnx_rolls_back_a_failed_version(local_store: Path, onnx_file: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    tracker = MlflowTracker(experiment="t-rollback")
    client = client_for(tracker.describe())

    def refuse(*args, **kwargs):
        raise RuntimeError("alias service down")

    with tracker.run("export"):
        tracker.register_onnx(onnx_file, "kept", tags={"v": "1"}, alias="champion")
        monkeypatch.setattr(tracker._client, "set_registered_model_alias", refuse)
        with pytest.raises(RuntimeError, match="alias service down"):
            tracker.register_onnx(onnx_file, "kept", tags={"v": "2"}, alias="champion")
        with pytest.raises(RuntimeError, match="alias service down"):
            tracker.register_onnx(onnx_file, "fresh", tags={}, alias="champion")

    # Existing model: only the new version 2 is gone. New model: removed entirely.
    versions = client.search_model_versions("name='kept'")
    assert [str(v.version) for v in versions] == ["1"]
    assert str(client.get_model_version_by_alias("kept", "champion").version) == "1"
    assert [m.name for m in client.search_registered_models()] == ["kept"]


# --- unreachable server ------------------------------------------------------------------

def test_unreachable_server_fails_fast(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    uri = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "7")  # a user's choice is kept
    start = time.monotonic()
    with pytest.raises(UserError) as caught:
        MlflowTracker()
    assert time.monotonic() - start < 15
    message = str(caught.value)
    assert message.startswith(f"MLflow tracking server at {uri} is unreachable (")
    assert "unset MLFLOW_TRACKING_URI" in message and "\n" not in message
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "7"
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "2"
    assert not (tmp_path / "mlflow.db").exists()


def test_client_retries_are_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Past the health check (server gone later), MLflow's own retries also end in ~15 s."""
    from compress.tracking import mlflow_tracker

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setattr(mlflow_tracker, "check_reachable", lambda uri: None)
    start = time.monotonic()
    with pytest.raises(UserError, match="cannot use MLflow experiment"):
        MlflowTracker()
    assert time.monotonic() - start < 15


# --- real server -------------------------------------------------------------------------

@pytest.mark.server
def test_server_roundtrip(mlflow_server: str, tmp_path: Path, onnx_file: Path,
                          monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    tracker = MlflowTracker(experiment=f"t-server-{uuid.uuid4().hex[:8]}")
    assert tracker.describe() == mlflow_server
    stage = stage_folder(tmp_path)
    name = f"srv-linear-{uuid.uuid4().hex[:8]}"
    with tracker.run("pipeline") as parent:
        tracker.log_params({"train": {"epochs": 3, "lr": 0.01}})
        with tracker.run("prune") as child:
            tracker.log_history([{"epoch": e, "loss": 1.0 / (e + 1)} for e in range(3)])
            tracker.log_artifacts(stage, artifact_path="stage")
            tracker.set_tags({OUT_DIR_TAG: str(stage)})
            result = tracker.register_onnx(onnx_file, name, tags={"method": "cpna"},
                                           alias="candidate")
    assert capfd.readouterr() == ("", "")
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "mlruns").exists()

    client = client_for(mlflow_server)
    run = client.get_run(child)
    assert run.info.artifact_uri.startswith("mlflow-artifacts:")  # proxied over HTTP
    assert run.data.tags["mlflow.parentRunId"] == parent
    assert client.get_run(parent).data.params == {"train.epochs": "3", "train.lr": "0.01"}
    assert [m.step for m in client.get_metric_history(child, "loss")] == [0, 1, 2]
    version = client.get_model_version_by_alias(name, "candidate")
    assert version.version == str(result["version"]) and version.tags == {"method": "cpna"}
    expected = np.ones((2, 4), dtype=np.float32) @ WEIGHT + BIAS
    np.testing.assert_allclose(predict(result["model_uri"], mlflow_server), expected, rtol=1e-6)

    # The stage folder is gone locally: fetch_run downloads it from the server.
    original = (stage / "stage.json").read_text()
    shutil.rmtree(stage)
    fetched = tracker.fetch_run(child, tmp_path / "fetched")
    assert fetched.is_relative_to(tmp_path / "fetched")
    assert (fetched / "stage.json").read_text() == original
    assert (fetched / "plots" / "curve.txt").is_file()
    with pytest.raises(UserError, match=f"no MLflow run .* in {mlflow_server}"):
        tracker.fetch_run(uuid.uuid4().hex, tmp_path / "nothing")

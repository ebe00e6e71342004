"""The CLI with MLflow: the local store, a real server over HTTP, the registry, failures."""

import time

import pytest

from tests.e2e.helpers import TINY_CPNA, TINY_SETS, assert_user_error, compress, compress_json, sets

TINY = [*sets(*TINY_SETS, *TINY_CPNA), "--seed", "2"]


def _client(uri):
    from mlflow.tracking import MlflowClient
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("local")
    import os
    old = os.environ.pop("MLFLOW_TRACKING_URI", None)
    try:
        out = compress_json("prune", "--method", "cpna", *TINY, cwd=root)
    finally:
        if old is not None:
            os.environ["MLFLOW_TRACKING_URI"] = old
    return root, out, f"sqlite:///{root}/mlflow.db"


def test_local_store_holds_a_parent_run_with_nested_stages(local_run):
    root, out, uri = local_run
    assert (root / "mlflow.db").is_file() and (root / "mlruns").is_dir()
    client = _client(uri)
    parent = client.get_run(out["pipeline_run_id"])
    exp = parent.info.experiment_id
    children = client.search_runs([exp], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    stages = sorted(r.data.tags["compress.stage"] for r in children)
    assert stages == ["export", "pretrain", "prune"]
    prune = client.get_run(out["run_id"])
    assert prune.data.params["method.name"] == "cpna"
    assert prune.data.params["data.k"] == "2"
    assert prune.data.metrics["density"] == pytest.approx(out["density"])
    hist = client.get_metric_history(out["run_id"], "val_auc")
    epochs = 2 * 3 + 1  # two annealing phases of 3 epochs, 1 final epoch
    assert [m.step for m in hist] == list(range(epochs + 1))  # + the final value
    names = {a.path for a in client.list_artifacts(out["run_id"], "stage")}
    for f in ("masks.safetensors", "masks.json", "weights.safetensors", "init.safetensors",
              "density.png", "stage.json", "history.json"):
        assert f"stage/{f}" in names
    export_run = next(r for r in children if r.data.tags["compress.stage"] == "export")
    assert "stage/model.onnx" in {a.path for a in client.list_artifacts(export_run.info.run_id, "stage")}


def test_run_id_works_as_from_and_register_sets_alias(local_run):
    root, out, uri = local_run
    re = compress_json("retrain", "--from", out["run_id"], "--mode", "rewind", "--out", "re",
                       *TINY, cwd=root)
    assert re["density"] == pytest.approx(out["density"])
    ex = compress_json("export", "--from", out["run_id"], "--register", "tiny-cpna", "--out", "ex",
                       *TINY, cwd=root)
    reg = ex["registered"]
    assert reg["name"] == "tiny-cpna" and reg["alias"] == "candidate"
    client = _client(uri)
    mv = client.get_model_version_by_alias("tiny-cpna", "candidate")
    assert str(mv.version) == str(reg["version"])
    assert mv.tags["method"] == "cpna" and mv.tags["source_run"] == out["run_id"]
    assert float(mv.tags["density"]) == pytest.approx(out["density"], rel=1e-4)
    assert "metric.test_auc" in mv.tags and mv.tags["dataset"].startswith("xor2d")
    import mlflow.onnx
    import numpy as np
    import onnxruntime as ort
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    (root / "dl").mkdir()
    model = mlflow.onnx.load_model("models:/tiny-cpna@candidate", dst_path=str(root / "dl"))
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    logits = sess.run(None, {"input": np.zeros((3, 6), np.float32)})[0]
    assert logits.shape == (3, 1)
    from tests.fixtures_mlflow import assert_signature_matches_onnx, registered_model_folder
    folder = registered_model_folder("models:/tiny-cpna@candidate", uri, root / "dl-sig")
    example, predicted = assert_signature_matches_onnx(folder)
    from mlflow.models import Model
    signature = Model.load(folder).signature
    assert [(s.name, s.type.name, s.shape) for s in signature.inputs] == \
        [("input", "float32", (-1, 6))]
    assert [(s.name, s.type.name, s.shape) for s in signature.outputs] == \
        [("logits", "float32", (-1, 1))]
    rows = example["input"] if isinstance(example, dict) else example  # two test rows
    assert np.asarray(rows).shape == (2, 6) and predicted["logits"].shape == (2, 1)


def test_parity_failure_registers_nothing(local_run):
    root, out, uri = local_run
    r = compress("export", "--from", out["run_id"], "--register", "never", "--out", "bad",
                 "--set", "export.rtol=1e-30", *TINY, cwd=root)
    assert_user_error(r, "relative error")
    assert not (root / "bad").exists()
    from mlflow.exceptions import MlflowException
    with pytest.raises(MlflowException):
        _client(uri).get_registered_model("never")


@pytest.mark.parametrize("args, words", [(["--register", "team/model"], "registered model name"),
                                         (["--register", "ok", "--alias", "latest"], "alias")])
def test_bad_registry_name_or_alias_fails_before_export(local_run, args, words):
    root, out, uri = local_run
    r = compress("export", "--from", out["run_id"], "--out", "never", *args, *TINY, cwd=root)
    assert_user_error(r, words)
    assert not (root / "never").exists()


def test_unreachable_server_fails_fast_and_clearly(tmp_path):
    from tests.fixtures_mlflow import free_port
    t0 = time.monotonic()
    r = compress("pretrain", *TINY, cwd=tmp_path,
                 env={"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{free_port()}"})
    assert time.monotonic() - t0 < 20
    assert_user_error(r, "unreachable", "MLFLOW_TRACKING_URI")


@pytest.mark.server
def test_pipeline_against_a_real_server(mlflow_server, tmp_path):
    uri = mlflow_server if isinstance(mlflow_server, str) else mlflow_server.uri
    spec = tmp_path / "p.yaml"
    spec.write_text(
        "name: served\nconfig:\n  data: {name: xor, k: 2, p: 6, n_train: 256, n_val: 64, n_test: 64}\n"
        "  model: {name: mlp, hidden: [16]}\n  train: {duration: 2ep, batch_size: 64}\n"
        "  export: {registry_name: served-model, alias: candidate}\n"
        "stages:\n  - {id: dense, stage: pretrain}\n"
        "  - {id: cpna, stage: prune, from: dense, set: {method: {name: cpna, anneal_epochs: 2,"
        " final_epochs: 1, output_connections: 4, input_connections: 8}}}\n"
        "  - {id: onnx, stage: export, from: cpna}\n")
    out = compress_json("pipeline", "run", str(spec), cwd=tmp_path, env={"MLFLOW_TRACKING_URI": uri})
    assert not (tmp_path / "mlflow.db").exists()  # everything went over HTTP
    client = _client(uri)
    parent = client.get_run(out["pipeline_run_id"])
    assert parent.info.status == "FINISHED"
    kids = client.search_runs([parent.info.experiment_id],
                              f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert len(kids) == 3
    mv = client.get_model_version_by_alias("served-model", "candidate")
    assert mv.tags["method"] == "cpna"
    onnx_run = out["stages"]["onnx"]["run_id"]
    assert "stage/model.onnx" in {a.path for a in client.list_artifacts(onnx_run, "stage")}
    # a run id from the server resolves as --from, even with the local folder gone
    import shutil
    shutil.rmtree(out["stages"]["cpna"]["artifacts"]["dir"])
    re = compress_json("retrain", "--from", out["stages"]["cpna"]["run_id"], "--mode", "finetune",
                       *sets("train.duration=1ep"), cwd=tmp_path, env={"MLFLOW_TRACKING_URI": uri})
    assert re["density"] == pytest.approx(out["stages"]["cpna"]["density"])


def test_imp_through_the_cli_logs_rounds_plot_and_onnx(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    out = compress_json("prune", "--method", "imp", *sets(*TINY_SETS), "--set", "method.rounds=3",
                        "--set", "method.controls=[reinit, random_prune]", cwd=tmp_path)
    curve = out["curve"]
    assert [r["round"] for r in curve] == [1, 2, 3]
    assert all(a["density"] > b["density"] for a, b in zip(curve, curve[1:]))
    assert {"ticket_test_accuracy", "reinit_test_accuracy", "random_prune_test_accuracy"} <= set(curve[0])
    assert out["artifacts"]["curve_plot"].endswith("curve.png")
    assert open(out["artifacts"]["curve_plot"], "rb").read(4) == b"\x89PNG"
    assert out["artifacts"]["onnx"].endswith("model.onnx")
    client = _client(f"sqlite:///{tmp_path}/mlflow.db")
    prune = client.get_run(out["run_id"])
    rounds = client.search_runs([prune.info.experiment_id],
                                f"tags.mlflow.parentRunId = '{out['run_id']}'")
    assert sorted(r.data.tags["compress.round"] for r in rounds) == ["1", "2", "3"]
    for r in rounds:
        assert "round/masks.safetensors" in {a.path for a in client.list_artifacts(r.info.run_id, "round")}
        assert "ticket_test_accuracy" in r.data.metrics
    assert "stage/curve.png" in {a.path for a in client.list_artifacts(out["run_id"], "stage")}


@pytest.fixture(scope="module")
def reg_model(local_run):
    """Two versions of `reg-model`, exported from the same prune run."""
    root, out, uri = local_run
    for i in (1, 2):
        compress_json("export", "--from", out["run_id"], "--register", "reg-model", "--out",
                      f"reg{i}", *TINY, cwd=root, env={"MLFLOW_TRACKING_URI": uri})
    return local_run


def test_registry_list_show_promote_compare(reg_model):
    root, out, uri = reg_model
    env = {"MLFLOW_TRACKING_URI": uri}
    models = {m["name"]: m for m in compress_json("registry", "list", cwd=root, env=env)}
    assert models["reg-model"]["versions"] == 2 and models["reg-model"]["latest"] == 2
    assert models["reg-model"]["aliases"] == {"candidate": "2"}

    promoted = compress_json("registry", "promote", "reg-model", "1", "--alias", "champion",
                             cwd=root, env=env)
    assert promoted == {"name": "reg-model", "alias": "champion", "version": "1", "previous": None}
    again = compress_json("registry", "promote", "reg-model", "2", "--alias", "champion",
                          cwd=root, env=env)
    assert again["previous"] == "1"
    assert str(_client(uri).get_model_version_by_alias("reg-model", "champion").version) == "2"

    shown = compress_json("registry", "show", "reg-model", cwd=root, env=env)
    assert [v["aliases"] for v in shown["versions"]] == [[], ["candidate", "champion"]]
    assert all(v["tags"]["method"] == "cpna" and v["tags"]["source_run"] == out["run_id"]
               for v in shown["versions"])

    cmp = compress_json("registry", "compare", "reg-model", "1", "2", cwd=root, env=env)
    rows = {r["key"]: r for r in cmp["rows"]}
    assert rows["method"]["1"] == rows["method"]["2"] == "cpna"
    assert rows["run.onnx_bytes"]["1"] > 0 and "run.onnx_test_accuracy" in rows
    table = compress("registry", "compare", "reg-model", "1", "2", cwd=root, env=env)
    assert table.returncode == 0 and "run.onnx_bytes" in table.stdout


@pytest.mark.parametrize("args, words", [
    (["show", "nope"], ["no registered model 'nope'", "reg-model"]),
    (["promote", "reg-model", "9"], ["no version '9'", "versions: 1, 2"]),
    (["promote", "reg-model", "1", "--alias", "v2"], ["invalid model alias"]),
    (["compare", "reg-model", "1", "x"], ["no version 'x'"]),
])
def test_registry_mistakes_are_one_line(reg_model, args, words):
    root, _, uri = reg_model
    r = compress("registry", *args, cwd=root, env={"MLFLOW_TRACKING_URI": uri})
    assert_user_error(r, *words)

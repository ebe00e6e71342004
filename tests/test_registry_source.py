"""A model from the MLflow registry as the source: `--from models:/NAME@ALIAS`.

The test registers a trained model the way a training team does (`mlflow.pytorch.log_model`,
both serializations), compresses it from its alias, and checks the import stage evaluates the
registered weights, the compressed ONNX is registered with its lineage, and bad URIs are one
line.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch

from tests.e2e.helpers import assert_user_error, compress, compress_json, sets
from tests.test_user_models import MODEL_FILE

DIGITS = ["data.name=digits", "method.finetune=1ep", "export.benchmark=false"]


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """A local MLflow store holding `digits-net` twice: v1 pickled (@champion), v2 pt2 (@traced)."""
    import importlib.util

    import mlflow
    root = tmp_path_factory.mktemp("registry")
    (root / "net.py").write_text(MODEL_FILE)
    spec = importlib.util.spec_from_file_location("registry_net", root / "net.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["registry_net"] = module
    spec.loader.exec_module(module)
    from compress.data import load_dataset
    data = load_dataset("digits", {})
    torch.manual_seed(1)
    model = module.build(width=6)
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    for i in range(0, len(data.train.y), 64):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(data.train.x[i:i + 64]),
                                          data.train.y[i:i + 64]).backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        acc = int((model(data.test.x).argmax(1) == data.test.y).sum()) / len(data.test.y)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)  # an earlier test in this process may have set another
    try:
        with mlflow.start_run():
            mlflow.pytorch.log_model(model, name="model", registered_model_name="digits-net",
                                     serialization_format="pickle",
                                     code_paths=[str(root / "net.py")], pip_requirements=["torch"])
            mlflow.pytorch.log_model(model, name="traced", registered_model_name="digits-net",
                                     input_example=data.test.x[:2].numpy(),
                                     pip_requirements=["torch"])  # inferring them costs ~15 s
        client = mlflow.MlflowClient(uri)
        client.set_registered_model_alias("digits-net", "champion", "1")
        client.set_registered_model_alias("digits-net", "traced", "2")
    finally:
        mlflow.set_tracking_uri(None)
        mlflow.set_registry_uri(None)
    return root, acc, {"MLFLOW_TRACKING_URI": uri}


def test_a_pickled_registered_model_is_imported_pruned_exported_and_registered(registry):
    root, acc, env = registry
    out = compress_json("prune", "--from", "models:/digits-net@champion", "--method", "l1filter",
                        "--out", "pickled", "--register", "digits-small", *sets(*DIGITS),
                        cwd=root, env=env)
    assert list(out["stages"]) == ["import", "prune", "export"]
    imported = out["stages"]["import"]
    assert imported["metrics"]["test_accuracy"] == pytest.approx(acc, abs=1e-9)
    assert imported["model_ref"]["pinned_uri"] == "models:/digits-net/1"
    assert out["export_metrics"]["parity_rel_error"] <= 1e-5
    shown = json.loads(compress("registry", "show", "digits-small", "--json", cwd=root,
                                env=env).stdout)
    tags = shown["versions"][0]["tags"]
    assert tags["source_model_uri"] == "models:/digits-net/1"
    assert tags["source_model_version"] == "1"
    assert len(tags["data_fingerprint"]) == 16
    # An image model: the signature is the (-1, 1, 8, 8) float32 input of the graph
    from mlflow.models import Model

    from tests.fixtures_mlflow import assert_signature_matches_onnx, registered_model_folder
    folder = registered_model_folder("models:/digits-small@candidate", env["MLFLOW_TRACKING_URI"],
                                     root / "dl")
    example, predicted = assert_signature_matches_onnx(folder)
    assert [(s.name, s.type.name, s.shape) for s in Model.load(folder).signature.inputs] == \
        [("input", "float32", (-1, 1, 8, 8))]
    rows = example["input"] if isinstance(example, dict) else example  # two test images
    assert np.asarray(rows).shape == (2, 1, 8, 8) and predicted["logits"].shape == (2, 10)


def test_a_traced_registered_model_gives_its_weights_to_your_architecture(registry):
    root, acc, env = registry
    bare = compress("prune", "--from", "models:/digits-net@traced", "--method", "l1filter",
                    "--no-export", *sets(*DIGITS), cwd=root, env=env)
    assert_user_error(bare, "does not fit the model")
    out = compress_json("prune", "--from", "models:/digits-net@traced", "--method", "l1filter",
                        "--out", "traced", "--no-track",
                        *sets(*DIGITS, "model.name=file:net.py:build"), cwd=root, env=env)
    imported = out["stages"]["import"]
    assert imported["metrics"]["test_accuracy"] == pytest.approx(acc, abs=1e-9)
    assert imported["model_ref"]["weights"] == "models:/digits-net/2"


@pytest.mark.parametrize("uri, words", [
    ("models:/digits-net@nobody", ["no alias 'nobody'"]),
    ("models:/digits-net/9", ["no version 9"]),
    ("models:/not-registered@champion", ["not-registered"]),
    ("models:/digits-net", ["models:/NAME@ALIAS or models:/NAME/VERSION"]),
])
def test_bad_registry_sources_are_one_line(registry, uri, words):
    root, _, env = registry
    r = compress("prune", "--from", uri, "--method", "l1filter", *sets(*DIGITS), cwd=root, env=env)
    assert_user_error(r, *words)


def test_a_registered_model_is_not_a_stage_source(registry):
    root, _, env = registry
    r = compress("export", "--from", "models:/digits-net@champion", cwd=root, env=env)
    assert_user_error(r, "registered model, not a stage", "compress prune --from")

"""The table preprocessing graph: every column type, unseen categories and the MLflow pyfunc
DataFrame path give what compress.data.table_encoding.encode + the network give."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from compress.data import load_dataset
from compress.export.onnx import ExportError, export_onnx, ort_session
from compress.export.preprocess import prepend_table, raw_feed, raw_inputs
from compress.models.mlp import MLP
from tests.fixtures_data import mixed_frame, write_table


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """A table with double, long, boolean, string-categorical and integer-categorical columns."""
    frame = mixed_frame(120)
    path = write_table(frame, tmp_path_factory.mktemp("mixed") / "mixed.parquet")
    data = load_dataset("table", {"path": str(path), "target": "label",
                                  "categorical": ["city", "zone"]})
    torch.manual_seed(0)
    model = MLP(data.in_shape[0], [8], 3).eval()
    return data, model


def _wrapped(data, model, tmp_path):
    path = export_onnx(model, data.test.head(2), tmp_path / "m.onnx")
    return prepend_table(path, data.preprocess)


def test_every_column_type_matches_the_encoded_rows(mixed, tmp_path):
    data, model = mixed
    assert [(c["name"], c["type"], c["kind"]) for c in raw_inputs(data.preprocess)] == [
        ("size", "double", "numeric"), ("count", "long", "numeric"), ("flag", "boolean", "numeric"),
        ("city", "string", "categorical"), ("zone", "long", "categorical")]
    assert data.preprocess["encoded"][3:] == ["city=lima", "city=oslo", "city=rome",
                                              "zone=3", "zone=7", "zone=11"]
    session = ort_session(_wrapped(data, model, tmp_path))
    n = len(data.test)
    got = session.run(None, raw_feed(data.preprocess, data.raw_rows("test", slice(0, n))))[0]
    with torch.no_grad():
        want = model(data.test.head(n)).numpy()
    assert np.allclose(got, want, rtol=1e-6, atol=1e-6)


def test_unseen_categories_encode_as_zeros_like_the_data_layer(mixed, tmp_path):
    from compress.data.table_encoding import encode
    import pandas as pd
    data, model = mixed
    rows = pd.DataFrame({"size": [4.0, 6.5], "count": [3, 40], "flag": [True, False],
                         "city": ["paris", "rome"], "zone": [5, 7]})
    x = encode(rows, data.preprocess["columns"])
    assert x[0, 3:6].tolist() == [0, 0, 0] and x[1, 3:6].tolist() == [0, 0, 1]
    assert x[0, 6:].tolist() == [0, 0, 0] and x[1, 6:].tolist() == [0, 1, 0]
    session = ort_session(_wrapped(data, model, tmp_path))
    got = session.run(None, raw_feed(data.preprocess, {c: rows[c].to_numpy() for c in rows}))[0]
    with torch.no_grad():
        assert np.allclose(got, model(torch.from_numpy(x)).numpy(), rtol=1e-6, atol=1e-6)


def test_mlflow_pyfunc_takes_a_dataframe_of_raw_rows(mixed, tmp_path):
    pytest.importorskip("mlflow")
    import mlflow.onnx
    import onnx
    data, model = mixed
    wrapped = _wrapped(data, model, tmp_path)
    mlflow.onnx.save_model(onnx.load(str(wrapped)), str(tmp_path / "saved"),
                           onnx_execution_providers=["CPUExecutionProvider"])
    pyfunc = mlflow.pyfunc.load_model(str(tmp_path / "saved"))
    import pandas as pd
    feed = raw_feed(data.preprocess, data.raw_rows("test", slice(0, 5)))
    # pandas >= 3 stores strings as its own `str` dtype, which mlflow's ONNX wrapper hands to
    # onnxruntime unconverted: string columns go in as dtype object (or pass the dict itself)
    frame = pd.DataFrame({k: pd.Series(v, dtype=object if v.dtype == object else v.dtype)
                          for k, v in feed.items()})
    with torch.no_grad():
        want = model(data.test.head(5)).numpy()
    out = pyfunc.predict(frame)
    # (mlflow flattens each output into one DataFrame column)
    assert np.allclose(out["logits"].to_numpy().reshape(want.shape), want, rtol=1e-5, atol=1e-6)
    assert np.allclose(pyfunc.predict(feed)["logits"], want, rtol=1e-5, atol=1e-6)


def test_a_column_named_like_the_output_is_refused(mixed, tmp_path):
    data, model = mixed
    path = export_onnx(model, data.test.head(2), tmp_path / "m.onnx")
    clash = {**data.preprocess, "columns": [{**data.preprocess["columns"][0], "name": "logits"},
                                            *data.preprocess["columns"][1:]]}
    with pytest.raises(ExportError, match="named 'logits'"):
        prepend_table(path, clash)

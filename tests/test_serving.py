"""The serving images' entry logic without Docker: the MLflow signature read from an ONNX graph,
docker/serve_app.py (MLflow's scoring server behind the request-size limit and the NaN/inf
refusal) driven in-process over ASGI, and docker/serve.py started as the image starts it
(a real uvicorn on 127.0.0.1) with its HOST-following health check."""

from __future__ import annotations

import asyncio
import http.client
import http.server
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("mlflow")
onnx = pytest.importorskip("onnx")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from compress.tracking.signature import onnx_signature  # noqa: E402
from tests.fixtures_mlflow import assert_signature_matches_onnx, free_port  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DOCKER = ROOT / "docker"
WEIGHT = np.array([[1.0], [2.0], [3.0], [4.0]], dtype=np.float32)
BIAS = np.array([0.5], dtype=np.float32)


def load(name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"docker_{name}", DOCKER / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


serve_app = load("serve_app")
serve = load("serve")


def linear_onnx() -> onnx.ModelProto:
    """y = x @ WEIGHT + BIAS, x of shape (n, 4); the weights also listed as graph inputs (old
    exporters do that: they are not inputs a caller feeds)."""
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Add", ["h", "b"], ["y"])],
        "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4]),
         helper.make_tensor_value_info("W", TensorProto.FLOAT, [4, 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 1])],
        [numpy_helper.from_array(WEIGHT, "W"), numpy_helper.from_array(BIAS, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    return model


def save_mlflow(model: onnx.ModelProto, folder: Path, example) -> Path:
    """As MlflowTracker._log_onnx logs it: the graph's signature and an input example."""
    import mlflow.onnx

    mlflow.onnx.save_model(model, str(folder), signature=onnx_signature(model),
                           input_example=example, onnx_execution_providers=["CPUExecutionProvider"])
    return folder


@pytest.fixture(scope="module")
def linear_folder(tmp_path_factory) -> Path:
    return save_mlflow(linear_onnx(), tmp_path_factory.mktemp("linear") / "model",
                       np.ones((2, 4), dtype=np.float32))


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    """A table model on raw columns of every kind (double, long, boolean, string, categorical
    long), saved as an MLflow model with its first two raw test rows as the example."""
    import torch

    from compress.data import load_dataset
    from compress.export.onnx import export_onnx
    from compress.export.preprocess import prepend_table, raw_feed
    from compress.models.mlp import MLP
    from tests.fixtures_data import mixed_frame, write_table

    root = tmp_path_factory.mktemp("table")
    frame = mixed_frame(90)
    data = load_dataset("table", {"path": str(write_table(frame, root / "t.parquet")),
                                  "target": "label", "categorical": ["city", "zone"]})
    torch.manual_seed(0)
    net = MLP(data.in_shape[0], [8], 3).eval()
    path = prepend_table(export_onnx(net, data.test.head(2), root / "m.onnx"), data.preprocess)
    rows = raw_feed(data.preprocess, data.raw_rows("test", slice(0, 3)))
    example = {k: v[:2] for k, v in rows.items()}
    folder = save_mlflow(onnx.load(str(path)), root / "model", example)
    return folder, path, rows


# --- the signature -----------------------------------------------------------------------------

def test_signature_is_the_graphs_inputs_and_outputs(linear_folder, table):
    signature = onnx_signature(linear_onnx())
    assert [(s.name, s.type.name, s.shape) for s in signature.inputs.inputs] == \
        [("x", "float32", (-1, 4))]  # W is an initializer, not an input
    assert [(s.name, s.type.name, s.shape) for s in signature.outputs.inputs] == \
        [("y", "float32", (-1, 1))]
    assert_signature_matches_onnx(linear_folder)
    folder, _, _ = table
    example, predicted = assert_signature_matches_onnx(folder)
    from mlflow.models import Model
    assert [(s.name, s.type.name, s.shape) for s in Model.load(folder).signature.inputs.inputs] == \
        [("size", "float64", (-1,)), ("count", "int64", (-1,)), ("flag", "bool", (-1,)),
         ("city", "object", (-1,)), ("zone", "int64", (-1,))]
    assert predicted["logits"].shape == (2, 3)


def test_a_graph_input_without_a_numpy_type_is_refused():
    model = linear_onnx()
    model.graph.input[0].type.tensor_type.elem_type = 0  # UNDEFINED
    with pytest.raises(ValueError, match="UNDEFINED has no numpy type"):
        onnx_signature(model)


# --- the app, in-process over ASGI -------------------------------------------------------------

def call(app, method: str, path: str, body: bytes = b"", chunks: list[bytes] | None = None,
         content_type: str = "application/json") -> tuple[int, dict | str]:
    """One HTTP request through the ASGI app: (status, JSON body or text). With `chunks`, the
    body is streamed without a Content-Length (chunked transfer)."""
    parts = chunks if chunks is not None else [body]
    messages = [{"type": "http.request", "body": c, "more_body": i < len(parts) - 1}
                for i, c in enumerate(parts)]
    headers = [(b"content-type", content_type.encode())]
    if chunks is None:
        headers.append((b"content-length", str(len(body)).encode()))
    received, reply = [], {"status": None, "body": b""}

    async def receive():
        if messages:
            received.append(1)
            return messages.pop(0)
        await asyncio.sleep(3600)

    async def send(message):
        if message["type"] == "http.response.start":
            reply["status"] = message["status"]
        else:
            reply["body"] += message.get("body", b"")

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
             "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
             "root_path": "", "headers": headers, "client": ("127.0.0.1", 1),
             "server": ("127.0.0.1", 80)}
    asyncio.run(app(scope, receive, send))
    try:
        return reply["status"], json.loads(reply["body"])
    except ValueError:
        return reply["status"], reply["body"].decode()


@pytest.fixture(scope="module")
def linear_app(linear_folder):
    return serve_app.build_app(str(linear_folder), max_bytes=2000)


def test_the_app_predicts_and_enforces_the_signature(linear_app):
    status, body = call(linear_app, "POST", "/invocations", b'{"inputs": [[1, 2, 3, 4]]}')
    assert status == 200 and body == {"predictions": {"y": [[30.5]]}}
    status, body = call(linear_app, "POST", "/invocations", b'{"inputs": [[1, 2, 3]]}')
    assert status == 400 and "does not match expected shape (-1, 4)" in body["message"]
    status, body = call(linear_app, "POST", "/invocations",
                        b'{"dataframe_split": {"columns": ["a"], "data": [[1]]}}')
    assert status == 400 and "missing inputs ['x']" in body["message"]
    assert call(linear_app, "GET", "/ping")[0] == 200


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity"])
def test_the_app_refuses_nan_and_infinity(linear_app, value):
    body = f'{{"inputs": [[1, 2, 3, 4], [1, {value}, 3, 4]]}}'.encode()
    status, reply = call(linear_app, "POST", "/invocations", body)
    assert status == 400, reply
    assert "input 'x' holds NaN or infinity (first at index [1, 1])" in reply["message"]


def test_the_app_refuses_bodies_over_the_limit(linear_app):
    row = "[1, 2, 3, 4]"
    fits = f'{{"inputs": [{", ".join([row] * 140)}]}}'.encode()
    over = f'{{"inputs": [{", ".join([row] * 160)}]}}'.encode()
    assert len(fits) <= 2000 < len(over)
    status, reply = call(linear_app, "POST", "/invocations", fits)
    assert status == 200 and len(reply["predictions"]["y"]) == 140
    status, reply = call(linear_app, "POST", "/invocations", over)
    assert status == 413 and reply["error_code"] == "REQUEST_TOO_LARGE"
    assert "MAX_REQUEST_MB=0.002 (2000 bytes)" in reply["message"]
    # Streamed without a Content-Length: refused once the bytes read pass the limit
    status, reply = call(linear_app, "POST", "/invocations",
                         chunks=[over[i:i + 500] for i in range(0, len(over), 500)])
    assert status == 413
    status, reply = call(linear_app, "POST", "/invocations",
                         chunks=[fits[i:i + 500] for i in range(0, len(fits), 500)])
    assert status == 200 and len(reply["predictions"]["y"]) == 140


def test_the_limit_stops_reading_a_stream_that_passes_it():
    seen = []

    async def app(scope, receive, send):  # never reached
        seen.append(scope)

    limited = serve_app.BodyLimit(app, max_bytes=10)
    chunks = [b"x" * 6, b"x" * 6, b"x" * 6, b"x" * 6]
    status, _ = call(limited, "POST", "/invocations", chunks=chunks)
    assert status == 413 and seen == []
    # A Content-Length over the limit: answered before a byte of the body is read
    sent = []

    async def receive():
        raise AssertionError("the body was read")

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/invocations",
             "headers": [(b"content-length", b"134000000")]}
    asyncio.run(limited(scope, receive, send))
    assert sent[0]["status"] == 413 and seen == []


def test_the_app_serves_a_table_model_on_raw_columns(table):
    import onnxruntime as ort

    folder, path, rows = table
    app = serve_app.build_app(str(folder), max_bytes=10**6)
    request = {name: values.tolist() for name, values in rows.items()}
    status, reply = call(app, "POST", "/invocations", json.dumps({"inputs": request}).encode())
    assert status == 200, reply
    want = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, rows)[0]
    np.testing.assert_allclose(reply["predictions"]["logits"], want, rtol=1e-5, atol=1e-6)
    holes = {**request, "size": [request["size"][0], None, request["size"][2]]}
    status, reply = call(app, "POST", "/invocations", json.dumps({"inputs": holes}).encode())
    assert status == 400 and "input 'size' holds NaN or infinity (first at index [1])" \
        in reply["message"]
    missing = {k: v for k, v in request.items() if k != "city"}
    status, reply = call(app, "POST", "/invocations", json.dumps({"inputs": missing}).encode())
    assert status == 400 and "city" in reply["message"]


@pytest.mark.parametrize("value, expected", [(None, 16_000_000), ("", 16_000_000),
                                             ("2", 2_000_000), (" 0.5 ", 500_000)])
def test_max_request_mb(value, expected):
    assert serve_app.max_request_bytes(value) == expected


@pytest.mark.parametrize("value", ["0", "-1", "abc", "nan", "inf", "1e-9"])
def test_max_request_mb_must_be_positive(value):
    with pytest.raises(ValueError, match="MAX_REQUEST_MB=.* is not a positive number"):
        serve_app.max_request_bytes(value)


def test_entrypoint_refuses_bad_settings_in_one_line(linear_folder, monkeypatch, capsys):
    monkeypatch.setenv("MODEL_URI", str(linear_folder))
    monkeypatch.delenv("ONNX_PROVIDERS", raising=False)
    monkeypatch.setenv("MAX_REQUEST_MB", "lots")
    assert serve.main(["serve.py"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "[serve] error: MAX_REQUEST_MB='lots' is not a positive number of megabytes (default 16)"]
    monkeypatch.setenv("MAX_REQUEST_MB", "1")
    monkeypatch.setenv("TIMEOUT", "0")
    assert serve.main(["serve.py"]) == 2
    assert "TIMEOUT='0'" in capsys.readouterr().err


# --- the health check follows HOST ------------------------------------------------------------

@pytest.mark.parametrize("host, url", [
    ("0.0.0.0", "http://127.0.0.1:8080/ping"), ("", "http://127.0.0.1:8080/ping"),
    ("::", "http://[::1]:8080/ping"), ("[::]", "http://[::1]:8080/ping"),
    ("127.0.0.2", "http://127.0.0.2:8080/ping"), ("fd00::5", "http://[fd00::5]:8080/ping"),
    ("model-server", "http://model-server:8080/ping")])
def test_health_url_follows_host(host, url):
    assert serve.health_url(host, "8080") == url


def test_health_check_process_finds_a_server_bound_to_host_only():
    """A server listening on 127.0.0.2 only: the HEALTHCHECK command with HOST=127.0.0.2
    passes, and fails where it would look on 127.0.0.1."""

    class Ping(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200 if self.path == "/ping" else 404)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.2", 0), Ping)
    port = str(server.server_address[1])
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        def check(host: str) -> int:
            env = {**os.environ, "HOST": host, "PORT": port}
            return subprocess.run([sys.executable, str(DOCKER / "serve.py"), "--health"],
                                  env=env, timeout=30).returncode
        assert check("127.0.0.2") == 0
        assert check("0.0.0.0") == 1  # 127.0.0.1: nothing listens there
    finally:
        server.shutdown()
        server.server_close()


# --- the entrypoint as the image runs it ------------------------------------------------------

def test_entrypoint_serves_with_the_limit_and_the_health_check(linear_folder, tmp_path):
    """docker/serve.py as the image's ENTRYPOINT (uvicorn, one worker) on 127.0.0.1."""
    port = str(free_port())
    env = {**os.environ, "MODEL_URI": str(linear_folder), "HOST": "127.0.0.1", "PORT": port,
           "MAX_REQUEST_MB": "0.01", "OMP_NUM_THREADS": "1"}
    env.pop("ONNX_PROVIDERS", None)
    log = (tmp_path / "serve.log").open("wb")
    proc = subprocess.Popen([sys.executable, str(DOCKER / "serve.py")], env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    health = [sys.executable, str(DOCKER / "serve.py"), "--health"]
    try:
        deadline = time.monotonic() + 120
        while subprocess.run(health, env=env, timeout=30).returncode != 0:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "the server did not answer /ping in 120 s"
            time.sleep(0.5)

        def post(body: bytes) -> tuple[int, dict]:
            conn = http.client.HTTPConnection("127.0.0.1", int(port), timeout=30)
            try:
                conn.request("POST", "/invocations", body=body,
                             headers={"Content-Type": "application/json"})
                reply = conn.getresponse()
                return reply.status, json.loads(reply.read())
            finally:
                conn.close()

        assert post(b'{"inputs": [[1, 2, 3, 4]]}') == (200, {"predictions": {"y": [[30.5]]}})
        status, reply = post(b'{"inputs": [[1, NaN, 3, 4]]}')
        assert status == 400 and "holds NaN or infinity" in reply["message"]
        big = json.dumps({"inputs": [[1.0, 2.0, 3.0, 4.0]] * 800}).encode()
        assert len(big) > 10_000
        status, reply = post(big)
        assert status == 413 and reply["error_code"] == "REQUEST_TOO_LARGE"
        assert post(b'{"inputs": [[0, 0, 0, 1]]}')[0] == 200  # still serving
    finally:
        os.killpg(proc.pid, 15)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()
        log.close()


def test_the_signature_casts_a_dataframe_with_pandas_strings(table):
    """pandas 3 reads text as its own string dtype, which onnxruntime does not take; the
    signature's object tensor converts it (without a signature this input fails)."""
    import mlflow.pyfunc
    import onnxruntime as ort
    import pandas as pd

    folder, path, rows = table
    frame = pd.DataFrame({k: (v.tolist() if v.dtype == object else v) for k, v in rows.items()})
    assert frame["city"].dtype != object
    got = mlflow.pyfunc.load_model(str(folder)).predict(frame)["logits"]
    want = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, rows)[0]
    np.testing.assert_allclose(got, want, rtol=1e-6)

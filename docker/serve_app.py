"""The ASGI app the serving images run under uvicorn: MLflow's scoring server for one model
(/invocations, /ping, /health, /version, the model's signature enforced), behind two guards.

- Request size: a body larger than MAX_REQUEST_MB (1 MB = 10^6 bytes) is answered 413 before
  the model sees it: at once when Content-Length says so, else as soon as the streamed
  (chunked) body passes the limit. Nothing larger than the limit is ever held in memory.
- Finite inputs: after MLflow has decoded a request and enforced the signature, an input that
  holds NaN or +-inf is answered 400, naming the input and the first bad position (a network
  maps NaN to NaN; nothing a caller should get back with 200).

Environment: COMPRESS_SERVE_MODEL (a local MLflow model folder; serve.py sets it),
MAX_REQUEST_MB, and MLflow's MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT. Only the standard library
is imported at module level (serve.py validates MAX_REQUEST_MB with it).
"""

from __future__ import annotations

import inspect
import json
import math
import os

MODEL_ENV = "COMPRESS_SERVE_MODEL"
MAX_REQUEST_ENV = "MAX_REQUEST_MB"
DEFAULT_MAX_REQUEST_MB = "16"
MB = 1_000_000


def max_request_bytes(value: str | None) -> int:
    """MAX_REQUEST_MB (default 16; fractions allowed) in bytes; ValueError if not > 0."""
    text = DEFAULT_MAX_REQUEST_MB if value is None or not value.strip() else value.strip()
    try:
        mb = float(text)
    except ValueError:
        mb = math.nan
    if not (math.isfinite(mb) and mb > 0) or int(mb * MB) < 1:
        raise ValueError(f"{MAX_REQUEST_ENV}={value!r} is not a positive number of megabytes "
                         f"(default {DEFAULT_MAX_REQUEST_MB})")
    return int(mb * MB)


# --- request size ------------------------------------------------------------------------------

class BodyLimit:
    """ASGI middleware: HTTP requests whose body exceeds `max_bytes` get 413; the others reach
    `app` with their body read in full (at most `max_bytes`) and replayed."""

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:
            try:
                if int(declared) > self.max_bytes:
                    return await self._too_large(send)
            except ValueError:
                pass  # the HTTP server refuses a malformed Content-Length itself
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                return await self._too_large(send)
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body, replayed = b"".join(chunks), False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: wait for the disconnect

        return await self.app(scope, replay, send)

    async def _too_large(self, send) -> None:
        message = (f"request body larger than {MAX_REQUEST_ENV}={self.max_bytes / MB:g} "
                   f"({self.max_bytes} bytes); send fewer rows per request or raise "
                   f"{MAX_REQUEST_ENV} on the server")
        payload = json.dumps({"error_code": "REQUEST_TOO_LARGE", "message": message}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(payload)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": payload})


# --- finite inputs -----------------------------------------------------------------------------

def first_nonfinite(data) -> tuple[str, tuple[int, ...]] | None:
    """(input name, index) of the first NaN/inf in a decoded model input, else None.

    `data` as MLflow hands it to the model: a dict of arrays (named inputs), a pandas
    DataFrame, or one array (its name is then "input")."""
    import numpy as np

    if isinstance(data, dict):
        items = data.items()
    elif hasattr(data, "columns") and hasattr(data, "to_numpy"):  # a DataFrame
        items = ((str(c), data[c].to_numpy()) for c in data.columns)
    else:
        items = [("input", data)]
    for name, values in items:
        array = np.asarray(values)
        if array.dtype.kind in "fc":
            bad = ~np.isfinite(array)
            if bad.any():
                return name, tuple(int(i) for i in np.argwhere(bad)[0])
    return None


def refuse_nonfinite(model) -> None:
    """Make the loaded pyfunc `model` refuse non-finite inputs (after the signature is enforced,
    before onnxruntime runs)."""
    from mlflow.exceptions import MlflowException

    predict = model._predict_fn  # what PyFuncModel calls with the schema-enforced input
    takes_params = "params" in inspect.signature(predict).parameters

    def guarded(data, params=None):
        found = first_nonfinite(data)
        if found is not None:
            name, index = found
            raise MlflowException.invalid_parameter_value(
                f"input {name!r} holds NaN or infinity (first at index {list(index)}); the "
                "model is defined on finite numbers only")
        return predict(data, params=params) if takes_params else predict(data)

    model._predict_fn = guarded


# --- the app -----------------------------------------------------------------------------------

def build_app(model_path: str, max_bytes: int):
    from mlflow.pyfunc import scoring_server

    model = scoring_server.load_model_with_mlflow_config(model_path)
    refuse_nonfinite(model)
    return BodyLimit(scoring_server.init(model), max_bytes)


def create_app():
    """uvicorn --factory serve_app:create_app (configured by the environment)."""
    return build_app(os.environ[MODEL_ENV], max_request_bytes(os.environ.get(MAX_REQUEST_ENV)))

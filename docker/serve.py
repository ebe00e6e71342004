"""Entrypoint of the serving images: uvicorn running serve_app.py, MLflow's scoring server for
the model (ONNX flavor, signature enforced) behind a request-size limit and a NaN/inf check.

Environment:
  MODEL_URI        models:/NAME@ALIAS or models:/NAME/VERSION (needs MLFLOW_TRACKING_URI),
                   runs:/RUN_ID/model, or a local MLflow model folder (default /opt/model:
                   mount or COPY a downloaded model there). A remote model is downloaded once,
                   before the workers start.
  HOST, PORT       where uvicorn listens (0.0.0.0, 8080).
  WORKERS          uvicorn worker processes (1).
  TIMEOUT          seconds per request (60); a slower request is answered 504.
  MAX_REQUEST_MB   largest request body in MB of 10^6 bytes (16; fractions allowed); a larger
                   one is answered 413 before it is read.
  ONNX_PROVIDERS   optional comma-separated onnxruntime execution providers. MLflow's ONNX
                   loader uses the providers recorded in the model's MLmodel file (this
                   project records export.providers, CPU by default); when this is set, the
                   model is first copied or downloaded to a local folder and its recorded
                   providers are replaced, so a CPU-registered model runs on CUDA in the GPU
                   image. Providers this onnxruntime lacks are dropped by MLflow with a warning.

`serve.py --health` exits 0 when /ping answers 200 where the server listens: HOST:PORT, or
the loopback address when HOST is a wildcard (0.0.0.0 -> 127.0.0.1, :: -> ::1) (the
HEALTHCHECK). Standard library only: it runs before anything else is known to work.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

DEFAULT_MODEL_URI = "/opt/model"
ONNX_FLAVOR = "onnx"


def log(message: str) -> None:
    print(f"[serve] {message}", file=sys.stderr, flush=True)


def parse_providers(value: str) -> list[str]:
    """'CUDAExecutionProvider, CPUExecutionProvider' -> the names, in order, no blanks."""
    names = [name.strip() for name in value.split(",")]
    names = [name for name in names if name]
    if not names:
        raise ValueError(f"ONNX_PROVIDERS={value!r} names no provider")
    return names


def set_providers(model_dir: Path, providers: list[str]) -> None:
    """Replace the providers recorded in the ONNX flavor of model_dir/MLmodel."""
    import yaml  # mlflow's dependency; imported here so --health needs nothing

    mlmodel = model_dir / "MLmodel"
    spec = yaml.safe_load(mlmodel.read_text())
    flavors = (spec or {}).get("flavors") or {}
    if ONNX_FLAVOR not in flavors:
        raise ValueError(f"{mlmodel} has no '{ONNX_FLAVOR}' flavor (flavors: "
                         f"{', '.join(flavors) or 'none'}); ONNX_PROVIDERS applies to ONNX models")
    flavors[ONNX_FLAVOR]["providers"] = list(providers)
    mlmodel.write_text(yaml.safe_dump(spec, sort_keys=False))


def local_copy(model_uri: str, dest: Path) -> Path:
    """A writable local copy of the model: copied if it is a folder, else downloaded."""
    if Path(model_uri).is_dir():
        target = dest / "model"
        shutil.copytree(model_uri, target)
        return target
    import mlflow.artifacts

    return Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=str(dest)))


def check_model_uri(model_uri: str) -> None:
    if model_uri.startswith("models:/") and not os.environ.get("MLFLOW_TRACKING_URI"):
        raise ValueError(f"MODEL_URI={model_uri} needs MLFLOW_TRACKING_URI (the tracking "
                         "server that holds the model registry)")
    if "://" not in model_uri and ":/" not in model_uri and not Path(model_uri).is_dir():
        raise ValueError(f"MODEL_URI={model_uri} is not a folder in the container: mount an "
                         f"MLflow model folder there (-v $PWD/model:{DEFAULT_MODEL_URI}:ro) or "
                         "set MODEL_URI=models:/NAME@ALIAS with MLFLOW_TRACKING_URI")


def check_timeout(value: str) -> str:
    if not value.strip().isdigit() or int(value) < 1:
        raise ValueError(f"TIMEOUT={value!r} is not a whole number of seconds >= 1")
    return str(int(value))


def serve_command(host: str, port: str, workers: str) -> list[str]:
    """uvicorn on serve_app.create_app (configured through the environment, see serve_app)."""
    return [sys.executable, "-m", "uvicorn", "--factory", "serve_app:create_app",
            "--app-dir", str(Path(__file__).resolve().parent),
            "--host", host, "--port", port, "--workers", workers]


def health_url(host: str, port: str) -> str:
    """Where the health check finds the server listening on host:port."""
    host = host.strip().strip("[]")
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:  # an IPv6 address
        host = f"[{host}]"
    return f"http://{host}:{port}/ping"


def health(host: str, port: str, timeout: float = 4.0) -> int:
    try:
        with urllib.request.urlopen(health_url(host, port), timeout=timeout) as reply:
            return 0 if reply.status == 200 else 1
    except (urllib.error.URLError, OSError, ValueError):
        return 1


def _serve_app():
    """serve_app.py, beside this file (loaded by path: sys.path is left alone)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "serve_app", Path(__file__).resolve().with_name("serve_app.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(argv: list[str]) -> int:
    env = os.environ
    host, port = env.get("HOST", "0.0.0.0"), env.get("PORT", "8080")
    if argv[1:] == ["--health"]:
        return health(host, port)
    if argv[1:]:
        log(f"unexpected arguments {argv[1:]}; configure with MODEL_URI, HOST, PORT, WORKERS, "
            "TIMEOUT, MAX_REQUEST_MB, ONNX_PROVIDERS")
        return 2
    serve_app = _serve_app()
    model_uri = env.get("MODEL_URI") or DEFAULT_MODEL_URI
    try:
        max_bytes = serve_app.max_request_bytes(env.get(serve_app.MAX_REQUEST_ENV))
        timeout = check_timeout(env.get("TIMEOUT", "60"))
        check_model_uri(model_uri)
        providers = parse_providers(env["ONNX_PROVIDERS"]) if env.get("ONNX_PROVIDERS") else None
        model = model_uri
        if providers or not Path(model_uri).is_dir():
            model = str(local_copy(model_uri, Path(tempfile.mkdtemp(prefix="model-"))))
            log(f"{model_uri} is in {model}")
        if providers:
            set_providers(Path(model), providers)
            log(f"providers set to {', '.join(providers)}")
    except Exception as exc:  # one line for the container log, then a non-zero exit
        log(f"error: {exc}")
        return 2
    command = serve_command(host, port, env.get("WORKERS", "1"))
    child_env = {**env, serve_app.MODEL_ENV: model,
                 "MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT": timeout}
    log(f"serving {model_uri} (requests up to {max_bytes} bytes): "
        f"{subprocess.list2cmdline(command)}")
    os.execvpe(command[0], command, child_env)
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv))

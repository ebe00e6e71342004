"""Entrypoint of the serving images: `mlflow models serve` (ONNX flavor, --env-manager local).

Environment:
  MODEL_URI        models:/NAME@ALIAS or models:/NAME/VERSION (needs MLFLOW_TRACKING_URI),
                   runs:/RUN_ID/model, or a local MLflow model folder (default /opt/model:
                   mount or COPY a downloaded model there).
  HOST, PORT       where uvicorn listens (0.0.0.0, 8080).
  WORKERS          uvicorn worker processes (1).
  TIMEOUT          seconds per request (60).
  ONNX_PROVIDERS   optional comma-separated onnxruntime execution providers. MLflow's ONNX
                   loader uses the providers recorded in the model's MLmodel file (this
                   project records export.providers, CPU by default); when this is set, the
                   model is first copied or downloaded to a local folder and its recorded
                   providers are replaced, so a CPU-registered model runs on CUDA in the GPU
                   image. Providers this onnxruntime lacks are dropped by MLflow with a warning.

`serve.py --health` exits 0 when /ping on 127.0.0.1:PORT answers 200 (the HEALTHCHECK).
Standard library only: it runs before anything else is known to work.
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


def serve_command(model: str, host: str, port: str, workers: str, timeout: str) -> list[str]:
    return ["mlflow", "models", "serve", "--model-uri", model, "--env-manager", "local",
            "--host", host, "--port", port, "--workers", workers, "--timeout", timeout]


def health(port: str, timeout: float = 4.0) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=timeout) as reply:
            return 0 if reply.status == 200 else 1
    except (urllib.error.URLError, OSError):
        return 1


def main(argv: list[str]) -> int:
    env = os.environ
    port = env.get("PORT", "8080")
    if argv[1:] == ["--health"]:
        return health(port)
    if argv[1:]:
        log(f"unexpected arguments {argv[1:]}; configure with MODEL_URI, HOST, PORT, WORKERS, "
            "TIMEOUT, ONNX_PROVIDERS")
        return 2
    model_uri = env.get("MODEL_URI") or DEFAULT_MODEL_URI
    try:
        check_model_uri(model_uri)
        model = model_uri
        if env.get("ONNX_PROVIDERS"):
            providers = parse_providers(env["ONNX_PROVIDERS"])
            local = local_copy(model_uri, Path(tempfile.mkdtemp(prefix="model-")))
            set_providers(local, providers)
            log(f"{model_uri} copied to {local}; providers set to {', '.join(providers)}")
            model = str(local)
    except Exception as exc:  # one line for the container log, then a non-zero exit
        log(f"error: {exc}")
        return 2
    command = serve_command(model, env.get("HOST", "0.0.0.0"), port, env.get("WORKERS", "1"),
                            env.get("TIMEOUT", "60"))
    log(f"serving {model_uri}: {subprocess.list2cmdline(command)}")
    os.execvp(command[0], command)
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv))

"""Pytest plugin: the session fixture `mlflow_server`, a real `mlflow server` on 127.0.0.1.

Load it from tests/conftest.py with `pytest_plugins = ["tests.fixtures_mlflow"]`.

The server takes ~20 s to come up, so when a collected test uses the fixture, the server is
launched right after collection and starts while the other tests run; the fixture then only
waits for /health. It is stopped (whole process group) at the end of the session.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

FIXTURE_NAME = "mlflow_server"
START_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 10.0


def free_port() -> int:
    """A port nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def is_healthy(uri: str, timeout: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(f"{uri}/health", timeout=timeout) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


class MlflowServer:
    """One `mlflow server` process: sqlite backend, artifacts proxied by the server."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="mlflow_server_"))
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.log = self.root / "server.log"
        self._launch()

    def _launch(self) -> None:
        self.launched_at = time.monotonic()
        self.start_seconds: float | None = None
        with self.log.open("ab") as out:
            # Own session = own process group, so stop() reaches the workers too.
            self.proc = subprocess.Popen(
                self._command(), cwd=self.root, env=self._env(), stdout=out,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        # Timed in the background, so an early launch still reports its real start time.
        self.watcher = threading.Thread(target=self._watch, daemon=True)
        self.watcher.start()

    def kill(self) -> None:
        """SIGKILL the whole process group (a crash: nothing is flushed or closed)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=STOP_TIMEOUT_S)

    def restart(self) -> None:
        """The same server again (same port, database and artifacts) after kill()."""
        self._launch()
        self.wait_healthy()

    def _command(self) -> list[str]:
        # --serve-artifacts: runs get mlflow-artifacts:/ URIs, so clients really use HTTP.
        return [sys.executable, "-m", "mlflow", "server",
                "--host", "127.0.0.1", "--port", str(self.port),
                "--backend-store-uri", f"sqlite:///{self.root / 'srv.db'}",
                "--serve-artifacts", "--artifacts-destination", str(self.root / "art"),
                "--workers", "1"]

    @staticmethod
    def _env() -> dict[str, str]:
        env = dict(os.environ)
        # No background job runner (extra processes), no usage telemetry from test runs.
        env.update(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false", MLFLOW_DISABLE_TELEMETRY="true",
                   GIT_PYTHON_REFRESH="quiet")
        env.pop("MLFLOW_TRACKING_URI", None)
        return env

    def log_tail(self, lines: int = 30) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def _watch(self) -> None:
        """Background: note when /health first answers (or give up when the process dies)."""
        while time.monotonic() - self.launched_at < START_TIMEOUT_S:
            if self.proc.poll() is not None:
                return
            if is_healthy(self.uri):
                self.start_seconds = time.monotonic() - self.launched_at
                return
            time.sleep(0.25)

    def wait_healthy(self) -> None:
        """Block until the server is healthy; fail the test if it died or never came up."""
        self.watcher.join()
        if self.start_seconds is not None:
            return
        if self.proc.poll() is not None:
            pytest.fail(f"mlflow server exited with {self.proc.returncode}:\n{self.log_tail()}")
        pytest.fail(f"mlflow server not healthy after {START_TIMEOUT_S:.0f} s:\n"
                    f"{self.log_tail()}")

    def stop(self) -> None:
        """SIGTERM the process group, SIGKILL if it lingers; then remove its files."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if self.proc.poll() is not None:
                break
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                continue
        shutil.rmtree(self.root, ignore_errors=True)


_servers: list[MlflowServer] = []  # at most one per session (per xdist worker)
_start_times: list[float] = []


def _server() -> MlflowServer:
    if not _servers:
        _servers.append(MlflowServer())
    return _servers[0]


def pytest_collection_finish(session: pytest.Session) -> None:
    """Launch the server early (non-blocking) if a collected test will need it."""
    if session.config.option.collectonly:
        return
    if any(FIXTURE_NAME in getattr(item, "fixturenames", ()) for item in session.items):
        _server()


@pytest.fixture(scope="session")
def mlflow_server() -> Iterator[str]:
    """URI (http://127.0.0.1:<port>) of a fresh mlflow server with sqlite + proxied artifacts."""
    server = _server()
    server.wait_healthy()
    yield server.uri


def pytest_sessionfinish(session: pytest.Session) -> None:
    # Also covers a server launched early whose tests never ran (-x, Ctrl-C, skips).
    while _servers:
        server = _servers.pop()
        if server.start_seconds is not None:
            _start_times.append(server.start_seconds)
        server.stop()


def pytest_terminal_summary(terminalreporter) -> None:
    """One line with the server start time, when the server was used."""
    for seconds in _start_times:
        terminalreporter.write_line(f"mlflow_server: healthy {seconds:.1f} s after launch")


# --- the signature of a registered ONNX model ------------------------------------------------

ORT_TYPES = {"tensor(float)": "float32", "tensor(double)": "float64", "tensor(float16)": "float16",
             "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(bool)": "bool",
             "tensor(string)": "object"}


def registered_model_folder(model_uri: str, tracking_uri: str, dest: Path) -> Path:
    import mlflow.artifacts

    return Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=str(dest),
                                                    tracking_uri=tracking_uri))


def assert_signature_matches_onnx(folder: Path):
    """The MLflow model in `folder` has a signature naming, typing and shaping (symbolic dims,
    the batch first, as -1) exactly its ONNX graph's inputs and outputs as onnxruntime reads
    them, and an input example the model predicts from. Returns (input example, predictions)."""
    import mlflow.pyfunc
    import onnxruntime as ort
    from mlflow.models import Model

    meta = Model.load(str(folder))
    assert meta.signature is not None, "the registered model has no signature"
    session = ort.InferenceSession(str(folder / meta.flavors["onnx"]["data"]),
                                   providers=["CPUExecutionProvider"])

    def from_graph(args):
        return [(a.name, ORT_TYPES[a.type], tuple(d if isinstance(d, int) else -1 for d in a.shape))
                for a in args]

    def from_signature(schema):
        return [(s.name, s.type.name, tuple(s.shape)) for s in schema.inputs]

    inputs = from_signature(meta.signature.inputs)
    assert inputs == from_graph(session.get_inputs())
    assert from_signature(meta.signature.outputs) == from_graph(session.get_outputs())
    assert all(shape[0] == -1 for _, _, shape in inputs), inputs  # any batch size
    assert meta.saved_input_example_info is not None, "no input example was logged"
    example = meta.load_input_example(str(folder))
    predictions = mlflow.pyfunc.load_model(str(folder)).predict(example)
    return example, predictions

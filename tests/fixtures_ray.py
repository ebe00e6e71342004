"""Pytest plugin: the session fixture `ray_cluster`, a real one-node Ray cluster on 127.0.0.1
(`ray start --head --num-cpus 2 --block` in a subprocess).

Load it from tests/conftest.py with `pytest_plugins = [..., "tests.fixtures_ray"]`.
bench/sweep_scaling.py starts its cluster with the same class (RayCluster, no pytest needed).

Starting Ray takes 10-20 s here, so when a collected test uses the fixture the cluster is
launched right after collection and boots while other tests run; the fixture then only waits
for it. Its worker processes import this checkout of `compress` (PYTHONPATH) and keep their
stage folders in a scratch folder of the cluster's own (COMPRESS_SCRATCH), never in a test's
working directory. At the end of the session the head is stopped with SIGTERM (Ray drains and
ends every process it started) and any process of its session still alive is SIGKILLed by id.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest

from tests.fixtures_mlflow import free_port

FIXTURE_NAME = "ray_cluster"
NUM_CPUS = 2
START_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 45.0  # Ray drains for up to 30 s on SIGTERM
READY_LINE = "Ray runtime started"
ROOT = Path(__file__).resolve().parent.parent

# Every Ray process (and the drivers the tests start): loopback only, no token file in $HOME,
# no usage reporting, one torch thread per worker.
RAY_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled",
           "RAY_USAGE_STATS_ENABLED": "0", "OMP_NUM_THREADS": "1"}


class RayCluster:
    def __init__(self, num_cpus: int = NUM_CPUS) -> None:
        self.num_cpus = num_cpus
        # Short: Ray's unix sockets live under it (107-character limit).
        self.root = Path(tempfile.mkdtemp(prefix="ray_"))
        self.address = f"127.0.0.1:{free_port()}"
        self.client_port = free_port()
        self.client_address = f"ray://127.0.0.1:{self.client_port}"  # Ray Client
        self.scratch = self.root / "scratch"
        self.log = self.root / "head.log"
        self.launched_at = time.monotonic()
        self.start_seconds: float | None = None
        self.leftovers = 0
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(self._command(), env=self._env(), cwd=self.root,
                                         stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        # Timed in the background, so an early launch still reports its real start time.
        self.watcher = threading.Thread(target=self._watch, daemon=True)
        self.watcher.start()

    def _ready(self) -> bool:
        return READY_LINE in self.log.read_text(errors="replace")

    def _watch(self) -> None:
        while time.monotonic() - self.launched_at < START_TIMEOUT_S and self.proc.poll() is None:
            if self._ready():
                self.start_seconds = time.monotonic() - self.launched_at
                return
            time.sleep(0.2)

    def _command(self) -> list[str]:
        port = self.address.rsplit(":", 1)[1]
        return [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block",
                "--num-cpus", str(self.num_cpus), "--node-ip-address", "127.0.0.1", "--port", port,
                "--ray-client-server-port", str(self.client_port),
                "--node-manager-port", str(free_port()),
                "--object-manager-port", str(free_port()),
                # every port a head binds, free ones: its fixed defaults (dashboard 8265, agent
                # 52365) would collide with another cluster on the machine (a parallel CI job)
                "--dashboard-port", str(free_port()),
                "--dashboard-agent-listen-port", str(free_port()),
                "--dashboard-agent-grpc-port", str(free_port()),
                "--metrics-export-port", str(free_port()),
                "--runtime-env-agent-port", str(free_port()),
                "--include-dashboard", "false", "--disable-usage-stats",
                "--object-store-memory", str(100 * 1024 ** 2), "--temp-dir", str(self.root / "t")]

    def _env(self) -> dict[str, str]:
        env = {**os.environ, **RAY_ENV, "COMPRESS_SCRATCH": str(self.scratch),
               "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        env.pop("MLFLOW_TRACKING_URI", None)  # cells take the store from their job
        env.pop("RAY_ADDRESS", None)
        return env

    def driver_env(self) -> dict[str, str]:
        """What a `compress sweep --backend ray --address ...` process of a test needs."""
        return dict(RAY_ENV)

    def wait_ready(self) -> None:
        """Block until the head says it is up (RuntimeError if it died or never came up)."""
        self.watcher.join()
        if self._ready():  # launched early, it may have been up long before a test asked
            return
        if self.proc.poll() is not None:
            raise RuntimeError(f"ray start exited with {self.proc.returncode}:\n{self.tail()}")
        raise RuntimeError(f"Ray head not up after {START_TIMEOUT_S:.0f} s:\n{self.tail()}")

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def owns(self, pid: int) -> bool:
        """Whether `pid` is one of this cluster's processes (same session as the head)."""
        return _session_of(pid) == self.proc.pid

    def processes(self) -> list[int]:
        return [pid for pid in _pids() if pid != self.proc.pid and self.owns(pid)]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                pass
        left = [pid for pid in _pids() if self.owns(pid)]
        self.leftovers = len(left)
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self.proc.poll() is None:
            self.proc.wait(timeout=10)
        shutil.rmtree(self.root, ignore_errors=True)


def _pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def _session_of(pid: int) -> int | None:
    """Session id from /proc/PID/stat (field 6; the name in field 2 may hold spaces)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return int(fields[3]) if fields[0] != "Z" else None  # zombies hold nothing


_clusters: list[RayCluster] = []
_reports: list[str] = []


def _cluster() -> RayCluster:
    if not _clusters:
        _clusters.append(RayCluster())
    return _clusters[0]


def pytest_collection_finish(session: pytest.Session) -> None:
    """Launch the head early (non-blocking) if a collected test will need it."""
    if session.config.option.collectonly:
        return
    if any(FIXTURE_NAME in getattr(item, "fixturenames", ()) for item in session.items):
        _cluster()


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[RayCluster]:
    cluster = _cluster()
    try:
        cluster.wait_ready()
    except RuntimeError as e:
        pytest.fail(str(e))
    yield cluster


def pytest_sessionfinish(session: pytest.Session) -> None:
    while _clusters:
        cluster = _clusters.pop()
        cluster.stop()
        started = f"up {cluster.start_seconds:.1f} s after launch; " if cluster.start_seconds else ""
        _reports.append(f"ray_cluster: {started}stopped, {cluster.leftovers} process(es) "
                        "outlived SIGTERM and were killed")


def pytest_terminal_summary(terminalreporter) -> None:
    for line in _reports:
        terminalreporter.write_line(line)

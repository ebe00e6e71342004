"""Faults of tracking, with real processes: the MLflow server SIGKILLed during the prune stage
(exit 5, folders kept, a re-run completes the lost runs), and SIGINT/SIGTERM during
`compress export --register` (exit 130, nothing half-registered, nothing left RUNNING).

The plugin tests/faults/gate_plugin.py holds the process at the point under test until the
test has killed the server or sent the signal, so nothing depends on timing.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.helpers import TINY_SETS, compress, errors, sets
from tests.fixtures_mlflow import MlflowServer

PLUGIN = str(Path(__file__).with_name("gate_plugin.py"))
PRUNE_SETS = sets(*TINY_SETS, "method.finetune=1ep")


class Command:
    """`python -m compress ...` with stderr read line by line while it runs."""

    def __init__(self, args: list[str], cwd: Path, env: dict[str, str]):
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "compress", *args], cwd=cwd, text=True,
            env={**os.environ, "COLUMNS": "120", "COMPRESS_PROGRESS_SECONDS": "0", **env},
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def wait_for(self, prefix: str) -> None:
        """Read stderr until a line starts with `prefix` (fails if the process ends first)."""
        for line in self.proc.stderr:
            self.lines.append(line)
            if line.startswith(prefix):
                return
        self.finish()
        pytest.fail(f"no line {prefix!r}; exit {self.proc.returncode}:\n{self.stderr}")

    def finish(self) -> int:
        out, rest = self.proc.communicate(timeout=300)
        self.stdout, self.stderr = out, "".join(self.lines) + rest
        return self.proc.returncode


def _one_error_line(stderr: str, start: str) -> str:
    assert "Traceback" not in stderr and "database is locked" not in stderr, stderr
    err = errors(stderr)
    assert len(err.splitlines()) == 1 and err.startswith(start), stderr
    return err


# ------------------------------------------------------------- interrupted registration

@pytest.fixture(scope="module")
def pruned(tmp_path_factory) -> Path:
    """A pruned stage folder to export (made once, without tracking)."""
    where = tmp_path_factory.mktemp("pruned")
    r = compress("prune", "--method", "magnitude", "--no-export", "--no-track", "--out", "run",
                 *PRUNE_SETS, cwd=where)
    assert r.returncode == 0, r.stderr
    return where / "run" / "prune"


def _register(pruned: Path, cwd: Path, gate: str = "") -> Command:
    return Command(["export", "--from", str(pruned), "--register", "m", "--out", "exp",
                    "--plugin", PLUGIN, "--json"], cwd, {"COMPRESS_TEST_GATE": gate})


def _store(cwd: Path):
    from mlflow import MlflowClient
    client = MlflowClient(f"sqlite:///{cwd / 'mlflow.db'}", registry_uri=f"sqlite:///{cwd / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    return client, runs


@pytest.mark.parametrize("gate, wait_line, sig", [
    # in the export stage, before registering
    ("export", "[compress] export:magnitude started", signal.SIGTERM),
    # in the registry: a version exists, no alias yet
    ("version", "[compress] gate: version created", signal.SIGINT),
])
@pytest.mark.slow
def test_a_signal_before_registration_finished_registers_nothing(pruned, tmp_path, gate,
                                                                  wait_line, sig):
    cmd = _register(pruned, tmp_path, gate)
    cmd.wait_for(wait_line)
    cmd.proc.send_signal(sig)
    (tmp_path / "go").touch()
    assert cmd.finish() == 130, cmd.stderr
    err = _one_error_line(cmd.stderr, "interrupted")
    if gate == "version":
        assert "nothing was registered" in err
    assert not (tmp_path / "exp").exists()  # export + registration: discarded as one stage
    client, runs = _store(tmp_path)
    assert client.search_registered_models() == []  # no model with 0 versions left behind
    assert runs and "RUNNING" not in {r.info.status for r in runs}
    assert not [r for r in runs if r.data.tags.get("compress.stage") == "export"
                and r.info.status == "FINISHED" and gate == "export"]


@pytest.mark.slow
def test_a_signal_after_registration_finished_keeps_the_success(pruned, tmp_path):
    cmd = _register(pruned, tmp_path)
    cmd.wait_for("[compress] registered m version 1")
    cmd.proc.send_signal(signal.SIGINT)
    assert cmd.finish() == 0, cmd.stderr
    assert json.loads(cmd.stdout)["registered"]["version"] == 1
    client, runs = _store(tmp_path)
    [model] = client.search_registered_models()
    assert {k: str(v) for k, v in model.aliases.items()} == {"candidate": "1"}
    assert {r.info.status for r in runs} == {"FINISHED"}


# ------------------------------------------------------------- the server lost mid-run

@pytest.fixture(scope="module", autouse=True)
def launched(request):
    """Launch the server when this module starts, if a selected test needs it: it boots
    (~20 s on a busy machine) while the registration tests run."""
    wanted = any("server" in getattr(item, "fixturenames", ()) and item.module is request.module
                 for item in request.session.items)
    srv = MlflowServer() if wanted else None
    yield srv
    if srv is not None:
        srv.stop()


@pytest.fixture(scope="module")
def server(launched):
    """A real `mlflow server` (sqlite backend) this module may kill and restart."""
    launched.wait_healthy()
    return launched


def _stage(root: Path, name: str) -> dict:
    return json.loads((root / name / "stage.json").read_text())


@pytest.mark.server
@pytest.mark.slow
def test_server_killed_during_prune_exits_5_and_the_rerun_completes_the_lineage(server, tmp_path):
    from mlflow import MlflowClient
    args = ["prune", "--method", "gated", "--plugin", PLUGIN, "--out", "run", "--json",
            *PRUNE_SETS]
    env = {"MLFLOW_TRACKING_URI": server.uri, "COMPRESS_TEST_GATE": "prune"}
    cmd = Command(args, tmp_path, env)
    cmd.wait_for("[compress] prune:gated started")  # its run exists; the method waits
    server.kill()
    (tmp_path / "go").touch()
    code = cmd.finish()
    assert code == 5, cmd.stderr
    err = _one_error_line(cmd.stderr, "error: the MLflow tracking server at ")
    assert "stopped answering" in err and "re-run" in err and cmd.stdout == ""
    root = tmp_path / "run"
    # The finished folders are kept (prune finished its work, then lost its run), no staging.
    assert sorted(p.name for p in root.iterdir() if not p.name.startswith(".")) == \
        ["pipeline.json", "pretrain", "prune"]
    assert not [p for p in root.iterdir() if p.name.startswith(".prune")]
    lost_run = _stage(root, "prune")["run_id"]

    server.restart()
    again = Command(args, tmp_path, env)
    assert again.finish() == 0, again.stderr
    json.loads(again.stdout)
    assert "[compress] prune: reused" in again.stderr
    assert f"MLflow run {lost_run} is KILLED; logging it again" in again.stderr

    client = MlflowClient(server.uri)
    runs = client.search_runs([client.get_experiment_by_name("compress").experiment_id])
    assert {r.info.status for r in runs} == {"FINISHED"}  # parent, pretrain, prune, export
    records = {name: _stage(root, name) for name in ("pretrain", "prune", "export")}
    assert records["prune"]["run_id"] == lost_run  # the same run, now complete
    for name, record in records.items():
        run = client.get_run(record["run_id"])
        assert run.data.params["seed"] == str(record["config"]["seed"]), name
        assert run.data.metrics["density"] == pytest.approx(record["density"]), name
        assert run.data.tags["compress.out_dir"] == str((root / name).resolve()), name
        logged = {a.path for a in client.list_artifacts(record["run_id"], "stage")}
        assert "stage/stage.json" in logged, (name, logged)
    export_run = client.get_run(records["export"]["run_id"])
    assert export_run.data.tags["compress.source_run"] == lost_run

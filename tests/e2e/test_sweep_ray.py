"""Sweeps on a real Ray cluster (one node, 2 CPUs, 127.0.0.1) with a real `mlflow server` as
the only store the cells share: the same numbers as `--backend local`, retries after a SIGKILLed
worker, Ctrl-C, reuse, and the report. The drivers are real `compress` processes."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.e2e.helpers import compress_json
from tests.e2e.test_sweep import SWEEP

pytestmark = [pytest.mark.slow, pytest.mark.server]

# test_sweep.py's 4 tiny cells, one CPU each.
TINY = SWEEP.replace("name: tiny-sweep", "name: NAME") + "resources: {num_cpus: 1, num_gpus: 0}\n"

# One quick cell and one that fine-tunes long enough (a few seconds) to be killed midway.
SLOW = """
name: NAME
config:
  data: {name: xor, k: 2, p: 6, n_train: 2048, n_val: 128, n_test: 128}
  model: {name: mlp, hidden: [64]}
  train: {duration: 2ep, batch_size: 32}
grid:
  method: [magnitude]
  density: [0.5]
  method.finetune: [1ep, 30ep]
resources: {num_cpus: 1}
max_retries: 2
"""
SLOW_CELL = "magnitude-d0.5-method.finetune_30ep"
FAST_CELL = "magnitude-d0.5-method.finetune_1ep"
TIMEOUT_S = 300


def own_experiment(name: str) -> list[str]:
    """The slow tests run the same cells: in one experiment, a cell would reuse the other
    test's finished stages (same identity), which is right for users but not what is tested."""
    return ["--set", f"tracking.experiment={name}"]


def _write(folder: Path, body: str, name: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(body.replace("NAME", name))
    return path


def _by_name(result: dict) -> dict[str, dict]:
    return {r["name"]: r for r in result["rows"]}


def _driver(args: list[str], cwd: Path, cluster, uri: str,
            address: str | None = None) -> subprocess.Popen:
    """`compress sweep ... --backend ray` as its own process, like a user's shell."""
    env = {**os.environ, **cluster.driver_env(), "MLFLOW_TRACKING_URI": uri, "COLUMNS": "120"}
    return subprocess.Popen([sys.executable, "-m", "compress", "sweep", *args, "--backend", "ray",
                             "--address", address or cluster.address, "--json"], cwd=cwd,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=TIMEOUT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, out, err


def _sweep(args: list[str], cwd: Path, cluster, uri: str,
           address: str | None = None) -> tuple[dict, str]:
    code, out, err = _finish(_driver(args, cwd, cluster, uri, address))
    assert code == 0, err[-3000:]
    return json.loads(out), err  # stdout is the JSON alone


def _client(uri: str):
    from mlflow.tracking import MlflowClient
    return MlflowClient(tracking_uri=uri)


def _runs(client, query: str, experiment: str) -> list:
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id], query) if exp else []


def _wait_for(predicate, what: str, driver: subprocess.Popen, timeout: float = 120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and driver.poll() is None:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    code, out, err = _finish(driver)
    pytest.fail(f"no {what} (driver exit {code}):\n{err[-3000:]}")


def _running_prune(client, sweep: str, cell: str):
    """(cell run, its RUNNING prune run) once the cell's prune stage is training (these tests
    run each sweep in an experiment of the same name)."""
    cells = _runs(client, f"tags.`compress.sweep` = '{sweep}' and tags.`compress.kind` = 'cell' "
                          f"and attributes.status = 'RUNNING'", sweep)
    for run in cells:
        if run.data.tags.get("mlflow.runName") == f"{sweep}.{cell}" and "compress.pid" in run.data.tags:
            kids = _runs(client, f"tags.mlflow.parentRunId = '{run.info.run_id}' and "
                                 "tags.`compress.stage` = 'prune' and attributes.status = 'RUNNING'",
                         sweep)
            if kids:
                return run, kids[0]
    return None


def _same_numbers(got: dict, want: dict) -> None:
    assert set(_by_name(got)) == set(_by_name(want))
    for name, row in _by_name(want).items():
        assert _by_name(got)[name]["metrics"] == row["metrics"], name
        assert _by_name(got)[name]["sha256"] == row["sha256"], name  # masks and weights


def _local(root: Path, body: str) -> dict:
    """The reference: the same cells with `--backend local`, in this process."""
    f = _write(root, body, "local")
    return compress_json("sweep", str(f), "--backend", "local", "--no-track", "--out", "l",
                         cwd=root)


@pytest.fixture(scope="module")
def local_tiny(tmp_path_factory):
    return _local(tmp_path_factory.mktemp("local"), TINY)


@pytest.fixture(scope="module")
def local_slow(tmp_path_factory):
    return _local(tmp_path_factory.mktemp("local-slow"), SLOW)


def test_ray_sweep_through_an_mlflow_server_equals_local(ray_cluster, mlflow_server, local_tiny,
                                                          tmp_path):
    f = _write(tmp_path, TINY, "ray-tiny")
    # Through Ray Client (ray://), as from a machine outside the cluster.
    res, err = _sweep([str(f)], tmp_path, ray_cluster, mlflow_server, ray_cluster.client_address)
    assert res["backend"] == "ray" and len(res["rows"]) == 4
    _same_numbers(res, local_tiny)
    assert "[####################] 4/4" in err and err.count("/4  ") == 4
    # The cells ran in the cluster's scratch folders, not in the driver's working directory.
    assert all(not r["dir"].startswith(str(tmp_path)) and not r["reused"] for r in res["rows"])
    assert not (tmp_path / "mlflow.db").exists()
    assert sorted(p.name for p in (tmp_path / "runs" / "ray-tiny").iterdir()) == ["results.json"]

    # What the cells wrote is in the server's artifact store: the masks, byte for byte.
    client = _client(mlflow_server)
    for row in res["rows"]:
        local = client.download_artifacts(row["prune_run_id"], "stage/masks.safetensors",
                                          str(tmp_path / "dl" / row["name"]))
        assert hashlib.sha256(Path(local).read_bytes()).hexdigest() == row["sha256"]["masks"]

    # The report reads MLflow and gives what the local sweep's folder gives.
    env = {"MLFLOW_TRACKING_URI": mlflow_server}
    rep = compress_json("report", "--sweep", "ray-tiny", "--out", "rep", cwd=tmp_path, env=env)
    ref = compress_json("report", "--from", str(Path(local_tiny["root"])), "--out", "rep-local",
                        cwd=tmp_path)
    assert rep["logged_to"] == res["run_id"]
    assert [(r["method"], r["n"], r["mean"]) for r in rep["rows"]] == \
        [(r["method"], r["n"], r["mean"]) for r in ref["rows"]]



def test_a_killed_worker_is_retried_and_ends_with_the_same_numbers(ray_cluster, mlflow_server,
                                                                   local_slow, tmp_path):
    f = _write(tmp_path, SLOW, "ray-kill")
    client = _client(mlflow_server)
    driver = _driver([str(f), *own_experiment("ray-kill")], tmp_path, ray_cluster, mlflow_server)
    try:
        cell, prune = _wait_for(lambda: _running_prune(client, "ray-kill", SLOW_CELL),
                                "the slow cell's prune stage", driver)
        pid = int(cell.data.tags["compress.pid"])
        assert ray_cluster.owns(pid) and pid != driver.pid  # a Ray worker of this cluster
        time.sleep(0.5)  # well inside its few seconds of fine-tuning
        assert client.get_run(prune.info.run_id).info.status == "RUNNING"
        os.kill(pid, signal.SIGKILL)
    finally:
        code, out, err = _finish(driver)
    assert code == 0, err[-3000:]
    res = json.loads(out)
    _same_numbers(res, local_slow)
    row = _by_name(res)[SLOW_CELL]
    # The retry resumed the same cell run, in another worker process; the killed stage's run
    # was closed as KILLED and a new one finished.
    assert row["run_id"] == cell.info.run_id
    resumed = client.get_run(row["run_id"])
    assert int(resumed.data.tags["compress.pid"]) != pid and resumed.info.status == "FINISHED"
    assert client.get_run(prune.info.run_id).info.status == "KILLED"
    assert row["prune_run_id"] != prune.info.run_id
    assert not ray_cluster.owns(pid)  # really gone (not even a zombie of the raylet)


def test_ctrl_c_cancels_cells_and_a_rerun_reuses_the_finished_ones(ray_cluster, mlflow_server,
                                                                    local_slow, tmp_path):
    f = _write(tmp_path, SLOW, "ray-int")
    client = _client(mlflow_server)
    driver = _driver([str(f), *own_experiment("ray-int")], tmp_path, ray_cluster, mlflow_server)
    try:
        def fast_done_slow_running():
            done = _runs(client, "tags.`compress.sweep` = 'ray-int' and attributes.status = "
                                 "'FINISHED' and tags.`compress.kind` = 'cell'", "ray-int")
            fast = [r for r in done if "compress.row" in r.data.tags]
            return fast and _running_prune(client, "ray-int", SLOW_CELL)
        cell, prune = _wait_for(fast_done_slow_running, "one finished cell and one running",
                                driver)
        driver.send_signal(signal.SIGINT)
    finally:
        code, out, err = _finish(driver)
    assert code == 130, err[-3000:]
    assert err.strip().splitlines()[-1].startswith("interrupted: unfinished cells were cancelled")
    assert out == ""
    # Cancelled inside the task: its runs were closed, not left RUNNING.
    assert client.get_run(cell.info.run_id).info.status == "KILLED"
    assert client.get_run(prune.info.run_id).info.status == "KILLED"

    # Re-run as on a new cluster (no stage folder left on any node): the finished cell and the
    # pretrain come from MLflow; only the cancelled cell runs again.
    shutil.rmtree(ray_cluster.scratch / "sweeps" / "ray-int")
    res, err = _sweep([str(f), *own_experiment("ray-int")], tmp_path, ray_cluster, mlflow_server)
    assert _by_name(res)[FAST_CELL]["reused"] and not _by_name(res)[SLOW_CELL]["reused"]
    assert "pretrain done (reused" in err
    _same_numbers(res, local_slow)


@pytest.mark.parametrize("args, env, words", [
    (["--address", "127.0.0.1:1"], {"MLFLOW_TRACKING_URI": "sqlite:///m.db"},
     ["cannot reach the local MLflow store sqlite:///m.db", "mlflow server --serve-artifacts"]),
    (["--address", "ray://127.0.0.1:1", "--no-track"], {}, ["storage:"]),
    (["--workers", "2"], {}, ["--workers is for --backend local"]),
])
def test_ray_mistakes_are_one_line_before_anything_runs(tmp_path, args, env, words):
    from tests.e2e.helpers import assert_user_error, compress
    f = _write(tmp_path, TINY, "bad")
    r = compress("sweep", str(f), "--backend", "ray", *args, cwd=tmp_path, env=env)
    assert_user_error(r, *words)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml"]


def test_without_ray_installed_the_backend_says_how_to_install_it(tmp_path, monkeypatch):
    from tests.e2e.helpers import assert_user_error, compress
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    f = _write(tmp_path, TINY, "noray")
    assert_user_error(compress("sweep", str(f), "--backend", "ray", cwd=tmp_path),
                      "pip install 'compress[ray]'")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["noray.yaml"]


def test_an_address_where_no_cluster_answers_fails_fast(tmp_path):
    from tests.e2e.helpers import assert_user_error, compress
    from tests.fixtures_mlflow import free_port
    f = _write(tmp_path, TINY + f"storage: {tmp_path / 'shared'}\n", "nobody")
    # Ray alone would retry for minutes; this is one refused TCP connection.
    r = compress("sweep", str(f), "--backend", "ray", "--address", f"127.0.0.1:{free_port()}",
                 "--no-track", cwd=tmp_path)
    assert_user_error(r, "no Ray cluster answers at 127.0.0.1:")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nobody.yaml"]

"""Resumable pipelines: reuse of finished stages, status, and a real SIGKILL mid-stage."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.e2e.helpers import compress, compress_json

PIPELINE = """
name: resume-test
config:
  data: {name: xor, k: 2, p: 6, n_train: 256, n_val: 128, n_test: 128}
  model: {name: mlp, hidden: [16]}
  train: {duration: 3ep, batch_size: 64}
stages:
  - {id: dense, stage: pretrain}
  - id: prune
    stage: prune
    from: dense
    set: {method: {name: cpna, anneal_epochs: ANNEAL, final_epochs: 1, output_connections: 4,
                   input_connections: 8}}
  - {id: export, stage: export, from: prune}
"""


def _pipeline(tmp_path: Path, anneal: int = 4) -> Path:
    f = tmp_path / "p.yaml"
    f.write_text(PIPELINE.replace("ANNEAL", str(anneal)))
    return f


def _status(f, root, *extra):
    out = compress_json("pipeline", "status", str(f), "--out", str(root), *extra, cwd=f.parent)
    return {r["id"]: r["status"] for r in out["stages"]}


def test_rerun_reuses_finished_stages_and_reruns_what_changed(tmp_path):
    f = _pipeline(tmp_path)
    assert _status(f, "r") == {"dense": "missing", "prune": "missing", "export": "missing"}
    first = compress_json("pipeline", "run", str(f), "--no-track", "--out", "r", cwd=tmp_path)
    assert _status(f, "r") == {"dense": "done", "prune": "done", "export": "done"}

    again = compress("pipeline", "run", str(f), "--no-track", "--out", "r", cwd=tmp_path)
    assert again.returncode == 0 and again.stderr.count("reused") == 3  # said on stderr
    second = compress_json("pipeline", "run", str(f), "--no-track", "--out", "r", cwd=tmp_path)
    assert [s["reused"] for s in second["stages"].values()] == [True, True, True]
    assert second["pipeline_run_id"] == first["pipeline_run_id"]
    assert {k: v["run_id"] for k, v in second["stages"].items()} == \
        {k: v["run_id"] for k, v in first["stages"].items()}

    # A changed prune option: pretrain stays valid, prune and export are stale and re-run.
    change = ["--set", "method.output_connections=3"]
    assert _status(f, "r", *change) == {"dense": "done", "prune": "stale", "export": "stale"}
    third = compress_json("pipeline", "run", str(f), "--no-track", "--out", "r", *change,
                          cwd=tmp_path)
    assert [s["reused"] for s in third["stages"].values()] == [True, False, False]
    assert third["stages"]["dense"]["run_id"] == first["stages"]["dense"]["run_id"]

    # A corrupted file makes its stage damaged (re-run like a stale one), not a crash.
    (tmp_path / "r" / "prune" / "weights.safetensors").write_bytes(b"garbage")
    assert _status(f, "r", *change)["prune"] == "damaged"
    fresh = compress("pipeline", "run", str(f), "--no-track", "--out", "r", "--fresh", *change,
                     cwd=tmp_path)
    assert fresh.returncode == 0 and "reused" not in fresh.stderr, fresh.stderr


def _reproducible(metrics: dict) -> dict:
    """The export metrics a seed fixes: not the ONNX latencies and speedups (timings of this
    machine) nor file sizes (the ONNX metadata holds run ids, which differ between runs)."""
    return {k: v for k, v in metrics.items()
            if not any(word in k for word in ("latency", "speedup", "bytes"))}


def test_sigkill_mid_stage_resumes_to_the_same_result_and_the_same_parent_run(tmp_path):
    from mlflow.tracking import MlflowClient
    f = _pipeline(tmp_path, anneal=150)  # a prune stage of a few seconds, to be killed in
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "COLUMNS": "120"}
    cmd = [sys.executable, "-m", "compress", "pipeline", "run", str(f), "--out", "r", "--json"]
    p = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    root, deadline = tmp_path / "r", time.monotonic() + 180
    while not list(root.glob(".prune.*")):  # the prune stage is being written
        assert p.poll() is None and time.monotonic() < deadline, p.communicate()[1][-2000:]
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
    p.communicate(timeout=60)
    assert p.returncode == -signal.SIGKILL
    assert (root / "dense" / "stage.json").is_file() and not (root / "prune").exists()

    resumed = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    out = json.loads(resumed.stdout)
    assert [s["reused"] for s in out["stages"].values()] == [True, False, False]
    assert not list(root.glob(".prune.*"))  # the killed stage's staging folder is gone

    clean = subprocess.run([*cmd[:-3], "--out", "clean", "--json", "--no-track"], cwd=tmp_path,
                           capture_output=True, text=True, timeout=300)
    assert clean.returncode == 0, clean.stderr[-3000:]
    ref = json.loads(clean.stdout)
    assert out["stages"]["prune"]["metrics"] == ref["stages"]["prune"]["metrics"]
    assert out["density"] == ref["density"]
    assert _reproducible(out["metrics"]) == _reproducible(ref["metrics"])
    assert {k for k in out["metrics"] if "latency" in k} == {k for k in ref["metrics"] if "latency" in k}
    for name in ("masks.safetensors", "weights.safetensors"):
        assert (root / "prune" / name).read_bytes() == (tmp_path / "clean" / "prune" / name).read_bytes()

    client = MlflowClient(uri)
    parents = client.search_runs([client.get_experiment_by_name("compress").experiment_id],
                                 "tags.`compress.pipeline` = 'resume-test'")
    assert [r.info.run_id for r in parents] == [out["pipeline_run_id"]]  # one parent, resumed
    children = client.search_runs([parents[0].info.experiment_id],
                                  f"tags.mlflow.parentRunId = '{out['pipeline_run_id']}'")
    statuses = sorted(r.info.status for r in children)
    assert statuses == ["FINISHED", "FINISHED", "FINISHED", "KILLED"]  # the killed prune attempt
    assert parents[0].info.status == "FINISHED"


def test_a_second_process_on_the_same_root_is_refused(tmp_path):
    import fcntl
    f = _pipeline(tmp_path)
    (tmp_path / "r").mkdir()
    with open(tmp_path / "r" / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        r = compress("pipeline", "run", str(f), "--no-track", "--out", "r", cwd=tmp_path)
    assert r.returncode == 2 and "another compress process" in r.stderr
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == [".lock"]

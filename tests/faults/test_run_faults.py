"""Faults of a run itself, with real processes: a diverging loss, mistakes that must be found
before any work, N processes on one fresh folder, and what a CI log shows under --json."""

from __future__ import annotations

import os
import json
import subprocess
import sys

import pytest

from tests.e2e.helpers import TINY_SETS, assert_user_error, compress, compress_subprocess, errors, sets


def _leftovers(root) -> list[str]:
    return sorted(p.name for p in root.iterdir())


@pytest.mark.parametrize("command", [
    ["pretrain"],
    ["prune", "--method", "magnitude", "--no-export"],
])
def test_a_diverging_loss_stops_the_stage_with_exit_4(tmp_path, command):
    r = compress(*command, "--json", "--no-track", "--out", "run",
                 *sets(*TINY_SETS, "train.lr=1e30"), cwd=tmp_path)
    assert r.returncode == 4, (r.returncode, r.stderr)
    err = errors(r.stderr)
    assert len(err.splitlines()) == 1 and "Traceback" not in r.stderr, r.stderr
    assert err.startswith("error: pretrain diverged: the training loss became") and "step" in err
    assert "lower the lr" in err and r.stdout == ""
    # Nothing recorded as done: no stage folder holds a stage.json.
    assert not list((tmp_path / "run").rglob("stage.json"))


def test_a_diverged_run_is_failed_in_mlflow_with_the_reason(local_store):
    import mlflow
    r = compress("pretrain", "--out", "run", *sets(*TINY_SETS, "train.lr=1e30"), cwd=local_store)
    assert r.returncode == 4, r.stderr
    client = mlflow.MlflowClient(f"sqlite:///{local_store / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert [x.info.status for x in runs] == ["FAILED"]
    assert "diverged" in runs[0].data.tags["compress.error"]


@pytest.mark.parametrize("setting", ["train.lr=.inf", "train.lr=nan", "train.momentum=-inf",
                                     "method.density=nan"])
def test_non_finite_options_are_refused_before_work(tmp_path, setting):
    r = compress("prune", "--method", "magnitude", "--no-track", "--out", "run",
                 *sets(*TINY_SETS, setting), cwd=tmp_path)
    assert_user_error(r, setting.split("=")[0])
    assert _leftovers(tmp_path) == []


def test_undefined_metrics_are_null_in_strict_json(tmp_path):
    """A split with one class has no AUC (NaN): the summary says null, and parses strictly."""
    from compress.report import strict_json
    text = strict_json({"m": {"auc": float("nan"), "x": float("inf"), "ok": 1.5}, "l": [float("-inf")]})
    assert json.loads(text, parse_constant=lambda c: pytest.fail(f"bare {c}")) == \
        {"m": {"auc": None, "x": None, "ok": 1.5}, "l": [None]}


@pytest.mark.parametrize("args, env, words", [
    (["prune", "--register", "bad/name"], {}, ["invalid registered model name"]),
    (["prune", "--register", "fine", "--no-track"], {}, ["needs the MLflow registry"]),
    (["prune", "--register", "fine", "--set", "export.alias=latest"], {}, ["invalid model alias"]),
    (["prune"], {"MLFLOW_TRACKING_URI": "foo://bar"}, ["foo://", "MLFLOW_TRACKING_URI"]),
    (["prune", "--seed", "123456789012345678901"], {}, ["seed"]),
    (["prune", "--seed", "-1"], {}, ["seed"]),
    (["retrain", "--from", "MISSING"], {}, ["MISSING", "run id"]),
    (["export", "--from", "0123456789abcdef0123456789abcdef"], {}, ["no local store"]),
    (["export", "--from", "0123456789abcdef0123456789abcdef", "--no-track"], {}, ["tracking is off"]),
    (["prune", "--out", "a_file/x"], {}, ["is a file"]),
    (["pretrain", "--out", "a_file"], {}, ["is a file"]),
])
def test_mistakes_are_found_before_any_work_and_leave_nothing(local_store, args, env, words):
    (local_store / "a_file").write_text("")
    r = compress(*args, *sets(*TINY_SETS), cwd=local_store, env=env)
    assert_user_error(r, *words)
    assert _leftovers(local_store) == ["a_file"]  # no mlflow.db, no runs/, no mlruns/


def test_four_processes_on_one_fresh_folder(tmp_path):
    """Four at once in a folder with no store yet: four different outputs all succeed in one
    store; then three on the same output end each with success or the lock message, nothing
    else."""
    args = ["prune", "--method", "magnitude", "--no-export", "--json", *sets(*TINY_SETS)]

    def four(outs):
        env = {**os.environ, "OMP_NUM_THREADS": "1"}  # N processes on 2 cores, not 2N threads
        procs = [subprocess.Popen([sys.executable, "-m", "compress", *args, "--out", o],
                                  cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True, env=env) for o in outs]
        return [(p.wait(timeout=300), *p.communicate()) for p in procs]

    for code, out, err in four(["a", "b", "c", "d"]):
        assert code == 0 and "Traceback" not in err, err
        assert json.loads(out)["stage"] == "prune"
    results = four(["same"] * 3)  # the store exists now: this is the pipeline lock's case
    for code, out, err in results:
        assert "Traceback" not in err, err
        assert code == 0 or (code == 2 and "another compress process" in errors(err)), err
    assert any(code == 0 for code, _, _ in results)
    import mlflow
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert runs and {x.info.status for x in runs} == {"FINISHED"}


def test_json_keeps_stdout_pure_and_tells_the_ci_log_on_stderr(tmp_path):
    r = compress_subprocess("prune", "--method", "magnitude", "--no-export", "--no-track",
                            "--json", "--out", "run", *sets(*TINY_SETS), cwd=tmp_path,
                            env={"COMPRESS_PROGRESS_SECONDS": "0.000001"})
    assert r.returncode == 0, r.stderr
    json.loads(r.stdout)  # stdout: the one JSON object, nothing else
    lines = r.stderr.strip().splitlines()
    assert all(line.startswith("[compress] ") for line in lines), lines
    for stage in ("pretrain", "prune:magnitude"):
        assert any(line.startswith(f"[compress] {stage} started") for line in lines)
        assert any(line.startswith(f"[compress] {stage} done") for line in lines)
    assert any("step " in line and "%" in line for line in lines)  # periodic progress

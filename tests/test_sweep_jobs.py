"""A sweep's jobs are plain data a worker can run anywhere: identities, and inputs and finished
stages fetched from the tracking store when this machine does not have them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from compress.errors import UserError
from compress.stages.artifacts import read_stage
from compress.sweep import worker
from compress.sweep.jobs import cell_jobs, pretrain_job
from compress.sweep.spec import SweepSpec, cell_name, cells


def _spec(tiny: dict, **extra) -> SweepSpec:
    return SweepSpec(name="jobs", config=tiny, grid={"method": ["magnitude", "random"],
                                                     "density": [0.5]}, **extra)


def _jobs(spec: SweepSpec, root: Path | None, tracking: dict):
    pre = pretrain_job(spec, [], 0, root, tracking, "local-parent", fresh=False, progress=False,
                       reuse_tracked=tracking["enabled"])
    return pre, cell_jobs(spec, cells(spec), pre, progress=False)


OFF = {"enabled": False, "uri": None, "experiment": "compress"}


def test_jobs_are_json_with_absolute_roots_and_the_identity_the_stage_gets(tmp_path, tiny_layers):
    pre, jobs = _jobs(_spec(tiny_layers), tmp_path / "root", OFF)
    assert json.loads(json.dumps([pre, *jobs])) == [pre, *jobs]
    assert all(Path(j["root"]).is_absolute() for j in (pre, *jobs))
    assert len({j["tags"]["compress.cell_id"] for j in jobs}) == 2
    row = worker.run_cell(jobs[0], worker.run_pretrain(pre))
    # Computed from configs alone, before anything ran: the id the prune stage was given.
    assert row["cell_id"] == read_stage(Path(row["dir"])).id == jobs[0]["tags"]["compress.cell_id"]
    assert row["sha256"]["masks"] == read_stage(Path(row["dir"])).record["sha256"]["masks"]


def test_a_cell_elsewhere_fetches_the_pretrain_and_finished_stages_from_mlflow(local_store,
                                                                               tiny_layers):
    tracking = {"enabled": True, "uri": f"sqlite:///{local_store}/mlflow.db", "experiment": "compress"}
    pre, jobs = _jobs(_spec(tiny_layers), local_store / "a", tracking)
    source = worker.run_pretrain(pre)
    here = worker.run_cell(jobs[0], source)

    # Another machine: its own root, and the pretrain's folder is not there.
    elsewhere = {**jobs[0], "root": str(local_store / "b")}
    moved = {**source, "dir": str(local_store / "not-on-this-machine" / "dense")}
    there = worker.run_cell({**elsewhere, "reuse_tracked": False}, moved)
    fetched = local_store / "b" / "sources" / source["run_id"]
    assert read_stage(fetched).id == source["id"]
    assert there["metrics"] == here["metrics"] and there["sha256"] == here["sha256"]
    assert not there["reused"]

    # A third machine with reuse: the finished prune stage comes from MLflow, not re-run.
    again = worker.run_cell({**jobs[0], "root": str(local_store / "c")}, moved)
    assert again["reused"] and again["sha256"] == here["sha256"]
    assert again["metrics"] == here["metrics"]


def test_without_tracking_a_missing_pretrain_asks_for_shared_storage(tmp_path, tiny_layers):
    pre, jobs = _jobs(_spec(tiny_layers), tmp_path, OFF)
    source = {"run_id": "local-x", "dir": str(tmp_path / "gone"), "id": "0" * 64}
    with pytest.raises(UserError, match="storage:"):
        worker.run_cell(jobs[0], source)


def test_cell_names_are_folder_and_run_names():
    assert cell_name({"method": "magnitude", "density": 0.5, "seed": 1}) == "magnitude-d0.5-s1"
    assert cell_name({"method": "gmp", "train.lr": 0.001}) == "gmp-train.lr_0.001"
    assert cell_name({"method": "imp", "model.hidden": [64, 32]}) == "imp-model.hidden__64__32_"


@pytest.mark.parametrize("extra, words", [
    ({"storage": "relative/path"}, "absolute"),
    ({"resources": {"num_cpus": 1, "gpus": 1}}, "gpus"),
    ({"resources": {"num_cpus": -1}}, "num_cpus"),
    ({"max_retries": -1}, "max_retries"),
])
def test_bad_ray_settings_in_the_sweep_file(tmp_path, extra, words):
    import yaml

    from compress.sweep import load_sweep
    f = tmp_path / "s.yaml"
    f.write_text(yaml.safe_dump({"name": "x", "grid": {"method": ["magnitude"]}, **extra}))
    with pytest.raises(UserError, match=words):
        load_sweep(f)


def test_a_folder_now_holding_another_run_is_not_taken_for_the_run(local_store, tiny_layers):
    from compress.tracking.mlflow_tracker import MlflowTracker
    tracking = {"enabled": True, "uri": f"sqlite:///{local_store}/mlflow.db", "experiment": "compress"}
    pre, _ = _jobs(_spec(tiny_layers), local_store / "a", tracking)
    source = worker.run_pretrain(pre)
    tracker = MlflowTracker()
    assert tracker.fetch_run(source["run_id"], local_store / "dl") == Path(source["dir"])
    # Same path, later another run (a re-run elsewhere, another machine's folder): download.
    record = json.loads((Path(source["dir"]) / "stage.json").read_text())
    (Path(source["dir"]) / "stage.json").write_text(json.dumps({**record, "run_id": "other"}))
    fetched = tracker.fetch_run(source["run_id"], local_store / "dl")
    assert fetched.is_relative_to(local_store / "dl")
    assert json.loads((fetched / "stage.json").read_text())["run_id"] == source["run_id"]

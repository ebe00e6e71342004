"""Sweeps over a shared pretrain, and reports with confidence intervals."""

import json
import math

import pytest

from tests.e2e.helpers import TINY_SETS, assert_user_error, compress, compress_json

SWEEP = """
name: tiny-sweep
config:
  data: {name: xor, k: 2, p: 6, n_train: 256, n_val: 128, n_test: 128}
  model: {name: mlp, hidden: [16]}
  train: {duration: 3ep, batch_size: 64}
grid:
  method: [magnitude, random]
  density: [0.5]
  seed: [0, 1]
"""


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    (root / "s.yaml").write_text(SWEEP)
    first = compress_json("sweep", "s.yaml", "--no-track", "--out", "sw", cwd=root)
    return root, first


def test_sweep_runs_every_cell_over_one_pretrain(swept):
    root, first = swept
    cells = [r["cell"] for r in first["rows"]]
    assert cells == [{"method": m, "density": 0.5, "seed": s}
                     for m in ("magnitude", "random") for s in (0, 1)]
    sources = {json.loads((root / r["dir"] / "stage.json").read_text())["source"]["id"]
               for r in first["rows"]}
    assert len(sources) == 1  # one shared pretrain
    for r in first["rows"]:
        assert r["metrics"]["density"] == pytest.approx(0.5, abs=0.01)
        cfg = json.loads((root / r["dir"] / "stage.json").read_text())["config"]
        assert cfg["seed"] == r["cell"]["seed"] and cfg["method"]["name"] == r["cell"]["method"]


def test_rerun_reuses_cells_and_workers_give_the_same_numbers(swept):
    root, first = swept
    again = compress_json("sweep", "s.yaml", "--no-track", "--out", "sw", cwd=root)
    assert all(r["reused"] for r in again["rows"])
    par = compress_json("sweep", "s.yaml", "--no-track", "--out", "par", "--workers", "2", cwd=root)
    assert [r["metrics"] for r in par["rows"]] == [r["metrics"] for r in first["rows"]]


def test_report_from_a_folder_gives_mean_and_t_interval(swept):
    root, first = swept
    out = compress_json("report", "--from", "sw", "--out", "rep", cwd=root)
    assert out["metric"] == "test_auc"  # binary XOR: AUC is the headline
    mag = next(r for r in out["rows"] if r["method"] == "magnitude")
    vals = [r["metrics"]["test_auc"] for r in first["rows"] if r["cell"]["method"] == "magnitude"]
    mean = sum(vals) / 2
    sd = math.sqrt(sum((v - mean) ** 2 for v in vals))
    assert mag["n"] == 2 and mag["mean"] == pytest.approx(mean)
    assert mag["ci95"] == pytest.approx(12.706204736 * sd / math.sqrt(2), rel=1e-6)
    for f in ("report.md", "report.json", "report.png"):
        assert (root / "rep" / f).stat().st_size > 0
    assert "| magnitude | 0.5 | 2 |" in (root / "rep" / "report.md").read_text()


@pytest.mark.parametrize("body, words", [
    ("name: x\ngrid: {density: [0.5]}\n", ["grid.method"]),
    ("name: x\ngrid: {method: [magnitude], density: []}\n", ["grid.density is empty"]),
    ("name: x\ngrid: {method: [magnitude, magnitude]}\n", ["twice"]),
    ("name: x\ngrid: {method: [nope]}\n", ["nope"]),
    ("name: x\ngrid: {method: [magnitude], density: [1.5]}\n", ["method.density"]),
])
def test_bad_sweep_files_run_nothing(tmp_path, body, words):
    (tmp_path / "s.yaml").write_text(body)
    r = compress("sweep", "s.yaml", "--no-track", cwd=tmp_path)
    assert_user_error(r, *words)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.yaml"]


def test_report_mistakes_are_one_line(swept, tmp_path):
    root, _ = swept
    assert_user_error(compress("report", cwd=tmp_path), "exactly one of")
    assert_user_error(compress("report", "--from", str(tmp_path), cwd=tmp_path), "results.json")
    assert_user_error(compress("report", "--from", str(root / "sw"), "--metric", "f1",
                               "--out", str(tmp_path / "r"), cwd=tmp_path), "test_auc")


def test_tracked_sweep_cells_are_runs_and_the_report_reads_them(tmp_path):
    from mlflow.tracking import MlflowClient
    (tmp_path / "s.yaml").write_text(SWEEP.replace("seed: [0, 1]", "seed: [0]"))
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    env = {"MLFLOW_TRACKING_URI": uri}
    res = compress_json("sweep", "s.yaml", "--out", "sw", cwd=tmp_path, env=env)
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("compress").experiment_id
    cells = client.search_runs([exp], "tags.`compress.kind` = 'cell'")
    assert len(cells) == 2
    assert all(c.data.tags["mlflow.parentRunId"] == res["run_id"] for c in cells)
    assert all("test_auc" in c.data.metrics for c in cells)
    rep = compress_json("report", "--sweep", "tiny-sweep", "--out", "rep", cwd=tmp_path, env=env)
    assert rep["logged_to"] == res["run_id"] and len(rep["rows"]) == 2
    arts = {a.path for a in client.list_artifacts(res["run_id"], "report")}
    assert {"report/report.md", "report/report.png", "report/report.json"} <= arts

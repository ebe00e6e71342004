"""Plugins: the out-of-tree example package (examples/plugin), installed with pip, runs through
prune, export and a 2-cell sweep in worker processes; a local --plugin module is recorded with
its stages so follow-on commands find it; a broken plugin is one line.

The package is installed with `pip install --target` into a folder put on PYTHONPATH: the same
distribution metadata and entry points as an install into the venv, without changing the venv
other tests run in.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.helpers import assert_user_error, compress_subprocess, sets

ROOT = Path(__file__).resolve().parents[2]
PLUGIN_SETS = ["data.name=blobs", "data.samples=600", "model.name=widenet", "model.width=32",
               "train.duration=3ep", "train.batch_size=64", "export.benchmark=false"]
SWEEP = """
name: lamp-sweep
config:
  data: {name: blobs, samples: 600}
  model: {name: widenet, width: 32}
  train: {duration: 3ep, batch_size: 64}
grid:
  method: [lamp]
  density: [0.5, 0.2]
"""


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict:
    target = tmp_path_factory.mktemp("site")
    r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                        "--no-build-isolation", "--target", str(target),
                        str(ROOT / "examples" / "plugin")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    return {"PYTHONPATH": f"{target}:{ROOT}"}


def _json(r) -> dict:
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout)


def test_the_installed_plugin_registers_a_method_a_dataset_and_a_model(installed, tmp_path):
    listed = _json(compress_subprocess("methods", "--json", cwd=tmp_path, env=installed))
    assert listed["lamp"]["origin"].startswith("plugin compress-example-plugin")
    assert listed["magnitude"]["origin"] == "built-in"
    out = _json(compress_subprocess("prune", "--method", "lamp", "--no-track", "--json",
                                    "--out", "run", *sets(*PLUGIN_SETS, "method.density=0.2"),
                                    cwd=tmp_path, env=installed))
    assert out["density"] == pytest.approx(0.2, abs=0.01)
    assert out["metrics"]["test_accuracy"] > 0.5  # 4 separable clusters
    assert out["export_metrics"]["parity_rel_error"] <= 1e-5
    again = _json(compress_subprocess("export", "--from", out["artifacts"]["prune_dir"],
                                      "--no-track", "--json", "--out", "exp",
                                      *sets("export.benchmark=false"), cwd=tmp_path,
                                      env=installed))
    assert again["metrics"]["parity_rel_error"] <= 1e-5


def test_a_sweep_of_plugin_cells_runs_in_two_workers(installed, tmp_path):
    (tmp_path / "s.yaml").write_text(SWEEP)
    out = _json(compress_subprocess("sweep", "s.yaml", "--workers", "2", "--no-track", "--json",
                                    "--out", "sw", cwd=tmp_path, env=installed))
    assert [r["cell"]["density"] for r in out["rows"]] == [0.5, 0.2]
    assert [round(r["metrics"]["density"], 2) for r in out["rows"]] == [0.5, 0.2]


LOCAL_PLUGIN = '''
from compress.methods.magnitude import Magnitude
from compress.registry import register_method


@register_method
class HalfMagnitude(Magnitude):
    name = "half-magnitude"
    summary = "magnitude pruning, registered by a local plugin module"
'''


def test_a_local_plugin_module_is_recorded_and_reloaded_by_follow_on_commands(tmp_path):
    (tmp_path / "myplug.py").write_text(LOCAL_PLUGIN)
    env = {"PYTHONPATH": str(ROOT)}
    tiny = ["data.name=xor", "data.k=2", "data.p=6", "data.n_train=256", "data.n_val=64",
            "data.n_test=64", "model.hidden=[16]", "train.duration=2ep",
            "method.finetune=1ep", "export.benchmark=false"]
    out = _json(compress_subprocess("prune", "--plugin", "myplug", "--method", "half-magnitude",
                                    "--no-track", "--json", "--out", "run", *sets(*tiny),
                                    cwd=tmp_path, env=env))
    record = json.loads((Path(out["artifacts"]["prune_dir"]) / "stage.json").read_text())
    assert record["config"]["plugins"] == ["myplug"]
    re = _json(compress_subprocess("retrain", "--from", out["artifacts"]["prune_dir"],
                                   "--no-track", "--json", "--out", "re", cwd=tmp_path, env=env))
    assert 0 < re["density"] < 1
    listed = compress_subprocess("methods", "--plugin", "myplug", cwd=tmp_path, env=env)
    assert "half-magnitude" in listed.stdout and "[plugin myplug]" in listed.stdout


def test_a_broken_or_missing_plugin_is_one_line(tmp_path):
    (tmp_path / "broken.py").write_text("raise RuntimeError('no GPU library here')\n")
    env = {"PYTHONPATH": str(ROOT)}
    assert_user_error(compress_subprocess("methods", "--plugin", "broken", cwd=tmp_path, env=env),
                      "plugin 'broken'", "no GPU library here")
    assert_user_error(compress_subprocess("methods", "--plugin", "not_there", cwd=tmp_path,
                                          env=env), "plugin 'not_there' cannot be imported")

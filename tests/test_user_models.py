"""Your model: weights files, py:/file: factories, the import stage, lineage, distillation.

A user's model is trained with plain PyTorch (nothing from compress), saved as a state dict,
then named by `model.name` + `model.weights`; the import stage must evaluate exactly what
the user's own code computes, and every bad input must be one line, exit 2.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from tests.e2e.helpers import assert_user_error, compress, compress_json, sets

MODEL_FILE = textwrap.dedent('''
    import torch
    from torch import nn


    class Net(nn.Module):
        def __init__(self, width=6, num_classes=10):
            super().__init__()
            self.features = nn.Sequential(
                nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                nn.Conv2d(width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(),
                nn.AdaptiveAvgPool2d(1))
            self.fc = nn.Linear(2 * width, num_classes)

        def forward(self, x):
            return self.fc(self.features(x).flatten(1))


    def build(width=6, num_classes=10):
        return Net(width, num_classes)


    def not_a_model(**kwargs):
        return "a string"


    def broken(**kwargs):
        raise ValueError("width must be even")
''')
DIGITS = ["data.name=digits"]


def _digits():
    """compress's digits splits, as a user script would see them through its own loader."""
    from compress.data import load_dataset
    return load_dataset("digits", {})


@pytest.fixture(scope="module")
def user_model(tmp_path_factory) -> Path:
    """A folder with net.py and weights trained by plain PyTorch (w.pt, w.safetensors)."""
    from safetensors.torch import save_file
    root = tmp_path_factory.mktemp("user")
    (root / "net.py").write_text(MODEL_FILE)
    import importlib.util
    import sys
    spec = importlib.util.spec_from_file_location("user_net_fixture", root / "net.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["user_net_fixture"] = module  # importable, so torch.save(model) can pickle it
    spec.loader.exec_module(module)
    torch.manual_seed(0)
    model = module.build(width=6)
    data = _digits()
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    x, y = data.train.x, data.train.y
    for _ in range(4):
        for i in range(0, len(y), 64):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[i:i + 64]), y[i:i + 64]).backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        acc = int((model(data.test.x).argmax(1) == data.test.y).sum()) / len(data.test.y)
    torch.save(model.state_dict(), root / "w.pt")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(root / "w.safetensors"))
    torch.save({"epoch": 4, "state_dict": model.state_dict()}, root / "ckpt.pt")
    torch.save({f"module.{k}": v for k, v in model.state_dict().items()}, root / "ddp.pt")
    torch.save(model, root / "whole.pt")
    (root / "accuracy.json").write_text(json.dumps({"test_accuracy": acc}))
    return root


def _import(root: Path, *items: str):
    return compress("import", "--no-track", "--json", "--out", "imp",
                    *sets(*DIGITS, "model.name=file:net.py:build", *items), cwd=root)


@pytest.mark.parametrize("weights", ["w.pt", "w.safetensors", "ckpt.pt", "ddp.pt"])
def test_import_evaluates_the_users_model_exactly(user_model, weights):
    r = _import(user_model, f"model.weights={weights}")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    mine = json.loads((user_model / "accuracy.json").read_text())["test_accuracy"]
    assert out["stage"] == "import"
    assert out["metrics"]["test_accuracy"] == pytest.approx(mine, abs=1e-9)
    ref = out["model_ref"]
    assert ref["file_sha256"] and ref["weights_sha256"] and ref["name"] == f"file:{user_model / 'net.py'}:build"
    assert out["imported"]["weights_sha256"] == ref["weights_sha256"]
    assert out["density"] == 1.0


@pytest.mark.parametrize("items, words", [
    (["model.weights=whole.pt"], ["pickled Python objects", "state_dict"]),
    (["model.weights=w.pt", "model.args.width=4"], ["does not fit the model", "features.0.weight"]),
    (["model.weights=nope.pt"], ["nope.pt does not exist"]),
    (["model.weights=net.py"], ["unknown format"]),
    (["model.weights=w.pt", "model.args.num_classes=3"], ["outputs 3 values", "reset_head"]),
    (["model.name=file:missing.py:build"], ["missing.py does not exist"]),
    (["model.name=file:net.py:nothere"], ["no function 'nothere'", "build"]),
    (["model.name=file:net.py:not_a_model"], ["returned str", "nn.Module"]),
    (["model.name=file:net.py:broken"], ["raised ValueError: width must be even"]),
    (["model.name=file:net.py"], ["is not file:WHERE:FUNCTION"]),
    (["model.name=py:no_such_package.models:build"], ["cannot import module 'no_such_package.models'"]),
    (["model.name=mlp"], ["needs trained weights", "model.weights"]),
    (["model.reset_head=maybe"], ["model.reset_head"]),
])
def test_bad_models_and_weights_are_one_line(user_model, items, words):
    # The model name comes first so an item may replace it.
    r = compress("import", "--no-track", "--out", "bad",
                 *sets(*DIGITS, "model.name=file:net.py:build", *items), cwd=user_model)
    assert_user_error(r, *words)
    assert not (user_model / "bad").exists()


def test_a_new_head_for_another_class_count_with_reset_head(user_model, tmp_path):
    """Weights trained for 3 classes onto the data's 10-class head: refused, then a fresh head."""
    state = torch.load(user_model / "w.pt")
    state["fc.weight"], state["fc.bias"] = torch.randn(3, 12), torch.randn(3)
    torch.save(state, tmp_path / "three.pt")
    (tmp_path / "net.py").write_text(MODEL_FILE)
    refused = compress("import", "--no-track",
                       *sets(*DIGITS, "model.name=file:net.py:build", "model.weights=three.pt"),
                       cwd=tmp_path)
    assert_user_error(refused, "fc.weight", "(3, 12)", "(10, 12)", "reset_head")
    out = compress_json("import", "--no-track",
                        *sets(*DIGITS, "model.name=file:net.py:build", "model.weights=three.pt",
                              "model.reset_head=true"), cwd=tmp_path)
    assert any("new head 'fc'" in n for n in out["imported"]["notes"])


def test_py_factories_and_their_code_in_the_identity(user_model, tmp_path, monkeypatch):
    pkg = tmp_path / "mypkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "nets.py").write_text(MODEL_FILE)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    monkeypatch.syspath_prepend(str(tmp_path))
    out = compress_json("import", "--no-track", "--out", "a",
                        *sets(*DIGITS, "model.name=py:mypkg.nets:build",
                              f"model.weights={user_model / 'w.pt'}"), cwd=tmp_path)
    mine = json.loads((user_model / "accuracy.json").read_text())["test_accuracy"]
    assert out["metrics"]["test_accuracy"] == pytest.approx(mine, abs=1e-9)
    assert out["model_ref"]["file"].endswith("nets.py")


def test_an_edited_weights_or_model_file_changes_the_stage_identity(user_model, tmp_path):
    import shutil
    for f in ("net.py", "w.pt"):
        shutil.copy(user_model / f, tmp_path / f)
    args = ("prune", "--method", "magnitude", "--no-track", "--no-export", "--out", "run",
            *sets(*DIGITS, "model.name=file:net.py:build", "model.weights=w.pt",
                  "method.finetune=0ep"))
    first = compress_json(*args, cwd=tmp_path)
    again = compress_json(*args, cwd=tmp_path)
    assert again["stages"]["import"]["reused"] and again["stages"]["prune"]["reused"]
    state = torch.load(tmp_path / "w.pt")
    state["fc.bias"] += 1.0
    torch.save(state, tmp_path / "w.pt")
    edited = compress_json(*args, cwd=tmp_path)
    assert not edited["stages"]["import"]["reused"]
    assert edited["stages"]["import"]["model_ref"]["weights_sha256"] != \
        first["stages"]["import"]["model_ref"]["weights_sha256"]
    (tmp_path / "net.py").write_text(MODEL_FILE + "\n# a comment changes the code's sha256\n")
    recoded = compress_json(*args, cwd=tmp_path)
    assert not recoded["stages"]["import"]["reused"]


def test_imported_models_prune_retrain_and_export_without_extra_flags(user_model, tmp_path):
    import shutil
    for f in ("net.py", "w.pt"):
        shutil.copy(user_model / f, tmp_path / f)
    out = compress_json("prune", "--method", "l1filter", "--no-track", "--out", "run",
                        *sets(*DIGITS, "model.name=file:net.py:build", "model.weights=w.pt",
                              "method.finetune=1ep", "export.benchmark=false"), cwd=tmp_path)
    assert list(out["stages"]) == ["import", "prune", "export"]
    assert out["export_metrics"]["parity_rel_error"] <= 1e-5
    assert out["export_metrics"]["table.shrunk.macs"] < out["export_metrics"]["table.dense.macs"] \
        if "table.dense.macs" in out["export_metrics"] else True
    prune_dir = out["artifacts"]["prune_dir"]
    for mode in ("finetune", "rewind"):
        re = compress_json("retrain", "--from", prune_dir, "--mode", mode, "--no-track",
                           "--out", f"re-{mode}", *sets("train.duration=1ep"), cwd=tmp_path)
        assert 0 < re["density"] < 1
    late = compress("retrain", "--from", prune_dir, "--mode", "rewind", "--no-track",
                    *sets("retrain.rewind=5it", "train.duration=1ep"), cwd=tmp_path)
    assert_user_error(late, "imported trained", "0it")
    exported = compress_json("export", "--from", prune_dir, "--no-track", "--out", "exp",
                             *sets("export.benchmark=false"), cwd=tmp_path)
    assert exported["metrics"]["parity_rel_error"] <= 1e-5


def test_distillation_alpha_zero_is_plain_training_and_alpha_half_is_not(user_model, tmp_path):
    import shutil
    for f in ("net.py", "w.pt"):
        shutil.copy(user_model / f, tmp_path / f)
    base = ("prune", "--method", "magnitude", "--no-track", "--no-export",
            *sets(*DIGITS, "model.name=file:net.py:build", "model.weights=w.pt",
                  "method.finetune=1ep", "method.density=0.3"))
    plain = compress_json(*base, "--out", "plain", cwd=tmp_path)
    zero = compress_json(*base, "--out", "zero", *sets("distill.alpha=0.0"), cwd=tmp_path)
    half = compress_json(*base, "--out", "half", *sets("distill.alpha=0.5"), cwd=tmp_path)
    assert zero["metrics"] == plain["metrics"]
    assert half["metrics"] != plain["metrics"]
    teacher = Path(half["stages"]["import"]["artifacts"]["weights"])
    from compress.stages.artifacts import load_state
    stored, trained = load_state(teacher), torch.load(tmp_path / "w.pt")
    assert all(torch.equal(stored[k], v) for k, v in trained.items())  # the teacher never trains
    retrained = compress_json("retrain", "--from", half["artifacts"]["prune_dir"], "--no-track",
                              "--out", "re", *sets("train.duration=1ep", "distill.alpha=0.7",
                                                  "distill.temperature=2"), cwd=tmp_path)
    assert 0 < retrained["density"] < 1


def test_a_sweep_over_an_imported_model_shares_one_import(user_model, tmp_path):
    import shutil

    import yaml
    for f in ("net.py", "w.pt"):
        shutil.copy(user_model / f, tmp_path / f)
    (tmp_path / "s.yaml").write_text(yaml.safe_dump({
        "name": "user-sweep",
        "config": {"data": {"name": "digits"},
                   "model": {"name": "file:net.py:build", "weights": "w.pt"}},
        "grid": {"method": ["magnitude"], "density": [0.5, 0.2], "method.finetune": ["1ep"]}}))
    out = compress_json("sweep", "s.yaml", "--no-track", "--out", "sw", cwd=tmp_path)
    sources = {json.loads((tmp_path / r["dir"] / "stage.json").read_text())["source"]["stage"]
               for r in out["rows"]}
    assert sources == {"import"}
    assert [round(r["metrics"]["density"], 2) for r in out["rows"]] == [0.5, 0.2]

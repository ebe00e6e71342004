"""The main path, end to end, as a user runs it.

1. A plain PyTorch script (nothing from compress) trains a model on a PNG image folder and
   saves its state dict: a CNN from the user's own model file, and torchvision's resnet18.
2. `compress prune --method l1filter` with `model.weights` and `data.name: imagefolder`
   imports it (its test accuracy is the script's own), prunes channels, fine-tunes, and exports
   a physically smaller ONNX model checked against PyTorch.
3. onnxruntime on freshly decoded PNG files predicts the classes compress's evaluation predicts.
The same from `--from models:/NAME@ALIAS` (the script registers the model with mlflow.pytorch),
and a CSV through CPNA: raw rows into the served model, compress's predictions out.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from tests.e2e.helpers import compress_json, sets
from tests.e2e.test_cli_table import _csv_rows, split_csvs  # noqa: F401 - a shared fixture
from tests.fixtures_data import write_digit_folder

MEAN, STD = [0.45, 0.35, 0.55], [0.30, 0.25, 0.30]
NET = textwrap.dedent('''
    from torch import nn


    def build(width=8, num_classes=10):
        return nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * width, num_classes))
''')
# The user's training script: torch, PIL and numpy only (and mlflow when asked to register).
TRAIN = textwrap.dedent('''
    import json, sys
    from pathlib import Path

    import numpy as np
    import torch
    from PIL import Image

    root, arch, out = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
    register = sys.argv[4] if len(sys.argv) > 4 else None
    mean = np.array(MEAN, dtype=np.float32)[:, None, None]
    std = np.array(STD, dtype=np.float32)[:, None, None]
    classes = sorted(p.name for p in (root / "train").iterdir())

    def load(split):
        files = sorted((root / split).glob("*/*.png"))
        x = np.stack([(np.asarray(Image.open(f).convert("RGB"), dtype=np.float32)
                       .transpose(2, 0, 1) / 255.0 - mean) / std for f in files])
        y = [classes.index(f.parent.name) for f in files]
        return torch.from_numpy(x), torch.tensor(y)

    torch.manual_seed(0)
    if arch == "resnet18":
        import torchvision
        model = torchvision.models.resnet18(num_classes=len(classes))
    else:
        sys.path.insert(0, str(out.parent))
        from net import build
        model = build(num_classes=len(classes))
    x, y = load("train")
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    for epoch in range(EPOCHS):
        order = torch.randperm(len(y))
        for i in range(0, len(y), 32):
            idx = order[i:i + 32]
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    model.eval()
    tx, ty = load("test")
    with torch.no_grad():
        pred = model(tx).argmax(1)
    torch.save(model.state_dict(), out)
    if register:
        import mlflow
        with mlflow.start_run():
            mlflow.pytorch.log_model(model, name="model", registered_model_name=register,
                                     serialization_format="pickle", pip_requirements=["torch"],
                                     code_paths=[str(out.parent / "net.py")])
        mlflow.MlflowClient().set_registered_model_alias(register, "champion", "1")
    print(json.dumps({"test_accuracy": int((pred == ty).sum()) / len(ty)}))
''')


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return write_digit_folder(tmp_path_factory.mktemp("pngs") / "digits", per_class=24)


def _train(folder: Path, work: Path, arch: str, epochs: int, env: dict | None = None,
           register: str | None = None) -> float:
    (work / "net.py").write_text(NET)
    script = TRAIN.replace("MEAN", repr(MEAN)).replace("STD", repr(STD)).replace("EPOCHS", str(epochs))
    (work / "train.py").write_text(script)
    r = subprocess.run([sys.executable, "train.py", str(folder), arch, str(work / "w.pt"),
                        *([register] if register else [])], cwd=work, capture_output=True,
                       text=True, timeout=600, env={**__import__("os").environ, **(env or {})})
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])["test_accuracy"]


def _data_sets(folder: Path) -> list[str]:
    return ["data.name=imagefolder", f"data.root={folder}", f"data.mean={MEAN}",
            f"data.std={STD}", "data.num_workers=0", "method.finetune=1ep",
            "train.batch_size=32", "export.benchmark=false"]


def _onnx_on_pngs(onnx: str, folder: Path, facts: dict) -> np.ndarray:
    """Classes onnxruntime predicts for every test PNG, decoded here from the files."""
    import onnxruntime as ort
    from PIL import Image
    mean = np.array(facts["mean"], dtype=np.float32)[:, None, None]
    std = np.array(facts["std"], dtype=np.float32)[:, None, None]
    files = sorted((folder / "test").glob("*/*.png"))
    x = np.stack([(np.asarray(Image.open(f).convert("RGB"), dtype=np.float32)
                   .transpose(2, 0, 1) / 255.0 - mean) / std for f in files])
    session = ort.InferenceSession(onnx, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0].argmax(1)


def _compress_predictions(prune_dir: str) -> np.ndarray:
    """The pruned model's classes on the test split, as compress evaluates them."""
    from compress.config import resolve
    from compress.core.loop import predict
    from compress.core.masking import apply_masks
    from compress.stages.artifacts import read_stage
    from compress.stages.runner import build, load_data
    stage = read_stage(Path(prune_dir))
    cfg = resolve(stage.record["config"])
    data = load_data(cfg)
    model = build(cfg, data)
    model.load_state_dict(stage.state("weights"))
    if stage.masks() is not None:
        apply_masks(model, stage.masks())
    return predict(model, data.test).argmax(1).numpy()


def _check_flow(out: dict, folder: Path, script_accuracy: float) -> None:
    assert list(out["stages"]) == ["import", "prune", "export"]
    assert out["stages"]["import"]["metrics"]["test_accuracy"] == script_accuracy
    export = out["export_metrics"]
    assert export["parity_rel_error"] <= 1e-5
    assert export["table.shrunk.macs"] < export["table.dense.macs"]  # physically smaller
    facts = out["stages"]["prune"]["data_facts"]
    onnx = _onnx_on_pngs(out["artifacts"]["onnx"], folder, facts)
    assert np.array_equal(onnx, _compress_predictions(out["artifacts"]["prune_dir"]))


@pytest.mark.parametrize("arch", ["file", "resnet18"])
def test_a_model_trained_with_plain_pytorch_is_pruned_and_served(folder, tmp_path, arch):
    accuracy = _train(folder, tmp_path, arch, epochs=6 if arch == "file" else 2)
    model = "model.name=file:net.py:build" if arch == "file" else "model.name=torchvision:resnet18"
    out = compress_json("prune", "--method", "l1filter", "--no-track", "--out", "run",
                        *sets(*_data_sets(folder), model, "model.weights=w.pt",
                              "export.benchmark=true", "export.latency_rounds=2"),
                        cwd=tmp_path)
    _check_flow(out, folder, accuracy)


def test_the_same_flow_from_the_mlflow_registry(folder, tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {"MLFLOW_TRACKING_URI": uri, "MLFLOW_REGISTRY_URI": uri}
    for k, v in env.items():
        monkeypatch.setenv(k, v)  # rebuilding the model in this process reads it
    monkeypatch.chdir(tmp_path)
    accuracy = _train(folder, tmp_path, "file", epochs=6, env=env, register="pngs-net")
    out = compress_json("prune", "--from", "models:/pngs-net@champion", "--method", "l1filter",
                        "--out", "run", *sets(*_data_sets(folder), "export.benchmark=true",
                                              "export.latency_rounds=2"),
                        cwd=tmp_path, env=env)
    assert out["stages"]["import"]["model_ref"]["pinned_uri"] == "models:/pngs-net/1"
    _check_flow(out, folder, accuracy)


def test_a_csv_through_cpna_serves_raw_rows(split_csvs, tmp_path):
    """CPNA on a table: the shrunk network drops inputs, the served model still takes every
    raw column of a CSV row (strings for categoricals) and predicts what compress predicts."""
    import onnxruntime as ort
    out = compress_json("prune", "--method", "cpna", "--no-track", "--out", "run",
                        *sets("data.name=table", "data.target=cultivar",
                              *(f"data.{s}={p}" for s, p in split_csvs.items()),
                              "model.hidden=[64]", "train.duration=20ep", "train.batch_size=32",
                              "method.anneal_epochs=10", "method.final_epochs=2",
                              "export.benchmark=false"), cwd=tmp_path)
    assert out["export_metrics"]["parity_raw_rel_error"] < 1e-5
    features = out["structure"]["input_features"]
    assert features["kept"] < features["total"]  # CPNA dropped encoded inputs
    raw_inputs = out["stages"]["export"]["raw_inputs"]
    session = ort.InferenceSession(out["artifacts"]["onnx"])
    assert [i.name for i in session.get_inputs()] == [c["name"] for c in raw_inputs]
    logits = session.run(None, _csv_rows(split_csvs["test"], raw_inputs))[0]
    assert np.array_equal(logits.argmax(1), _compress_predictions(out["artifacts"]["prune_dir"]))

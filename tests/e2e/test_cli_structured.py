"""Channel pruning through the CLI: prune -> physically smaller ONNX, Scratch-B retrain, bad input."""

import json
from pathlib import Path

import pytest

from tests.e2e.helpers import assert_user_error, compress, compress_json, sets

pytest.importorskip("onnxruntime")

CNN = [*sets("data.name=digits", "model.name=conv2", "model.width=0.25", "model.batchnorm=true",
             "train.duration=2ep", "method.finetune=1ep", "export.latency_rounds=3",
             "export.round_to=1"), "--no-track", "--seed", "1"]


@pytest.fixture(scope="module")
def l1(tmp_path_factory):
    root = tmp_path_factory.mktemp("l1filter-cli")
    return root, compress_json("prune", "--method", "l1filter", "--set", "method.sparsity=0.75",
                               *CNN, "--out", "run", cwd=root)


def test_l1filter_exports_a_physically_smaller_onnx_with_parity(l1):
    root, out = l1
    assert out["method"] == "l1filter"
    info = out["stages"]["prune"]
    prune = json.loads((Path(info["artifacts"]["dir"]) / "stage.json").read_text())
    assert prune["method_info"]["channels"] == {"features.0": {"kept": 4, "total": 16},
                                                "features.3": {"kept": 4, "total": 16}}
    assert out["structure"]["channels"]["kept"] == 4 + 4 + 64 + 64  # the FC hidden units stay
    export = json.loads((root / "run" / "export" / "stage.json").read_text())
    spec = export["structure"]
    assert spec["shrunk"] and spec["kind"] == "channels"
    assert [(g["group"], g["kept"]) for g in spec["groups"][:2]] == [("features.0", 4),
                                                                     ("features.3", 4)]
    metrics = out["export_metrics"]
    assert metrics["parity_rel_error"] <= 1e-5
    assert metrics["onnx_test_accuracy"] == pytest.approx(out["metrics"]["test_accuracy"])
    assert metrics["table.shrunk.macs"] < 0.2 * metrics["table.dense.macs"]
    assert metrics["table.shrunk.onnx_bytes"] < 0.5 * metrics["table.dense.onnx_bytes"]
    import onnx
    model = onnx.load(out["artifacts"]["onnx"])
    first_conv = next(i for i in model.graph.initializer if tuple(i.dims)[:2] == (4, 1))
    assert tuple(first_conv.dims) == (4, 1, 3, 3)  # 4 filters left of 16


def test_scratch_b_retrains_the_channel_mask_longer(l1):
    root, out = l1
    prune_dir = out["stages"]["prune"]["artifacts"]["dir"]
    b = compress_json("retrain", "--from", prune_dir, "--set", "retrain.mode=scratch_b",
                      "--no-track", "--out", "scratch-b", cwd=root)
    assert b["density"] == pytest.approx(out["density"])
    stage = json.loads((Path(b["artifacts"]["dir"]) / "stage.json").read_text())
    assert stage["flops_ratio"] > 5  # dense FLOPs / FLOPs of the kept channels (conv: ~16x)
    assert stage["duration"] != "2ep"


@pytest.mark.parametrize("args,words", [
    (["--set", "method.sparsity=0.99"], ["would remove all 16 channels of layer 'features.0'"]),
    (["--set", "method.keep_dense=[nope]"], ["no layer named 'nope'"]),
    (["--set", "method.round_to=0"], ["method.round_to"]),
])
def test_bad_structured_options_exit_2_and_write_nothing(tmp_path, args, words):
    r = compress("prune", "--method", "l1filter", *CNN, *args, "--out", "bad", cwd=tmp_path)
    assert_user_error(r, *words)
    assert not (tmp_path / "bad").exists()


def test_slimming_on_a_model_without_batchnorm_exits_2(tmp_path):
    r = compress("prune", "--method", "slimming", *CNN, "--set", "model.batchnorm=false",
                 "--out", "bad", cwd=tmp_path)
    assert_user_error(r, "BatchNorm")
    assert not (tmp_path / "bad").exists()


def test_round_to_auto_picks_the_fastest_measured_rounding(l1):
    root, out = l1
    prune_dir = out["stages"]["prune"]["artifacts"]["dir"]
    ex = compress_json("export", "--from", prune_dir, "--set", "export.round_to=auto",
                       "--no-track", "--out", "auto", cwd=root)
    spec = json.loads((Path(ex["artifacts"]["dir"]) / "stage.json").read_text())["structure"]
    timed = spec["round_to_auto"]
    assert sorted(timed) == ["1", "16", "8"] and all(v > 0 for v in timed.values())
    assert spec["round_to"] == int(min(timed, key=timed.get))
    assert ex["metrics"]["parity_rel_error"] <= 1e-5
    r = compress("export", "--from", prune_dir, "--set", "export.round_to=fast", "--no-track",
                 "--out", "bad", cwd=root)
    assert_user_error(r, "export.round_to")


def test_the_dynamo_exporter_gives_the_same_shrunk_model(l1):
    import onnx
    root, out = l1
    prune_dir = out["stages"]["prune"]["artifacts"]["dir"]
    ex = compress_json("export", "--from", prune_dir, "--set", "export.exporter=dynamo",
                       "--set", "export.benchmark=false", "--no-track", "--out", "dynamo", cwd=root)
    assert ex["metrics"]["parity_rel_error"] <= 1e-5
    assert ex["metrics"]["onnx_test_accuracy"] == pytest.approx(out["metrics"]["test_accuracy"])

    def shapes(path):
        return sorted(tuple(i.dims) for i in onnx.load(path).graph.initializer if len(i.dims) == 4)
    assert shapes(ex["artifacts"]["onnx"]) == shapes(out["artifacts"]["onnx"])


# ---------------------------------------------------------------- physically pruned models
@pytest.fixture(scope="module")
def cut(tmp_path_factory):
    root = tmp_path_factory.mktemp("physical-cli")
    return root, compress_json("prune", "--method", "l1filter", "--set", "method.sparsity=0.5",
                               "--set", "method.physical=true", *CNN, "--out", "run", cwd=root)


def test_a_cut_model_records_its_architecture_and_exports_its_smaller_shapes(cut):
    import onnx
    root, out = cut
    prune = json.loads((root / "run" / "prune" / "stage.json").read_text())
    groups = prune["architecture"]["steps"][0]["groups"]
    assert {k: (v["size"], len(v["kept"])) for k, v in groups.items()} == {
        "features.0": (16, 8), "features.3": (16, 8)}
    assert out["stages"]["prune"]["pruning"]["physical"] is True
    assert out["stages"]["prune"]["pruning"]["achieved"]["macs_ratio"] > 2
    from safetensors.torch import load_file
    weights = load_file(str(root / "run" / "prune" / "weights.safetensors"))
    assert weights["features.0.weight"].shape[0] == 8  # the smaller model's weights
    assert out["export_metrics"]["parity_rel_error"] <= 1e-5
    convs = [tuple(i.dims) for i in onnx.load(out["artifacts"]["onnx"]).graph.initializer
             if len(i.dims) == 4]
    assert (8, 1, 3, 3) in convs and (8, 8, 3, 3) in convs


def test_retrain_and_export_rebuild_the_cut_model_from_its_spec(cut):
    root, out = cut
    prune_dir = out["stages"]["prune"]["artifacts"]["dir"]
    for mode in ("finetune", "rewind", "reinit"):
        r = compress_json("retrain", "--from", prune_dir, "--set", f"retrain.mode={mode}",
                          "--set", "retrain.train.duration=1ep", "--no-track", "--out", mode,
                          cwd=root)
        stage = json.loads((Path(r["artifacts"]["dir"]) / "stage.json").read_text())
        assert stage["architecture"] == json.loads(
            (Path(prune_dir) / "stage.json").read_text())["architecture"]
    ex = compress_json("export", "--from", str(root / "rewind"), "--set", "export.benchmark=false",
                       "--no-track", "--out", "ex", cwd=root)
    assert ex["metrics"]["parity_rel_error"] <= 1e-5
    again = compress_json("prune", "--method", "l1filter", "--from", prune_dir, "--set",
                          "method.sparsity=0.5", "--set", "method.physical=true", *CNN,
                          "--out", "again", cwd=root)
    spec = json.loads((root / "again" / "prune" / "stage.json").read_text())["architecture"]
    assert [len(s["groups"]["features.0"]["kept"]) for s in spec["steps"]] == [8, 4]
    assert again["export_metrics"]["parity_rel_error"] <= 1e-5


def test_latency_aware_widths_through_the_cli(l1):
    root, out = l1
    prune_dir = out["stages"]["prune"]["artifacts"]["dir"]
    ex = compress_json("export", "--from", prune_dir, "--set", "export.round=latency",
                       "--set", "export.latency_rounds=3", "--set", "export.benchmark=false",
                       "--no-track", "--out", "latency", cwd=root)
    spec = json.loads((Path(ex["artifacts"]["dir"]) / "stage.json").read_text())["structure"]
    assert spec["rounding"] == "latency"
    assert all(g["kept"] in (4, 8, 16) for g in spec["groups"][:2])  # 4 live: exact, 8 or 16
    assert ex["metrics"]["parity_rel_error"] <= 1e-5

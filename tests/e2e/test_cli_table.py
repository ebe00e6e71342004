"""Tables through the real CLI: prune and export a model that takes RAW rows (strings for
categoricals) in onnxruntime and predicts what compress predicts; every bad table is one line."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from tests.e2e.helpers import assert_user_error, compress, compress_json, sets
from tests.fixtures_data import wine_frame, write_table

TINY_MLP = ["data.name=table", "data.target=cultivar", "model.name=mlp", "model.hidden=[16]",
            "train.duration=20ep", "train.batch_size=32"]


@pytest.fixture(scope="module")
def split_csvs(tmp_path_factory) -> dict[str, Path]:
    """The wine table cut into train.csv / val.csv / test.csv (every cultivar in each)."""
    folder = tmp_path_factory.mktemp("wine-splits")
    frame = wine_frame().sample(frac=1.0, random_state=0).reset_index(drop=True)
    parts = {"val": frame.groupby("cultivar").head(6)}
    rest = frame.drop(parts["val"].index)
    parts["test"] = rest.groupby("cultivar").head(10)
    parts["train"] = rest.drop(parts["test"].index)
    return {s: write_table(f, folder / f"{s}.csv") for s, f in parts.items()}


def _csv_rows(path: Path, raw_inputs: list[dict]) -> dict[str, np.ndarray]:
    """The file's rows as a client would send them: strings from the CSV text, converted only
    to the type each raw input declares."""
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    convert = {"double": (float, np.float64), "long": (int, np.int64), "string": (str, object)}
    return {c["name"]: np.array([convert[c["type"]][0](r[c["name"]]) for r in rows],
                                dtype=convert[c["type"]][1]) for c in raw_inputs}


def test_raw_csv_rows_in_onnxruntime_predict_what_compress_predicts(split_csvs, tmp_path):
    import onnxruntime as ort
    import torch

    from compress.core.loop import predict
    from compress.data import load_dataset
    from compress.models import build_model
    from compress.stages.artifacts import read_stage
    out = compress_json("prune", "--method", "magnitude", "--no-track", "--out", "run",
                        *sets(*TINY_MLP, *(f"data.{s}={p}" for s, p in split_csvs.items()),
                              "method.density=0.3", "method.finetune=5ep"), cwd=tmp_path)
    raw_inputs = out["stages"]["export"]["raw_inputs"]
    assert {c["name"]: c["type"] for c in raw_inputs}["color"] == "string"
    assert {c["name"]: c["type"] for c in raw_inputs}["proline"] == "long"
    assert out["export_metrics"]["parity_raw_rel_error"] < 1e-5
    session = ort.InferenceSession(out["artifacts"]["onnx"])
    assert [i.name for i in session.get_inputs()] == [c["name"] for c in raw_inputs]
    logits = session.run(None, _csv_rows(split_csvs["test"], raw_inputs))[0]
    # compress's own predictions: the pruned weights on the test split as compress encodes it
    stage = read_stage(Path(out["artifacts"]["prune_dir"]))
    cfg = stage.record["config"]
    data = load_dataset("table", {k: v for k, v in cfg["data"].items() if k != "name"})
    model = build_model("mlp", {k: v for k, v in cfg["model"].items() if k != "name"},
                        data.in_shape, data.num_classes)
    model.load_state_dict(stage.state("weights"))
    want = predict(model, data.test)
    assert np.array_equal(logits.argmax(1), want.argmax(1).numpy())
    assert np.allclose(logits, want.numpy(), rtol=1e-4, atol=1e-5)
    accuracy = float((torch.from_numpy(logits.argmax(1)) == data.test.labels).float().mean())
    assert accuracy == pytest.approx(out["metrics"]["test_accuracy"])
    meta = {p.key: p.value for p in __import__("onnx").load(out["artifacts"]["onnx"]).metadata_props}
    assert json.loads(meta["compress.raw_inputs"]) == raw_inputs


def test_a_registered_table_model_takes_raw_columns_in_mlflow(split_csvs, tmp_path, local_store):
    import mlflow.pyfunc
    from mlflow.models import Model

    from tests.fixtures_mlflow import assert_signature_matches_onnx, registered_model_folder
    pre = compress_json("pretrain", "--no-track", "--out", "pre",
                        *sets(*TINY_MLP, *(f"data.{s}={p}" for s, p in split_csvs.items()),
                              "train.duration=2ep"), cwd=tmp_path)
    out = compress_json("export", "--from", pre["artifacts"]["dir"], "--register", "wine",
                        "--out", "ex", *sets("export.benchmark=false"), cwd=tmp_path)
    assert out["registered"]["version"] == 1
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    model = mlflow.pyfunc.load_model("models:/wine@candidate")
    feed = _csv_rows(split_csvs["test"], out["raw_inputs"])
    logits = model.predict(feed)["logits"]
    assert logits.shape == (len(feed["color"]), 3)
    # The signature: one (-1,) tensor per raw column, typed as the column (strings as object)
    folder = registered_model_folder("models:/wine@candidate", f"sqlite:///{tmp_path}/mlflow.db",
                                     tmp_path / "dl")
    example, predicted = assert_signature_matches_onnx(folder)
    types = {"double": "float64", "long": "int64", "string": "object"}
    assert [(s.name, s.type.name, s.shape) for s in Model.load(folder).signature.inputs] == \
        [(c["name"], types[c["type"]], (-1,)) for c in out["raw_inputs"]]
    # The input example is the first two raw test rows, as a client sends them
    assert sorted(example) == sorted(feed)
    for name, column in feed.items():
        assert np.asarray(example[name]).tolist() == column[:2].tolist(), name
    np.testing.assert_allclose(predicted["logits"], logits[:2], rtol=1e-5)


def test_one_file_is_split_and_parquet_and_npz_read_the_same(tmp_path):
    from compress.data import load_dataset
    frame = wine_frame()
    loaded = [load_dataset("table", {"path": str(write_table(frame, tmp_path / f"w.{fmt}")),
                                     "target": "cultivar"}) for fmt in ("csv", "parquet", "npz")]
    for d in loaded[1:]:
        assert d.preprocess == loaded[0].preprocess
        for s in ("train", "val", "test"):
            assert np.array_equal(getattr(d, s).x.numpy(), getattr(loaded[0], s).x.numpy())


def _bad(tmp_path: Path, frame, *extra: str, name: str = "t.csv"):
    path = write_table(frame, tmp_path / name) if frame is not None else tmp_path / name
    return compress("pretrain", "--no-track", "--out", "pre",
                    *sets(*TINY_MLP, f"data.path={path}", *extra), cwd=tmp_path)


def test_bad_tables_are_one_line_and_exit_2(tmp_path):
    wine = wine_frame()
    cases = []
    cases.append((_bad(tmp_path, wine.drop(columns=["cultivar"])), ["no target column 'cultivar'"]))
    cases.append((_bad(tmp_path, wine, "data.categorical=[color]"),
                  ["column 'hue_band' is not numeric", "data.categorical"]))
    holes = wine.copy()
    holes.loc[[5, 9], "ash"] = np.nan
    cases.append((_bad(tmp_path, holes), ["column 'ash'", "2 missing or infinite", "data.nan=drop"]))
    inf = wine.copy()
    inf.loc[3, "hue"] = np.inf
    cases.append((_bad(tmp_path, inf, name="inf.parquet"), ["column 'hue'", "infinite"]))
    cases.append((_bad(tmp_path, wine.assign(cultivar="class_0")), ["fewer than two classes"]))
    cases.append((_bad(tmp_path, wine.assign(alcohol=wine["alcohol"].astype(str) + "%"),
                       "data.categorical=[color,hue_band]"), ["column 'alcohol' is not numeric"]))
    cases.append((_bad(tmp_path, None, name="t.xlsx"), ["unknown table format '.xlsx'"]))
    (tmp_path / "junk.parquet").write_bytes(b"not parquet at all")
    cases.append((_bad(tmp_path, None, name="junk.parquet"), ["cannot read", "junk.parquet"]))
    cases.append((_bad(tmp_path, None, name="missing.csv"), ["missing.csv", "does not exist"]))
    cases.append((_bad(tmp_path, wine.assign(cultivar=np.linspace(0, 1, len(wine)))),
                  ["non-integer numbers"]))
    cases.append((_bad(tmp_path, wine, "data.max_categories=2"), ["'color' has 3 distinct"]))
    for r, words in cases:
        assert_user_error(r, *words)
    assert not (tmp_path / "pre").exists()


def test_nan_drop_drops_rows_and_records_how_many(tmp_path):
    holes = wine_frame()
    holes.loc[[5, 9], "ash"] = np.nan
    holes.loc[11, "color"] = None
    path = write_table(holes, tmp_path / "holes.csv")
    out = compress_json("pretrain", "--no-track", "--out", "pre",
                        *sets(*TINY_MLP, f"data.path={path}", "data.nan=drop",
                              "train.duration=1ep"), cwd=tmp_path)
    assert out["data_facts"]["dropped_rows"] == {"all": 3}
    assert sum(out["data_facts"]["rows"].values()) == len(holes) - 3


def test_a_split_file_without_a_class_is_one_line(split_csvs, tmp_path):
    import pandas as pd
    test = pd.read_csv(split_csvs["test"])
    lacking = write_table(test[test["cultivar"] != "class_2"], tmp_path / "test.csv")
    r = compress("pretrain", "--no-track", "--out", "pre",
                 *sets(*TINY_MLP, f"data.train={split_csvs['train']}", f"data.val={split_csvs['val']}",
                       f"data.test={lacking}"), cwd=tmp_path)
    assert_user_error(r, "the test split", "class 'class_2'")


def test_stage_identity_follows_the_table_file(tmp_path):
    from compress.config import resolve
    from compress.stages.runner import identity
    path = write_table(wine_frame(), tmp_path / "w.csv")
    cfg = resolve({"data": {"name": "table", "path": str(path), "target": "cultivar"}})
    before = identity("pretrain", cfg)
    assert identity("export", cfg, "src") != before and identity("pretrain", cfg) == before
    text = path.read_text()
    path.write_text(text.replace("class_1", "class_2", 1))
    assert identity("pretrain", cfg) != before

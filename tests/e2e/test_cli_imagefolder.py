"""Image folders through the real CLI: a run, stage identities that follow the files, and every
kind of bad folder as one line with exit 2."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.e2e.helpers import assert_user_error, compress, compress_json, sets
from tests.fixtures_data import write_digit_folder

TINY_CNN = ["data.name=imagefolder", "data.num_workers=0", "model.name=conv2",
            "model.width=0.125", "train.duration=1ep", "train.batch_size=32"]


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    """5 digits per class: 3 train, 1 val, 1 test."""
    return write_digit_folder(tmp_path_factory.mktemp("small") / "digits", per_class=5)


def _copy(small: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(small, tmp_path / "digits"))


def _pretrain(root: Path, cwd: Path, *extra: str):
    return compress("pretrain", "--no-track", *sets(*TINY_CNN, f"data.root={root}", *extra),
                    "--out", "pre", cwd=cwd)


def test_a_pipeline_reuses_its_stages_until_an_image_changes(small, tmp_path):
    root = _copy(small, tmp_path)
    pipe = tmp_path / "p.yaml"
    pipe.write_text(json.dumps({"name": "img", "stages": [{"id": "dense", "stage": "pretrain"}]}))
    args = ("pipeline", "run", str(pipe), "--no-track", "--out", "p",
            *sets(*TINY_CNN, f"data.root={root}"))
    first = compress_json(*args, cwd=tmp_path)
    assert first["stages"]["dense"]["data_facts"]["classes"] == [str(i) for i in range(10)]
    again = compress_json(*args, "--set", "data.num_workers=2", cwd=tmp_path)
    assert again["stages"]["dense"].get("reused") is True  # speed-only keys keep the identity
    image = next((root / "train" / "4").iterdir())
    image.write_bytes(image.read_bytes())  # rewritten: same bytes, new mtime
    shutil.copy(next((root / "train" / "5").iterdir()), root / "train" / "5" / "new.png")
    status = compress_json("pipeline", "status", str(pipe), "--out", "p",
                           *sets(*TINY_CNN, f"data.root={root}"), cwd=tmp_path)
    assert status["stages"][0]["status"] == "stale"
    third = compress_json(*args, cwd=tmp_path)
    assert not third["stages"]["dense"].get("reused")
    assert third["stages"]["dense"]["data_fingerprint"] != first["stages"]["dense"]["data_fingerprint"]


def test_a_later_stage_may_change_num_workers_but_not_the_data(small, tmp_path):
    root = _copy(small, tmp_path)
    assert _pretrain(root, tmp_path).returncode == 0
    out = compress_json("export", "--from", "pre", "--no-track", "--out", "ex",
                        *sets("data.num_workers=2", "export.benchmark=false"), cwd=tmp_path)
    assert out["metrics"]["parity_rel_error"] < 1e-5
    meta = json.loads((tmp_path / "ex" / "stage.json").read_text())["onnx_metadata"]
    assert json.loads(meta["compress.preprocess"])["kind"] == "image"
    r = compress("export", "--from", "pre", "--no-track", "--out", "ex2",
                 *sets("data.image_size=24"), cwd=tmp_path)
    assert_user_error(r, "data differs from the source stage")


def _truncate_pixels(path: Path) -> None:
    """Cut the PNG inside its first IDAT chunk: the header still reads, decoding fails."""
    data = path.read_bytes()
    path.write_bytes(data[:data.index(b"IDAT") + 12])


@pytest.mark.parametrize("case, words", [
    ("missing root", ["data.root", "does not exist"]),
    ("missing split", ["has train/, test/ but no val/"]),
    ("empty class", ["class folder", "holds no images"]),
    ("empty file", ["is empty (0 bytes)", "empty.png"]),
    ("not an image", ["cannot decode image", "bad.png", "not an image file"]),
    ("not an image, header sample", ["cannot read image", "bad.png", "not an image file"]),
    ("truncated", ["cannot decode image", "cut.png"]),
    ("one class", ["fewer than two classes"]),
    ("class missing in a split", ["the test split", "class '7'"]),
])
def test_bad_folders_are_one_line_and_exit_2(small, tmp_path, case, words):
    root = _copy(small, tmp_path)
    extra = []
    if case == "missing root":
        root = tmp_path / "nope"
    elif case == "missing split":
        shutil.rmtree(root / "val")
    elif case == "empty class":
        for f in (root / "train" / "3").iterdir():
            f.unlink()
    elif case == "empty file":
        (root / "test" / "2" / "empty.png").write_bytes(b"")
    elif case == "not an image":
        (root / "val" / "6" / "bad.png").write_bytes(b"this is not a png file" * 10)
        extra = ["data.verify=all"]
    elif case == "not an image, header sample":  # 1 file per class in val: all in the sample
        (root / "val" / "6" / "bad.png").write_bytes(b"this is not a png file" * 10)
    elif case == "truncated":  # the header reads fine: found when the pixels are decoded
        cut = root / "train" / "8" / "cut.png"
        shutil.copy(next((root / "train" / "8").iterdir()), cut)
        _truncate_pixels(cut)
        # given mean/std: nothing decodes up front, so training meets the file in a worker
        extra = ["data.num_workers=2", "data.mean=[0.5,0.5,0.5]", "data.std=[0.25,0.25,0.25]"]
    elif case == "one class":
        for split in ("train", "val", "test"):
            for d in (root / split).iterdir():
                if d.name != "1":
                    shutil.rmtree(d)
    elif case == "class missing in a split":
        shutil.rmtree(root / "test" / "7")
    r = _pretrain(root, tmp_path, *extra)
    assert_user_error(r, *words)
    assert not (tmp_path / "pre").exists()

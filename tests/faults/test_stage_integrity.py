"""A stage folder that was edited, corrupted or rewired is refused in one line by every command
that reads one (`retrain`, `export --from`, `prune --from`, a resumed pipeline), naming the
folder and the file, exit 2, nothing written; a resumed pipeline runs such a stage again.

Real folders from tiny runs (xor/mlp), tampered with the way a person or a tool would: a flipped
byte, a file replaced by another one with stage.json's sha256 rewritten to match, paths out of
the folder, symlinks, tensors of the wrong shape or type.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from compress.core.masks import file_sha256
from tests.e2e.helpers import TINY_SETS, assert_user_error, compress, compress_json, errors, sets

COMMON = [*sets(*TINY_SETS), "--no-track", "--seed", "3"]
MAGNITUDE = ["--method", "magnitude", "--no-export"]


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """A pretrain folder and a prune folder (magnitude, from the pretrain), never modified."""
    root = tmp_path_factory.mktemp("made")
    compress_json("pretrain", *COMMON, "--out", "pre", cwd=root)
    compress_json("prune", *MAGNITUDE, "--from", "pre", "--out", "run", *COMMON, cwd=root)
    return {"pre": root / "pre", "prune": root / "run" / "prune"}


def _copy(made, kind: str, where: Path) -> Path:
    dest = where / kind
    shutil.copytree(made[kind], dest, symlinks=True)
    return dest


def _record(folder: Path) -> dict:
    return json.loads((folder / "stage.json").read_text())


def _write_record(folder: Path, record: dict) -> None:
    (folder / "stage.json").write_text(json.dumps(record, indent=2))


def _rehash(folder: Path) -> None:
    """stage.json's sha256 made to match the files as they now are (what a careless tool, or
    someone covering an edit, would do): only the other checks can catch the damage."""
    record = _record(folder)
    record["sha256"] = {k: file_sha256(folder / v) for k, v in record["files"].items()
                        if (folder / v).is_file()}
    _write_record(folder, record)


# Each command that reads a stage folder, on the kind of folder it reads.
READERS = {
    "retrain": ("prune", lambda src: ["retrain", "--from", src, "--mode", "finetune"]),
    "retrain-rewind": ("prune", lambda src: ["retrain", "--from", src, "--mode", "rewind"]),
    "export": ("prune", lambda src: ["export", "--from", src]),
    "prune": ("pre", lambda src: ["prune", *MAGNITUDE, "--from", src]),
}


def _run(tmp_path: Path, reader: str, folder: Path):
    """The command on `folder`; it must leave nothing behind but the folder itself."""
    before = sorted(p.name for p in tmp_path.iterdir())
    r = compress(*READERS[reader][1](str(folder)), "--out", "out", *COMMON, cwd=tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == before, "a refused command wrote files"
    return r


def assert_refused(r, folder: Path, name: str, *words: str) -> str:
    """Exit 2, one line naming the folder and the file, saying how to fix it."""
    assert_user_error(r, f"stage folder {folder}", name, "delete the folder and re-run", *words)
    return errors(r.stderr)


def test_every_file_a_stage_writes_is_listed_and_hashed(made):
    for kind, expected in (("pre", {"weights", "init", "history"}),
                           ("prune", {"weights", "init", "masks", "masks_meta", "density_plot",
                                      "history"})):
        record = _record(made[kind])
        assert set(record["files"]) == expected, kind
        assert set(record["sha256"]) == expected
        for key, name in record["files"].items():
            assert record["sha256"][key] == file_sha256(made[kind] / name)
        # Every file in the folder is listed, but stage.json itself.
        on_disk = {p.name for p in made[kind].iterdir() if p.is_file()} - {"stage.json"}
        assert on_disk == set(record["files"].values()), kind


@pytest.mark.parametrize("key", ["weights", "init", "masks", "masks_meta", "density_plot",
                                 "history"])
@pytest.mark.parametrize("reader", ["retrain", "export"])
def test_a_flipped_byte_in_any_listed_file_is_refused(made, tmp_path, key, reader):
    folder = _copy(made, "prune", tmp_path)
    name = _record(folder)["files"][key]
    raw = bytearray((folder / name).read_bytes())
    raw[len(raw) // 2] ^= 1
    (folder / name).write_bytes(bytes(raw))
    assert_refused(_run(tmp_path, reader, folder), folder, name, "sha256")


@pytest.mark.parametrize("key", ["weights", "init", "history"])
def test_prune_from_a_pretrain_with_a_flipped_byte_is_refused(made, tmp_path, key):
    folder = _copy(made, "pre", tmp_path)
    name = _record(folder)["files"][key]
    raw = bytearray((folder / name).read_bytes())
    raw[-1] ^= 1
    (folder / name).write_bytes(bytes(raw))
    assert_refused(_run(tmp_path, "prune", folder), folder, name, "sha256")


def test_an_edited_masks_json_is_refused(made, tmp_path):
    """masks.json was outside stage.json's sha256: an edited density went unnoticed."""
    folder = _copy(made, "prune", tmp_path)
    meta = json.loads((folder / "masks.json").read_text())
    meta["density"] = 0.5
    (folder / "masks.json").write_text(json.dumps(meta))
    assert_refused(_run(tmp_path, "retrain", folder), folder, "masks.json", "sha256")


def test_a_missing_listed_file_is_refused(made, tmp_path):
    folder = _copy(made, "prune", tmp_path)
    (folder / "masks.json").unlink()
    assert_refused(_run(tmp_path, "export", folder), folder, "masks.json", "missing")


@pytest.mark.parametrize("how", ["absolute", "dotdot", "symlink", "nested-dotdot"])
@pytest.mark.parametrize("reader", ["retrain", "export", "prune"])
def test_files_outside_the_stage_folder_are_refused(made, tmp_path, how, reader):
    """stage.json pointing at weights elsewhere (its sha256 matching them) was followed."""
    kind = READERS[reader][0]
    folder = _copy(made, kind, tmp_path)
    other = _copy(made, kind, tmp_path / "elsewhere") if how != "absolute" else made[kind]
    record = _record(folder)
    if how == "symlink":  # the file name is fine; the file is a link out of the folder
        (folder / "weights.safetensors").unlink()
        (folder / "weights.safetensors").symlink_to(other / "weights.safetensors")
        name = "weights.safetensors"
    else:
        name = {"absolute": str((other / "weights.safetensors").resolve()),
                "dotdot": "../elsewhere/" + kind + "/weights.safetensors",
                "nested-dotdot": "sub/../../elsewhere/" + kind + "/weights.safetensors"}[how]
        record["files"]["weights"] = name
        _write_record(folder, record)
    _rehash(folder)
    err = assert_refused(_run(tmp_path, reader, folder), folder,
                   "stage.json" if how != "symlink" else name, "inside its folder")
    assert ("outside the folder" in err) == (how == "symlink"), err


def test_a_symlink_inside_the_folder_is_accepted(made, tmp_path):
    """Links are fine while they stay in the folder (the import stage hard-links init)."""
    from compress.stages.artifacts import read_stage
    folder = _copy(made, "pre", tmp_path)
    (folder / "init.safetensors").unlink()
    shutil.copyfile(folder / "weights.safetensors", folder / "real.safetensors")
    (folder / "init.safetensors").symlink_to("real.safetensors")
    (folder / "weights.safetensors").unlink()
    (folder / "weights.safetensors").symlink_to(folder / "real.safetensors")
    _rehash(folder)
    info = read_stage(folder)
    assert torch.equal(info.state("init")["layers.0.weight"],
                       load_file(str(made["pre"] / "weights.safetensors"))["layers.0.weight"])


@pytest.mark.parametrize("key", ["weights", "init", "masks"])
@pytest.mark.parametrize("reader", ["retrain", "export"])
def test_random_bytes_with_a_matching_sha256_are_one_line(made, tmp_path, key, reader):
    folder = _copy(made, "prune", tmp_path)
    name = _record(folder)["files"][key]
    (folder / name).write_bytes(os.urandom(1000))
    if key == "masks":  # masks.json's own sha256 of the masks, made to match as well
        meta = json.loads((folder / "masks.json").read_text())
        meta["sha256"] = file_sha256(folder / name)
        (folder / "masks.json").write_text(json.dumps(meta))
    _rehash(folder)
    assert_refused(_run(tmp_path, reader, folder), folder, name, "not a readable safetensors file")


@pytest.mark.parametrize("name", ["history.json", "masks.json"])
def test_broken_json_with_a_matching_sha256_is_one_line(made, tmp_path, name):
    folder = _copy(made, "prune", tmp_path)
    (folder / name).write_text("{not json")
    _rehash(folder)
    assert_refused(_run(tmp_path, "retrain", folder), folder, name, "not valid JSON")


def _reshaped(path: Path, how: str) -> None:
    """The same file, one tensor changed: another shape, an extra key, or a missing key."""
    state = load_file(str(path))
    key = next(k for k in state if k.endswith("weight"))
    if how == "shape":
        state[key] = torch.zeros(state[key].shape[0] + 1, *state[key].shape[1:],
                                 dtype=state[key].dtype)
    elif how == "extra":
        state["stray.weight"] = torch.ones(2, 2, dtype=state[key].dtype)
    else:
        del state[key]
    save_file(state, str(path))


# The file each reader loads into a model: (reader, key).
LOADED = [("retrain", "weights"), ("retrain", "masks"), ("retrain-rewind", "init"),
          ("export", "weights"), ("export", "masks"), ("prune", "weights"), ("prune", "init")]


@pytest.mark.parametrize("reader,key,how", [
    (reader, key, how) for reader, key in LOADED for how in ("shape", "extra", "missing")
    if (key, how) != ("masks", "missing")])  # a mask set may leave layers dense (lottery)
def test_tensors_that_do_not_fit_the_model_are_one_line(made, tmp_path, reader, key, how):
    kind = READERS[reader][0]
    folder = _copy(made, kind, tmp_path)
    name = _record(folder)["files"][key]
    _reshaped(folder / name, how)
    if key == "masks":
        meta = json.loads((folder / "masks.json").read_text())
        meta["sha256"] = file_sha256(folder / name)
        (folder / "masks.json").write_text(json.dumps(meta))
    _rehash(folder)
    assert_refused(_run(tmp_path, reader, folder), folder, name, "does not fit the model")


def test_masks_that_are_not_boolean_are_one_line(made, tmp_path):
    folder = _copy(made, "prune", tmp_path)
    masks = load_file(str(folder / "masks.safetensors"))
    save_file({k: v.float() for k, v in masks.items()}, str(folder / "masks.safetensors"))
    meta = json.loads((folder / "masks.json").read_text())
    meta["sha256"] = file_sha256(folder / "masks.safetensors")
    (folder / "masks.json").write_text(json.dumps(meta))
    _rehash(folder)
    assert_refused(_run(tmp_path, "export", folder), folder, "masks.safetensors",
             "not a readable mask set")


@pytest.mark.parametrize("text", ["[]", '{"stage": "prune"}', "{", '{"stage": "prune", "id": '
                                  '"x", "files": {"weights": 3}, "sha256": {}}'])
def test_a_malformed_stage_json_is_one_line(made, tmp_path, text):
    folder = _copy(made, "prune", tmp_path)
    (folder / "stage.json").write_text(text)
    assert_refused(_run(tmp_path, "retrain", folder), folder, "stage.json")


def test_a_folder_written_before_masks_json_was_hashed_is_still_read(made, tmp_path):
    """Old stage folders list neither masks.json nor history.json: they are read as before
    (masks.json still checks the masks' sha256), and the stages made from them list both."""
    folder = _copy(made, "prune", tmp_path)
    record = _record(folder)
    for key in ("masks_meta", "history"):
        del record["files"][key], record["sha256"][key]
    _write_record(folder, record)
    out = compress_json("retrain", "--from", str(folder), "--out", "re", *COMMON, cwd=tmp_path)
    assert {"masks_meta", "history"} <= set(_record(Path(out["artifacts"]["dir"]))["files"])
    masks = folder / "masks.safetensors"  # masks.json still guards the masks of an old folder
    raw = bytearray(masks.read_bytes())
    raw[-1] ^= 1
    masks.write_bytes(bytes(raw))
    _rehash(folder)
    r = compress("export", "--from", str(folder), "--out", "ex", *COMMON, cwd=tmp_path)
    assert_user_error(r, "masks.safetensors", "sha256")


# ------------------------------------------------------------------ pipelines
def _pipeline(tmp_path: Path, *extra: str):
    return compress("prune", *MAGNITUDE, "--out", "run", *COMMON, *extra, cwd=tmp_path)


def _status(tmp_path: Path) -> dict:
    spec = {"name": "prune-magnitude", "stages": [
        {"id": "pretrain", "stage": "pretrain"},
        {"id": "prune", "stage": "prune", "from": "pretrain",
         "set": {"method": {"name": "magnitude"}}}]}
    (tmp_path / "p.json").write_text(json.dumps(spec))
    out = compress_json("pipeline", "status", "p.json", "--out", "run", *sets(*TINY_SETS),
                        "--seed", "3", cwd=tmp_path)
    return {r["id"]: r for r in out["stages"]}


DAMAGE = {
    "flipped-masks-json": lambda f: (f / "masks.json").write_text(
        (f / "masks.json").read_text().replace("density", "densitx", 1)),
    "absolute-weights": lambda f: _point_weights(f, str((f.parent / "pretrain" /
                                                          "weights.safetensors").resolve())),
    "random-weights": lambda f: ((f / "weights.safetensors").write_bytes(os.urandom(500)),
                                 _rehash(f)),
}


def _point_weights(folder: Path, name: str) -> None:
    record = _record(folder)
    record["files"]["weights"] = name
    _write_record(folder, record)
    _rehash(folder)


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_resumed_pipeline_runs_a_damaged_stage_again(tmp_path, damage):
    """The pipeline's own folders: `pipeline status` says damaged (and why); a re-run of the
    same command runs the stage again, reuses the intact pretrain, and ends intact."""
    first = _pipeline(tmp_path, "--json")
    assert first.returncode == 0, first.stderr
    prune = tmp_path / "run" / "prune"
    good = _record(prune)
    DAMAGE[damage](prune)
    rows = _status(tmp_path)
    assert rows["pretrain"]["status"] == "done"
    assert rows["prune"]["status"] == "damaged"
    assert rows["prune"]["problem"].startswith("stage folder run/prune: ")
    again = _pipeline(tmp_path, "--json")
    assert again.returncode == 0, again.stderr
    assert "pretrain: reused" in again.stderr
    assert "prune: running it again, its folder is damaged" in again.stderr
    summary = json.loads(again.stdout)
    assert summary["stages"]["pretrain"]["reused"] and not summary["stages"]["prune"].get("reused")
    assert _status(tmp_path)["prune"]["status"] == "done"
    assert _record(prune)["files"] == good["files"] and _record(prune)["sha256"] == good["sha256"]


def test_a_damaged_source_of_a_pipeline_is_refused(made, tmp_path):
    """`sources:` (or `prune --from`) are someone else's folders: refused, never re-run."""
    folder = _copy(made, "pre", tmp_path)
    (folder / "history.json").write_text("[]")
    r = compress("prune", *MAGNITUDE, "--from", str(folder), "--out", "run", *COMMON, cwd=tmp_path)
    assert_refused(r, folder, "history.json", "sha256")
    assert not (tmp_path / "run").exists()

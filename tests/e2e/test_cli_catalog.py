"""`compress datasets` / `compress models`: every registered entry with its options; unknown
data.* / model.* keys point there."""

from __future__ import annotations

import json

import pytest

from compress.registry import DATASETS, MODELS
from tests.e2e.helpers import assert_user_error, compress


@pytest.mark.parametrize("command, registry", [("datasets", DATASETS), ("models", MODELS)])
def test_listings_name_every_entry_with_its_options(tmp_path, command, registry):
    text = compress(command, cwd=tmp_path)
    assert text.returncode == 0
    heads = [line.split("  ")[0] for line in text.stdout.splitlines() if not line.startswith(" ")]
    assert heads[:len(registry.names())] == registry.names()
    listed = json.loads(compress(command, "--json", cwd=tmp_path).stdout)
    for entry in registry.entries():
        fields = entry.params.model_fields if entry.params else {}
        names = [o["name"] for o in listed[entry.name]["options"]]
        assert sorted(names) == sorted(fields) and entry.summary == listed[entry.name]["summary"]


def test_options_carry_type_default_and_description(tmp_path):
    listed = json.loads(compress("datasets", "--json", cwd=tmp_path).stdout)
    opts = {o["name"]: o for o in listed["imagefolder"]["options"]}
    assert opts["root"]["default"] == "required" and "class" in opts["root"]["description"]
    assert opts["augment"] == {"name": "augment", "type": "none | standard", "default": "none",
                               "description": opts["augment"]["description"]}
    assert opts["num_workers"]["type"] == "int" and opts["num_workers"]["default"] == 2
    assert [o["name"] for o in listed["table"]["options"]][:2] == ["path", "train"]  # own first
    models = json.loads(compress("models", "--json", cwd=tmp_path).stdout)
    assert models["torchvision:NAME"]["prefix"] is True
    assert "resnet18" in models["torchvision:NAME"]["summary"]
    text = compress("models", cwd=tmp_path).stdout
    assert any(line.startswith("torchvision:NAME  ") for line in text.splitlines())


@pytest.mark.parametrize("key, listing", [
    ("data.kk", "`compress datasets`"), ("model.kk", "`compress models`"),
    ("method.kk", "`compress methods`"), ("train.kk", "the README")])
def test_an_unknown_key_points_to_the_listing_of_its_section(tmp_path, key, listing):
    r = compress("pretrain", "--no-track", "--set", f"{key}=1", cwd=tmp_path)
    assert_user_error(r, key, "unknown key", listing)
